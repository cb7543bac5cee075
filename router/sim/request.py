"""The request fields the sim reads, validated; everything else is accepted and ignored.

Models use `extra="allow"` like vLLM's, so any OpenAI parameter the sim does not model
(temperature, top_p, logprobs, ...) passes validation.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from router.sim.errors import SimError

# Beyond this many choices a request is surely a mistake (vLLM has no limit; OpenAI's is 128).
MAX_CHOICES = 128


class SimFault(BaseModel):
    """Fault injection, from the extra body field `sim_fault`.

    `delay_ms` holds back the response headers, then `status` fails the request with an
    error envelope. `disconnect_after_chunks` and `error_after_chunks` act on streams only.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: int | None = Field(default=None, ge=400, le=599)
    message: str = "simulated failure"
    disconnect_after_chunks: int | None = Field(default=None, ge=0)
    error_after_chunks: int | None = Field(default=None, ge=0)
    delay_ms: float = Field(default=0.0, ge=0)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    include_usage: bool = False


class GenerationRequest(BaseModel):
    """Fields shared by chat and legacy completions."""

    model_config = ConfigDict(extra="allow", frozen=True)

    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)
    max_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    sim_fault: SimFault | None = None

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    @property
    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else self.stop


class ChatRequest(GenerationRequest):
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    # vLLM's prefill continuation: the final (assistant) message is continued, not closed.
    add_generation_prompt: bool = True
    continue_final_message: bool = False

    @model_validator(mode="after")
    def _top_logprobs_needs_logprobs(self) -> ChatRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs: logprobs must be true when top_logprobs is used")
        return self

    @model_validator(mode="after")
    def _continuation_as_vllm_takes_it(self) -> ChatRequest:
        if self.continue_final_message and self.add_generation_prompt:
            raise ValueError(
                "continue_final_message: cannot be true together with add_generation_prompt"
            )
        if self.continue_final_message and self.messages[-1].get("role") != "assistant":
            raise ValueError("continue_final_message: the final message must be the assistant's")
        return self

    @property
    def token_limit(self) -> int | None:
        """The completion length cap; the newer field wins, as in OpenAI's API."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return self.max_tokens


class CompletionRequest(GenerationRequest):
    prompt: str | list[str] | list[int] | list[list[int]] = Field(min_length=1)
    logprobs: int | None = Field(default=None, ge=0, le=5)

    @property
    def prompts(self) -> list[str | list[int]]:
        """The batch of prompts; a list of ints is one prompt of token ids, not a batch."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if all(isinstance(item, int) for item in prompt):
            return [[item for item in prompt if isinstance(item, int)]]
        return [item for item in prompt if isinstance(item, (str, list))]


async def read_body(request: web.Request) -> dict[str, Any]:
    """The JSON object in the request body, or a 400."""
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise SimError(f"Invalid JSON body: {exc}") from None
    if not isinstance(body, dict):
        raise SimError("The request body must be a JSON object")
    return body


M = TypeVar("M", bound=GenerationRequest)


def parse(model: type[M], body: dict[str, Any]) -> M:
    """Validate `body` as `model`, or raise a 400 naming the first bad field."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        message = str(first["msg"]).removeprefix("Value error, ")
        raise SimError(f"{param}: {message}" if param else message, param=param) from None


def check_context(prompt_tokens: int, limit: int | None, max_model_len: int) -> None:
    """A 400 like vLLM's when the prompt plus the requested completion exceed the context."""
    wanted = prompt_tokens + (limit or 0)
    if prompt_tokens >= max_model_len or wanted > max_model_len:
        raise SimError(
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {wanted} tokens ({prompt_tokens} in the messages, {limit or 0} in the "
            "completion). Please reduce the length of the messages or completion.",
            param="max_tokens" if limit else "messages",
            code="context_length_exceeded",
        )
