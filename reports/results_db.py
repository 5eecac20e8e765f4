"""The results database: every run the lab makes (scenarios, matrix cell, bench, restore
bench, soak) with its tests and its boots, in one append-only store.

SQLite in `results/roslab.db` by default (nothing to start); a URL (`--results-db`, or
ROSLAB_RESULTS_DB) names a shared PostgreSQL instead, so a team's runners keep one
history. The schema is SQLAlchemy's (below) and is versioned by Alembic
(reports/results_migrations/): opening a database upgrades it in place to this roslab's
schema, under a lock, so two runs opening an old database at once migrate it once.

Writes only ever insert: a run, its tests and its boots go in one transaction, so a
reader sees a run whole or not at all. SQLite runs in WAL mode (readers never block the
writer), each write takes the write lock up front (BEGIN IMMEDIATE: no deadlock between
two readers that both want to write) and waits for it (busy timeout), and a write that
still meets a locked or busy database is retried.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    Boolean,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    create_engine,
    event,
    select,
    text,
)
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    selectinload,
)

from lab.errors import LabError

ENV = "ROSLAB_RESULTS_DB"  # the database URL when --results-db is not given
WAIT_ENV = "ROSLAB_RESULTS_DB_WAIT"  # seconds a writer waits for a locked database
DEFAULT_PATH = Path("results/roslab.db")
OFF = "off"  # --results-db off: record nothing
DEFAULT_WAIT = 60.0
MIGRATIONS = Path(__file__).with_name("results_migrations")
PG_LOCK_KEY = 0x726F736C  # "rosl": one advisory lock serializes migrations on a server


class ResultsDBError(LabError):
    """The results database cannot be opened, read or written."""


# -- the schema ----------------------------------------------------------------------------


class Base(DeclarativeBase):
    pass


class Run(Base):
    """One run: a pytest session of scenarios, a matrix cell (both attempts), a bench,
    a restore bench or a soak."""

    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uid: Mapped[str] = mapped_column(String(200), unique=True)  # importers stay idempotent
    lab_run_id: Mapped[str] = mapped_column(String(100), index=True)  # lab.gc.run_id()
    kind: Mapped[str] = mapped_column(String(20), index=True)  # scenarios cell bench ...
    source: Mapped[str] = mapped_column(String(40))  # "live", "import:junit", ...
    started: Mapped[datetime] = mapped_column(DateTime, index=True)  # UTC
    finished: Mapped[datetime | None] = mapped_column(DateTime)
    git_commit: Mapped[str | None] = mapped_column(String(64))  # the lab's (+dirty)
    image: Mapped[str | None] = mapped_column(Text)
    image_version: Mapped[str | None] = mapped_column(String(100))
    image_checksum: Mapped[str | None] = mapped_column(String(100))
    platform: Mapped[str | None] = mapped_column(String(40))
    arch: Mapped[str | None] = mapped_column(String(20))
    board: Mapped[str | None] = mapped_column(String(40))
    hw: Mapped[str | None] = mapped_column(String(60))  # hardware profile (--hw)
    accel: Mapped[str | None] = mapped_column(String(20))
    cell: Mapped[str | None] = mapped_column(String(100), index=True)
    host: Mapped[str | None] = mapped_column(String(200))
    options: Mapped[str | None] = mapped_column(Text)  # the command line's arguments
    interrupted: Mapped[bool] = mapped_column(Boolean, default=False)
    tests: Mapped[list[TestResult]] = relationship(back_populates="run", order_by="TestResult.id")
    boots: Mapped[list[Boot]] = relationship(back_populates="run", order_by="Boot.id")


class TestResult(Base):
    __tablename__ = "tests"
    __test__ = False  # not a pytest test class
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    nodeid: Mapped[str] = mapped_column(String(500), index=True)
    attempt: Mapped[int] = mapped_column(Integer, default=0)  # 0 the run, 1 its rerun
    outcome: Mapped[str] = mapped_column(String(10))  # passed failed error skipped
    duration: Mapped[float] = mapped_column(Float, default=0.0)
    cause: Mapped[str | None] = mapped_column(Text)  # first line of the failure
    last_milestone: Mapped[str | None] = mapped_column(String(100))
    evidence: Mapped[str | None] = mapped_column(Text)  # the failed test's console log
    run: Mapped[Run] = relationship(back_populates="tests")


class Boot(Base):
    __tablename__ = "boots"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    seq: Mapped[int] = mapped_column(Integer)  # 1, 2, ... within the run
    machine: Mapped[str | None] = mapped_column(String(100))
    ok: Mapped[bool] = mapped_column(Boolean)
    error: Mapped[str | None] = mapped_column(Text)
    blame: Mapped[str | None] = mapped_column(String(10))
    console_log: Mapped[str | None] = mapped_column(Text)
    run: Mapped[Run] = relationship(back_populates="boots")
    milestones: Mapped[list[Milestone]] = relationship(order_by="Milestone.seconds")
    services: Mapped[list[ServiceTime]] = relationship(order_by="ServiceTime.id")


class Milestone(Base):
    __tablename__ = "milestones"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    boot_id: Mapped[int] = mapped_column(ForeignKey("boots.id"), index=True)
    name: Mapped[str] = mapped_column(String(100), index=True)
    seconds: Mapped[float] = mapped_column(Float)  # since power-on (lab/timeline.py)


class ServiceTime(Base):
    """A system container's created/started/finished, seconds since power-on."""

    __tablename__ = "service_times"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    boot_id: Mapped[int] = mapped_column(ForeignKey("boots.id"), index=True)
    service: Mapped[str] = mapped_column(String(100))
    created: Mapped[float | None] = mapped_column(Float)
    started: Mapped[float | None] = mapped_column(Float)
    finished: Mapped[float | None] = mapped_column(Float)


