"""A provider's own usage, as its response carries it, read by the price source's extractors.

Each provider counts differently: Anthropic's ``input_tokens`` leaves out the
cached tokens reported beside it, OpenAI's ``prompt_tokens`` includes those
in ``prompt_tokens_details``, Gemini counts thinking apart from
``candidatesTokenCount``. genai-prices keeps an extractor per provider and API
flavour that turns each into one ``Usage`` (``app/pricing/dimensions.py``), so
we keep no key lists of our own: what is written here is only what the
extractors leave to their caller (finding the flavour, where the usage sits,
and what a breakdown that leaves a kind out means).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from functools import lru_cache
from typing import Any, NamedTuple

from genai_prices import data_snapshot
from genai_prices._usage import add_usage_values, validate_usage_value
from genai_prices.types import ArrayMatch, Provider, UsageExtractor
from genai_prices.units import _get_registry

from app.pricing.catalog import normalize_provider
from app.pricing.dimensions import field_of, units, usage_keys

# A provider the price source has no extractor for is read as OpenAI-compatible,
# the convention nearly every other API follows.
_COMPATIBLE = "openai"


class ProviderUsage(NamedTuple):
    """What one response says was used: its model (when it names one), its flavour,
    and each usage key's count, as the price source's ``Usage`` holds them."""

    model: str | None
    api_flavor: str
    counts: dict[str, int | Decimal]


class UsageShapeError(ValueError):
    """A response or usage object no extractor of its provider reads; the message says
    which flavours were tried and why each refused it."""


@lru_cache(maxsize=256)
def _extractors(provider: str) -> tuple[str, tuple[UsageExtractor, ...]]:
    """The provider's extractors, ``default`` first (the flavour its API is best known by)."""
    snapshot = data_snapshot.get_snapshot()
    found: Provider | None
    try:
        found = snapshot.find_provider(None, normalize_provider(provider), None)
    except LookupError:
        found = None
    if found is None or not found.extractors:
        found = snapshot.find_provider(None, _COMPATIBLE, None)
    assert found.extractors
    ordered = sorted(found.extractors, key=lambda e: e.api_flavor != "default")
    return found.id, tuple(ordered)


def flavors_of(provider: str) -> tuple[str, ...]:
    """The API flavours understood for ``provider`` (for documentation and errors)."""
    return tuple(e.api_flavor for e in _extractors(provider)[1])


def response_keys(provider: str) -> tuple[str, ...]:
    """The top-level keys of a response that the provider's extractors read: where
    the usage sits (``usage``, ``usageMetadata``) and where the model is named. The
    meter sends only these to the worker, not the generated content."""
    keys: dict[str, None] = {}
    for extractor in _extractors(provider)[1]:
        for path in (extractor.root, extractor.model_path):
            first = _path(path)[0]
            if isinstance(first, str):
                keys[first] = None
    return tuple(keys)


def _path(path: Any) -> list[Any]:
    return [path] if isinstance(path, str) else list(path)


def _as_response(extractor: UsageExtractor, payload: Mapping[str, Any]) -> Mapping[str, Any]:
    """``payload`` as the extractor reads it: a whole response holds the usage at the
    extractor's root (``usage``, ``usageMetadata``); a bare usage object is put there."""
    root = _path(extractor.root)
    if isinstance(root[0], str) and root[0] in payload:
        return payload
    wrapped: Any = payload
    for step in reversed(root):
        wrapped = {step: wrapped}
    return wrapped


def _resolve(data: Any, steps: Sequence[Any]) -> Any:
    for step in steps:
        if isinstance(step, ArrayMatch) or not isinstance(data, Mapping):
            return None
        data = data.get(step)
    return data


_BREAKDOWNS: dict[int, tuple[tuple[tuple[Any, ...], str], ...]] = {}


def _breakdowns(extractor: UsageExtractor) -> tuple[tuple[tuple[Any, ...], str], ...]:
    """The extractor's mappings into a list of items by kind (Gemini's per-modality
    counts): the list's path within the usage, and the usage key an item fills. Kept
    by the extractor's id: the catalogue's extractors live as long as the process."""
    known = _BREAKDOWNS.get(id(extractor))
    if known is not None:
        return known
    found = []
    for mapping in extractor.mappings:
        path = _path(mapping.path)
        index = next((i for i, step in enumerate(path) if isinstance(step, ArrayMatch)), None)
        if index is not None:
            found.append((tuple(path[:index]), mapping.dest))
    _BREAKDOWNS[id(extractor)] = tuple(found)
    return _BREAKDOWNS[id(extractor)]


