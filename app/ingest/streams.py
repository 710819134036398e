"""Metering a streamed response (server-sent events) from the usage the stream carries.

Each provider puts a streamed call's usage somewhere else:

- OpenAI Chat Completions: a last chunk with ``usage`` (only when the request set
  ``stream_options: {"include_usage": true}``; every other chunk has ``"usage": null``);
- OpenAI Responses: the ``response.completed`` event (or ``response.incomplete`` /
  ``response.failed``) holds the whole response, its usage in it;
- Anthropic Messages: ``message_start`` has the input side, ``message_delta`` the
  output so far (cumulative), and any count it repeats, which replaces the first;
- Gemini ``streamGenerateContent?alt=sse``: every chunk has ``usageMetadata``, the
  running total; the last one is the call's.

The stream goes to the client as it comes, chunk by chunk, never held back: a
chunk is passed on first and looked at after. Looking is a substring test per
line; only the few lines that can hold the usage are kept (their text), and
they are parsed once, when the stream ends, into the provider's own usage
object, which the worker reads like any other (``app/ingest/provider_usage.py``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

# What marks a line that may hold usage, tested on the raw text of each data line: a
# key and what follows it. Text inside a JSON string has its quotes escaped, so no
# generated text can look like one of these.
_CHAT_USAGE = re.compile(rb'"usage"\s*:\s*\{')
_ANTHROPIC_START = re.compile(rb'"type"\s*:\s*"message_start"')
_ANTHROPIC_DELTA = re.compile(rb'"type"\s*:\s*"message_delta"')
_RESPONSES_END = re.compile(rb'"type"\s*:\s*"response\.(completed|incomplete|failed)"')
_GEMINI_USAGE = re.compile(rb'"usageMetadata"\s*:')


class StreamUsage(NamedTuple):
    """What a stream said of its usage: the provider's usage object (or None), the
    model it names, the API flavour, and whether the usage is the call's whole."""

    provider_usage: dict[str, Any] | None
    model: str | None
    api_flavor: str | None
    complete: bool
    ended: bool  # the stream ran to its end (else the client went away first)


class UsageScanner:
    """Reads the data lines of a server-sent event stream as they pass, keeping the
    text of those that may hold usage."""

    def __init__(self) -> None:
        self._tail = b""
        self.chat: bytes | None = None  # the last chat chunk with usage
        self.anthropic_start: bytes | None = None
        self.anthropic_delta: bytes | None = None  # the last message_delta
        self.responses_end: bytes | None = None
        self.gemini: bytes | None = None  # the last chunk with usageMetadata

    def feed(self, chunk: bytes | str) -> None:
        data = chunk.encode() if isinstance(chunk, str) else chunk
        lines = (self._tail + data).split(b"\n")
        self._tail = lines.pop()
        for line in lines:
            self._line(line)

    def _line(self, line: bytes) -> None:
        if not line.startswith(b"data:"):
            return  # event names, ids, comments, blank separators
        if _GEMINI_USAGE.search(line):
            self.gemini = line
        elif _ANTHROPIC_DELTA.search(line):
            self.anthropic_delta = line
        elif _ANTHROPIC_START.search(line):
            self.anthropic_start = line
        elif _RESPONSES_END.search(line):
            self.responses_end = line
        elif _CHAT_USAGE.search(line):
            self.chat = line

    def usage(self, exhausted: bool) -> StreamUsage:
        """The stream's usage once it ended; ``exhausted``: it ran to its end."""
        if self._tail:
            self._line(self._tail.rstrip(b"\r"))
            self._tail = b""
        if self.responses_end is not None:
            response = _data(self.responses_end).get("response") or {}
            return StreamUsage(
                _with_usage(response), response.get("model"), "responses", True, exhausted
            )
        if self.anthropic_start is not None:
            message = _data(self.anthropic_start).get("message") or {}
            usage = dict(message.get("usage") or {})
            if self.anthropic_delta is not None:  # cumulative: its counts replace the first
                delta = _data(self.anthropic_delta).get("usage") or {}
                usage.update({k: v for k, v in delta.items() if v is not None})
            complete = self.anthropic_delta is not None
            return StreamUsage(
                {"usage": usage}, message.get("model"), "default", complete, exhausted
            )
        if self.gemini is not None:
            chunk = _data(self.gemini)
            usage = {"usageMetadata": chunk.get("usageMetadata")}
            return StreamUsage(usage, chunk.get("modelVersion"), "default", exhausted, exhausted)
        if self.chat is not None:
            chunk = _data(self.chat)
            return StreamUsage(_with_usage(chunk), chunk.get("model"), "chat", True, exhausted)
        return StreamUsage(None, None, None, False, exhausted)


def _data(line: bytes) -> dict[str, Any]:
    try:
        value = json.loads(line[5:].strip())
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _with_usage(container: dict[str, Any]) -> dict[str, Any] | None:
    usage = container.get("usage")
    return {"usage": usage} if isinstance(usage, dict) else None


class MeteredStream:
    """A response body passed through untouched; ``on_end`` gets its usage once, when
    the server closes it: at its end, or when the client went away before."""

    def __init__(self, body: Iterable[Any], on_end: Callable[[StreamUsage], None]) -> None:
        self._body = body
        self._on_end: Callable[[StreamUsage], None] | None = on_end
        self._scanner = UsageScanner()
        self._exhausted = False

    def __iter__(self) -> Iterator[Any]:
        for chunk in self._body:
            yield chunk
            self._scanner.feed(chunk)
        self._exhausted = True

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            on_end, self._on_end = self._on_end, None
            if on_end is not None:
                on_end(self._scanner.usage(self._exhausted))
