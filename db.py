"""The database: one engine per app, one session per request or job, Alembic for the schema."""

from __future__ import annotations

import collections
import datetime
import functools
import logging
import os
import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: SQLite's busy handler does the waiting
    fcntl = None

import click
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from flask import Flask, current_app, g
from flask.cli import AppGroup
from sqlalchemy.engine import Engine
from sqlmodel import Session
from werkzeug.routing import IntegerConverter

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
log = logging.getLogger(__name__)


def _null(_value: None) -> None:
    return None


# SQLite's module binds a None only after looking for an adapter the slow way: it raises and
# catches two AttributeErrors (the protocol's __adapt__, then None's __conform__). Every logged
# turn binds a handful of NULLs; a registered adapter answers at once, with the same NULL.
sqlite3.register_adapter(type(None), _null)


def make_engine(url: str) -> Engine:
    """Build an engine; SQLite gets WAL and a busy timeout so web and worker can share it.

    Its errors name no bound values (hide_parameters), as db.Prepared's do not: those are
    phone numbers, payers' texts and names, and an error is logged with its message.
    """
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite"):
        database = sa.make_url(url).database
        on_disk = bool(database) and database != ":memory:" and not database.startswith("file:")
        # A file database gets a pool; handing back the connection used last keeps SQLite's
        # page cache warm (a text's first read cost 175 us first-in-first-out, 118 last-in).
        pool = {"pool_use_lifo": True} if on_disk else {}
        engine = sa.create_engine(
            url,
            connect_args={"timeout": 30, "check_same_thread": False},
            hide_parameters=True,
            **pool,
        )

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            # WAL with NORMAL survives an app crash; only an OS crash can lose the last commits.
            cursor.execute("PRAGMA synchronous=NORMAL")
            # No memory-mapped I/O: with two processes writing, pages mapped in one are changed
            # under it by the other's commits and checkpoints; a text cost its worker about
            # 30 us more CPU under load with a 256 MB map than without (bench.webhook).
            cursor.close()

        sa.event.listen(engine, "engine_disposed", _engine_disposed)
        if on_disk:
            checkpoint = functools.partial(_checkpoint, weakref.ref(engine))
            _writer_locks[engine] = WriterLock(f"{database}-writer.lock", checkpoint=checkpoint)
        return engine
    engine = sa.create_engine(
        url, pool_pre_ping=True, pool_size=5, max_overflow=10, hide_parameters=True
    )
    sa.event.listen(engine, "engine_disposed", _engine_disposed)
    return engine


class WriterLock:
    """One SQLite writer at a time across this machine's processes, queued in the kernel.

    SQLite lets one connection write; the others wait in its busy handler, which sleeps 1, 2, 5,
    10... ms between tries. Under load those sleeps, not the work, set the pace (in one bench run
    the webhook answered 454 texts a second with them, 563 without). Writers holding this lock
    (`flock` on a file beside the database) start the moment the one before commits. Writers
    that do not take it (jobs, admin pages) still work: they wait for SQLite's own lock.

    Every CHECKPOINT_EVERY writes a process makes under it, `checkpoint` runs on a thread of its
    own once the lock is released. Left to SQLite, the commit that fills the WAL to 1,000 pages
    copies them back and syncs the file (4 to 7 ms here) with this lock still held, so every
    other writer waited; now that seldom comes to pass.
    """

    def __init__(self, path: str, *, checkpoint: Callable[[], None] | None = None) -> None:
        self.path = path
        self._threads = threading.Lock()  # flock does not order threads sharing one descriptor
        self._fd: int | None = None
        self._pid: int | None = None
        self._checkpoint = checkpoint
        self._writes = 0
        self._checkpointing = threading.Lock()

    def __enter__(self) -> None:
        self._threads.acquire()
        try:
            if self._pid != os.getpid():  # a forked worker needs its own open file
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
                self._pid = os.getpid()
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._threads.release()
            raise

    def __exit__(self, *_exc: object) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._writes += 1
            due = self._writes % CHECKPOINT_EVERY == 0
            self._threads.release()
        if due and self._checkpoint is not None and self._checkpointing.acquire(blocking=False):
            threading.Thread(target=self._run_checkpoint, name="sqlite-checkpoint").start()

    def _run_checkpoint(self) -> None:
        try:
            self._checkpoint()
        except Exception:  # SQLite's own checkpoint at 1,000 pages still bounds the WAL
            log.warning("SQLite checkpoint failed", exc_info=True)
        finally:
            self._checkpointing.release()


