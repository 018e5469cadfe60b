"""MLLP interface: framing, listener and client (HL7 v2.5.1 Appendix C, MLLP Release 2) - bytes only.

Inbound handling (storing the message, building the ACK) is the handler given to `MLLPServer`; it lives outside
this transport layer.
"""

from .client import MLLPClient, MLLPConnectionClosed, MLLPError, MLLPTimeout
from .framing import FrameEvent, FrameReader, frame
from .server import MLLPServer, MLLPStats

__all__ = [
    "FrameEvent",
    "FrameReader",
    "MLLPClient",
    "MLLPConnectionClosed",
    "MLLPError",
    "MLLPServer",
    "MLLPStats",
    "MLLPTimeout",
    "frame",
]
