"""What a channel is to the dispatcher: it renders an outbox row's payload into bytes and delivers them.

``deliver`` returns the receiver's reply when the receiver has accepted the message. It raises
:class:`TransientError` when trying again later may succeed (no connection, timeout, a negative but retryable
answer, an answer to some other message) and :class:`PermanentError` when it cannot (the receiver refuses the
message itself, or the payload cannot be rendered): the dispatcher backs off and retries the first, and
dead-letters the second.
"""

from __future__ import annotations

from typing import Protocol


class DeliveryError(Exception):
    def __init__(self, reason: str, reply: bytes | None = None):
        super().__init__(reason)
        self.reason = reason
        self.reply = reply


class TransientError(DeliveryError):
    """The attempt failed; a later attempt may succeed."""


class PermanentError(DeliveryError):
    """The message can never be delivered as it is."""


class Channel(Protocol):
    name: str

    def render(self, kind: str, payload: dict, message_id: str) -> bytes:
        """The bytes to send for one outbox row; PermanentError when this channel cannot carry ``kind``."""

    def deliver(self, data: bytes, message_id: str) -> bytes | None:
        """Send ``data`` and return the reply once accepted; TransientError / PermanentError otherwise."""

    def close(self) -> None:
        """Release the connection, if any."""