CHECKPOINT_EVERY = 64
"""Writes a process makes under a WriterLock between two WAL checkpoints it runs itself."""


def _checkpoint(engine_ref: weakref.ref[Engine]) -> None:
    """Copy the WAL back into the database file without waiting for or blocking anyone."""
    engine = engine_ref()
    if engine is not None:
        with engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")


def writer(bind: Engine):
    """A context in which to write and commit without waiting in SQLite's busy handler.

    PostgreSQL locks rows, and an in-memory SQLite database has one connection: nothing to do.
    """
    lock = _writer_locks.get(bind) if fcntl else None
    return lock if lock is not None else nullcontext()


_writer_locks: weakref.WeakKeyDictionary[Engine, WriterLock] = weakref.WeakKeyDictionary()


class _Kept(threading.local):
    """The connection one thread keeps between uses, and the process it was opened in."""

    connection: sa.Connection | None = None
    pid: int | None = None
    in_use: bool = False


_kept = _Kept()


@contextmanager
def kept_connection(bind: Engine) -> Iterator[sa.Connection]:
    """A connection this thread keeps between uses, outside any transaction.

    For the webhook: checking a connection out of the pool and back in cost a text about 100 us
    of CPU under load, a sixth of its database work. The connection goes back to the pool when
    the thread asks for another engine's, when the engine is disposed, and after any error; a
    connection left in a transaction is rolled back, never carried into the next use. A use
    inside a use on the same thread gets a pool connection of its own.
    """
    kept = _kept
    if kept.in_use:  # a use inside a use (a request made from a request): a connection of its own
        with bind.connect() as connection:
            yield connection
        return
    connection = kept.connection
    if (
        connection is None
        or connection.engine is not bind
        or kept.pid != os.getpid()
        or connection.closed
        or connection.invalidated
    ):
        _let_go(kept, close=kept.pid == os.getpid())
        connection = kept.connection = bind.connect()
        kept.pid = os.getpid()
    kept.in_use = True
    try:
        yield connection
    except BaseException:
        _let_go(kept)
        raise
    finally:
        kept.in_use = False
    if connection.in_transaction():
        connection.rollback()


def _let_go(kept: _Kept, *, close: bool = True) -> None:
    connection, kept.connection = kept.connection, None
    if connection is not None and close:  # a forked child leaves its parent's alone
        connection.close()


def _engine_disposed(bind: Engine) -> None:
    if _kept.connection is not None and _kept.connection.engine is bind:
        _let_go(_kept)


class Prepared:
    """A Core statement compiled once per dialect and run straight on the DBAPI cursor.

    For the few statements every webhook call runs, SQLAlchemy's per-execution work (cache
    lookup, execution context, result object) cost several times the query itself. This keeps
    what matters of it: the SQL is SQLAlchemy's, for each dialect; parameters and results go
    through the columns' own types (UTC datetimes, JSON); it runs in the caller's transaction.
    Expanding IN parameters are not supported.
    """

    def __init__(self, statement: sa.Executable) -> None:
        self.statement = statement
        self._compiled: dict[str, _PreparedSQL] = {}

    def execute(self, connection: sa.Connection, params: Mapping[str, Any]) -> _Result:
        """Run on `connection` (inside its transaction) with these bind parameter values."""
        return run_together(connection, [(self, params)])[0]

    def compiled(self, dialect: sa.Dialect) -> _PreparedSQL:
        prepared = self._compiled.get(dialect.name)
        if prepared is None:
            prepared = self._compiled[dialect.name] = _PreparedSQL(self.statement, dialect)
        return prepared


Bound = list[tuple["_PreparedSQL", Any]]
"""Statements with their parameters bound, ready to send (see bind_together)."""