# -- what a recorder hands over (plain data, no session) -----------------------------------


@dataclass
class TestData:
    __test__ = False
    nodeid: str
    outcome: str
    duration: float = 0.0
    attempt: int = 0
    cause: str | None = None
    last_milestone: str | None = None
    evidence: str | None = None


@dataclass
class BootData:
    seq: int
    ok: bool
    milestones: dict[str, float] = field(default_factory=dict)
    services: dict[str, dict[str, float]] = field(default_factory=dict)
    machine: str | None = None
    error: str | None = None
    blame: str | None = None
    console_log: str | None = None


@dataclass
class RunData:
    uid: str
    lab_run_id: str
    kind: str
    started: datetime
    source: str = "live"
    finished: datetime | None = None
    git_commit: str | None = None
    image: str | None = None
    image_version: str | None = None
    image_checksum: str | None = None
    platform: str | None = None
    arch: str | None = None
    board: str | None = None
    hw: str | None = None
    accel: str | None = None
    cell: str | None = None
    host: str | None = None
    options: str | None = None
    interrupted: bool = False
    tests: list[TestData] = field(default_factory=list)
    boots: list[BootData] = field(default_factory=list)

    def row(self) -> Run:
        fields = {k: v for k, v in vars(self).items() if k not in ("tests", "boots")}
        run = Run(**fields)
        run.tests = [TestResult(**vars(t)) for t in self.tests]
        run.boots = [
            Boot(seq=b.seq, machine=b.machine, ok=b.ok, error=b.error, blame=b.blame,
                 console_log=b.console_log,
                 milestones=[Milestone(name=n, seconds=float(s)) for n, s in b.milestones.items()],
                 services=[ServiceTime(service=name, created=s.get("created"),
                                       started=s.get("started"), finished=s.get("finished"))
                           for name, s in b.services.items()])
            for b in self.boots]
        return run


def utc(dt: datetime | None = None) -> datetime:
    """Naive UTC, second precision: what every back-end stores the same way."""
    dt = dt or datetime.now(UTC)
    if dt.tzinfo is not None:
        dt = dt.astimezone(UTC).replace(tzinfo=None)
    return dt.replace(microsecond=0)


# -- opening -------------------------------------------------------------------------------


def resolve_url(given: str | None, cwd: Path | None = None) -> str | None:
    """--results-db, else $ROSLAB_RESULTS_DB, else SQLite in results/; None when "off".
    A plain path is taken as an SQLite file."""
    url = given or os.environ.get(ENV) or ""
    if url.strip().lower() == OFF:
        return None
    if not url:
        url = str((cwd or Path.cwd()) / DEFAULT_PATH)
    if "://" not in url:
        url = f"sqlite:///{Path(url).expanduser().resolve()}"
    return url


def display(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def _wait() -> float:
    try:
        return float(os.environ.get(WAIT_ENV, DEFAULT_WAIT))
    except ValueError:
        return DEFAULT_WAIT


def sqlite_file(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def _engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3, not psycopg2
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, pool_pre_ping=True,
                             connect_args={"connect_timeout": 10}
                             if parsed.get_backend_name() == "postgresql" else {})
    wait = _wait()
    engine = create_engine(parsed, connect_args={"timeout": wait})

    @event.listens_for(engine, "connect")
    def _connect(dbapi: Any, record: Any) -> None:
        # SQLAlchemy then emits BEGIN itself (below), so the write lock is taken up front
        dbapi.isolation_level = None
        cursor = dbapi.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(wait * 1000)}")
        cursor.execute("PRAGMA journal_mode = WAL")  # readers and one writer at once
        cursor.execute("PRAGMA synchronous = NORMAL")  # WAL keeps committed runs on a crash
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


T = TypeVar("T")


