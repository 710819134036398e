"""What the analytics API answers, declared once: the views' response models.

The analytics are built as the rollups are read (``usage``, ``performance``,
``forecast``, ``recommendations``), and each answer is held to its model here
before it is sent (``app.contract``), so ``/openapi.json`` documents exactly
what goes out. A field that only some answers carry (a charge, a dimension
grouped by) has a default and is left out where the answer has none.
"""

from __future__ import annotations

from typing import Literal

from app.budgets.views import BudgetAnswer
from app.contract import Answer, Day, Instant, Money, Quantity


class TokenCounts(Answer):
    """Tokens of each dimension (``app/pricing/dimensions.py`` says what each holds)."""

    tokens_input: int
    tokens_output: int
    tokens_cache_read: int
    tokens_cache_write: int
    tokens_input_audio: int
    tokens_cache_audio_read: int
    tokens_output_audio: int
    tokens_output_reasoning: int


class UsageFigures(TokenCounts):
    events: int
    unpriced_events: int
    flagged_events: int
    cost: Money
    tokens_total: int


class UsageTotals(UsageFigures):
    charge: Quantity | None = None  # what the plans charged, where a charge is made of it


class KeyShown(Answer):
    id: int
    label: str
    prefix: str | None  # none for a key onboarded by its hash alone


class UsageGroup(UsageFigures):
    """One group's usage in one period: its dimensions (those grouped by), then figures."""

    provider: str | None = None
    model: str | None = None
    task_type: str | None = None
    status: str | None = None
    key: KeyShown | None = None


class UsagePeriod(Answer):
    period: str
    cost: Money
    tokens_total: int
    charge: Quantity | None = None
    groups: list[UsageGroup]


class UsageAnswer(Answer):
    """Usage by period, grouped and filtered as asked."""

    start_date: Day
    end_date: Day
    currency: Literal["usd"]
    granularity: Literal["hour", "day", "month", "total"]
    group_by: list[str]
    filters: dict[str, list[str | int]]
    totals: UsageTotals
    periods: list[UsagePeriod]


class Latency(Answer):
    p50: float | None
    p95: float | None
    p99: float | None
    mean: float | None


class ModelPerformance(Answer):
    provider: str
    model: str
    calls: int
    statuses: dict[str, int]
    error_rate: float | None
    timed_calls: int
    latency_seconds: Latency
    output_tokens_per_second: float | None


class PerformanceAnswer(Answer):
    """Calls, errors and latency per provider and model, busiest first."""

    start_date: Day
    end_date: Day
    percentiles: str
    models: list[ModelPerformance]


class Trend(Answer):
    month_to_date: Quantity
    previous_month_same_days: Quantity
    previous_month: Quantity
    change_percent: float | None
    projected_month: Quantity


class BudgetProjection(BudgetAnswer):
    projected: Quantity
    projected_percent: float | None
    projected_over: bool


class ForecastAnswer(Answer):
    """This month against the last, the month-end projection, and each budget's."""

    as_of: Instant
    month: str
    currency: Literal["usd"]
    method: str
    basis_days: int
    cost: Trend
    tokens: Trend
    budgets: list[BudgetProjection]


class CheaperModel(Answer):
    provider: str
    model: str
    cost: Money
    saving: Money


class Caching(Answer):
    available: bool
    saving: Money | None
    cache_read_share: float | None = None
    assumption: str | None = None


class ModelRecommendation(TokenCounts):
    provider: str
    model: str
    calls: int
    cost: Money
    cost_at_today_prices: Money | None
    cheaper_models: list[CheaperModel]
    caching: Caching


class RecommendationsAnswer(Answer):
    """Cheaper models for the caller's token mix, and what caching would save."""

    kind: Literal["price_comparison"]
    note: str
    start_date: Day
    end_date: Day
    currency: Literal["usd"]
    models: list[ModelRecommendation]
