"""Durable file store of the archive: one file per SOP instance under the archive folder.

Two ways to write a file durably (when they are done, the file survives a crash or power loss):

- :meth:`ArchiveStore.write`: written to a temporary name, fsynced, renamed into place and its folder fsynced.
- in steps, so that the device flushes overlap with other work (what C-STORE does, interfaces.dicom.storage):
  :meth:`ArchiveStore.stage` writes the bytes under a temporary name and returns a :class:`Staged` file;
  :meth:`ArchiveStore.place_new` (no file of that name yet) or :meth:`ArchiveStore.place` (replacing one) gives it
  its name, :meth:`Staged.sync` fsyncs its data and :meth:`Staged.sync_folder` the folder that names it, each
  while other work goes on (the index entry is committed elsewhere meanwhile). The file is durable when both
  syncs returned; a reader never sees a partial file, because it is named only once complete.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

_SAFE = re.compile(r"[^0-9A-Za-z.\-]")
_STAGED = itertools.count(1)
_PROCESS = uuid.uuid4().hex[:12]       # this process's part of staged names (another process never takes them)


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

    def stage(self, relative: str, data: bytes) -> "Staged":
        """Write ``data`` next to ``relative`` under a temporary name (not yet synced); :meth:`place` it or
        :meth:`Staged.discard` it. StorageError when the archive cannot take it."""
        target = self.root / relative
        tmp = target.with_name(f".{target.name}.{_PROCESS}.{next(_STAGED)}.tmp")    # unique, and cheap
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as exc:
            raise StorageError(exc.errno, f"cannot write {relative}: {exc.strerror or exc}") from exc
        staged = Staged(tmp, relative, fd)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except OSError as exc:
            staged.discard()
            raise StorageError(exc.errno, f"cannot write {relative}: {exc.strerror or exc}") from exc
        return staged

    def place(self, staged: "Staged") -> None:
        """Rename a staged file into place (atomic)."""
        try:
            os.replace(staged.path, self.root / staged.relative)
        except OSError as exc:
            raise StorageError(exc.errno, f"cannot write {staged.relative}: {exc.strerror or exc}") from exc
        staged.path = self.root / staged.relative
        staged.placed = True

    def place_new(self, staged: "Staged") -> bool:
        """Give a staged file its name when no file has it yet (a hard link, so an existing file is never
        replaced, whoever wins a race); False when one exists (:meth:`place` it after the checks)."""
        target = self.root / staged.relative
        try:
            os.link(staged.path, target)
        except FileExistsError:
            return False
        except OSError as exc:
            raise StorageError(exc.errno, f"cannot write {staged.relative}: {exc.strerror or exc}") from exc
        with contextlib.suppress(OSError):
            os.unlink(staged.path)
        staged.path = target
        staged.placed = True
        return True

    def delete(self, relative: str) -> None:
        (self.root / relative).unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(eq=False)
class Staged:
    """A file written by :meth:`ArchiveStore.stage`: its bytes are in the file, not yet known to be on disk."""

    path: Path
    relative: str
    fd: int
    placed: bool = False
    synced: bool = False

    def sync(self) -> None:
        """fsync the file's data (StorageError when the device refuses)."""
        try:
            os.fsync(self.fd)
            self.synced = True
        except OSError as exc:
            raise StorageError(exc.errno, f"cannot write {self.relative}: {exc.strerror or exc}") from exc
        finally:
            self.close()

    def sync_folder(self) -> None:
        """fsync the folder naming the placed file, so the name survives too."""
        try:
            _fsync_dir(self.path.parent)
        except OSError as exc:
            raise StorageError(exc.errno, f"cannot write {self.relative}: {exc.strerror or exc}") from exc

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1

    def discard(self) -> None:
        """Remove a staged file that was not placed."""
        self.close()
        if not self.placed:
            with contextlib.suppress(OSError):
                self.path.unlink(missing_ok=True)
