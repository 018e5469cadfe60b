"""Group commit: many small units of work from concurrent callers share one transaction and one fsync.

A durable commit costs one fsync (SQLite WAL with synchronous=FULL; PostgreSQL's WAL flush), and on SQLite
writers are serialised anyway. When 16 connections each wait for their own commit, most of the time goes to
waiting for the disk (DESIGN.md 5: 2,000-2,900 msg/s for one insert + commit each, 8,200 msg/s with the commits
of concurrent connections grouped).

:class:`GroupCommitter` runs submitted jobs ``job(session) -> value`` one after another in one writer thread.
The jobs that are waiting when the writer is free form a group: each job runs inside its own savepoint (a job
that raises is rolled back alone and its caller gets the exception), then the group is committed once and every
caller gets its value. A caller's value is therefore durable when :meth:`run` returns, exactly as with its own
unit of work, and the jobs of a group see each other's changes in submission order (the order callers would have
committed in anyway). If the group commit itself fails, every caller of the group gets the exception and nothing
of the group is kept.

Jobs must not commit, must not keep ORM objects beyond the job (return plain values), and must be quick: the group
holds the database's write lock while it runs.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable

from sqlalchemy.orm import Session, sessionmaker

__all__ = ["GroupCommitter", "GroupCommitStopped"]

log = logging.getLogger("app.group_commit")

Job = Callable[[Session], Any]


class GroupCommitStopped(RuntimeError):
    """The committer is stopped: the caller should use its own unit of work."""


class GroupCommitter:
    """One writer thread committing the jobs of concurrent callers in groups (see the module docstring)."""

    def __init__(self, factory: sessionmaker[Session], *, max_group: int = 64, name: str = "group-commit"):
        self.factory = factory
        self.max_group = max_group
        self.name = name
        self.groups = 0  # groups committed (read from anywhere)
        self.jobs = 0  # jobs committed
        self._queue: queue.SimpleQueue[tuple[Job, Future] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    def start(self) -> "GroupCommitter":
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the jobs already submitted, then end the writer thread."""
        self._stopped.set()
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None
        self._fail_pending(GroupCommitStopped("group commit stopped"))

    def run(self, job: Job) -> Any:
        """Run ``job`` in the next group; return its value once the group is committed (or raise its error).

        There is deliberately no timeout: a caller that gave up could not know whether its job will still be
        committed, and would apply it twice by retrying on its own.
        """
        return self.submit(job).result()

    def submit(self, job: Job) -> Future:
        """Queue ``job`` for the next group; its future gives the value once the group is committed. For a
        caller with something else to do meanwhile (the C-STORE handler fsyncs the file while the index commits)."""
        if self._stopped.is_set() or self._thread is None:
            raise GroupCommitStopped("group commit is not running")
        future: Future = Future()
        self._queue.put((job, future))
        if self._stopped.is_set():  # stop() raced with us: fail whatever it left behind
            self._fail_pending(GroupCommitStopped("group commit stopped"))
        return future

    # -- the writer thread ------------------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            group = [item]
            while len(group) < self.max_group:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)  # end after this group
                    break
                group.append(nxt)
            self._commit_group(group)

    def _commit_group(self, group: list[tuple[Job, Future]]) -> None:
        started = time.perf_counter()
        session = self.factory()
        outcomes: list[tuple[Future, bool, Any]] = []
        try:
            for job, future in group:
                if not future.set_running_or_notify_cancel():
                    continue
                savepoint = session.begin_nested()
                try:
                    value = job(session)
                    session.flush()
                except BaseException as exc:  # noqa: BLE001 - handed to the caller
                    savepoint.rollback()
                    outcomes.append((future, False, exc))
                else:
                    savepoint.commit()
                    outcomes.append((future, True, value))
            session.commit()
        except BaseException as exc:  # noqa: BLE001 - the group's commit failed: nothing of it is kept
            log.warning("%s: a group of %d jobs failed to commit: %s", self.name, len(group), exc)
            try:
                session.rollback()
            except Exception:  # noqa: BLE001
                log.exception("%s: rollback failed", self.name)
            for _job, future in group:
                if future.running():
                    future.set_exception(exc)
            return
        finally:
            session.close()
        self.groups += 1
        self.jobs += len(outcomes)
        for future, ok, value in outcomes:
            future.set_result(value) if ok else future.set_exception(value)
        log.debug("%s: committed %d jobs in %.1f ms", self.name, len(outcomes), (time.perf_counter() - started) * 1000)

    def _fail_pending(self, exc: Exception) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None and item[1].set_running_or_notify_cancel():
                item[1].set_exception(exc)
