"""The database resource: engine, sessions, migrations (one module for the whole lifecycle).

SQLite is the embedded default: WAL journal, synchronous=FULL (a commit is on disk before we
acknowledge anything) and a busy timeout so concurrent writers wait instead of failing with
"database is locked". PostgreSQL is reached through ``postgresql+psycopg://`` (psycopg 3).
Plain SQLAlchemy sessions work from any thread (MLLP, DICOM and HTTP threads alike).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def _plain_savepoints(engine: Engine) -> Engine:
    """Issue SAVEPOINT / RELEASE / ROLLBACK TO on the driver connection instead of compiling a statement for each
    (SQLAlchemy compiles its savepoint clauses on every use, uncached: a tenth of the HL7 intake's time, where
    every message runs in two savepoints). Transaction bookkeeping stays SQLAlchemy's."""
    def run(connection, sql: str) -> None:
        connection.connection.driver_connection.execute(sql)

    dialect = engine.dialect
    dialect.do_savepoint = lambda connection, name: run(connection, f"SAVEPOINT {name}")
    dialect.do_release_savepoint = lambda connection, name: run(connection, f"RELEASE SAVEPOINT {name}")
    dialect.do_rollback_to_savepoint = lambda connection, name: run(connection, f"ROLLBACK TO SAVEPOINT {name}")
    return engine


def make_engine(url: str, *, echo: bool = False) -> Engine:
    """Create the engine for ``url``; SQLite gets its folder created and its pragmas set."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, echo=echo, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # noqa: ANN001
            # Let SQLAlchemy issue BEGIN itself (pysqlite's own transaction handling is off),
            # and take the write lock at BEGIN (IMMEDIATE) so two writers never deadlock on upgrade.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA case_sensitive_like=ON")  # DICOM matching is case sensitive, as on PostgreSQL
            cur.close()
            # SQLite's own lower() folds ASCII only; case-insensitive name matching needs every script.
            dbapi_conn.create_function("lower", 1, _lower, deterministic=True)

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):  # noqa: ANN001
            # Readers (worklist queries) begin deferred and never wait for writers (WAL).
            read_only = conn.get_execution_options().get("ris_read_only", False)
            conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

        return _plain_savepoints(engine)
    return _plain_savepoints(create_engine(url, echo=echo, pool_size=10, max_overflow=20, pool_pre_ping=True))


def _lower(value):
    return value.lower() if isinstance(value, str) else value


def make_session_factory(engine: Engine, *, read_only: bool = False) -> sessionmaker[Session]:
    """Sessions for units of work; ``read_only`` ones are for queries (worklist, API reads)."""
    if read_only:
        engine = engine.execution_options(ris_read_only=True)
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextlib.contextmanager
def unit_of_work(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One transaction: commit when the block ends normally, roll back on any exception."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def refresh_statistics(engine: Engine, *, growth: float = 0.2) -> bool:
    """Give the query planner fresh table statistics (SQLite ANALYZE) when they are missing or stale; True if
    it ran.

    Without them SQLite may plan a worklist query badly (docs/performance.md; app.queries.worklist shapes the
    selective queries so that they do not depend on it). Stale means: the scheduled steps have grown by more
    than ``growth`` since the row count ANALYZE recorded in sqlite_stat1, so the check is cheap enough to run
    every minute and a database that is being loaded gets statistics within a minute of each growth step.
    SQLite's ``analysis_limit`` keeps ANALYZE to a sample of each index, so it stays fast on a large database.
    Run by a scheduler job; on PostgreSQL autovacuum does the same on its own schedule, so this does nothing
    there.
    """
    if engine.dialect.name != "sqlite":
        return False
    with engine.begin() as conn:
        steps = conn.exec_driver_sql("SELECT max(id) FROM procedure_steps").scalar() or 0
        has_table = conn.exec_driver_sql(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_stat1'").first()
        recorded = conn.exec_driver_sql(
            "SELECT stat FROM sqlite_stat1 WHERE tbl = 'procedure_steps' LIMIT 1").scalar() if has_table else None
        counted = int(recorded.split()[0]) if recorded else 0
        if has_table and steps <= counted * (1 + growth) and (recorded or not steps):
            return False
        conn.exec_driver_sql("PRAGMA analysis_limit=1000")
        conn.exec_driver_sql("ANALYZE")
    return True


def alembic_config(url: str):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest migration (idempotent; run at every start)."""
    from alembic import command

    with engine.begin() as conn:
        cfg = alembic_config(str(engine.url))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
