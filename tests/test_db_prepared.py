"""db.Prepared (the webhook's statements on the DBAPI cursor) and the SQLite writer lock."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import sqlite3
import threading
import time
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

import db
from models import Case, Conversation, ConversationTurn

CASES = Case.__table__
CONVERSATIONS = Conversation.__table__
TURNS = ConversationTurn.__table__


@pytest.fixture
def engine(database_url):
    engine = db.make_engine(database_url)
    yield engine
    engine.dispose()


def test_parameters_and_results_go_through_the_column_types(engine):
    """Aware UTC datetimes, JSON and dates survive the trip, as they do through SQLAlchemy."""
    when = datetime(2026, 3, 8, 6, 59, 30, 123456, tzinfo=UTC)
    insert = db.Prepared(
        CONVERSATIONS.insert()
        .values(
            phone=sa.bindparam("phone"),
            state=sa.bindparam("state", type_=CONVERSATIONS.c.state.type),
            language="es",
            updated_at=sa.bindparam("at", type_=CONVERSATIONS.c.updated_at.type),
        )
        .returning(CONVERSATIONS.c.id, CONVERSATIONS.c.state, CONVERSATIONS.c.updated_at)
    )
    state = {"step": "quoted", "quote": {"amount_cents": 5000, "expires": "2026-03-08T07:09"}}
    with engine.begin() as connection:
        row = insert.execute(connection, {"phone": "+16175550100", "state": state, "at": when})
        new = row.one()
        assert (new.state, new.updated_at) == (state, when)
        assert new.updated_at.tzinfo is not None

    # What SQLAlchemy itself reads back is the same: the SQL and the stored forms are its own.
    with engine.connect() as connection:
        stored = connection.execute(sa.select(CONVERSATIONS)).one()
    assert (stored.state, stored.language, stored.updated_at) == (state, "es", when)

    # A datetime with another offset is stored as the same instant.
    later = when.astimezone(datetime.now().astimezone().tzinfo) + timedelta(hours=1)
    update = db.Prepared(
        CONVERSATIONS.update()
        .where(CONVERSATIONS.c.id == sa.bindparam("conversation_id"))
        .values(updated_at=sa.bindparam("at", type_=CONVERSATIONS.c.updated_at.type))
    )
    select = db.Prepared(
        sa.select(CONVERSATIONS.c.updated_at).where(
            CONVERSATIONS.c.updated_at
            > sa.bindparam("after", type_=CONVERSATIONS.c.updated_at.type)
        )
    )
    with engine.begin() as connection:
        assert update.execute(connection, {"conversation_id": new.id, "at": later}).rowcount == 1
        assert [r.updated_at for r in select.execute(connection, {"after": when})] == [
            later.astimezone(UTC)
        ]
        assert select.execute(connection, {"after": later}) == []


def test_constants_in_the_statement_are_bound_and_dates_read_back(engine):
    with engine.begin() as connection:
        connection.execute(
            CASES.insert(),
            [
                {"case_number": "A-1", "payer_name": "Ana", "amount_due_cents": 100,
                 "balance_cents": 500, "next_due_date": date(2026, 12, 1), "status": "open"},
                {"case_number": "B-2", "payer_name": "Bo", "amount_due_cents": 100,
                 "balance_cents": 0, "next_due_date": None, "status": "closed"},
            ],
        )  # fmt: skip
    open_cases = db.Prepared(
        sa.select(
            CASES.c.case_number, CASES.c.next_due_date, (CASES.c.balance_cents > 0).label("owes")
        ).where(CASES.c.status == "open", CASES.c.case_number != sa.bindparam("not_this"))
    )
    with engine.connect() as connection:
        (row,) = open_cases.execute(connection, {"not_this": "Z-9"})
    assert (row.case_number, row.next_due_date, bool(row.owes)) == ("A-1", date(2026, 12, 1), True)


def test_a_database_error_is_raised_as_sqlalchemy_raises_it_without_the_values(engine):
    insert = db.Prepared(
        TURNS.insert().values(
            phone="+16175550100",
            direction="inbound",
            body=sa.bindparam("body"),
            provider_message_id=sa.bindparam("sid"),
            created_at=sa.bindparam("at", type_=TURNS.c.created_at.type),
            updated_at=sa.bindparam("at", type_=TURNS.c.updated_at.type),
        )
    )
    now = datetime.now(UTC)
    with engine.begin() as connection:
        insert.execute(connection, {"body": "PAY 50", "sid": "SM1", "at": now})
    with pytest.raises(IntegrityError) as raised, engine.begin() as connection:
        insert.execute(connection, {"body": "my secret words", "sid": "SM1", "at": now})
    assert "my secret words" not in str(raised.value)


def test_a_database_error_through_sqlalchemy_carries_no_values_either(engine):
    """The ORM's and Core's errors too: logged (a failed text, a failed job), they would put
    the payer's number and words in the logs."""
    now = datetime.now(UTC)
    turn = {"direction": "inbound", "created_at": now, "updated_at": now}
    with engine.begin() as connection:
        connection.execute(
            TURNS.insert(),
            {**turn, "phone": "+16175550100", "body": "PAY 50", "provider_message_id": "SM1"},
        )
    with pytest.raises(IntegrityError) as raised, engine.begin() as connection:
        connection.execute(
            TURNS.insert(),
            {
                **turn,
                "phone": "+16175550199",
                "body": "my secret words",
                "provider_message_id": "SM1",
            },
        )
    assert "my secret words" not in str(raised.value)
    assert "+16175550199" not in str(raised.value)