def bind_together(
    dialect: sa.Dialect, statements: Sequence[tuple[Prepared, Mapping[str, Any]]]
) -> Bound:
    """Turn the caller's values into the parameters to send, ahead of run_bound().

    Binding converts every value (JSON, UTC datetimes): done before a lock is taken, it is not
    done while other writers wait.
    """
    return [
        (compiled, compiled.parameters(params))
        for statement, params in statements
        for compiled in (statement.compiled(dialect),)
    ]


def run_together(
    connection: sa.Connection, statements: Sequence[tuple[Prepared, Mapping[str, Any]]]
) -> list[_Result]:
    """Run Prepared statements in order, in `connection`'s transaction, and return their results.

    On PostgreSQL they travel in one pipeline: a single round trip to the server for them all,
    where one each cost a text most of its time. A statement may use what an earlier one wrote.
    Elsewhere they run one after the other. An error is raised as SQLAlchemy raises it
    (IntegrityError, OperationalError...), without the parameters, which hold what payers wrote;
    a lost connection is not used again.
    """
    return run_bound(connection, bind_together(connection.dialect, statements))


def run_bound(connection: sa.Connection, bound: Bound) -> list[_Result]:
    """run_together() for statements bound already."""
    dialect = connection.dialect
    dbapi_connection = connection.connection.dbapi_connection
    cursors: list[Any] = []
    sql = bound[0][0].sql if bound else ""
    try:
        if len(bound) > 1 and dialect.name == "postgresql":
            sql = ";\n".join(compiled.sql for compiled, _ in bound)  # which one failed: unknown
            with dbapi_connection.pipeline():
                for compiled, params in bound:
                    cursors.append(dbapi_connection.cursor())
                    cursors[-1].execute(compiled.sql, params)
            return [
                compiled.result(cursor)
                for (compiled, _), cursor in zip(bound, cursors, strict=True)
            ]
        results = []
        for compiled, params in bound:
            sql = compiled.sql
            cursors.append(dbapi_connection.cursor())  # fails already on a closed connection
            cursors[-1].execute(sql, params)
            results.append(compiled.result(cursors[-1]))
        return results
    except dialect.loaded_dbapi.Error as error:
        cursor = cursors[-1] if cursors else None
        invalidated = dialect.is_disconnect(error, dbapi_connection, cursor)
        if invalidated:
            connection.invalidate(error)
        raise sa.exc.DBAPIError.instance(
            sql,
            None,
            error,
            dialect.loaded_dbapi.Error,
            hide_parameters=True,
            connection_invalidated=invalidated,
            dialect=dialect,
        ) from error
    finally:
        for cursor in cursors:
            cursor.close()


class _Result(list):
    """Rows (named tuples), and how many rows a DML statement changed."""

    def __init__(self, rows: list, rowcount: int) -> None:
        super().__init__(rows)
        self.rowcount = rowcount

    def one(self):
        if len(self) != 1:
            raise sa.exc.NoResultFound(f"expected one row, got {len(self)}")
        return self[0]


