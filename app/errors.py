"""One exception hierarchy and one JSON error shape for the whole service.

Views raise these; the handler in ``app/api/__init__.py`` turns each into
``{"error": {"code": ..., "message": ..., "field": ...}}`` with its status.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "field": self.field}}


class ValidationError(ServiceError):
    status = 400
    code = "invalid_request"


class AuthenticationError(ServiceError):
    status = 401
    code = "unauthenticated"


class PermissionDenied(ServiceError):
    status = 403
    code = "forbidden"


class NotFound(ServiceError):
    status = 404
    code = "not_found"


class PayloadTooLarge(ServiceError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(ServiceError):
    status = 415
    code = "unsupported_media_type"


class BillingUnavailable(ServiceError):
    """Stripe could not be reached or refused after retries; the caller may try later."""

    status = 502
    code = "billing_unavailable"


class BillingRejected(ServiceError):
    """Stripe refused the request itself (4xx other than 429): retrying will not help."""

    status = 502
    code = "billing_rejected"


class ServiceUnavailable(ServiceError):
    """A dependency (the database) is down; the same request may succeed shortly."""

    status = 503
    code = "unavailable"
    retry_after_seconds = 5


class Conflict(ServiceError):
    status = 409
    code = "conflict"


class CreditsExhausted(ServiceError):
    """A prepaid customer whose calls stop at a zero balance has none left."""

    status = 402
    code = "credits_exhausted"


class RateLimited(ServiceError):
    """A key or customer sent more requests, or reserved more tokens, than its
    per-minute limit allows; the window resets at the next minute."""

    status = 429
    code = "rate_limited"


class JobAlreadyRunning(ServiceError):
    status = 409
    code = "job_running"


class LedgerMismatch(Exception):
    """A batch's transaction does not hold every event it should; it is not committed.

    Not a ``ServiceError``: it never reaches a client. The worker retries the batch.
    """


class BudgetExceeded(ServiceError):
    """A hard budget limit is reached: the call is neither served nor billed."""

    status = 402
    code = "budget_exceeded"

    def __init__(self, message: str, limit: str, metric: str, period_end: str) -> None:
        super().__init__(message, field="Authorization")
        self.limit, self.metric, self.period_end = limit, metric, period_end

    def to_dict(self) -> dict[str, Any]:
        body = super().to_dict()
        body["error"].update(limit=self.limit, metric=self.metric, period_end=self.period_end)
        return body
