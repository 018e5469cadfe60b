"""Durable file store of the archive: one file per SOP instance under the archive folder.

A file is written to a temporary name, flushed and fsynced, renamed into place and its folder
fsynced, so that when :meth:`ArchiveStore.write` returns the object survives a crash or power
loss (the DICOM adapter answers C-STORE success only after that).
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from pathlib import Path

_SAFE = re.compile(r"[^0-9A-Za-z.\-]")


class StorageError(OSError):
    """The archive cannot take the object (disk full, folder not writable...)."""


class ArchiveStore:
    def __init__(self, root: Path | str):
        self.root = Path(root)

    def relative_path(self, study_uid: str, series_uid: str, sop_uid: str) -> str:
        parts = [_SAFE.sub("_", p) or "unknown" for p in (study_uid, series_uid, sop_uid)]
        return f"{parts[0]}/{parts[1]}/{parts[2]}.dcm"

    def absolute(self, relative: str) -> Path:
        return self.root / relative

    def write(self, relative: str, chunks) -> int:
        """Write ``chunks`` (bytes or an iterable of bytes) durably at ``relative``; return the size."""
        target = self.root / relative
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            size = 0
            with open(tmp, "wb") as fh:
                for chunk in ([chunks] if isinstance(chunks, (bytes, bytearray, memoryview)) else chunks):
                    fh.write(chunk)
                    size += len(chunk)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
            _fsync_dir(target.parent)
            return size
        except OSError as exc:
            with contextlib.suppress(OSError):  # the folder may not exist at all (a file in the path)
                tmp.unlink(missing_ok=True)
            raise StorageError(exc.errno, f"cannot write {relative}: {exc.strerror or exc}") from exc

    def delete(self, relative: str) -> None:
        (self.root / relative).unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
