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

:meth:`submit` queues a job for a caller with something else to do meanwhile (the C-STORE handler flushes the
file to disk while its index entry commits) and returns a Future. Nobody waits on such a job to lead, so when
no caller leads, or the lead would pass to it, a committer thread of our own leads until nothing is waiting.

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
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

from sqlalchemy.orm import Session, sessionmaker

__all__ = ["GroupCommitter", "GroupCommitStopped"]

log = logging.getLogger("app.group_commit")

Job = Callable[[Session], Any]


class GroupCommitStopped(RuntimeError):
    """The committer is stopped: the caller should use its own unit of work."""


class _Entry:
    """One submitted job and its caller's rendezvous: woken once, either with the job's outcome or to lead. A job
    queued by :meth:`GroupCommitter.submit` has a future instead of a waiting caller (it is never asked to lead)."""

    __slots__ = ("job", "wake", "done", "ok", "value", "future")

    def __init__(self, job: Job, future: Future | None = None):
        self.job = job
        self.wake = threading.Event()
        self.done = False
        self.ok = False
        self.value: Any = None
        self.future = future

    def finish(self, ok: bool, value: Any) -> None:
        self.ok, self.value, self.done = ok, value, True
        self.wake.set()
        if self.future is not None:
            if ok:
                self.future.set_result(value)
            else:
                self.future.set_exception(value)

    def result(self) -> Any:
        if self.ok:
            return self.value
        raise self.value


class GroupCommitter:
    """Commits the jobs of concurrent callers in groups, led by one of the callers (see the module docstring).

    Each waiting caller sleeps on its own event: the leader wakes exactly the callers whose jobs it committed,
    and hands the lead to the oldest caller still waiting (waking them all would cost more than the work)."""

    def __init__(self, factory: sessionmaker[Session], *, max_group: int = 64, name: str = "group-commit"):
        self.factory = factory
        self.max_group = max_group
        self.name = name
        self.groups = 0  # groups committed (read from anywhere)
        self.jobs = 0  # jobs committed
        self._pending: collections.deque[_Entry] = collections.deque()
        self._lock = threading.Lock()
        self._leading = False
        self._running = False
        self._thread_lead: ThreadPoolExecutor | None = None   # leads for submitted jobs

    def start(self) -> "GroupCommitter":
        self._thread_lead = ThreadPoolExecutor(1, thread_name_prefix=self.name)
        self._running = True
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Refuse new jobs; jobs already submitted are committed by their callers (waits up to ``timeout`` s)."""
        self._running = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._pending and not self._leading:
                    break
            time.sleep(0.01)
        if self._thread_lead is not None:
            self._thread_lead.shutdown(wait=False)

    def run(self, job: Job) -> Any:
        """Run ``job`` in the next group; return its value once the group is committed (or raise its error).

        There is deliberately no timeout: a caller that gave up could not know whether its job will still be
        committed, and would apply it twice by retrying on its own.
        """
        entry = _Entry(job)
        with self._lock:
            if not self._running:
                raise GroupCommitStopped("group commit is not running")
            self._pending.append(entry)
            follower, self._leading = self._leading, True
        if follower:
            entry.wake.wait()
            if entry.done:
                return entry.result()
        try:   # this caller leads until its own job is committed
            while not entry.done:
                self._commit_next_group()
        finally:
            self._pass_lead()
        return entry.result()

    def submit(self, job: Job) -> Future:
        """Queue ``job`` for the next group without waiting: its future gives the value (or the error) once the
        group is committed. Durable, like :meth:`run`'s value, when the future is done."""
        entry = _Entry(job, Future())
        with self._lock:
            if not self._running:
                raise GroupCommitStopped("group commit is not running")
            self._pending.append(entry)
            lead, self._leading = not self._leading, True
        if lead:
            self._thread_lead.submit(self._lead_while_waiting)
        return entry.future

    def _commit_next_group(self) -> None:
        with self._lock:
            group = [self._pending.popleft() for _ in range(min(self.max_group, len(self._pending)))]
        self._commit_group(group)

    def _pass_lead(self) -> None:
        """The lead goes to the oldest caller waiting in :meth:`run` (self._leading stays True), else to the
        committer thread when only submitted jobs wait, else nobody leads."""
        with self._lock:
            waiting = next((e for e in self._pending if e.future is None), None)
            if waiting is not None:
                waiting.wake.set()
                return
            if not self._pending:
                self._leading = False
                return
        self._thread_lead.submit(self._lead_while_waiting)

    def _lead_while_waiting(self) -> None:
        try:
            while True:
                with self._lock:
                    if not self._pending or any(e.future is None for e in self._pending):
                        break
                self._commit_next_group()
        finally:
            self._pass_lead()

    def _commit_group(self, group: list[_Entry]) -> None:
        started = time.perf_counter()
        outcomes: list[tuple[_Entry, bool, Any]] = []
        try:
            session = self.factory()
        except BaseException as exc:  # noqa: BLE001 - nothing of the group ran
            for entry in group:
                entry.finish(False, exc)
            return
        try:
            for entry in group:
                savepoint = session.begin_nested()
                try:
                    value = entry.job(session)
                    session.flush()
                except BaseException as exc:  # noqa: BLE001 - handed to the caller
                    savepoint.rollback()
                    outcomes.append((entry, False, exc))
                else:
                    savepoint.commit()
                    outcomes.append((entry, True, value))
            session.commit()
        except BaseException as exc:  # noqa: BLE001 - the group's commit failed: nothing of it is kept
            log.warning("%s: a group of %d jobs failed to commit: %s", self.name, len(group), exc)
            try:
                session.rollback()
            except Exception:  # noqa: BLE001
                log.exception("%s: rollback failed", self.name)
            for entry in group:
                if not entry.done:
                    entry.finish(False, exc)
            return
        finally:
            session.close()
        self.groups += 1
        self.jobs += len(outcomes)
        for entry, ok, value in outcomes:
            entry.finish(ok, value)
        log.debug("%s: committed %d jobs in %.1f ms", self.name, len(outcomes), (time.perf_counter() - started) * 1000)
