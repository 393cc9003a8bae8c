"""PostgreSQL's errors quote the row values that failed a constraint; no log line keeps them."""

from __future__ import annotations

import logging
import traceback

import pytest
import sqlalchemy as sa

from logredact import database_values_removed
from models import Conversation

# As psycopg words them (PostgreSQL 16), from the constraints of this schema.
UNIQUE = (
    'duplicate key value violates unique constraint "ix_conversations_phone"\n'
    "DETAIL:  Key (phone)=(+16175550100) already exists."
)
UNIQUE_PAIR = (
    'duplicate key value violates unique constraint "uq_enrollment_case_phone"\n'
    "DETAIL:  Key (case_id, phone)=(1, +16175550100) already exists."
)
FOREIGN_KEY = (
    'insert or update on table "enrollments" violates foreign key constraint '
    '"fk_enrollments_case_id_cases"\n'
    'DETAIL:  Key (case_id)=(999) is not present in table "cases".'
)
NOT_NULL = (
    'null value in column "balance_cents" of relation "cases" violates not-null constraint\n'
    "DETAIL:  Failing row contains (2, CS-1, Ana (Rivera), 1, null, null, +16175550100)."
)


def test_the_values_of_a_detail_line_are_cut_and_its_columns_kept():
    assert database_values_removed(UNIQUE) == (
        'duplicate key value violates unique constraint "ix_conversations_phone"\n'
        "DETAIL:  Key (phone)=(…) already exists."
    )
    assert database_values_removed(UNIQUE_PAIR).endswith(
        "DETAIL:  Key (case_id, phone)=(…) already exists."
    )
    assert database_values_removed(FOREIGN_KEY).endswith(
        'DETAIL:  Key (case_id)=(…) is not present in table "cases".'
    )
    assert database_values_removed(NOT_NULL).endswith("DETAIL:  Failing row contains (…).")


def test_a_value_holding_parentheses_is_cut_whole_and_the_lines_after_it_kept():
    text = (
        "DETAIL:  Key (lower(payer_name::text))=(ana (rivera)) already exists.\n"
        "[SQL parameters hidden due to hide_parameters=True]"
    )
    assert database_values_removed(text) == (
        "DETAIL:  Key (lower(payer_name::text))=(…) already exists.\n"
        "[SQL parameters hidden due to hide_parameters=True]"
    )


def test_a_logged_database_error_and_a_formatted_traceback_lose_the_values(app, caplog):
    log = logging.getLogger("bot.views")
    try:
        raise sa.exc.IntegrityError("INSERT INTO conversations ...", None, Exception(UNIQUE))
    except sa.exc.IntegrityError:
        log.exception("inbound text %s could not be handled", "SM1")
        # How RQ logs a failed job: the traceback already formatted, as an argument.
        log.error("job failed\n%s", traceback.format_exc())
    assert "+16175550100" not in caplog.text
    assert caplog.text.count("Key (phone)=(…) already exists.") == 2


def test_a_real_unique_violation_is_logged_without_the_phone(app, session, database_url, caplog):
    # PostgreSQL quotes the clashing values (cut from the log); SQLite names the columns only,
    # and the engines hide the statement's parameters on both.
    postgres = database_url.startswith("postgresql")
    session.add(Conversation(phone="+16175550100"))
    session.commit()
    session.add(Conversation(phone="+16175550100"))
    with pytest.raises(sa.exc.IntegrityError) as raised:
        session.commit()
    session.rollback()
    assert ("Key (phone)=(+16175550100) already exists" in str(raised.value)) is postgres
    try:
        raise raised.value
    except sa.exc.IntegrityError:
        logging.getLogger("bot.views").exception("inbound text %s could not be handled", "SM1")
    assert "+16175550100" not in caplog.text
    assert "IntegrityError" in caplog.text  # the traceback itself is kept
    if postgres:
        assert "Key (phone)=(…) already exists." in caplog.text
    else:
        assert "UNIQUE constraint failed" in caplog.text
