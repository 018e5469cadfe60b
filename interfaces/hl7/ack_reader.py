"""Reading the acknowledgment a receiver returns for a message we sent (HL7 v2.5.1 chapter 2: 2.9.2 original
acknowledgment rules, 2.15.8 MSA, 2.15.5 ERR; acknowledgment codes from HL7 table 0008).

MSA-1 is the code (AA/CA accepted, AE/CE error, AR/CR rejected), MSA-2 the control id (MSH-10) of the message it
answers: a reply is the answer to our message only when MSA-2 equals the MSH-10 we sent. The text is MSA-3
(before v2.5) or the ERR segment's user message (ERR-8), diagnostic (ERR-7) or code text (ERR-3.2), or the text of
the v2.4 ELD (ERR-1.4.2).
"""

from __future__ import annotations

from dataclasses import dataclass

from interfaces.hl7.charsets import CharsetError, decode_message
from interfaces.hl7.tokenizer import HL7ParseError, parse

__all__ = ["AckReply", "NotAnAck", "read_ack"]


class NotAnAck(ValueError):
    """The reply is not an HL7 message with an MSA segment."""


@dataclass(frozen=True)
class AckReply:
    code: str          # MSA-1
    control_id: str    # MSA-2: the MSH-10 of the message answered
    text: str = ""

    @property
    def accepted(self) -> bool:
        return self.code in ("AA", "CA")

    @property
    def rejected(self) -> bool:
        """AR/CR: the receiver refuses the message itself; sending it again cannot help."""
        return self.code in ("AR", "CR")


def read_ack(raw: bytes) -> AckReply:
    """The acknowledgment in ``raw`` (one MLLP payload); :class:`NotAnAck` when there is none."""
    try:
        msg = parse(decode_message(raw).text)
    except (HL7ParseError, CharsetError) as exc:
        raise NotAnAck(f"the reply is not an HL7 message: {exc}") from None
    msa = msg.segment("MSA")
    if msa is None:
        raise NotAnAck(f"the reply ({msg.message_code or 'no type'}) has no MSA segment")
    err = msg.segment("ERR")
    texts = [msa.value(3)]
    if err is not None:
        texts += [err.value(8), err.value(7), err.value(3, comp=2), err.value(1, comp=4, sub=2)]
    return AckReply(code=msa.value(1).strip().upper(), control_id=msa.value(2).strip(),
                    text=next((t for t in texts if t), ""))
