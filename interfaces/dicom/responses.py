"""C-FIND response Identifiers from templates (DICOM PS3.4 C.4.1.1.3.2, K.4.1.1.3.2), for the worklist and Q/R SCPs.

A template maps a keyword to a function of the matched record (or to :class:`Nested` for a sequence).
:func:`render` answers exactly the keys of the request, in its order: known keys filled, keys the engine has no
value for returned empty (zero length, so every requested Type 1/2 return key is present), a sequence key sent
without item keys answered with whole items (C.2.2.2.6). Specific Character Set and group lengths are left to the
caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence


@dataclass(frozen=True)
class Nested:
    """A sequence attribute: the template of its items and the source objects of its items."""

    template: dict
    items: Callable[[object], list]


def render(request: Dataset | None, template: dict, source) -> Dataset:
    """The response Identifier for ``source``: the keys of ``request`` filled from ``template``."""
    out = Dataset()
    if request is None or len(request) == 0:       # no item keys: the whole item (C.2.2.2.6)
        for keyword, spec in template.items():
            _put(out, keyword, spec, None, source)
        return out
    for elem in request:
        if elem.keyword == "SpecificCharacterSet" or elem.tag.element == 0:   # set by the caller; group lengths
            continue
        spec = template.get(elem.keyword)
        if spec is None:
            out.add(_unknown(elem))
        else:
            _put(out, elem.keyword, spec, elem, source)
    return out


def _put(out: Dataset, keyword: str, spec, elem: DataElement | None, source) -> None:
    if isinstance(spec, Nested):
        items = elem.value if elem is not None and elem.VR == "SQ" else None
        sub_request = items[0] if items else None
        setattr(out, keyword, Sequence([render(sub_request, spec.template, x) for x in spec.items(source)]))
    else:
        setattr(out, keyword, spec(source))


def _unknown(elem: DataElement) -> DataElement:
    """A key the engine has no value for: returned empty (a private creator keeps its value)."""
    if elem.tag.is_private_creator:
        return DataElement(elem.tag, elem.VR, elem.value)
    return DataElement(elem.tag, elem.VR, Sequence() if elem.VR == "SQ" else None)