def test_columns_left_out_get_their_python_defaults_as_through_sqlalchemy(engine):
    """SQLAlchemy fills scalar and callable column defaults in Python, not in the SQL."""
    insert = db.Prepared(
        CONVERSATIONS.insert()
        .values(phone=sa.bindparam("phone"))
        .returning(
            CONVERSATIONS.c.state,
            CONVERSATIONS.c.language,
            CONVERSATIONS.c.version,
            CONVERSATIONS.c.updated_at,
        )
    )
    before = datetime.now(UTC)
    with engine.begin() as connection:
        row = insert.execute(connection, {"phone": "+16175550100"}).one()
        given = insert.execute(connection, {"phone": "+16175550101", "version": 7}).one()
    assert (row.state, row.language, row.version) == ({}, "en", 0)
    assert before <= row.updated_at <= datetime.now(UTC)
    assert given.version == 7


def test_a_missing_value_is_an_error_not_a_null(engine):
    select = db.Prepared(sa.select(CASES.c.id).where(CASES.c.case_number == sa.bindparam("n")))
    with engine.connect() as connection, pytest.raises(KeyError, match="'n'"):
        select.execute(connection, {})


def _turn_insert(**values):
    return db.Prepared(
        TURNS.insert()
        .values(
            phone="+16175550100",
            direction=sa.bindparam("direction"),
            body=sa.bindparam("body"),
            provider_message_id=sa.bindparam("sid"),
            created_at=sa.bindparam("at", type_=TURNS.c.created_at.type),
            updated_at=sa.bindparam("at", type_=TURNS.c.updated_at.type),
            **values,
        )
        .returning(TURNS.c.id, TURNS.c.in_reply_to_id)
    )


def test_statements_run_together_see_what_the_ones_before_them_wrote(engine):
    """On PostgreSQL they go in one pipeline; the reply finds the text it answers by its sid."""
    text = _turn_insert()
    reply = _turn_insert(
        in_reply_to_id=sa.select(TURNS.c.id)
        .where(TURNS.c.provider_message_id == sa.bindparam("reply_to"))
        .scalar_subquery()
    )
    at = datetime.now(UTC)
    with engine.begin() as connection:
        logged, answered = db.run_together(
            connection,
            [
                (text, {"direction": "inbound", "body": "BAL", "sid": "SM1", "at": at}),
                (reply, {"direction": "outbound", "body": "$10", "sid": None, "at": at,
                         "reply_to": "SM1"}),
            ],
        )  # fmt: skip
    assert answered.one().in_reply_to_id == logged.one().id