class _PreparedSQL:
    def __init__(self, statement: sa.Executable, dialect: sa.Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql = compiled.string
        self.positional = compiled.positional
        constants: dict[str, Any] = {}
        processors: dict[str, Callable[[Any], Any]] = {}
        for name, bind in compiled.binds.items():
            if bind.expanding:
                raise ValueError(f"Prepared does not expand IN parameters ({name})")
            bind_type = bind.type.dialect_impl(dialect)
            processor = bind_type.bind_processor(dialect)
            if processor is not None:
                processors[name] = _last_one_remembered(processor, (dialect.name, repr(bind_type)))
            if not bind.required:
                value = bind.effective_value
                constant = processor(value) if processor and value is not None else value
                constants[name] = _plain(constant)
        # Column defaults SQLAlchemy works out in Python (not in the SQL) for values not given.
        defaults: dict[str, Callable[[], Any]] = {}
        for columns, attribute in (
            (getattr(compiled, "insert_prefetch", ()), "default"),
            (getattr(compiled, "update_prefetch", ()), "onupdate"),
        ):
            for column in columns:
                default = getattr(column, attribute)
                if default is None or not (default.is_scalar or default.is_callable):
                    continue
                constants.pop(column.key, None)
                if default.is_scalar:
                    defaults[column.key] = functools.partial(_same, default.arg)
                else:  # SQLAlchemy wraps a callable to take the execution context
                    defaults[column.key] = functools.partial(default.arg, None)
        names = list(compiled.positiontup if self.positional else compiled.binds)
        self.parameters = _binder(names, self.positional, constants, processors, defaults)
        # A PostgreSQL INSERT returns the new primary key even when not asked (implicit RETURNING).
        returning = getattr(compiled, "effective_returning", None)
        columns = list(returning if returning else getattr(statement, "exported_columns", ()))
        self.width = len(columns)
        self.results = [
            (index, processor)
            for index, column in enumerate(columns)
            if (processor := column.type.dialect_impl(dialect).result_processor(dialect, None))
        ]
        self.row_type = collections.namedtuple(
            "Row", [c.key for c in columns] or ["_"], rename=True
        )

    def result(self, cursor: Any) -> _Result:
        # Whether rows come back is known from the statement; asking the cursor for its
        # description costs psycopg a column object and type lookup per column.
        rows = cursor.fetchall() if self.width else []
        return _Result([self.row(r) for r in rows], cursor.rowcount)

    def row(self, raw: Sequence[Any]) -> tuple:
        if len(raw) != self.width:
            raise ValueError(f"expected {self.width} columns, got {len(raw)}")
        if not self.results:
            return self.row_type._make(raw)
        values = list(raw)
        for index, process in self.results:
            values[index] = process(values[index])
        return self.row_type._make(values)


def _binder(
    names: Sequence[str],
    positional: bool,
    constants: Mapping[str, Any],
    processors: Mapping[str, Callable[[Any], Any]],
    defaults: Mapping[str, Callable[[], Any]],
) -> Callable[[Mapping[str, Any]], Sequence[Any] | dict[str, Any]]:
    """A function from the caller's values to the parameters to send, written for one statement.

    Every statement of every text binds its values: as a loop over a plan that took 25 steps a
    value, as straight-line code about 6. Python writes its dataclasses' __init__ the same way.
    A missing value without a column default raises KeyError, never binds a NULL.
    """
    namespace: dict[str, Any] = {"_plain": _plain, "_PLAIN": _BUILTIN | {type(None)}}
    expressions = []
    for index, name in enumerate(names):
        if name in constants:
            namespace[f"c{index}"] = constants[name]
            expressions.append(f"c{index}")
            continue
        given = f"values[{name!r}]"
        if name in defaults:
            namespace[f"d{index}"] = defaults[name]
            given = f"({given} if {name!r} in values else d{index}())"
        if name in processors:
            namespace[f"p{index}"] = processors[name]
            expressions.append(f"(None if (v := {given}) is None else p{index}(v))")
        else:
            expressions.append(f"(v if (v := {given}).__class__ in _PLAIN else _plain(v))")
    if positional:
        body = "[" + ", ".join(expressions) + "]"
    else:
        body = "{" + ", ".join(f"{n!r}: {e}" for n, e in zip(names, expressions, strict=True)) + "}"
    exec(f"def bind(values):\n    return {body}\n", namespace)  # noqa: S102
    return namespace["bind"]


def _plain(value: Any) -> Any:
    """A str subclass (a StrEnum) as a plain str.

    The DBAPI binds a plain str at once; for anything else it first looks for adapters, and
    SQLite's module raises and catches two AttributeErrors per value doing so.
    """
    return str.__str__(value) if isinstance(value, str) else value


_BUILTIN = frozenset({str, int, float, bytes})


def _same(value: Any) -> Any:
    return value


_IMMUTABLE = (datetime.datetime, datetime.date, str, int, float, bytes)
_remembered: dict[tuple[str, str], tuple[Any, Any]] = {}


def _last_one_remembered(processor: Callable[[Any], Any], kind: tuple[str, str]) -> Callable:
    """`processor`, answering at once for the object last converted by any processor of `kind`.

    A webhook call binds the same `now` in several statements; each costs a conversion (UTC,
    then text on SQLite). `kind` is the dialect and the type as written (UTCDateTime(), say),
    so only identical conversions share an answer. Only immutable values are remembered (a dict
    may have changed since), and the pair is swapped in one assignment, so threads never mix
    two calls.
    """
    remembered = _remembered

    def process(value: Any) -> Any:
        given, answer = remembered.get(kind, _NOTHING)
        if given is value:
            return answer
        answer = processor(value)
        if isinstance(value, _IMMUTABLE):
            remembered[kind] = (value, answer)
        return answer

    return process


_NOTHING = (object(), None)


def engine(app: Flask | None = None) -> Engine:
    """The app's engine."""
    return (app or current_app).extensions["db_engine"]


def get_session() -> Session:
    """The session of the current request or job, opened on first use."""
    if "db_session" not in g:
        g.db_session = Session(engine(), expire_on_commit=False)
    return g.db_session


def close_session(_exc: BaseException | None = None) -> None:
    """Close the request's session; uncommitted work is rolled back."""
    session = g.pop("db_session", None)
    if session is not None:
        session.close()


@contextmanager
def session_scope(app: Flask | None = None) -> Iterator[Session]:
    """A session for code outside a request (CLI, jobs): commit on success, roll back on error."""
    with Session(engine(app), expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def after_commit(
    session: Session, key: str, item: Any, run: Callable[[Session, list], None]
) -> None:
    """Have `run(session, items)` called once `session` commits, with every item given under
    `key` since its last commit; a rollback forgets them, with the work that gave them.

    For work that must wait for the commit: a text sent at most once, a report applied to a row
    other connections can now see. The committing session can run no SQL then; `run` opens its
    own. An error in `run` is logged, not raised: the commit it would fail has happened.
    """
    pending = session.info.get(key)
    if pending is None:
        pending = session.info[key] = []

        def committed(_session: Session) -> None:
            items = list(pending)
            pending.clear()
            if not items:
                return
            try:
                run(session, items)
            except Exception:
                log.exception("work after a commit (%s) stopped", key)

        sa.event.listen(session, "after_commit", committed)
        sa.event.listen(session, "after_rollback", lambda _session: pending.clear())
    pending.append(item)


def alembic_config(url: str) -> Config:
    """Alembic settings built in code, so one `migrations/` folder serves every database URL."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Apply migrations up to `revision`."""
    command.upgrade(alembic_config(url), revision)


def ping(app: Flask | None = None) -> None:
    """Raise if the database cannot answer a trivial query."""
    with engine(app).connect() as connection:
        connection.execute(sa.text("SELECT 1"))


db_cli = AppGroup("db", help="Database schema commands (Alembic migrations).")


@db_cli.command("upgrade")
@click.argument("revision", default="head")
def upgrade_command(revision: str) -> None:
    """Apply migrations up to REVISION (default: head)."""
    upgrade(current_app.config["DATABASE_URL"], revision)
    click.echo(f"Database at {revision}.")


@db_cli.command("downgrade")
@click.argument("revision")
def downgrade_command(revision: str) -> None:
    """Revert migrations down to REVISION (e.g. -1, or base)."""
    command.downgrade(alembic_config(current_app.config["DATABASE_URL"]), revision)
    click.echo(f"Database at {revision}.")


@db_cli.command("current")
def current_command() -> None:
    """Show the revision the database is at."""
    command.current(alembic_config(current_app.config["DATABASE_URL"]), verbose=False)


@db_cli.command("revision")
@click.option("-m", "--message", required=True, help="What the migration does.")
def revision_command(message: str) -> None:
    """Write a new migration from the difference between the models and the database."""
    command.revision(
        alembic_config(current_app.config["DATABASE_URL"]), message=message, autogenerate=True
    )


ROW_ID_MAX = 2**31 - 1
"""The largest row id: every primary key is an INTEGER column, 32 bits on PostgreSQL."""


class RowIdConverter(IntegerConverter):
    """`<id:name>` in a route: a row id, so a number no row can have is a 404, not a 500.

    Passed to the database, 2**64 overflowed the driver (SQLite) or the column (PostgreSQL).
    """

    def __init__(self, url_map: Any) -> None:
        super().__init__(url_map, min=1, max=ROW_ID_MAX)


def init_app(app: Flask) -> None:
    """Create the engine, close sessions after each request, register `flask db` and `<id:>`."""
    app.url_map.converters["id"] = RowIdConverter
    app.extensions["db_engine"] = make_engine(app.config["DATABASE_URL"])
    app.teardown_appcontext(close_session)
    app.cli.add_command(db_cli)
