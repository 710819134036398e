"""Settings read once from the environment.

Every value has a safe default so a fresh clone runs on the embedded default
(an SQLite file and a filesystem broker under ``instance/``); setting
``DATABASE_URL`` and ``REDIS_URL`` moves the same code to PostgreSQL and Redis.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _without_password(url: str) -> str:
    """A URL with the password its credentials may carry (a database's, Redis's) masked."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"{parts.username}:***@{host}").geturl()


def with_driver(url: str) -> str:
    """Pin the psycopg2 driver we install; SQLAlchemy 2.1 would pick psycopg 3.

    Also accepts Heroku-style ``postgres://`` URLs, which SQLAlchemy refuses.
    """
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix) :]
    return url


class Settings(BaseSettings):
    """One immutable settings object; ``from_env`` is the only reader of os.environ.

    Each field is read from the variable of its name in capitals (``ADMIN_TOKEN``).
    Secrets are ``SecretStr``, and URLs show no password, so neither ``repr`` nor a
    traceback ever prints one.
    """

    model_config = SettingsConfigDict(frozen=True, extra="forbid", env_ignore_empty=True)

    instance_dir: Path = PROJECT_ROOT / "instance"
    database_url: str = ""
    redis_url: str = ""
    # Seconds before Redis hands an unacknowledged message to another worker: what a
    # killed worker or a broker outage had in flight waits this long. Longer than any
    # retry's countdown (60 s at most); jobs that outlast it are guarded by their lock.
    broker_visibility_timeout: int = 120
    auto_migrate: bool = True
    # PostgreSQL ends a session idle inside a transaction this long (its locks go with it).
    idle_in_transaction_timeout_seconds: int = 600

    # Ingest
    enable_pricing_middleware: bool = False
    service_token: SecretStr = SecretStr("")
    admin_token: SecretStr = SecretStr("")
    max_batch_events: int = 1000
    max_body_bytes: int = 4 * 1024 * 1024
    max_metadata_bytes: int = 8 * 1024
    # Events per Celery task, and the longest an event waits for its batch (it is on
    # disk meanwhile). Bigger batches cost the API and the worker less per event.
    meter_batch_size: int = 2000
    meter_flush_ms: int = 200
    meter_spool_dir: str = ""
    # A published batch with no receipt after this long is sent again: Redis hands a
    # message over by popping it, so one popped by a worker that lost its connection
    # at that moment is gone. Longer than the broker's visibility timeout plus a
    # retry's countdown, which bring back every message Redis still holds.
    meter_redeliver_after_seconds: int = 180
    # With Redis, a batch's events wait beside its message (app/ingest/batch_store.py) and are
    # deleted once recorded; this expiry only clears what a failed delete left.
    meter_batch_ttl_seconds: int = 7 * 24 * 3600
    max_usage_range_days: int = 366
    max_event_age_days: int = 35
    max_event_future_seconds: int = 300
    demo_execute_endpoint: bool = False
    # The demo's /v1/execute relays each call to this model provider (a fake one in
    # the tests) and passes its answer on, streamed or not, as the real API does.
    demo_provider_url: str = ""

    # Pages (/dashboard, /admin). Sessions are signed with SECRET_KEY; unset, a random
    # key is made once and kept in the instance folder (one host's processes share it).
    secret_key: SecretStr = SecretStr("")
    session_hours: int = 8
    # Behind a proxy that terminates https: trust its X-Forwarded-Proto/-For (one hop),
    # so the session cookie is marked Secure and links stay https.
    trust_proxy: bool = False
    flower_url: str = "http://localhost:5555"

    # Observability. Metrics files of the multiprocess roles live under METRICS_DIR
    # (default: instance/metrics); workers and Beat serve theirs on these ports (0: off).
    metrics_dir: str = ""
    metrics_token: SecretStr = SecretStr("")
    worker_metrics_port: int = 9101
    beat_metrics_port: int = 9102
    log_format: Literal["text", "json"] = "text"  # json: one JSON object per line

    # Pricing
    pricing_source_url: str = ""

    # Stripe
    stripe_api_key: SecretStr = SecretStr("")
    stripe_api_base: str = ""
    stripe_webhook_secret: SecretStr = SecretStr("")
    stripe_meter_event_name: str = "llm_usage"
    stripe_max_attempts: int = 6
    stripe_retry_base_ms: int = 500
    stripe_max_requests_per_second: int = 25
    # Per attempt; a timed-out call is retried with the same idempotency key.
    stripe_timeout_seconds: float = 30.0
    billing_quantity: Literal["tokens", "cost"] = "tokens"
    billing_cost_unit: Annotated[Decimal, Field(gt=0)] = Decimal("0.000001")  # a quantity's USD
    billing_portal_allowed_origins: Annotated[tuple[str, ...], NoDecode] = ()  # comma-separated

    # Budgets. With enforcement on, a metered call over a hard limit gets 402 and one
    # of a revoked key 401, decided in Redis before the view runs (needs REDIS_URL).
    enforce_budgets: bool = False
    # Redis unreachable while enforcing: "open" serves the call (it is metered and
    # counted once the worker records it; each such call is logged), "closed" refuses
    # it with 503. Open by default: metering must never fail the metered request.
    budget_redis_down: Literal["open", "closed"] = "open"
    budget_redis_timeout_ms: int = 100
    # Far from every hard limit an admission reserves up to BUDGET_LEASE_CALLS calls
    # (at most 1/16 of what is left) and the API process admits them itself for this
    # long, without a round trip to Redis; 0 asks Redis on every call. The bound on
    # overshoot is the same either way; a key revoked or a budget changed ends the
    # leases at once (announced in Redis), at worst after this long.
    budget_lease_seconds: float = 1.0
    budget_lease_calls: int = 256
    # A reservation its call's recorded event has not settled after this long is
    # dropped (the call failed unmetered, or a worker lost the release).
    budget_reservation_ttl_seconds: int = 900
    # What an admitted call reserves when nothing of its customer's says what calls
    # cost (a budget's first calls, with no usage in the 30 days before its period).
    budget_call_estimate_usd: Decimal = Decimal("0.05")
    budget_call_estimate_tokens: int = 20000
    # Rate limits: what a call reserves against a tokens-per-minute limit is its
    # prompt (a token per 4 bytes of the request's body) and the output it asks for at
    # most (``max_tokens`` or its kin), else this many output tokens.
    rate_limit_default_output_tokens: int = 1024
    # Recommendations: groups of models an operator holds comparable, each a list of
    # "provider/model" (JSON: [["anthropic/claude-3-opus", "openai/gpt-4o"]]). A model
    # in no group is compared with its own provider's models only.
    recommendation_groups: list[list[str]] = Field(default_factory=list)
    # Credits: a grant with credit left is announced this many days before it expires.
    credit_expiry_warning_days: int = 7
    # Alerts: webhook deliveries are retried with backoff for this long.
    alert_retry_hours: int = 24
    alert_timeout_seconds: float = 10.0
    # Development only: lets an alert webhook be http:// on a loopback address.
    alert_allow_loopback: bool = False

    # Jobs
    usage_retention_days: int = 90
    # The hourly rollup (analytics by hour, task type and status, latency) is
    # kept this long; the daily rollup keeps the whole history.
    usage_hourly_retention_days: int = 400
    # The ledger's weekly partitions (PostgreSQL) made ahead of time, beyond the
    # current week; a daily job and every start-up keep them there.
    partition_weeks_ahead: int = 4
    partition_hour_utc: int = 0
    cleanup_batch_size: int = 5000
    # Share of its time the cleanup spends deleting; it rests the remainder so
    # ingest keeps up while a week of events goes.
    cleanup_duty_cycle: Annotated[float, Field(gt=0, le=1)] = 0.5
    report_hour_utc: int = 2
    report_minute_utc: int = 0
    price_refresh_hour_utc: int = 1
    cleanup_weekday: int = 0  # Sunday in crontab terms
    cleanup_hour_utc: int = 3
    # Reconciliation with Stripe's meter summaries: daily at this hour (after the
    # report, so Stripe has aggregated its events), over this many days back.
    reconcile_hour_utc: int = 4
    reconcile_days: int = 7
    # A running job renews its lock every third of this; one not renewed this long
    # (its process gone), or whose process on this host is gone, is taken over.
    job_lease_seconds: int = 60

    @field_validator("billing_portal_allowed_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip().rstrip("/") for part in value.split(",") if part.strip())
        return value

    @model_validator(mode="after")
    def _enforcing_needs_redis(self) -> Settings:
        if self.enforce_budgets and not (self.redis_url and self.enable_pricing_middleware):
            raise ValueError(
                "ENFORCE_BUDGETS needs REDIS_URL (admission is decided in Redis) and "
                "ENABLE_PRICING_MIDDLEWARE (it admits the metered calls)"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """``Settings(...)`` holds the values given and the defaults, never the
        environment's: a test states what it runs with."""
        return (init_settings,)

    @classmethod
    def from_env(cls) -> Settings:
        return cls(**EnvSettingsSource(cls)())

    def replace(self, **changes: object) -> Settings:
        """These settings with ``changes``, validated as the environment's are."""
        return type(self)(**{**dict(self), **changes})

    def __repr_args__(self) -> Iterator[tuple[str | None, object]]:
        for name, value in super().__repr_args__():
            if name is not None and name.endswith("_url") and isinstance(value, str):
                value = _without_password(value)
            yield name, value

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return with_driver(self.database_url)
        return f"sqlite:///{self.instance_dir / 'usage_billing.db'}"

    @property
    def uses_redis(self) -> bool:
        return bool(self.redis_url)

    @property
    def metrics_path(self) -> Path:
        return Path(self.metrics_dir) if self.metrics_dir else self.instance_dir / "metrics"

    @property
    def spool_dir(self) -> Path:
        return Path(self.meter_spool_dir) if self.meter_spool_dir else self.instance_dir / "spool"