def test_an_error_in_statements_run_together_is_sqlalchemys_and_nothing_stays(engine):
    insert = _turn_insert()
    at = datetime.now(UTC)
    first = {"direction": "inbound", "body": "BAL", "sid": "SM1", "at": at}
    with pytest.raises(IntegrityError) as raised, engine.begin() as connection:
        db.run_together(
            connection,
            [(insert, first), (insert, {**first, "body": "my secret words"})],  # the same sid
        )
    assert "my secret words" not in str(raised.value)
    with engine.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(TURNS)).scalar() == 0


def test_expanding_in_parameters_are_refused_rather_than_run_wrong(engine):
    statement = db.Prepared(sa.select(CASES.c.id).where(CASES.c.id.in_([1, 2])))
    with engine.connect() as connection, pytest.raises(ValueError, match="IN parameters"):
        statement.execute(connection, {})


# -- the connection a thread keeps ------------------------------------------------------------


def test_a_thread_keeps_one_connection_and_never_carries_a_transaction_over(engine):
    with db.kept_connection(engine) as connection:
        connection.begin()
        connection.execute(CASES.delete())
    assert not connection.in_transaction()  # rolled back, not left open for the next text
    with db.kept_connection(engine) as again:
        assert again is connection


def test_a_use_inside_a_use_gets_a_connection_of_its_own(engine):
    with db.kept_connection(engine) as outer, db.kept_connection(engine) as inner:
        assert inner is not outer
    assert inner.closed and not outer.closed
    with db.kept_connection(engine) as again:
        assert again is outer


def test_the_kept_connection_is_let_go_after_an_error_a_dispose_or_another_engine(
    engine, database_url
):
    with pytest.raises(RuntimeError), db.kept_connection(engine) as connection:
        raise RuntimeError("the text failed")
    assert connection.closed
    with db.kept_connection(engine) as connection:
        pass
    other = db.make_engine(database_url)
    with db.kept_connection(other):
        pass
    assert connection.closed
    with db.kept_connection(other) as connection:
        pass
    other.dispose()
    assert connection.closed


# -- the SQLite writer lock -------------------------------------------------------------------


def _hold(path: str, started, seconds: float) -> None:
    lock = db.WriterLock(path)
    with lock:
        started.set()
        time.sleep(seconds)


