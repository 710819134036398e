"""The usage dimensions the ledger keeps, named by the price source's own usage keys.

genai-prices describes a call's usage as a ``Usage`` of some sixty keys
(``input_tokens``, ``cache_read_tokens``, ``cache_write_tokens``,
``input_audio_tokens``, ``output_reasoning_tokens``, …), in one convention for
every provider: ``input_tokens`` counts every input token, cached reads,
cache writes and audio included, and ``output_tokens`` every output token,
reasoning and audio included; the finer keys are parts of those. Its
extractors turn each provider's response into that convention (Anthropic's
``input_tokens`` leaves cached tokens out; OpenAI's ``prompt_tokens`` keeps
them in), and its arithmetic charges each part at its own price, or at its
parent's where the model has none.

The ledger keeps a column, in ``usage_events`` and both rollups, for each
dimension below: the ones the providers we meter report and price. Every
other key the price source knows (1-hour cache writes, web searches, image
and video tokens, …) is kept with the event in ``usage_extra`` and charged
all the same; only the rollups do not break it out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from functools import lru_cache
from typing import NamedTuple

from genai_prices.decompose import compute_leaf_values
from genai_prices.types import Usage
from genai_prices.units import UnitDef, _get_registry

from app.errors import ValidationError


class Dimension(NamedTuple):
    column: str  # the event's field and the ledger's column
    usage_key: str  # the price source's Usage key
    description: str


DIMENSIONS = (  # the two wholes first, then their parts
    Dimension("tokens_input", "input_tokens", "every input token: cached, cache writes, audio too"),
    Dimension("tokens_output", "output_tokens", "every output token: reasoning and audio too"),
    Dimension("tokens_cache_read", "cache_read_tokens", "input tokens read from the cache"),
    Dimension("tokens_cache_write", "cache_write_tokens", "input tokens written to the cache"),
    Dimension("tokens_input_audio", "input_audio_tokens", "audio input tokens"),
    Dimension("tokens_cache_audio_read", "cache_audio_read_tokens", "audio tokens from the cache"),
    Dimension("tokens_output_audio", "output_audio_tokens", "audio output tokens"),
    Dimension("tokens_output_reasoning", "output_reasoning_tokens", "reasoning (thinking) tokens"),
)
COLUMNS = tuple(d.column for d in DIMENSIONS)
# The parts of tokens_input and tokens_output: optional on an event, 0 when absent.
PART_COLUMNS = COLUMNS[2:]
COLUMN_OF = {d.usage_key: d.column for d in DIMENSIONS}
USAGE_KEY_OF = {d.column: d.usage_key for d in DIMENSIONS}


def usage_keys() -> frozenset[str]:
    """Every usage key the price source knows (what ``usage_extra`` may hold)."""
    return _get_registry()._reported_usage_keys


def units() -> Mapping[str, UnitDef]:
    return _get_registry().units


def field_of(usage_key: str) -> str:
    """How an event names a usage key: its column, else the key inside ``usage_extra``."""
    return COLUMN_OF.get(usage_key, f"usage_extra.{usage_key}")


@lru_cache(maxsize=1024)
def _structure(keys: frozenset[str]) -> tuple[tuple[str, tuple[tuple[str, ...], ...]], ...]:
    """For the usage keys a call states: each whole, and its parts along each dimension
    (parts along one dimension exclude each other: cache reads and writes; text and
    audio). The same few key sets recur (one per provider and API), so it is made
    once per set."""
    known = units()
    given = [known[key] for key in sorted(keys) if key in known]
    found = []
    for whole in given:
        along: dict[str, list[str]] = {}
        for part in given:
            extra = part.dimensions.keys() - whole.dimensions.keys()
            if len(extra) == 1 and whole.dimensions.items() <= part.dimensions.items():
                along.setdefault(next(iter(extra)), []).append(part.usage_key)
        if along:
            found.append((whole.usage_key, tuple(tuple(parts) for parts in along.values())))
    return tuple(found)


def check_parts(counts: Mapping[str, int | Decimal]) -> None:
    """Raise ``ValidationError`` (naming the first part) unless each count's parts fit in it.

    A key is a part of another when its unit has the other's dimensions and more
    (``cache_read_tokens`` is ``input_tokens`` of type cache read). The parts
    that differ from it along one dimension exclude each other, so they add up to
    at most the whole. Parts along different dimensions overlap (cached audio is
    both cached and audio), and the whole must hold them less their overlap: the
    price source's own decomposition of the ledger's dimensions, each a count of
    its own, says so.
    """
    overlapping = False
    for whole, axes in _structure(frozenset(counts)):
        total = counts[whole]
        stated = [[(part, counts[part]) for part in parts if counts[part]] for parts in axes]
        overlapping = overlapping or sum(1 for parts in stated if parts) > 1
        for parts in stated:
            summed = sum(value for _, value in parts)
            if summed > total:
                names = " + ".join(field_of(part) for part, _ in parts)
                them = "them" if len(parts) > 1 else "it"
                raise ValidationError(
                    f"{names} ({summed}) cannot exceed"
                    f" {field_of(whole)} ({total}), which includes {them}",
                    field=field_of(parts[0][0]).split(".")[0],
                )
    if not overlapping:
        return
    known = units()
    ledger = {d.usage_key: counts.get(d.usage_key, 0) for d in DIMENSIONS}
    try:
        compute_leaf_values(set(ledger), Usage(**ledger), {k: known[k] for k in ledger})
    except ValueError as exc:  # the source names the parts and the whole by usage key
        said = re.sub(r"\b[a-z_]+_tokens\b", lambda m: field_of(m.group()), str(exc))
        named: list[str] = re.findall(r"\btokens_[a-z_]+", said)
        raise ValidationError(
            f"{said}: parts that overlap (cached audio is both cached and audio) must"
            " fit in what includes them less their overlap",
            field=named[0] if named else "tokens_input",
        ) from None
