import uuid

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

import db
from tests.conftest import DATABASES, TEST_DATABASE_URL


@pytest.fixture(params=DATABASES)
def empty_database(request, tmp_path):
    """A database with no tables at all."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.sqlite3'}"
        return
    admin_url = db.make_engine(TEST_DATABASE_URL).url
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"paytext_mig_{uuid.uuid4().hex[:10]}"
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield admin_url.set(database=name).render_as_string(hide_password=False)
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


def test_upgrade_from_empty_gives_exactly_the_models(empty_database):
    db.upgrade(empty_database)
    engine = db.make_engine(empty_database)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, SQLModel.metadata) == []
    engine.dispose()


def test_downgrade_to_base_and_upgrade_again(empty_database):
    db.upgrade(empty_database)
    command.downgrade(db.alembic_config(empty_database), "base")
    engine = db.make_engine(empty_database)
    assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}
    engine.dispose()
    db.upgrade(empty_database)
    engine = db.make_engine(empty_database)
    assert "payments" in sa.inspect(engine).get_table_names()
    engine.dispose()


def test_flask_db_upgrade_command_migrates_the_configured_database(config, tmp_path):
    from app import create_app

    config["DATABASE_URL"] = f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
    result = create_app(config).test_cli_runner().invoke(args=["db", "upgrade"])
    assert result.exit_code == 0, result.output
    engine = db.make_engine(config["DATABASE_URL"])
    assert {"cases", "enrollments", "payments", "reminders"} <= set(
        sa.inspect(engine).get_table_names()
    )
    engine.dispose()


def test_upgrade_masks_the_link_tokens_texts_were_stored_with(empty_database):
    command.upgrade(db.alembic_config(empty_database), "0005")
    engine = db.make_engine(empty_database)
    sent = "Add a card here: http://x.test/pay/card/AAAAAWsOUZqvzxXvyn5Qlmd624BrbeBcZnU Then PAY."
    with engine.begin() as connection:
        for body in (sent, "finish: http://x.test/pay/auth/Ab-_9z1", "Your balance is $40.00"):
            connection.execute(
                sa.text(
                    "INSERT INTO conversation_turns (phone, direction, body, created_at, "
                    "updated_at) VALUES ('+16175550134', 'outbound', :body, :now, :now)"
                ),
                {"body": body, "now": "2026-12-01 12:00:00"},
            )
    engine.dispose()

    db.upgrade(empty_database)

    engine = db.make_engine(empty_database)
    with engine.connect() as connection:
        bodies = connection.execute(sa.text("SELECT body FROM conversation_turns ORDER BY id"))
        assert list(bodies.scalars()) == [
            "Add a card here: http://x.test/pay/card/[redacted] Then PAY.",
            "finish: http://x.test/pay/auth/[redacted]",
            "Your balance is $40.00",
        ]
    engine.dispose()


def test_upgrade_cuts_card_numbers_and_ssns_out_of_the_texts_payers_sent_before(empty_database):
    from bot.redact import sensitive_numbers_removed

    command.upgrade(db.alembic_config(empty_database), "0005")
    engine = db.make_engine(empty_database)
    texts = [
        ("inbound", "my card is 4111 1111 1111 1111 exp 12/29"),
        ("inbound", "ssn 123-45-6789 and ssn: 123456789"),
        ("inbound", "PAY 50 from 617-555-0134"),
        ("outbound", "Confirmation 4111111111111111"),  # ours: left as sent
    ] + [("inbound", f"pay {n}") for n in range(1_200)]  # more than one batch
    with engine.begin() as connection:
        for direction, body in texts:
            connection.execute(
                sa.text(
                    "INSERT INTO conversation_turns (phone, direction, body, created_at, "
                    "updated_at) VALUES ('+16175550134', :direction, :body, :now, :now)"
                ),
                {"direction": direction, "body": body, "now": "2026-12-01 12:00:00"},
            )
    engine.dispose()

    db.upgrade(empty_database)

    engine = db.make_engine(empty_database)
    with engine.connect() as connection:
        bodies = list(
            connection.execute(sa.text("SELECT body FROM conversation_turns ORDER BY id")).scalars()
        )
    engine.dispose()
    assert bodies[:4] == [
        "my card is [card number removed] exp 12/29",
        "ssn [SSN removed] and ssn: [SSN removed]",
        "PAY 50 from 617-555-0134",
        "Confirmation 4111111111111111",
    ]
    assert bodies[4:] == [body for _, body in texts[4:]]
    # The migration's copy of the patterns does what the webhook does now.
    assert [sensitive_numbers_removed(body) for _, body in texts[:3]] == bodies[:3]


def test_numbers_on_no_case_that_texted_stop_before_0008_stay_opted_out(empty_database):
    """Before 0008 such a STOP was only in the turn log; the upgrade records it on the number."""
    db.upgrade(empty_database, "0007")
    engine = db.make_engine(empty_database)
    stop, start = "2026-03-02 15:00:00", "2026-03-05 09:00:00"
    texted = {
        "+13125550101": [("stop", stop)],  # on no case: opted out since its STOP
        "+13125550102": [("stop", stop), ("start", start)],  # opted back in
        "+13125550103": [("stop", stop)],  # on a case: its enrollment holds the opt-out
        "+13125550104": [("balance", stop)],
    }
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO cases (case_number, payer_name, amount_due_cents, balance_cents,"
                " language, status, created_at, updated_at)"
                " VALUES ('CS-1', 'Ana', 0, 0, 'en', 'open', :t, :t)"
            ),
            {"t": stop},
        )
        connection.execute(
            sa.text(
                "INSERT INTO enrollments (case_id, phone, status, source, language,"
                " consent_version, created_at, updated_at)"
                " SELECT id, '+13125550103', 'opted_out', 'admin', 'en', 'v1', :t, :t FROM cases"
            ),
            {"t": stop},
        )
        for phone, turns in texted.items():
            connection.execute(
                sa.text(
                    "INSERT INTO conversations (phone, state, language, version, updated_at)"
                    " VALUES (:phone, '{}', 'en', 1, :t)"
                ),
                {"phone": phone, "t": stop},
            )
            for intent, at in turns:
                connection.execute(
                    sa.text(
                        "INSERT INTO conversation_turns (phone, direction, body, intent,"
                        " created_at, updated_at) VALUES (:phone, 'inbound', '', :intent, :t, :t)"
                    ),
                    {"phone": phone, "intent": intent, "t": at},
                )
    db.upgrade(empty_database)
    with engine.connect() as connection:
        stopped = dict(
            connection.execute(sa.text("SELECT phone, opted_out_at FROM conversations")).all()
        )
    engine.dispose()
    assert stopped["+13125550101"] is not None
    assert str(stopped["+13125550101"]).startswith("2026-03-02 15:00:00")
    assert [phone for phone, at in stopped.items() if at is not None] == ["+13125550101"]


def test_a_number_that_texted_stop_on_no_case_and_was_then_imported_stays_opted_out(
    empty_database,
):
    """Before 0008 an import after such a STOP made the number pending: 0008 keeps the STOP."""
    db.upgrade(empty_database, "0007")
    engine = db.make_engine(empty_database)
    stop, imported = "2026-03-02 15:00:00", "2026-03-04 10:00:00"
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO cases (case_number, payer_name, amount_due_cents, balance_cents,"
                " language, status, created_at, updated_at)"
                " VALUES ('CS-1', 'Ana', 0, 0, 'en', 'open', :t, :t)"
            ),
            {"t": imported},
        )
        connection.execute(
            sa.text(
                "INSERT INTO enrollments (case_id, phone, status, source, language,"
                " consent_version, created_at, updated_at)"
                " SELECT id, '+13125550105', 'pending', 'import', 'en', 'v1', :t, :t FROM cases"
            ),
            {"t": imported},
        )
        connection.execute(
            sa.text(
                "INSERT INTO conversations (phone, state, language, version, updated_at)"
                " VALUES ('+13125550105', '{}', 'en', 1, :t)"
            ),
            {"t": stop},
        )
        connection.execute(
            sa.text(
                "INSERT INTO conversation_turns (phone, direction, body, intent, created_at,"
                " updated_at) VALUES ('+13125550105', 'inbound', 'STOP', 'stop', :t, :t)"
            ),
            {"t": stop},
        )
    db.upgrade(empty_database)
    with engine.connect() as connection:
        opted_out_at = connection.execute(
            sa.text("SELECT opted_out_at FROM conversations WHERE phone = '+13125550105'")
        ).scalar()
    engine.dispose()
    # Nothing else holds that STOP: the pending enrollment would be invited.
    assert str(opted_out_at).startswith("2026-03-02 15:00:00")


def test_a_reminder_claimed_before_0010_keeps_its_claim_and_its_attempts(empty_database):
    """A send job queued before the upgrade names its claim by the old counter: it still holds."""
    db.upgrade(empty_database, "0009")
    engine = db.make_engine(empty_database)
    at = "2026-12-01 15:00:00"
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO cases (case_number, payer_name, amount_due_cents, balance_cents,"
                " language, status, created_at, updated_at)"
                " VALUES ('CS-1', 'Ana', 0, 0, 'en', 'open', :t, :t)"
            ),
            {"t": at},
        )
        connection.execute(
            sa.text(
                "INSERT INTO reminders (case_id, kind, cycle, send_at, status, attempts,"
                " created_at, updated_at)"
                " SELECT id, 'due_today', '2026-12-01', :t, 'queued', 3, :t, :t FROM cases"
            ),
            {"t": at},
        )
    db.upgrade(empty_database)
    with engine.connect() as connection:
        row = connection.execute(sa.text("SELECT attempts, claim_token FROM reminders")).one()
    engine.dispose()
    assert tuple(row) == (3, 3)
