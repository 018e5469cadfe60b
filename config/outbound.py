"""Outbound destinations: where the engine sends what it has to tell other systems (DESIGN.md 3, "Out").

A destination is written ``name=host:port`` followed by options ``;key=value``::

    RIS_OUTBOUND_DESTINATIONS="his=10.1.2.3:2575;message=OMG^O19,billing=10.1.2.9:2575;enabled=false"
    RIS_HIS_MLLP=10.1.2.3:2575        # shorthand for the destination "his"

Options: ``enabled`` (true/false; a disabled destination gets no new messages and nothing is sent
to it), ``message`` (the order status message: ``ORM^O01`` or ``OMG^O19``; default the setting
``outbound_order_message``), ``application`` and ``facility`` (its MSH-5/MSH-6; default: the
order's sender), ``kinds`` (what it receives, ``+``-separated: ``order.status`` order status messages,
``report`` signed reports as ORU^R01, ``step.status`` every change of a procedure step,
``hl7.application_ack`` the application ACKs of HL7 enhanced mode; default ``order.status+report``, e.g.
``kinds=order.status+report+step.status``; an unknown kind is refused with the known ones).
This module imports nothing of ours.
"""

from __future__ import annotations

from dataclasses import dataclass

ORDER_MESSAGES = ("ORM^O01", "OMG^O19")
DEFAULT_KINDS = ("order.status", "report")
KINDS = ("order.status", "report", "step.status", "hl7.application_ack")   # what a destination can be given
_OPTIONS = ("enabled", "message", "application", "facility", "kinds")


@dataclass(frozen=True)
class Destination:
    name: str
    host: str
    port: int
    enabled: bool = True
    message: str = "ORM^O01"
    application: str = ""
    facility: str = ""
    kinds: tuple[str, ...] = DEFAULT_KINDS


def _flag(name: str, raw: str) -> bool:
    from config.settings import parse_flag   # settings imports this module: import when used

    try:
        return parse_flag(raw)
    except ValueError:
        raise ValueError(f"destination {name}: enabled={raw!r} is not true or false") from None


def parse_destination(spec: str, *, default_message: str = "ORM^O01") -> Destination:
    """One destination from ``name=host:port[;key=value...]``; ValueError names what is wrong."""
    head, *options = [part.strip() for part in spec.split(";")]
    name, sep, address = head.partition("=")
    name, address = name.strip(), address.strip()
    if not sep or not name or not address:
        raise ValueError(f"outbound destination {spec!r} is not name=host:port")
    host, _, port_text = address.rpartition(":")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"destination {name}: {address!r} is not host:port")
    values: dict = {"message": default_message}
    for option in filter(None, options):
        key, sep, raw = option.partition("=")
        key = key.strip().lower()
        if not sep or key not in _OPTIONS:
            raise ValueError(f"destination {name}: unknown option {option!r} (known: {', '.join(_OPTIONS)})")
        if key == "enabled":
            values[key] = _flag(name, raw)
        elif key == "kinds":
            values[key] = tuple(k.strip() for k in raw.split("+") if k.strip())
            unknown = [k for k in values[key] if k not in KINDS]
            if unknown or not values[key]:
                raise ValueError(f"destination {name}: kinds={raw!r}: {', '.join(unknown) or 'nothing'} is not a kind "
                                 f"it can receive (known: {'+'.join(KINDS)})")
        else:
            values[key] = raw.strip()
    if values["message"] not in ORDER_MESSAGES:
        raise ValueError(f"destination {name}: message={values['message']!r} is not one of {', '.join(ORDER_MESSAGES)}")
    return Destination(name=name, host=host.strip("[]"), port=int(port_text), **values)


def parse_destinations(specs: tuple[str, ...], his_mllp: str = "", *,
                       default_message: str = "ORM^O01") -> tuple[Destination, ...]:
    """Every configured destination; ``his_mllp`` (``host:port``) adds "his" unless a spec already names it."""
    found = [parse_destination(spec, default_message=default_message) for spec in specs if spec.strip()]
    if his_mllp.strip() and not any(d.name == "his" for d in found):
        found.append(parse_destination(f"his={his_mllp.strip()}", default_message=default_message))
    names = [d.name for d in found]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"outbound destination named more than once: {', '.join(duplicates)}")
    return tuple(found)