def _transient(exc: BaseException) -> bool:
    """A locked or busy SQLite, a serialization failure or a dropped server connection:
    worth another try."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    message = str(getattr(exc, "orig", exc)).lower()
    return any(s in message for s in ("locked", "busy", "could not serialize", "deadlock"))


def retrying(action: Callable[[], T], wait: float | None = None) -> T:
    """`action` until it succeeds or `wait` seconds passed; only transient errors retried."""
    deadline = time.monotonic() + (_wait() if wait is None else wait)
    delay = 0.05
    while True:
        try:
            return action()
        except OperationalError as exc:
            if not _transient(exc) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay * (1 + random.random()))  # jitter: two writers do not re-collide
        delay = min(delay * 2, 2.0)


def _alembic_config(connection: Connection) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    config = _alembic_config(None)  # type: ignore[arg-type]
    return str(ScriptDirectory.from_config(config).get_current_head())


def current_revision(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, target: str = "head") -> tuple[str | None, str | None]:
    """Bring the schema to `target` in place; (revision before, after). One migration at a
    time per database: SQLite's write lock (BEGIN IMMEDIATE), PostgreSQL's advisory lock."""
    from alembic import command
    from alembic.util.exc import CommandError

    def run() -> tuple[str | None, str | None]:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_LOCK_KEY})
            before = current_revision(conn)
            try:
                command.upgrade(_alembic_config(conn), target)
            except CommandError as exc:
                raise ResultsDBError(
                    f"the results database is at schema revision {before}, which this roslab "
                    f"does not know (a newer roslab wrote it): {exc}") from None
            return before, current_revision(conn)

    return retrying(run)


class ResultsDB:
    """An open results database at this roslab's schema."""

    def __init__(self, url: str, *, create: bool = True,
                 say: Callable[[str], None] | None = None) -> None:
        self.url = url
        path = sqlite_file(url)
        if path is not None and not path.exists():
            if not create:
                raise ResultsDBError(f"no results database at {path} (a run, `roslab bench` "
                                     "or `roslab history import` makes it)")
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.engine = _engine(url)
            before, after = upgrade(self.engine)
        except ResultsDBError:
            raise
        except (SQLAlchemyError, OSError) as exc:
            raise ResultsDBError(f"results database {display(url)}: "
                                 f"{_first_line(exc)}") from None
        if say is not None and before != after:
            say(f"results database {display(url)}: schema "
                + (f"upgraded in place from {before} to {after}" if before else
                   f"created at {after}"))

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> ResultsDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            yield session

    def add(self, run: RunData) -> int | None:
        """Insert `run` with its tests and boots; its id, or None when a run with its uid is
        already stored (an import made twice)."""

        def insert() -> int | None:
            with self.session() as session, session.begin():
                if session.scalar(select(Run.id).where(Run.uid == run.uid)) is not None:
                    return None
                row = run.row()
                session.add(row)
                session.flush()
                return row.id

        try:
            return retrying(insert)
        except IntegrityError:  # another writer stored the same uid meanwhile
            return None
        except SQLAlchemyError as exc:
            raise ResultsDBError(f"results database {display(self.url)}: "
                                 f"{_first_line(exc)}") from None

    def has_lab_run(self, lab_run_id: str) -> bool:
        with self.session() as session:
            return session.scalar(select(Run.id).where(Run.lab_run_id == lab_run_id)
                                  .limit(1)) is not None

    def runs(self, *, kinds: Sequence[str] = (), cell: str | None = None,
             last: int | None = None, with_tests: bool = True,
             with_boots: bool = True) -> list[Run]:
        """Runs, oldest first: the last `last` of them that match."""
        query = select(Run).order_by(Run.started.desc(), Run.id.desc())
        if kinds:
            query = query.where(Run.kind.in_(kinds))
        if cell is not None:
            query = query.where(Run.cell == cell)
        if last:
            query = query.limit(last)
        options = []
        if with_tests:
            options.append(selectinload(Run.tests))
        if with_boots:
            options.append(selectinload(Run.boots).selectinload(Boot.milestones))
            options.append(selectinload(Run.boots).selectinload(Boot.services))
        try:
            with self.session() as session:
                return list(reversed(session.scalars(query.options(*options)).all()))
        except SQLAlchemyError as exc:
            raise ResultsDBError(f"results database {display(self.url)}: "
                                 f"{_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0]


def record(url: str | None, run: RunData, say: Callable[[str], None]) -> int | None:
    """Store `run`, never raising: a run whose database cannot be reached still passes or
    fails on its own merits, and `say` tells the user it was not recorded."""
    if url is None:
        return None
    try:
        with ResultsDB(url, say=say) as db:
            run_id = db.add(run)
    except ResultsDBError as exc:
        say(f"WARNING: could not record this run in the results database: {exc}")
        return None
    except Exception as exc:  # a bug here must not turn a green run red
        say(f"WARNING: could not record this run in the results database {display(url)}: "
            f"{type(exc).__name__}: {exc}")
        return None
    if run_id is None:
        say(f"results database {display(url)}: run {run.uid} was already recorded")
    else:
        say(f"recorded {run.kind} run #{run_id} ({len(run.tests)} tests, {len(run.boots)} "
            f"boots) in {display(url)}")
    return run_id
