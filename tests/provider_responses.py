"""Provider responses and streams as the providers' own SDKs build and serialise them.

Each ``Scenario`` is one call: a response built with the SDK's response types
(``anthropic.types.Message``, ``openai.types.chat.ChatCompletion``,
``openai.types.responses.Response``, ``google.genai.types.GenerateContentResponse``)
and dumped as the SDK dumps it, or the sequence of stream events those SDKs parse,
written as the server-sent events the providers send. ``reference_usage`` is what
the SDK itself makes of the call (the final message it accumulates from a
stream), for ``calc_price(extract_usage(...))``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from anthropic.types import (
    Message,
    RawContentBlockDeltaEvent,
    RawContentBlockStartEvent,
    RawContentBlockStopEvent,
    RawMessageDeltaEvent,
    RawMessageStartEvent,
    RawMessageStopEvent,
)
from google.genai import types as gt
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseContentPartAddedEvent,
    ResponseContentPartDoneEvent,
    ResponseCreatedEvent,
    ResponseOutputItemAddedEvent,
    ResponseOutputItemDoneEvent,
    ResponseTextDeltaEvent,
    ResponseTextDoneEvent,
)


@dataclass
class Scenario:
    name: str
    provider: str
    api_flavor: str | None
    model: str
    body: dict[str, Any] | None = None  # a JSON response
    events: list[tuple[str | None, dict[str, Any]]] = field(default_factory=list)  # a stream
    # What the provider's own SDK makes of the call, as a response the extractor reads.
    reference: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.body is not None and self.reference is None:
            self.reference = self.body  # a JSON response is read as it is

    @property
    def streamed(self) -> bool:
        return self.body is None

    def sse(self) -> list[bytes]:
        """The stream as the provider writes it: one server-sent event per item."""
        out = []
        for name, data in self.events:
            head = f"event: {name}\n" if name else ""
            out.append(f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n".encode())
        return out


def _dump(model: Any, **options: Any) -> dict[str, Any]:
    return model.model_dump(mode="json", **options)


# -- Anthropic Messages -------------------------------------------------------------------
def anthropic_message(
    model: str,
    input_tokens: int,
    output_tokens: int,
    cache_read: int = 0,
    cache_write_5m: int = 0,
    cache_write_1h: int = 0,
    thinking: int | None = None,
    web_searches: int | None = None,
) -> Message:
    usage: dict[str, Any] = {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_read_input_tokens": cache_read,
        "cache_creation_input_tokens": cache_write_5m + cache_write_1h,
        "cache_creation": {
            "ephemeral_5m_input_tokens": cache_write_5m,
            "ephemeral_1h_input_tokens": cache_write_1h,
        },
    }
    if thinking is not None:
        usage["output_tokens_details"] = {"thinking_tokens": thinking}
    if web_searches is not None:
        usage["server_tool_use"] = {"web_search_requests": web_searches, "web_fetch_requests": 0}
    return Message(
        id="msg_01",
        type="message",
        role="assistant",
        model=model,
        content=[{"type": "text", "text": "def add(a, b):\n    return a + b"}],
        stop_reason="end_turn",
        stop_sequence=None,
        usage=usage,
    )


def anthropic_stream(name: str, message: Message, cut_after_start: bool = False) -> Scenario:
    """``message`` streamed as Anthropic streams it: its input usage in ``message_start``,
    the cumulative output (and the cache counts again) in ``message_delta``."""
    start_usage = message.usage.model_copy(update={"output_tokens": 1})
    start = message.model_copy(update={"content": [], "stop_reason": None, "usage": start_usage})
    text = message.content[0].text  # type: ignore[union-attr]
    events: list[tuple[str | None, dict[str, Any]]] = [
        ("message_start", _dump(RawMessageStartEvent(type="message_start", message=start))),
        (
            "content_block_start",
            _dump(
                RawContentBlockStartEvent(
                    type="content_block_start",
                    index=0,
                    content_block={"type": "text", "text": ""},
                )
            ),
        ),
    ]
    for piece in (text[:10], text[10:]):
        delta = RawContentBlockDeltaEvent(
            type="content_block_delta", index=0, delta={"type": "text_delta", "text": piece}
        )
        events.append(("content_block_delta", _dump(delta)))
    events.append(
        (
            "content_block_stop",
            _dump(RawContentBlockStopEvent(type="content_block_stop", index=0)),
        )
    )
    usage = message.usage
    delta_usage = {
        "output_tokens": usage.output_tokens,
        "input_tokens": usage.input_tokens,
        "cache_read_input_tokens": usage.cache_read_input_tokens,
        "cache_creation_input_tokens": usage.cache_creation_input_tokens,
    }
    events.append(
        (
            "message_delta",
            _dump(
                RawMessageDeltaEvent(
                    type="message_delta",
                    delta={"stop_reason": "end_turn", "stop_sequence": None},
                    usage=delta_usage,
                )
            ),
        )
    )
    events.append(("message_stop", _dump(RawMessageStopEvent(type="message_stop"))))
    return Scenario(name, "anthropic", None, message.model, events=events, reference=_dump(message))


# -- OpenAI Chat Completions and Responses ------------------------------------------------
def chat_completion(
    model: str,
    prompt: int,
    completion: int,
    cached: int = 0,
    reasoning: int = 0,
    audio_in: int = 0,
    audio_out: int = 0,
) -> ChatCompletion:
    return ChatCompletion(
        id="chatcmpl-1",
        object="chat.completion",
        created=1764700000,
        model=model,
        choices=[
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": "print('hello')"},
            }
        ],
        usage={
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": audio_in},
            "completion_tokens_details": {
                "reasoning_tokens": reasoning,
                "audio_tokens": audio_out,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
    )


def chat_stream(name: str, completion: ChatCompletion, include_usage: bool = True) -> Scenario:
    """Streamed as OpenAI streams a chat completion: content chunks with ``"usage":
    null``, then (``stream_options.include_usage``) a last chunk with the usage and no
    choices, then ``[DONE]``."""

    def chunk(**fields: Any) -> dict[str, Any]:
        base = {
            "id": completion.id,
            "object": "chat.completion.chunk",
            "created": completion.created,
            "model": completion.model,
        }
        return _dump(ChatCompletionChunk(**base, **fields))

    text = completion.choices[0].message.content or ""
    events: list[tuple[str | None, dict[str, Any]]] = []
    for piece in (text[:5], text[5:]):
        delta = {"index": 0, "delta": {"content": piece}, "finish_reason": None}
        events.append((None, chunk(choices=[delta], usage=None)))
    events.append(
        (None, chunk(choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}], usage=None))
    )
    if include_usage:
        events.append((None, chunk(choices=[], usage=completion.usage)))
    return Scenario(
        name,
        "openai",
        None,
        completion.model,
        events=events,
        reference=_dump(completion) if include_usage else None,
    )


def responses_response(
    model: str,
    input_tokens: int,
    output_tokens: int,
    cached: int = 0,
    cache_write: int = 0,
    reasoning: int = 0,
) -> Response:
    return Response(
        id="resp_1",
        object="response",
        created_at=1764700000,
        model=model,
        status="completed",
        output=[
            {
                "type": "message",
                "id": "msg_1",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": "x = 1", "annotations": []}],
            }
        ],
        parallel_tool_calls=True,
        tool_choice="auto",
        tools=[],
        usage={
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
            "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": cache_write},
            "output_tokens_details": {"reasoning_tokens": reasoning},
        },
    )


def responses_stream(name: str, response: Response) -> Scenario:
    """Streamed as the Responses API streams: ``response.created`` (no usage yet), the
    output item, its text deltas, then ``response.completed`` with the whole response,
    its usage in it."""
    started = response.model_copy(update={"status": "in_progress", "output": [], "usage": None})
    item = response.output[0]
    empty_item = item.model_copy(update={"status": "in_progress", "content": []})
    part = {"type": "output_text", "text": "", "annotations": []}
    text = "x = 1"
    sequence = [
        ResponseCreatedEvent(type="response.created", response=started, sequence_number=0),
        ResponseOutputItemAddedEvent(
            type="response.output_item.added", item=empty_item, output_index=0, sequence_number=1
        ),
        ResponseContentPartAddedEvent(
            type="response.content_part.added",
            item_id=item.id,
            output_index=0,
            content_index=0,
            part=part,
            sequence_number=2,
        ),
        ResponseTextDeltaEvent(
            type="response.output_text.delta",
            item_id=item.id,
            output_index=0,
            content_index=0,
            delta=text,
            sequence_number=3,
            logprobs=[],
        ),
        ResponseTextDoneEvent(
            type="response.output_text.done",
            item_id=item.id,
            output_index=0,
            content_index=0,
            text=text,
            sequence_number=4,
            logprobs=[],
        ),
        ResponseContentPartDoneEvent(
            type="response.content_part.done",
            item_id=item.id,
            output_index=0,
            content_index=0,
            part={**part, "text": text},
            sequence_number=5,
        ),
        ResponseOutputItemDoneEvent(
            type="response.output_item.done", item=item, output_index=0, sequence_number=6
        ),
        ResponseCompletedEvent(type="response.completed", response=response, sequence_number=7),
    ]
    return Scenario(
        name,
        "openai",
        None,
        response.model,
        events=[(e.type, _dump(e)) for e in sequence],
        reference=_dump(response),
    )


# -- Gemini generateContent ---------------------------------------------------------------
def gemini_response(
    model: str,
    prompt: int,
    candidates: int,
    thoughts: int | None = None,
    cached: int | None = None,
    audio_in: int = 0,
) -> gt.GenerateContentResponse:
    details = [gt.ModalityTokenCount(modality="TEXT", token_count=prompt - audio_in)]
    if audio_in:
        details.append(gt.ModalityTokenCount(modality="AUDIO", token_count=audio_in))
    usage = gt.GenerateContentResponseUsageMetadata(
        prompt_token_count=prompt,
        candidates_token_count=candidates,
        thoughts_token_count=thoughts,
        cached_content_token_count=cached,
        total_token_count=prompt + candidates + (thoughts or 0),
        prompt_tokens_details=details,
        cache_tokens_details=(
            [gt.ModalityTokenCount(modality="TEXT", token_count=cached)] if cached else None
        ),
        candidates_tokens_details=[gt.ModalityTokenCount(modality="TEXT", token_count=candidates)],
    )
    return gt.GenerateContentResponse(
        model_version=model,
        candidates=[
            gt.Candidate(
                content=gt.Content(role="model", parts=[gt.Part(text="fn main() {}")]),
                finish_reason="STOP",
            )
        ],
        usage_metadata=usage,
    )


def gemini_json(response: gt.GenerateContentResponse) -> dict[str, Any]:
    """As the REST API sends it: camelCase, nothing unset."""
    return _dump(response, by_alias=True, exclude_none=True)


def gemini_stream(name: str, response: gt.GenerateContentResponse) -> Scenario:
    """``streamGenerateContent?alt=sse``: chunks each with the running usage."""
    usage = response.usage_metadata
    assert usage is not None
    first = response.model_copy(
        update={
            "usage_metadata": usage.model_copy(
                update={"candidates_token_count": 1, "thoughts_token_count": None}
            ),
            "candidates": [
                gt.Candidate(content=gt.Content(role="model", parts=[gt.Part(text="fn ")]))
            ],
        }
    )
    return Scenario(
        name,
        "google",
        None,
        response.model_version or "",
        events=[(None, gemini_json(first)), (None, gemini_json(response))],
        reference=gemini_json(response),
    )


def scenarios() -> list[Scenario]:
    """Every flavour we claim, with and without caching, reasoning and audio."""
    cached_message = anthropic_message("claude-sonnet-4-5", 50, 500, 100_000, 2_000)
    return [
        Scenario(
            "anthropic-plain",
            "anthropic",
            None,
            "claude-haiku-4-5",
            body=_dump(anthropic_message("claude-haiku-4-5", 1_200, 300)),
        ),
        Scenario(
            "anthropic-cached",
            "anthropic",
            None,
            "claude-sonnet-4-5",
            body=_dump(cached_message),
        ),
        Scenario(
            "anthropic-1h-cache-thinking-search",
            "anthropic",
            None,
            "claude-opus-4-5",
            body=_dump(
                anthropic_message(
                    "claude-opus-4-5",
                    3_000,
                    4_000,
                    cache_read=20_000,
                    cache_write_5m=1_000,
                    cache_write_1h=5_000,
                    thinking=2_500,
                    web_searches=3,
                )
            ),
        ),
        Scenario(
            "anthropic-long-context",
            "anthropic",
            None,
            "claude-sonnet-4-5",
            body=_dump(anthropic_message("claude-sonnet-4-5", 150_000, 800, 60_000, 1_000)),
        ),
        Scenario(
            "openai-chat-plain",
            "openai",
            None,
            "gpt-4o",
            body=_dump(chat_completion("gpt-4o-2024-08-06", 2_000, 300)),
        ),
        Scenario(
            "openai-chat-cached",
            "openai",
            "chat",
            "gpt-4o",
            body=_dump(chat_completion("gpt-4o-2024-08-06", 12_000, 400, cached=10_240)),
        ),
        Scenario(
            "openai-chat-reasoning",
            "openai",
            None,
            "o4-mini",
            body=_dump(chat_completion("o4-mini", 5_000, 3_000, cached=1_024, reasoning=2_400)),
        ),
        Scenario(
            "openai-chat-audio",
            "openai",
            None,
            "gpt-audio",
            body=_dump(chat_completion("gpt-audio", 1_500, 900, audio_in=1_200, audio_out=700)),
        ),
        Scenario(
            "openai-responses-cached",
            "openai",
            "responses",
            "gpt-4.1",
            body=_dump(responses_response("gpt-4.1", 30_000, 1_000, cached=25_000)),
        ),
        Scenario(
            "openai-responses-cache-write-reasoning",
            "openai",
            None,
            "gpt-6-sol",
            body=_dump(
                responses_response(
                    "gpt-6-sol", 40_000, 6_000, cached=20_000, cache_write=8_000, reasoning=5_000
                )
            ),
        ),
        Scenario(
            "gemini-plain",
            "google",
            None,
            "gemini-2.5-pro",
            body=gemini_json(gemini_response("gemini-2.5-pro", 3_000, 700)),
        ),
        Scenario(
            "gemini-cached-thinking",
            "google",
            None,
            "gemini-2.5-flash",
            body=gemini_json(
                gemini_response("gemini-2.5-flash", 60_000, 900, thoughts=1_500, cached=48_000)
            ),
        ),
        Scenario(
            "gemini-audio-long-context",
            "google",
            None,
            "gemini-2.5-pro",
            body=gemini_json(
                gemini_response("gemini-2.5-pro", 250_000, 2_000, thoughts=4_000, audio_in=20_000)
            ),
        ),
        chat_stream("openai-chat-stream", chat_completion("gpt-4o", 3_000, 250, cached=2_048)),
        responses_stream(
            "openai-responses-stream",
            responses_response("gpt-4.1-mini", 9_000, 600, cached=8_000),
        ),
        anthropic_stream("anthropic-stream", cached_message),
        gemini_stream(
            "gemini-stream",
            gemini_response("gemini-2.5-flash", 8_000, 500, thoughts=300, cached=4_096),
        ),
    ]
