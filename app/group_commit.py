"""Group commit: many small units of work from concurrent callers share one transaction and one fsync.

A durable commit costs one fsync (SQLite WAL with synchronous=FULL; PostgreSQL's WAL flush), and on SQLite
writers are serialised anyway. When 16 connections each wait for their own commit, most of the time goes to
waiting for the disk (DESIGN.md 5: 2,000-2,900 msg/s for one insert + commit each, 8,200 msg/s with the commits
of concurrent connections grouped).

:class:`GroupCommitter` runs submitted jobs ``job(session) -> value`` one after another, in groups, the way
databases group their log writes (leader/follower): a caller that finds nobody committing becomes the leader and
commits what is waiting, its own job included; callers that arrive meanwhile queue their jobs and wait. The jobs
waiting when the leader starts a group form that group: each job runs inside its own savepoint (a job that
raises is rolled back alone and its caller gets the exception), then the group is committed once and every
caller gets its value. The leader goes on with the next group until its own job is committed, then hands the
lead to a waiting caller. A caller that arrives alone commits its job in its own thread, with no hand-over to
another thread, so one connection pays no latency for the grouping of many.

A caller's value is therefore durable when :meth:`run` returns, exactly as with its own unit of work, and the
jobs of a group see each other's changes in submission order (the order callers would have committed in anyway).
If the group commit itself fails, every caller of the group gets the exception and nothing of the group is kept.

Jobs must not commit, must not keep ORM objects beyond the job (return plain values), and must be quick: the group
holds the database's write lock while it runs.
"""

from __future__ import annotations

import collections
import logging
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
    """Commits the jobs of concurrent callers in groups, led by one of the callers (see the module docstring)."""

    def __init__(self, factory: sessionmaker[Session], *, max_group: int = 64, name: str = "group-commit"):
        self.factory = factory
        self.max_group = max_group
        self.name = name
        self.groups = 0  # groups committed (read from anywhere)
        self.jobs = 0  # jobs committed
        self._pending: collections.deque[tuple[Job, Future]] = collections.deque()
        self._cond = threading.Condition()
        self._leading = False
        self._running = False

    def start(self) -> "GroupCommitter":
        with self._cond:
            self._running = True
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Refuse new jobs; jobs already submitted are committed by their callers (waits up to ``timeout`` s)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._running = False
            while (self._pending or self._leading) and time.monotonic() < deadline:
                self._cond.wait(0.05)

    def run(self, job: Job) -> Any:
        """Run ``job`` in the next group; return its value once the group is committed (or raise its error).

        There is deliberately no timeout: a caller that gave up could not know whether its job will still be
        committed, and would apply it twice by retrying on its own.
        """
        future: Future = Future()
        with self._cond:
            if not self._running:
                raise GroupCommitStopped("group commit is not running")
            self._pending.append((job, future))
            while self._leading and not future.done():
                self._cond.wait()
            if future.done():
                return future.result()
            self._leading = True
        try:
            while not future.done():
                with self._cond:
                    group = [self._pending.popleft() for _ in range(min(self.max_group, len(self._pending)))]
                self._commit_group(group)
                with self._cond:
                    self._cond.notify_all()  # the callers of this group have their values
        finally:
            with self._cond:
                self._leading = False
                self._cond.notify_all()  # a waiting caller takes the lead
        return future.result()

    def _commit_group(self, group: list[tuple[Job, Future]]) -> None:
        started = time.perf_counter()
        outcomes: list[tuple[Future, bool, Any]] = []
        try:
            session = self.factory()
        except BaseException as exc:  # noqa: BLE001 - nothing of the group ran
            for _job, future in group:
                future.set_exception(exc)
            return
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
                if not future.done():
                    future.set_exception(exc)
            return
        finally:
            session.close()
        self.groups += 1
        self.jobs += len(outcomes)
        for future, ok, value in outcomes:
            future.set_result(value) if ok else future.set_exception(value)
        log.debug("%s: committed %d jobs in %.1f ms", self.name, len(outcomes), (time.perf_counter() - started) * 1000)
