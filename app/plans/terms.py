"""A plan's terms as admins write them (JSON), checked once with pydantic, and as the
arithmetic takes them (``app.plans.charges.Terms``)."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, StringConstraints

from app.errors import ValidationError
from app.plans.charges import Override, Terms, Tier
from app.shapes import Amount


class OverrideIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    provider: Annotated[StrictStr, StringConstraints(min_length=1, max_length=100)]
    model: Annotated[StrictStr, StringConstraints(min_length=1, max_length=200)] | None = None
    input_per_token: Amount
    output_per_token: Amount
    cache_read_per_token: Amount | None = None
    cache_write_per_token: Amount | None = None


class TierIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    up_to: Amount | None = Field(description="the tier's last unit; null for the last tier")
    unit_price: Amount
    flat_amount: Amount = Decimal(0)


class PlanTerms(BaseModel):
    """What a plan charges: see ``app/plans/charges.py`` for the arithmetic."""

    model_config = ConfigDict(extra="forbid")

    unit: Literal["usd", "tokens"] = "usd"
    markup_percent: Amount = Decimal(0)
    overrides: list[OverrideIn] = Field(default=[], max_length=200)
    mode: Literal["graduated", "volume"] = "graduated"
    tiers: list[TierIn] = Field(default=[], max_length=20)
    included: Amount = Decimal(0)
    minimum: Amount = Decimal(0)

    def checked(self) -> PlanTerms:
        """Tiers ascending, the last without an end; a tokens plan needs its prices."""
        ends = [tier.up_to for tier in self.tiers]
        if ends and (ends[-1] is not None or None in ends[:-1]):
            raise ValidationError("only the last tier has no up_to, and it must", field="tiers")
        bounded = [end for end in ends if end is not None]
        if any(b >= a for a, b in zip(bounded[1:], bounded, strict=False)) or any(
            end <= 0 for end in bounded
        ):
            raise ValidationError("tiers' up_to must rise from above zero", field="tiers")
        if self.unit == "tokens" and not self.tiers:
            raise ValidationError("a tokens plan prices its tokens in tiers", field="tiers")
        return self


def terms_of(stored: dict[str, Any]) -> Terms:
    """The arithmetic's terms from a stored plan version."""
    plan = PlanTerms.model_validate(stored)
    return Terms(
        unit=plan.unit,
        markup_percent=plan.markup_percent,
        overrides=tuple(
            Override(
                o.provider,
                o.model,
                o.input_per_token,
                o.output_per_token,
                o.cache_read_per_token,
                o.cache_write_per_token,
            )
            for o in plan.overrides
        ),
        mode=plan.mode,
        tiers=tuple(Tier(t.up_to, t.unit_price, t.flat_amount) for t in plan.tiers),
        included=plan.included,
        minimum=plan.minimum,
    )
