"""Frames of stored DICOM images as PNG for the viewer (pydicom + numpy + Pillow), with window/level.

Grey-scale images go through the Modality LUT (rescale slope/intercept) and then a linear VOI window
(DICOM PS3.3 C.11.2.1.2, "LINEAR"): the preset's centre/width, else the file's own first Window
Center/Width, else the frame's minimum to maximum. MONOCHROME1 is inverted; colour images are shown as stored
(pydicom gives YBR as RGB; palette colour goes through its LUT).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut

from app.errors import InvalidInput, Unsupported

# name: (label, centre, width); None: the file's own window (or min..max)
PRESETS: dict[str, tuple[str, float | None, float | None]] = {
    "auto": ("From the image", None, None),
    "soft-tissue": ("Soft tissue (40/400)", 40.0, 400.0),
    "lung": ("Lung (-600/1500)", -600.0, 1500.0),
    "bone": ("Bone (400/1800)", 400.0, 1800.0),
    "brain": ("Brain (40/80)", 40.0, 80.0),
}


def frame_count(path: Path) -> int:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    try:
        return max(1, int(getattr(ds, "NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def _first(value) -> float | None:
    if value is None or value == "":
        return None
    return float(value[0] if isinstance(value, (MultiValue, list, tuple)) else value)


def _window(pixels: np.ndarray, centre: float, width: float) -> np.ndarray:
    width = max(width, 1.0)
    scaled = ((pixels - (centre - 0.5)) / (width - 1.0) + 0.5) if width > 1 else (pixels > centre).astype(float)
    return (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def render_png(path: Path, frame: int = 0, preset: str = "auto") -> bytes:
    """Frame ``frame`` (from 0) of the image at ``path`` as PNG bytes."""
    if preset not in PRESETS:
        raise InvalidInput(f"preset {preset!r} is not one of {', '.join(PRESETS)}", location="preset")
    ds = pydicom.dcmread(path)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise Unsupported("this object has no image", location="instance")
    frames = max(1, int(getattr(ds, "NumberOfFrames", 1) or 1))
    if not 0 <= frame < frames:
        raise InvalidInput(f"frame {frame + 1} does not exist (the image has {frames})", location="frame")
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - e.g. a compression no installed decoder reads
        raise Unsupported(f"the pixel data cannot be decoded here: {exc}", location="instance") from None
    if frames > 1:
        pixels = pixels[frame]
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(pixels, ds)
        image = Image.fromarray(_to_uint8(rgb))
    elif pixels.ndim == 3:  # samples per pixel 3; pydicom 3's pixel_array gives YBR images as RGB already
        image = Image.fromarray(_to_uint8(pixels))
    else:
        values = apply_modality_lut(pixels, ds).astype(np.float64)
        _, centre, width = PRESETS[preset]
        if centre is None:
            centre, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
        if centre is None or width is None or width <= 0:
            low, high = float(values.min()), float(values.max())
            centre, width = (low + high) / 2.0, max(high - low, 1.0)
        grey = _window(values, centre, width)
        if photometric == "MONOCHROME1":
            grey = 255 - grey
        image = Image.fromarray(grey)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype == np.uint8:
        return pixels
    top = float(pixels.max()) or 1.0
    return (np.clip(pixels.astype(np.float64) / top, 0, 1) * 255 + 0.5).astype(np.uint8)