def _listed_absent(extractor: UsageExtractor, response: Mapping[str, Any]) -> list[str]:
    """Usage keys a breakdown leaves out: zero, since it lists what there was.

    Gemini breaks tokens down per modality (``cacheTokensDetails: [{"modality":
    "TEXT", …}]``); a modality it does not list had no tokens. Its extractor reads
    only the items present, and the price source then cannot tell a cached audio
    token from an uncached one: a count left unset means unknown to it.
    """
    breakdowns = _breakdowns(extractor)
    if not breakdowns:
        return []
    usage = _resolve(response, _path(extractor.root))
    return [dest for prefix, dest in breakdowns if isinstance(_resolve(usage, prefix), list)]


@lru_cache(maxsize=1)
def _priced_keys() -> frozenset[str]:
    """The usage keys some model of the price source has a price for."""
    registry = _get_registry()
    stated: set[str] = set()
    for provider in data_snapshot.get_snapshot().providers:
        for model in provider.models:
            variants = model.prices if isinstance(model.prices, list) else None
            for prices in [v.prices for v in variants] if variants else [model.prices]:
                stated.update(k for k, v in vars(prices).items() if v is not None)
    return frozenset(unit.usage_key for unit in registry.units.values() if unit.price_key in stated)


def _ambiguous(counts: Mapping[str, Any]) -> str | None:
    """Two overlapping counts (cached, and audio) whose overlap, priced apart by some
    models, the response leaves out: the price source would refuse to guess it."""
    stated = frozenset(counts)
    for left, right, join in _overlaps(frozenset(k for k, v in counts.items() if v)):
        if join not in stated:
            return (
                f"it counts {field_of(left)} and {field_of(right)} but not how many are"
                f" both ({field_of(join)})"
            )
    return None


@lru_cache(maxsize=1024)
def _overlaps(reported: frozenset[str]) -> tuple[tuple[str, str, str], ...]:
    """The pairs of these keys that overlap without one holding the other, with the key
    of their overlap, where some model prices that overlap apart."""
    registry = _get_registry()
    known = units()
    keys = sorted(key for key in reported if key in known)
    found = []
    for i, left in enumerate(keys):
        for right in keys[i + 1 :]:
            a, b = known[left], known[right]
            if a.dimensions.items() <= b.dimensions.items():
                continue
            if b.dimensions.items() <= a.dimensions.items():
                continue
            join = registry.find_join(a, b)
            if join is not None and join.usage_key in _priced_keys():
                found.append((left, right, join.usage_key))
    return tuple(found)


_NUMBER = (int, float, Decimal)  # what the source's extractors take as a count (bool too)


def _step_path(steps: Sequence[Any]) -> str:
    return ".".join(str(step) for step in steps)


def _follow(path: Sequence[Any], data: Any, wanted: Any, required: bool, at: Sequence[Any]) -> Any:
    """``genai_prices.types._extract_path`` on parsed JSON: the same walk, the same
    answers and messages, with JSON's own types checked (a dict, a list) where the
    source asks the abstract ones (``Mapping``, ``Sequence``) at a dozen times the
    cost; ``test_the_extractors_read_as_the_source_reads`` holds the two equal."""
    if wanted is Mapping:
        wanted = dict
    *steps, last = path
    walked: list[Any] = []
    for step in steps:
        walked.append(step)
        if isinstance(step, ArrayMatch):
            if not isinstance(data, list | tuple | str):
                if required:
                    raise ValueError(
                        f"Expected `{_step_path([*at, *walked])}` value to be a sequence,"
                        f" got {_type_name(data)}"
                    )
                return None
            found = step.extract(data)
            if found:
                data = found
            elif required:
                raise ValueError(f"Unable to find item at `{_step_path([*at, *walked])}`")
            else:
                return None
        else:
            if not _is_dict(data, required, [*at, *walked]):
                return None
            if step not in data:
                if required:
                    raise ValueError(f"Missing value at `{_step_path([*at, *walked])}`")
                return None
            data = data[step]
    if data is None and not required:
        return None
    if not _is_dict(data, required, [*at, *walked]):
        return None
    if last not in data:
        if required:
            raise ValueError(f"Missing value at `{_step_path([*at, *walked, last])}`")
        return None
    value = data[last]
    if isinstance(value, wanted):
        return value
    if required:
        kind = "int or float or Decimal" if wanted is _NUMBER else wanted.__name__
        raise ValueError(
            f"Expected `{_step_path([*at, *walked, last])}` value to be a {kind},"
            f" got {_type_name(value)}"
        )
    return None


