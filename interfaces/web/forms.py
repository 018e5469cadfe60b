"""Form input for the pages: every field is read as typed, checked, and its problem kept next to it,
so a page can show the errors beside the fields with what was typed still in them (never a 500)."""

from __future__ import annotations

import datetime as dt
import enum

from interfaces import inputs


class Form:
    """The submitted ``values`` (as typed, stripped) and the ``errors`` by field name."""

    def __init__(self, source, names: tuple[str, ...]):
        self.values = {name: str(source.get(name, "") or "").strip() for name in names}
        self.errors: dict[str, str] = {}

    @property
    def ok(self) -> bool:
        return not self.errors

    def text(self, name: str, *, max_length: int = 64, required: bool = False, min_length: int = 0) -> str:
        value = self.values[name]
        if required and not value:
            self.errors[name] = "Enter a value."
        elif value and len(value) < min_length:
            self.errors[name] = f"Enter at least {min_length} characters."
        elif len(value) > max_length:
            self.errors[name] = f"Enter at most {max_length} characters."
        elif any(ord(c) < 32 for c in value):
            self.errors[name] = "Control characters are not allowed."
        else:
            return value
        return ""

    def choice(self, name: str, kind: type[enum.Enum] | tuple[str, ...]) -> str:
        value = self.values[name]
        options = tuple(m.value for m in kind) if isinstance(kind, type) else kind
        if value and value not in options:
            self.errors[name] = f"Choose one of {', '.join(options)}."
            return ""
        return value

    def date(self, name: str) -> dt.date | None:
        """A date YYYY-MM-DD within the bounds of interfaces.http.inputs."""
        return self._read(name, lambda value: inputs.day(value, name))

    def datetime(self, name: str, zone=None) -> dt.datetime | None:
        """A date or date and time as typed (in ``zone`` when it has no offset), as naive UTC."""
        return self._read(name, lambda value: inputs.moment(value, name, zone))

    def number(self, name: str, *, low: int = 0, high: int = inputs.RECORD_ID_MAX) -> int | None:
        return self._read(name, lambda value: inputs.whole_number(value, name, low=low, high=high))

    def _read(self, name: str, parse):
        value = self.values[name]
        if not value:
            return None
        try:
            return parse(value)
        except inputs.BadValue as exc:
            self.errors[name] = exc.advice
            return None

    def check_order(self, first: str, last: str, a, b) -> None:
        if a is not None and b is not None and b <= a and last not in self.errors:
            self.errors[last] = f"Must be after '{first}'."
