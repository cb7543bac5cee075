"""The OpenAI Responses API served on top of Chat Completions backends.

`translate` turns a Responses request into a chat request and a chat completion back into a
Response; `stream` does the same for a chat stream, event by event; `objects` builds the
Response shapes both share. All of it is pure: the handler does the I/O and keeps state.
"""

from router.responses.stream import ChatToResponseEvents
from router.responses.translate import (
    ResponsesInputError,
    chat_to_response,
    count_input_tokens,
    input_items,
    request_to_chat,
    response_to_history,
)

__all__ = [
    "ChatToResponseEvents",
    "ResponsesInputError",
    "chat_to_response",
    "count_input_tokens",
    "input_items",
    "request_to_chat",
    "response_to_history",
]