def test_the_writer_lock_makes_other_processes_and_threads_wait_their_turn(tmp_path):
    path = str(tmp_path / "db-writer.lock")
    started = multiprocessing.Event()
    other = multiprocessing.get_context("fork").Process(target=_hold, args=(path, started, 0.3))
    other.start()
    assert started.wait(10)
    lock = db.WriterLock(path)
    began = time.monotonic()
    with lock:
        waited = time.monotonic() - began
    other.join(10)
    assert waited > 0.15  # it waited for the other process to let go

    # Threads of one process share the descriptor; the lock still takes them one at a time.
    inside, overlaps = [0], []

    def work() -> None:
        for _ in range(50):
            with lock:
                inside[0] += 1
                overlaps.append(inside[0])
                inside[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert max(overlaps) == 1


def test_a_writer_runs_a_checkpoint_now_and_then_once_it_has_let_go(tmp_path):
    path = str(tmp_path / "db-writer.lock")
    ran = threading.Semaphore(0)
    free_while_running = []

    def checkpoint() -> None:
        other = os.open(path, os.O_RDWR)
        try:  # a writer in another process could take the lock at once
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            free_while_running.append(True)
        finally:
            os.close(other)
        ran.release()

    lock = db.WriterLock(path, checkpoint=checkpoint)
    for _ in range(db.CHECKPOINT_EVERY - 1):
        with lock:
            pass
    assert not ran.acquire(timeout=0.2)
    with lock:
        pass
    assert ran.acquire(timeout=10)
    assert free_while_running == [True]


def test_the_checkpoint_of_a_sqlite_engine_copies_the_wal_back(tmp_path):
    path = tmp_path / "wal.sqlite3"
    engine = db.make_engine(f"sqlite:///{path}")
    with db.writer(engine), engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE t (x)")
        connection.exec_driver_sql("INSERT INTO t VALUES (1)")

    def in_the_file_itself() -> list:
        # immutable=1 reads the database file alone, not what is still only in the WAL.
        reader = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
        try:
            return reader.execute("SELECT name FROM sqlite_master").fetchall()
        finally:
            reader.close()

    assert in_the_file_itself() == []
    db.writer(engine)._checkpoint()
    assert in_the_file_itself() == [("t",)]
    engine.dispose()


def test_only_a_sqlite_file_gets_a_writer_lock(engine, database_url):
    kind = type(db.writer(engine)).__name__
    assert kind == ("WriterLock" if database_url.startswith("sqlite") else "nullcontext")
    assert type(db.writer(db.make_engine("sqlite://"))).__name__ == "nullcontext"


# -- the webhook's facts against billing's own sums --------------------------------------------


def test_the_facts_count_this_month_as_billing_does_and_keep_the_latest_payments(app, session):
    """case_facts() reads payments once for history and the monthly cap; billing sums in SQL."""
    from billing.service import month_paid_cents
    from bot import dialogue
    from bot.service import case_facts, phone_rows
    from models import Payment, PaymentStatus, utcnow
    from tests.factories import make_case, make_enrollment

    case = make_case(session, case_number="CS-1", balance_cents=900_000, timezone="America/Denver")
    other = make_case(session, case_number="CS-2", balance_cents=900_000, status="closed")
    make_enrollment(session, case, "+16175550134", status="active")
    make_enrollment(session, other, "+16175550134", status="active")
    now = utcnow()
    local_month = now.astimezone(ZoneInfo("America/Denver")).replace(
        day=1, hour=0, minute=0, second=0, microsecond=0
    )
    ages = [timedelta(minutes=5 * n) for n in range(8)] + [now - local_month + timedelta(hours=1)]
    statuses = list(PaymentStatus)
    for n, age in enumerate(ages):
        session.add(
            Payment(
                case_id=case.id,
                amount_cents=1_000 * (n + 1),
                refunded_cents=100 if n == 2 else 0,
                status=statuses[n % len(statuses)],
                idempotency_key=f"k{n}",
                created_at=now - age,
                updated_at=now - age,
            )
        )
    session.add(
        Payment(case_id=other.id, amount_cents=5, status="succeeded", idempotency_key="other")
    )
    session.commit()

    with app.app_context(), db.engine(app).connect() as connection:
        rows = phone_rows(connection=connection, phone="+16175550134", now=now)
        (facts,) = case_facts(connection=connection, rows=rows, now=now)  # the closed case: none
    with app.app_context():
        expected = month_paid_cents(session=session, case_id=case.id, now=now)
    assert facts.month_paid_cents == expected > 0
    shown = [(p.amount_cents, p.status) for p in facts.recent_payments]
    kept = [
        (1_000 * (n + 1), str(statuses[n % len(statuses)]))
        for n in range(len(ages))
        if statuses[n % len(statuses)] not in (PaymentStatus.FAILED, PaymentStatus.CANCELED)
    ]
    assert shown == kept[: dialogue.HISTORY_SIZE]


def test_after_commit_runs_once_per_commit_with_what_was_given_and_forgets_a_rollback(
    engine, caplog
):
    from sqlmodel import Session

    ran: list[list[int]] = []
    with Session(engine) as session:
        db.after_commit(session, "test", 1, lambda _s, items: ran.append(items))
        db.after_commit(session, "test", 2, lambda _s, items: ran.append(items))
        session.commit()
        session.commit()  # nothing given since: nothing run
        session.execute(sa.text("SELECT 1"))  # the work that gives the item, then undone
        db.after_commit(session, "test", 3, lambda _s, items: ran.append(items))
        session.rollback()
        session.commit()
        assert ran == [[1, 2]]

        def fails(_s, _items):
            raise RuntimeError("gateway down")

        db.after_commit(session, "failing", 4, fails)
        session.commit()  # the commit happened: the error is logged, not raised
    assert "work after a commit (failing) stopped" in caplog.text
