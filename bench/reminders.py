"""Benchmark: plan and dispatch 100,000 due reminders, then send through one worker.

    .venv/bin/python -m bench.reminders [--reminders 100000] [--send 5000] [--pg POSTGRES_URL]

For SQLite (and PostgreSQL when --pg is given, in a scratch database) it prints:
- plan: reminders planned per second (`plan_all` over 1/3 as many enrolled cases);
- dispatch: reminders selected, checked and enqueued per second (`dispatch_due`), and the Redis
  memory each queued send takes (INFO memory before and after);
- send: messages per second one worker (`rq worker`, AppWorker) sends through the real Twilio SDK
  to the local fake Twilio, timed from its first message to its last.
Targets on a 2-core machine: dispatch of 100,000 under 15 s, at most 1 KB of Redis per queued
send, one worker at 250 messages per second or more.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import redis
import sqlalchemy as sa

import db
from scripts import embedded_redis
from tests.fakes.twilio_api import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, FakeTwilio

ROOT = Path(__file__).resolve().parents[1]
AREA_CODES = ["617", "508", "413", "213", "310", "415", "305", "212", "718", "312", "713", "602"]
ZONES = ["America/New_York", "America/Los_Angeles", "America/Chicago", "America/Phoenix", None]
DISPATCH_AT = datetime(2026, 3, 25, 18, 0, tzinfo=UTC)  # a Wednesday afternoon in every zone above


def _config(database_url: str, redis_url: str, **extra) -> dict:
    return {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "SECRET_KEY": "bench",
        "LOG_LEVEL": "WARNING",
        "SMS_RATE_PER_SECOND": 100_000,
        **extra,
    }


def _populate(engine: sa.Engine, cases: int, *, due: list[date], zones: list, seed: int) -> None:
    """Open cases with one active phone each, inserted in bulk."""
    from models import Case, Enrollment

    rng = random.Random(seed)
    now = datetime.now(UTC)
    prefix = uuid.uuid4().hex[:6].upper()
    with engine.begin() as connection:
        rows = [
            {
                "case_number": f"B{prefix}{n:08d}",
                "payer_name": f"Payer {n}",
                "amount_due_cents": rng.randint(5_000, 90_000),
                "balance_cents": 200_000,
                "next_due_date": rng.choice(due),
                "language": rng.choice(["en", "es"]),
                "timezone": rng.choice(zones),
                "status": "open",
                "created_at": now,
                "updated_at": now,
            }
            for n in range(cases)
        ]
        ids = []
        for start in range(0, len(rows), 5000):
            result = connection.execute(
                sa.insert(Case.__table__).returning(Case.__table__.c.id), rows[start : start + 5000]
            )
            ids.extend(result.scalars())
        enrollments = [
            {
                "case_id": case_id,
                "phone": f"+1{rng.choice(AREA_CODES)}{rng.randint(200, 999)}{n % 10_000:04d}",
                "status": "active",
                "source": "import",
                "language": "en",
                "consent_version": "bench",
                "created_at": now,
                "updated_at": now,
            }
            for n, case_id in enumerate(ids)
        ]
        for start in range(0, len(enrollments), 5000):
            connection.execute(sa.insert(Enrollment.__table__), enrollments[start : start + 5000])
        if engine.dialect.name == "postgresql":
            connection.execute(sa.text("ANALYZE"))


def _queue_memory(connection: redis.Redis) -> int:
    return int(connection.info("memory")["used_memory"])


def plan_and_dispatch(label: str, database_url: str, redis_url: str, reminders: int) -> None:
    from app import create_app
    from jobs.reminders import dispatch_due, plan_all

    app = create_app(_config(database_url, redis_url))
    engine = db.engine(app)
    cases = -(-reminders // 3)
    due_dates = [DISPATCH_AT.date() - timedelta(days=n) for n in range(2, 12)]
    started = time.perf_counter()
    _populate(engine, cases, due=due_dates, zones=ZONES, seed=7)
    print(f"{label:<10} set-up: {cases:,} enrolled cases in {time.perf_counter() - started:.1f} s")

    connection = redis.Redis.from_url(redis_url)
    connection.flushdb()
    with app.app_context():
        started = time.perf_counter()
        planned = plan_all(
            now=datetime.combine(min(due_dates) - timedelta(days=5), datetime.min.time(), UTC)
        )
        plan_s = time.perf_counter() - started
        before = _queue_memory(connection)
        started = time.perf_counter()
        summary = dispatch_due(now=DISPATCH_AT)
        dispatch_s = time.perf_counter() - started
        after = _queue_memory(connection)
    queued = connection.llen("rq:queue:sms")
    print(
        f"{label:<10} plan:     {planned.planned:,} reminders in {plan_s:5.1f} s "
        f"({planned.planned / plan_s:,.0f}/s)"
    )
    print(
        f"{label:<10} dispatch: {summary.enqueued:,} of {summary.due:,} due reminders selected, "
        f"checked and enqueued in {dispatch_s:5.1f} s ({summary.enqueued / dispatch_s:,.0f}/s) "
        f"as {queued:,} jobs; Redis {(after - before) / max(summary.enqueued, 1):,.0f} bytes "
        "per queued send"
    )
    connection.flushdb()
    app.extensions["redis"].close()
    engine.dispose()


def send(label: str, database_url: str, redis_url: str, count: int) -> None:
    """Plan `count` reminders due now, dispatch them, and time one worker sending them."""
    from app import create_app
    from jobs.reminders import dispatch_due, plan_all
    from models import Reminder

    # A zone where it is early afternoon now, so quiet hours never get in the way.
    offset = (13 - datetime.now(UTC).hour + 12) % 24 - 12
    zone = f"Etc/GMT{-offset:+d}" if offset else "Etc/GMT"
    today = datetime.now(ZoneInfo(zone)).date()
    with FakeTwilio() as fake:
        twilio = {
            "TWILIO_ACCOUNT_SID": DEFAULT_ACCOUNT_SID,
            "TWILIO_AUTH_TOKEN": DEFAULT_AUTH_TOKEN,
            "TWILIO_FROM_NUMBER": "+15005550006",
            "TWILIO_API_BASE_URL": fake.url,
            "FLASK_DEBUG": "1",
        }
        app = create_app(_config(database_url, redis_url, **twilio))
        engine = db.engine(app)
        with engine.begin() as connection:
            connection.execute(sa.delete(Reminder.__table__))
            connection.execute(sa.text("UPDATE cases SET status = 'closed'"))
        _populate(engine, count, due=[today], zones=[zone], seed=11)
        with app.app_context():
            plan_all()
            summary = dispatch_due()
        env = {
            **os.environ,
            **{k: str(v) for k, v in _config(database_url, redis_url).items()},
            **twilio,
        }
        worker = subprocess.Popen(
            [
                str(ROOT / ".venv/bin/rq"),
                "worker",
                "--url",
                redis_url,
                "--worker-class",
                "jobs.context.AppWorker",
                "--burst",
                "--quiet",
                "sms",
            ],
            cwd=ROOT,
            env=env,
        )
        worker.wait(timeout=3600)
        messages = sorted(message["date"] for message in fake.messages)
    if len(messages) < 2:
        sys.exit(f"{label}: the worker sent {len(messages)} messages; expected {summary.enqueued}")
    elapsed = (messages[-1] - messages[0]).total_seconds()
    print(
        f"{label:<10} send:     {len(messages):,} of {summary.enqueued:,} reminders sent by one "
        f"worker in {elapsed:5.1f} s ({(len(messages) - 1) / elapsed:,.0f} messages/s)"
    )
    app.extensions["redis"].close()
    engine.dispose()


def run(label: str, database_url: str, redis_url: str, reminders: int, sends: int) -> None:
    db.upgrade(database_url)
    plan_and_dispatch(label, database_url, redis_url, reminders)
    if sends:
        send(label, database_url, redis_url, sends)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reminders", type=int, default=100_000)
    parser.add_argument("--send", type=int, default=5_000, help="reminders the worker sends")
    parser.add_argument("--pg", help="PostgreSQL server URL; a scratch database is created there")
    options = parser.parse_args()
    server = embedded_redis.start()
    redis_url = f"{server.url}/0"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            sqlite_url = f"sqlite:///{Path(tmp) / 'bench.sqlite3'}"
            run("sqlite", sqlite_url, redis_url, options.reminders, options.send)
        if options.pg:
            admin = sa.create_engine(
                options.pg.replace("postgresql://", "postgresql+psycopg://"),
                isolation_level="AUTOCOMMIT",
            )
            name = f"paytext_bench_{uuid.uuid4().hex[:8]}"
            with admin.connect() as connection:
                connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
            try:
                url = (
                    sa.make_url(options.pg).set(database=name).render_as_string(hide_password=False)
                )
                run("postgresql", url, redis_url, options.reminders, options.send)
            finally:
                with admin.connect() as connection:
                    connection.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
                admin.dispose()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
