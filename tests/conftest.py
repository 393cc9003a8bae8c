"""Fixtures: a real Redis per session; SQLite per test, PostgreSQL too with TEST_DATABASE_URL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, time, timedelta

import pytest
import redis
import sqlalchemy as sa
from sqlmodel import Session, SQLModel

import db
import models  # noqa: F401  (tables on the metadata)
from app import create_app
from scripts import embedded_redis
from scripts.embedded_redis import free_port  # noqa: F401  (tests import it from here)

TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "").strip()
DATABASES = ["sqlite", "postgresql"] if TEST_DATABASE_URL else ["sqlite"]


def pytest_report_header(config):
    return f"databases: {', '.join(DATABASES)}" + (
        "" if TEST_DATABASE_URL else " (set TEST_DATABASE_URL to add PostgreSQL)"
    )


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "database_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.db)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """A throw-away redis-server on a free port; yields its base URL."""
    server = embedded_redis.start()
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this run, migrated to head, dropped at the end."""
    admin_url = sa.make_url(db.make_engine(TEST_DATABASE_URL).url)
    name = f"paytext_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = admin_url.set(database=name).render_as_string(hide_password=False)
    db.upgrade(url)
    yield url
    with admin.connect() as connection:
        connection.execute(
            sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
            {"n": name},
        )
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()


@pytest.fixture(params=DATABASES)
def database_url(request, tmp_path) -> Iterator[str]:
    """An empty schema for one test: a new SQLite file, or the run's PostgreSQL truncated."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'paytext.sqlite3'}"
        engine = db.make_engine(url)
        SQLModel.metadata.create_all(engine)
        engine.dispose()
        yield url
        return
    url = request.getfixturevalue("pg_database")
    engine = db.make_engine(url)
    tables = ", ".join(f'"{t.name}"' for t in SQLModel.metadata.sorted_tables)
    with engine.begin() as connection:
        # A connection an earlier test left in a transaction (an unclosed streamed response,
        # say) would make TRUNCATE wait for ever.
        connection.execute(
            sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
        connection.execute(sa.text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()
    yield url


@pytest.fixture
def redis_url(redis_server) -> str:
    """Redis database 1 of the session's server, flushed for this test."""
    url = f"{redis_server}/1"
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture
def config(database_url, redis_url, tmp_path) -> dict:
    """Test settings; a test adds to this dict before asking for `app`."""
    return {
        "TESTING": True,
        "SECRET_KEY": "test-secret-key",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "RQ_ASYNC": False,
        "PUBLIC_BASE_URL": "http://paytext.test",
        "AGENCY_NAME": "Demo County Child Support",
        "AGENCY_PHONE": "800-555-0134",
        "TWILIO_ACCOUNT_SID": None,
        "TWILIO_AUTH_TOKEN": None,
        "STRIPE_SECRET_KEY": None,
        "STRIPE_WEBHOOK_SECRET": None,
    }


@pytest.fixture
def app(config, tmp_path):
    """The app built with the test settings."""
    application = create_app(config)
    application.instance_path = str(tmp_path / "instance")
    yield application
    db.engine(application).dispose()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def session(app) -> Iterator[Session]:
    """A database session for arranging and checking state."""
    with Session(db.engine(app), expire_on_commit=False) as s:
        yield s


@pytest.fixture
def daytime(monkeypatch) -> datetime:
    """Opt-in invitations asked for at noon in New York (17:00 UTC), the latest such moment
    before now: inside the texting window of the test numbers' zones.

    They are held in the payer's quiet hours, so a test that expects one sent at once pins the
    clocks that decide (the enroll form's and the invitations') to a time no zone calls night.
    It is in the past, so what the payer texts next (on the real clock) comes after it, as
    on a case page read in order.
    """
    now = datetime.now(UTC)
    noon = datetime.combine(now.date(), time(17, 0), tzinfo=UTC)
    if noon > now:
        noon -= timedelta(days=1)
    for module in ("bot.outbound", "admin.service"):
        monkeypatch.setattr(f"{module}.utcnow", lambda: noon)
    return noon
