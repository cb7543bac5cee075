"""Anthropic's Messages API served on top of Chat Completions backends.

``translate`` turns a Messages request into a chat request, ``reply`` a chat completion into a
Message, ``stream`` a chat stream into Messages events. All pure: the handler
(router/handlers/messages.py) does the I/O.
"""

from router.anthropic.reply import chat_to_message, estimate_input_tokens
from router.anthropic.stream import ChatToMessageEvents
from router.anthropic.translate import MessagesInputError, request_to_chat, strip_markers

__all__ = [
    "ChatToMessageEvents",
    "MessagesInputError",
    "chat_to_message",
    "estimate_input_tokens",
    "request_to_chat",
    "strip_markers",
]
