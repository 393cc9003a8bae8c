"""Two texts from one phone at once on SQLite: read without the lock, saved only if unchanged.

SQLite has one writer for the whole database, so the webhook reads a phone's conversation and
facts and steps the dialogue before taking the write lock. These tests send a second text from
the same phone in the window between that read and the save, and check the first is then
answered from the conversation as the second left it. PostgreSQL locks the phone's row before
reading, so it has no such window: these tests run on SQLite only.
"""

from __future__ import annotations

import pytest
from sqlmodel import SQLModel, select

import db
from bot import service
from models import Conversation, ConversationTurn, Direction, EnrollmentStatus
from tests.billing_helpers import add_card
from tests.factories import make_case, make_enrollment
from tests.sms_helpers import inbound_params, post_signed, replies

PHONE = "+16175550134"


@pytest.fixture
def database_url(tmp_path):
    """A SQLite file, whatever databases the run covers (see the module docstring)."""
    url = f"sqlite:///{tmp_path / 'race.sqlite3'}"
    engine = db.make_engine(url)
    SQLModel.metadata.create_all(engine)
    engine.dispose()
    return url


def text(client, body):
    # The console backend: no signature to check, the same code path.
    return post_signed(client, "/sms/inbound", inbound_params(body, PHONE), None)


class Meanwhile:
    """Texts to send from the same phone right after the next text's unlocked read."""

    def __init__(self) -> None:
        self.queued: list[str] = []
        self.answered: list[list[str]] = []


@pytest.fixture
def meanwhile(monkeypatch, client) -> Meanwhile:
    race = Meanwhile()
    real_plan = service.plan_inbound

    def plan_then_race(*, connection, **kwargs):
        plan = real_plan(connection=connection, **kwargs)
        if race.queued and not connection.in_transaction():  # the read made without the lock
            race.answered.append(replies(text(client, race.queued.pop(0))))
        return plan

    monkeypatch.setattr(service, "plan_inbound", plan_then_race)
    return race


def conversation(session) -> Conversation:
    session.expire_all()
    return session.exec(select(Conversation).where(Conversation.phone == PHONE)).one()


def inbound_turns(session) -> list[ConversationTurn]:
    session.expire_all()
    return session.exec(
        select(ConversationTurn)
        .where(ConversationTurn.direction == Direction.INBOUND)
        .order_by(ConversationTurn.id)
    ).all()


def test_a_text_overtaken_by_another_from_its_phone_is_answered_from_the_new_state(
    app, client, session, meanwhile
):
    case = make_case(session, case_number="CS-004821")
    make_enrollment(session, case, PHONE)
    add_card(app, session, case)
    text(client, "BAL")  # the conversation exists before the race
    meanwhile.queued.append("ESPAÑOL")

    answer = replies(text(client, "PAY"))

    # ESPAÑOL got in first; PAY, read before it, was handled again and quoted in Spanish.
    assert "español" in meanwhile.answered[0][0].lower()
    assert answer[0].startswith("¿Pagar $250.00")
    saved = conversation(session)
    assert (saved.language, saved.version) == ("es", 3)
    assert saved.state["quote"]["amount_cents"] == 25_000
    bal, espanol, pay = inbound_turns(session)
    assert [t.body for t in (bal, espanol, pay)] == ["BAL", "ESPAÑOL", "PAY"]
    # The log shows PAY stepping from the state ESPAÑOL left, not the one it first read.
    assert pay.state_before == espanol.state_after
    assert espanol.state_before == bal.state_after


def test_the_first_texts_of_a_phone_racing_each_other_make_one_conversation(
    client, session, meanwhile
):
    make_enrollment(
        session, make_case(session), PHONE, status=EnrollmentStatus.PENDING, confirmed_at=None
    )
    meanwhile.queued.append("HELP")

    answer = replies(text(client, "YES"))

    assert "signed up" in answer[0]
    assert "msgs/month" in meanwhile.answered[0][0]  # HELP, while still pending
    saved = conversation(session)  # one row: .one() would raise on two
    assert saved.version == 2
    assert [t.body for t in inbound_turns(session)] == ["HELP", "YES"]


def test_every_saved_text_moves_the_version_on(client, session):
    make_enrollment(session, make_case(session), PHONE)
    for body in ("BAL", "APPT", "HELP"):
        text(client, body)

    assert conversation(session).version == 3


def test_a_text_overtaken_by_a_stop_whose_handling_broke_is_not_answered(
    app, client, session, meanwhile, monkeypatch
):
    case = make_case(session, case_number="CS-004821")
    make_enrollment(session, case, PHONE)
    text(client, "HELP")  # the conversation exists before the race

    def broken(**_):
        raise RuntimeError("database hiccup")

    # The STOP is still honoured, by the webhook's fallback (handle_failed_inbound).
    monkeypatch.setattr(service, "opt_out", broken)
    meanwhile.queued.append("STOP")

    answer = replies(text(client, "BAL"))

    assert "unsubscribed" in meanwhile.answered[0][0]
    # BAL, read before the STOP was saved, is handled again and finds the number opted out.
    assert answer == []
    assert conversation(session).opted_out_at is not None