def _is_dict(data: Any, required: bool, path: Sequence[Any]) -> bool:
    """Whether ``data`` is an object to step into; refused (with the source's message)
    when the path is required."""
    if isinstance(data, dict):
        return True
    if required:
        raise ValueError(
            f"Expected `{_step_path(path)}` value to be a dict, got {_type_name(data)}"
        )
    return False


def _type_name(value: Any) -> str:
    return "None" if value is None else type(value).__name__


_COMPILED: dict[int, tuple[Any, list[Any], tuple[tuple[str, list[Any], bool], ...]]] = {}


def _compiled(
    extractor: UsageExtractor,
) -> tuple[Any, list[Any], tuple[tuple[str, list[Any], bool], ...]]:
    """The extractor's paths as lists, its mappings to keys the source knows: made once
    per extractor (by id: the catalogue's extractors live as long as the process)."""
    known = _COMPILED.get(id(extractor))
    if known is None:
        reported = usage_keys()
        mappings = tuple(
            (m.dest, _path(m.path), m.required) for m in extractor.mappings if m.dest in reported
        )
        known = _COMPILED[id(extractor)] = (
            _path(extractor.model_path),
            _path(extractor.root),
            mappings,
        )
    return known


def read_usage(extractor: UsageExtractor, response: Any) -> tuple[str | None, dict[str, Any]]:
    """``UsageExtractor.extract`` on parsed JSON: the model and the usage by key."""
    model_path, root, mappings = _compiled(extractor)
    model = _follow(model_path, response, str, False, [])
    usage = _follow(root, response, Mapping, True, [])
    values: dict[str, Any] = {}
    for dest, path, required in mappings:
        value = _follow(path, usage, _NUMBER, required, root)
        if value is None:
            continue
        if type(value) is not int or value < 0:  # the common case needs no more checks
            value = validate_usage_value(dest, value)
        values[dest] = add_usage_values(values[dest], value) if dest in values else value
    if mappings and not values:
        raise ValueError(f"No usage information found at {extractor.root}")
    return model, values


def extract(provider: str, payload: Any, api_flavor: str | None = None) -> ProviderUsage:
    """The usage of one provider response (or of its usage object alone).

    Without ``api_flavor``, each flavour the provider has is tried, ``default``
    first; their required fields tell them apart (``prompt_tokens`` for chat
    completions, ``input_tokens`` for the Responses API). ``UsageShapeError``
    when none reads it.
    """
    if not isinstance(payload, Mapping):
        raise UsageShapeError("provider_usage must be the provider's response or usage object")
    provider_id, extractors = _extractors(provider)
    tried = [e for e in extractors if api_flavor in (None, e.api_flavor)]
    if not tried:
        raise UsageShapeError(
            f"api_flavor {api_flavor!r} is not one of {provider_id}'s:"
            f" {', '.join(flavors_of(provider))}"
        )
    refusals = []
    for extractor in tried:
        response = _as_response(extractor, payload)
        try:
            model, counts = read_usage(extractor, response)
        except ValueError as exc:
            refusals.append(f"{extractor.api_flavor}: {exc}")
            continue
        for key in _listed_absent(extractor, response):
            counts.setdefault(key, 0)
        problem = _ambiguous(counts)
        if problem is not None:
            raise UsageShapeError(
                f"{provider_id} {extractor.api_flavor} usage is ambiguous: {problem}"
            )
        return ProviderUsage(model, extractor.api_flavor, counts)
    raise UsageShapeError(f"not a {provider_id} response or usage object ({'; '.join(refusals)})")
