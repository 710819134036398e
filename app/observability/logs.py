"""JSON logs: with ``LOG_FORMAT=json`` every record goes to stderr as one JSON object per
line (python-json-logger), ``extra`` fields as keys, and a bearer token or an
``sk-`` key that reached a message is masked before it is written. The default
(``text``) leaves logging as gunicorn and Celery set it up."""

from __future__ import annotations

import logging
import re

from pythonjsonlogger.json import JsonFormatter

from app.config import Settings

_SECRET = re.compile(r"(Bearer\s+)\S+|\bsk[-_][A-Za-z0-9_-]{8,}", re.IGNORECASE)


class MaskSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = _SECRET.sub(lambda m: (m.group(1) or "") + "[redacted]", message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


class JsonLines(logging.StreamHandler):
    def __init__(self) -> None:
        super().__init__()
        self.addFilter(MaskSecrets())
        self.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"levelname": "level", "name": "logger", "asctime": "time"},
            )
        )


def configure_logging(settings: Settings) -> None:
    """With JSON logs, the root logger writes through ``JsonLines`` alone (once per
    process: a second app changes nothing)."""
    if settings.log_format != "json":
        return
    root = logging.getLogger()
    if any(isinstance(handler, JsonLines) for handler in root.handlers):
        return
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(JsonLines())
    if root.level == logging.WARNING:  # Python's default: nothing chose a level yet
        root.setLevel(logging.INFO)
