"""Reading single attribute values from received data sets (DICOM PS3.5 6.2 value representations)."""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue


def text(ds: Dataset, keyword: str, limit: int = 0) -> str:
    """The first value of ``keyword`` as trimmed text ("" when absent or empty); cut to ``limit`` if given."""
    if keyword not in ds or ds[keyword].is_empty:
        return ""
    value = ds[keyword].value
    if isinstance(value, MultiValue):
        value = value[0] if len(value) else ""
    result = str(value).strip().rstrip("\0")
    return result[:limit] if limit else result
