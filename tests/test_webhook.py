"""POST /sms/inbound and /sms/status: signatures, replays, any body, and the turn log."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import func, select

from models import (
    Conversation,
    ConversationTurn,
    Enrollment,
    EnrollmentStatus,
    Handoff,
    Reminder,
    ReminderKind,
    ReminderStatus,
    utcnow,
)
from tests.factories import make_case, make_enrollment
from tests.fakes.twilio_api import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, FakeTwilio
from tests.sms_helpers import inbound_params, new_sid, post_signed, replies

TOKEN = DEFAULT_AUTH_TOKEN


@pytest.fixture
def fake_twilio():
    with FakeTwilio() as fake:
        yield fake


@pytest.fixture
def config(config, fake_twilio):
    """The Twilio backend against the local fake, so signatures are enforced."""
    config.update(fake_twilio.settings(from_number="+18005550100"))
    return config


def text(client, body, phone="+16175550134", sid=None, token=TOKEN):
    return post_signed(client, "/sms/inbound", inbound_params(body, phone, sid), token)


def turns(session):
    session.expire_all()
    return session.exec(select(ConversationTurn).order_by(ConversationTurn.id)).all()


def count_turns(session) -> int:
    session.expire_all()
    return session.exec(select(func.count()).select_from(ConversationTurn)).one()


@pytest.fixture
def payer(session):
    case = make_case(session, case_number="CS-004821", balance_cents=100_000)
    return case, make_enrollment(session, case, "+16175550134")


def test_balance_request_is_answered_and_both_turns_are_logged(client, session, payer):
    case, enrollment = payer
    (reply,) = replies(text(client, "BAL"))
    assert "$1,000.00" in reply
    inbound, outbound = turns(session)
    assert (inbound.direction, inbound.body, inbound.intent) == ("inbound", "BAL", "balance")
    assert inbound.case_id == case.id and inbound.enrollment_id == enrollment.id
    assert inbound.state_before == {} and inbound.state_after is not None
    assert (outbound.direction, outbound.body, outbound.in_reply_to_id) == (
        "outbound",
        reply,
        inbound.id,
    )


def test_a_forged_signature_gets_403_and_changes_nothing(client, session, payer):
    assert text(client, "STOP", token="not-the-token").status_code == 403
    assert text(client, "STOP", token=None).status_code == 403
    assert count_turns(session) == 0
    session.expire_all()
    assert session.exec(select(Enrollment)).one().status == EnrollmentStatus.ACTIVE


@pytest.fixture(params=[0, 1])
def proxies(request, config):
    config["TRUSTED_PROXIES"] = request.param


def test_behind_a_proxy_signatures_are_still_checked_against_public_base_url(
    proxies, client, session, payer
):
    client.environ_base.update(
        HTTP_X_FORWARDED_FOR="203.0.113.9",
        HTTP_X_FORWARDED_PROTO="https",
        HTTP_X_FORWARDED_HOST="internal.example",
    )
    assert replies(text(client, "BAL"))
    assert text(client, "BAL", token="not-the-token").status_code == 403


def test_a_signature_for_other_parameters_is_refused(client, session, payer):
    params = inbound_params("BAL")
    from bot import sms

    signature = sms.sign(auth_token=TOKEN, url="http://paytext.test/sms/inbound", params=params)
    forged = dict(params, Body="STOP")
    response = client.post("/sms/inbound", data=forged, headers={sms.SIGNATURE_HEADER: signature})
    assert response.status_code == 403
    assert count_turns(session) == 0


def test_a_replayed_message_sid_gets_the_same_reply_and_is_acted_on_once(client, session, payer):
    sid = new_sid()
    first = replies(text(client, "AGENT", sid=sid))
    again = replies(text(client, "AGENT", sid=sid))
    assert first == again and first
    assert len(session.exec(select(Handoff)).all()) == 1
    assert count_turns(session) == 1 + len(first)


def test_a_text_is_answered_when_the_database_dropped_the_kept_connection(
    client, session, payer, database_url
):
    import sqlalchemy as sa

    import db

    first = replies(text(client, "BAL"))
    kept = db._kept.connection  # the connection the webhook keeps on this thread
    if database_url.startswith("postgresql"):
        pid = kept.connection.dbapi_connection.info.backend_pid
        session.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        session.commit()
    else:
        kept.connection.dbapi_connection.close()

    assert replies(text(client, "BAL")) == first  # not the apology for a failed text
    assert db._kept.connection is not kept
    assert count_turns(session) == 4


def test_numbers_not_enrolled_get_a_generic_reply_that_reveals_nothing(client, session, payer):
    (reply,) = replies(text(client, "BAL", phone="+13125550188"))
    assert "800-555-0134" in reply and "Demo County Child Support" in reply
    assert "4821" not in reply and "$" not in reply
    inbound = turns(session)[0]
    assert inbound.case_id is None and inbound.phone == "+13125550188"


@pytest.mark.parametrize("phone", ["+442079460958", "+18885550134"])
def test_texts_from_numbers_that_cannot_be_enrolled_are_still_answered_and_logged(
    client, session, payer, phone
):
    (reply,) = replies(text(client, "BAL", phone=phone))
    assert "800-555-0134" in reply and "4821" not in reply
    inbound, outbound = turns(session)
    assert (inbound.phone, inbound.direction, inbound.body) == (phone, "inbound", "BAL")
    assert (outbound.phone, outbound.direction) == (phone, "outbound")


def test_stop_opts_out_every_case_cancels_reminders_and_confirms_once(client, session, payer):
    case, _ = payer
    other = make_case(session, case_number="CS-009999")
    make_enrollment(session, other, "+16175550134")
    session.add(
        Reminder(case_id=case.id, kind=ReminderKind.DUE_SOON, cycle="2026-12-01", send_at=utcnow())
    )
    session.commit()
    (confirmation,) = replies(text(client, "Stop texting me please"))
    assert "STOP" not in confirmation.upper() or "START" in confirmation.upper()
    session.expire_all()
    assert {e.status for e in session.exec(select(Enrollment)).all()} == {"opted_out"}
    assert all(e.opted_out_at for e in session.exec(select(Enrollment)).all())
    reminder = session.exec(select(Reminder)).one()
    assert (reminder.status, reminder.reason) == (ReminderStatus.CANCELED, "opted_out")
    assert replies(text(client, "STOP")) == []
    assert replies(text(client, "BAL")) == []


STRANGER = "+13125550188"
OPT_OUT_WORDS = [
    "STOP",
    "STOPALL",
    "UNSUBSCRIBE",
    "CANCEL",
    "END",
    "QUIT",
    "REVOKE",
    "OPTOUT",
    "ALTO",
    "PARAR",
    "BASTA",
    "CANCELAR",
    "NO MAS",
    "please stop texting me",
    "no me manden mas mensajes",
]


@pytest.mark.parametrize("body", OPT_OUT_WORDS)
def test_a_number_on_no_case_that_opts_out_is_not_texted_again(client, session, body):
    (confirmation,) = replies(text(client, body, phone=STRANGER))
    assert "START" in confirmation
    for later in ("hola", "BAL", "hi", "ok", "STOP"):
        assert replies(text(client, later, phone=STRANGER)) == [], later


def test_a_number_on_no_case_that_opted_out_gets_help_and_opts_back_in_with_start(client, session):
    (confirmation,) = replies(text(client, "ALTO", phone=STRANGER))
    assert confirmation.startswith("Se dio de baja")
    (help_reply,) = replies(text(client, "HELP", phone=STRANGER))
    assert "800-555-0134" in help_reply and "no encontramos un caso" in help_reply
    assert "se dio de baja" in help_reply and "Responda START" in help_reply
    assert "Responda STOP" not in help_reply
    (welcome_back,) = replies(text(client, "START", phone=STRANGER))
    assert "STOP" in welcome_back
    assert "No encontramos un caso" in welcome_back and "mensajes de pagos" not in welcome_back
    (reply,) = replies(text(client, "hola", phone=STRANGER))
    assert "No encontramos un caso" in reply


HELP_AFTER_STOP = [
    # (opt-out, enrolled in, then HELP: what it must say, in the payer's language)
    ("STOP", None, "HELP", "This number is unsubscribed", "Reply START", "Msg & data rates"),
    ("ALTO", None, "AYUDA", "Este teléfono se dio de baja", "Responda START", "Pueden aplicarse"),
    ("STOP", "en", "HELP", "You are unsubscribed", "Reply START", "Msg & data rates"),
    ("ALTO", "es", "HELP", "Se dio de baja", "Responda START", "Pueden aplicarse"),
]


@pytest.mark.parametrize(("stop", "enrolled", "ask", "said", "start", "rates"), HELP_AFTER_STOP)
def test_help_after_stop_says_the_number_is_opted_out_and_how_to_opt_back_in(
    client, session, stop, enrolled, ask, said, start, rates
):
    if enrolled:
        case = make_case(session, language=enrolled)
        make_enrollment(session, case, STRANGER, language=enrolled)
    assert replies(text(client, stop, phone=STRANGER))
    (help_reply,) = replies(text(client, ask, phone=STRANGER))
    assert help_reply.startswith(f"Demo County Child Support: {said}")
    assert "800-555-0134" in help_reply and start in help_reply and rates in help_reply
    assert "Reply STOP" not in help_reply and "Responda STOP" not in help_reply


def test_help_from_a_number_that_never_opted_out_still_says_how_to_stop(client, session, payer):
    (own,) = replies(text(client, "HELP"))
    assert "Reply MENU for options, STOP to opt out." in own
    (stranger,) = replies(text(client, "AYUDA", phone=STRANGER))
    assert "No encontramos un caso" in stranger and "Responda STOP" in stranger


def test_an_opt_out_texted_before_enrollment_holds_once_the_number_is_enrolled(
    client, session, payer
):
    replies(text(client, "STOP", phone=STRANGER))
    case = make_case(session, case_number="CS-007777")
    make_enrollment(session, case, STRANGER)  # as an old row, say: active
    assert replies(text(client, "BAL", phone=STRANGER)) == []
    assert replies(text(client, "START", phone=STRANGER))
    (balance,) = replies(text(client, "BAL", phone=STRANGER))
    assert "7777" in balance


def test_a_stop_from_a_number_on_no_case_is_remembered_even_when_handling_breaks(
    client, session, monkeypatch
):
    def broken(*_, **__):
        raise RuntimeError("database hiccup")

    monkeypatch.setattr("bot.service.plan_inbound", broken)
    (reply,) = replies(text(client, "STOP", phone=STRANGER))
    assert "unsubscribed" in reply
    monkeypatch.undo()
    assert replies(text(client, "hola", phone=STRANGER)) == []


@pytest.mark.parametrize("phone", ["+16175550134", STRANGER])
def test_an_opted_out_number_gets_no_apology_when_handling_breaks(
    client, session, payer, monkeypatch, phone
):
    replies(text(client, "STOP", phone=phone))

    def broken(*_, **__):
        raise RuntimeError("database hiccup")

    monkeypatch.setattr("bot.service.plan_inbound", broken)
    assert replies(text(client, "hola", phone=phone)) == []
    assert replies(text(client, "STOP", phone=phone)) == []  # confirmed once already
    (apology,) = replies(text(client, "START", phone=phone))
    assert "try again" in apology.lower()
    assert count_turns(session) == 2 + 3 + 1  # every text kept, and the one apology


def test_start_after_stop_resubscribes(client, session, payer):
    replies(text(client, "ALTO"))
    (reply,) = replies(text(client, "START"))
    assert reply
    session.expire_all()
    assert session.exec(select(Enrollment)).one().status == EnrollmentStatus.ACTIVE


def test_ok_after_stop_acknowledges_and_does_not_resubscribe(client, session, payer):
    replies(text(client, "STOP"))
    assert replies(text(client, "ok")) == []
    session.expire_all()
    assert session.exec(select(Enrollment)).one().status == EnrollmentStatus.OPTED_OUT


def test_an_undeliverable_number_that_texts_start_gets_texts_again(client, session, payer):
    _, enrollment = payer
    enrollment.status = EnrollmentStatus.UNDELIVERABLE
    session.add(enrollment)
    session.commit()
    (reply,) = replies(text(client, "START"))
    assert "STOP" in reply.upper()
    session.expire_all()
    assert session.exec(select(Enrollment)).one().status == EnrollmentStatus.ACTIVE


def test_stop_wins_even_in_the_middle_of_a_payment(client, session, payer):
    from models import Payment

    replies(text(client, "PAY"))
    replies(text(client, "STOP"))
    # YES after STOP re-subscribes; it does not confirm the quote STOP threw away.
    (reply,) = replies(text(client, "YES"))
    session.expire_all()
    assert session.exec(select(Payment)).all() == []
    assert session.exec(select(Enrollment)).one().status == EnrollmentStatus.ACTIVE
    assert "$" not in reply


def test_a_pending_number_is_activated_by_si_and_welcomed(client, session):
    case = make_case(session, language="es")
    make_enrollment(
        session,
        case,
        "+16175550177",
        status=EnrollmentStatus.PENDING,
        confirmed_at=None,
        language="es",
    )
    (welcome,) = replies(text(client, "Sí", phone="+16175550177"))
    assert "STOP" in welcome.upper()
    enrollment = session.exec(select(Enrollment)).one()
    session.refresh(enrollment)
    assert enrollment.status == EnrollmentStatus.ACTIVE and enrollment.confirmed_at is not None


def invited_to(session, case_number: str, *, invited: bool = True):
    """Another case for the payer's phone, pending its YES; its invitation sent, or not yet."""
    case = make_case(session, case_number=case_number)
    make_enrollment(
        session,
        case,
        "+16175550134",
        status=EnrollmentStatus.PENDING,
        confirmed_at=None,
        invited_at=utcnow() if invited else None,
    )
    return case


def test_yes_from_a_payer_active_on_one_case_accepts_the_invitation_for_another(
    client, session, payer
):
    other = invited_to(session, "CS-007731")
    (welcome,) = replies(text(client, "YES"))
    assert "signed up" in welcome
    session.expire_all()
    statuses = {e.case_id: e.status for e in session.exec(select(Enrollment))}
    assert statuses == {payer[0].id: EnrollmentStatus.ACTIVE, other.id: EnrollmentStatus.ACTIVE}


def test_no_from_a_payer_active_on_one_case_declines_the_invitation_for_another_only(
    client, session, payer
):
    other = invited_to(session, "CS-007735")
    waiting = invited_to(session, "CS-007736", invited=False)  # imported, not invited yet
    (reply,) = replies(text(client, "no"))
    assert "won't get texts about the new case" in reply
    session.expire_all()
    statuses = {e.case_id: e.status for e in session.exec(select(Enrollment))}
    assert statuses == {
        payer[0].id: EnrollmentStatus.ACTIVE,
        other.id: EnrollmentStatus.DECLINED,
        waiting.id: EnrollmentStatus.PENDING,
    }
    # The number itself did not opt out: BAL is still answered, and its reminders, receipts and
    # staff replies still go (a declined case was once taken for a STOP of the whole number).
    assert "balance" in replies(text(client, "BAL"))[0]
    from bot.outbound import may_text

    assert may_text(session=session, phone="+16175550134")
    # STOP, then START: the number's texts come back, the declined case stays declined.
    text(client, "STOP")
    text(client, "START")
    session.expire_all()
    statuses = {e.case_id: e.status for e in session.exec(select(Enrollment))}
    assert statuses[payer[0].id] == EnrollmentStatus.ACTIVE
    assert statuses[other.id] == EnrollmentStatus.DECLINED


def test_yes_takes_the_invitation_that_went_out_not_one_held_for_the_night(client, session):
    sent = make_case(session, case_number="CS-000501")
    held = make_case(session, case_number="CS-000777")
    phone = "+16175550188"
    make_enrollment(
        session,
        sent,
        phone,
        status=EnrollmentStatus.PENDING,
        confirmed_at=None,
        invited_at=utcnow(),
    )
    morning = utcnow() + timedelta(hours=3)
    make_enrollment(
        session,
        held,
        phone,
        status=EnrollmentStatus.PENDING,
        confirmed_at=None,
        invite_at=morning,
    )
    assert "signed up" in replies(text(client, "YES", phone=phone))[0]
    session.expire_all()
    by_case = {e.case_id: e for e in session.exec(select(Enrollment))}
    assert by_case[sent.id].status == EnrollmentStatus.ACTIVE
    assert by_case[held.id].status == EnrollmentStatus.PENDING  # its invitation still goes
    assert by_case[held.id].invite_at is not None


def test_yes_with_no_invitation_out_takes_every_pending_case_and_clears_a_hold(client, session):
    held = make_case(session, case_number="CS-000778")
    phone = "+16175550189"
    make_enrollment(
        session,
        held,
        phone,
        status=EnrollmentStatus.PENDING,
        confirmed_at=None,
        invite_at=utcnow() + timedelta(hours=3),
    )
    assert "signed up" in replies(text(client, "YES", phone=phone))[0]
    session.expire_all()
    (enrollment,) = session.exec(select(Enrollment)).all()
    assert enrollment.status == EnrollmentStatus.ACTIVE and enrollment.invite_at is None


def test_a_stray_yes_does_not_activate_a_case_whose_invitation_never_went(client, session, payer):
    other = invited_to(session, "CS-007732", invited=False)  # imported, not invited yet
    (reply,) = replies(text(client, "yes"))
    assert "signed up" not in reply
    session.expire_all()
    statuses = {e.case_id: e.status for e in session.exec(select(Enrollment))}
    assert statuses[other.id] == EnrollmentStatus.PENDING


def test_a_new_case_keeps_the_language_an_active_payer_chose(client, session, payer):
    replies(text(client, "ESPAÑOL"))
    other = make_case(session, case_number="CS-007733")  # enrolled later, in English
    make_enrollment(session, other, "+16175550134", language="en")
    (reply,) = replies(text(client, "SALDO"))
    assert "varios casos" in reply or "Caso" in reply


def test_start_clears_an_undeliverable_case_when_another_waits_for_its_invitation(
    client, session, payer
):
    _, enrollment = payer
    enrollment.status = EnrollmentStatus.UNDELIVERABLE
    session.add(enrollment)
    invited_to(session, "CS-007734")
    session.commit()
    replies(text(client, "START"))
    session.expire_all()
    from bot.outbound import may_text

    statuses = {e.case_id: e.status for e in session.exec(select(Enrollment))}
    assert set(statuses.values()) == {EnrollmentStatus.ACTIVE}
    assert may_text(session=session, phone="+16175550134")


def test_a_number_that_texted_before_it_was_enrolled_is_answered_in_its_enrollment_language(
    client, session
):
    replies(text(client, "PAY", phone="+16175550188"))  # not enrolled yet: answered in English
    case = make_case(session, language="es", balance_cents=12_345)
    make_enrollment(
        session,
        case,
        "+16175550188",
        status=EnrollmentStatus.PENDING,
        confirmed_at=None,
        language="es",
    )
    (welcome,) = replies(text(client, "SI", phone="+16175550188"))
    assert "Gracias por inscribirse" in welcome
    (balance,) = replies(text(client, "SALDO", phone="+16175550188"))
    assert "saldo" in balance.lower() and "$123.45" in balance


def test_agent_records_a_handoff_for_staff(client, session, payer):
    case, _ = payer
    (reply,) = replies(text(client, "I need to talk to a person"))
    handoff = session.exec(select(Handoff)).one()
    assert (handoff.case_id, handoff.phone, handoff.status) == (case.id, "+16175550134", "waiting")
    assert handoff.turn_id == turns(session)[0].id
    assert reply


def test_stop_after_agent_closes_that_numbers_requests_for_a_person(client, session, payer):
    case, _ = payer
    make_enrollment(session, case, "+16175550199")
    replies(text(client, "AGENT"))
    replies(text(client, "AGENT", phone="+16175550199"))
    replies(text(client, "STOP"))
    session.expire_all()
    handoffs = {h.phone: h for h in session.exec(select(Handoff)).all()}
    stopped, other = handoffs["+16175550134"], handoffs["+16175550199"]
    assert (stopped.status, stopped.answered_by) == ("closed", None)
    assert stopped.answered_at is not None
    assert (other.status, other.answered_at) == ("waiting", None)


def test_stop_closes_requests_for_a_person_even_when_handling_the_text_failed(
    client, session, payer, monkeypatch
):
    from bot import service

    replies(text(client, "AGENT"))

    def broken(**_kwargs):
        raise RuntimeError("a dependency is down")

    monkeypatch.setattr(service, "answer_inbound", broken)
    replies(text(client, "STOP"))
    session.expire_all()
    assert session.exec(select(Enrollment)).one().status == EnrollmentStatus.OPTED_OUT
    assert session.exec(select(Handoff)).one().status == "closed"


def test_a_phone_on_two_cases_is_asked_which_case_first(client, session, payer):
    other = make_case(session, case_number="CS-007310", balance_cents=5_000)
    make_enrollment(session, other, "+16175550134")
    (question,) = replies(text(client, "BAL"))
    assert "4821" in question and "7310" in question
    (answer,) = replies(text(client, "7310"))
    assert "$50.00" in answer


def on_two_cases(session, payer):
    """The payer's phone on a second case too: CS-004821 ($1,000.00) and CS-007310 ($50.00)."""
    other = make_case(session, case_number="CS-007310", balance_cents=5_000)
    make_enrollment(session, other, "+16175550134")
    return payer[0], other


def filed(session) -> list[tuple[str, int | None]]:
    """Each inbound text and the case it is logged on; a reply goes on its text's case."""
    logged = turns(session)
    by_id = {t.id: t for t in logged}
    for t in logged:
        if t.in_reply_to_id is not None:
            assert t.case_id == by_id[t.in_reply_to_id].case_id, t.body
    return [(t.body, t.case_id) for t in logged if t.direction == "inbound"]


def test_on_a_phone_with_two_cases_texts_about_no_one_case_are_logged_on_none(
    client, session, payer
):
    _, other = on_two_cases(session, payer)
    for body in ("HELP", "MENU", "ESPAÑOL", "ENGLISH", "BAL", "7310", "STOP", "START"):
        replies(text(client, body))
    assert filed(session) == [
        ("HELP", None),
        ("MENU", None),
        ("ESPAÑOL", None),
        ("ENGLISH", None),
        ("BAL", None),  # answered by "which case?"
        ("7310", other.id),  # answered with that case's balance
        ("STOP", None),
        ("START", None),
    ]


def test_once_a_case_is_chosen_texts_are_logged_on_it_but_a_language_switch_is_not(
    client, session, payer
):
    own, _ = on_two_cases(session, payer)
    replies(text(client, "4821"))
    replies(text(client, "HELP"))
    replies(text(client, "ESPAÑOL"))  # every case's texts change language
    assert filed(session) == [("4821", own.id), ("HELP", own.id), ("ESPAÑOL", None)]


def test_a_yes_accepting_a_second_cases_invitation_is_logged_on_none(client, session, payer):
    invited_to(session, "CS-007735")
    replies(text(client, "YES"))
    assert filed(session) == [("YES", None)]


def test_a_text_that_broke_on_a_phone_with_two_cases_is_logged_on_none(
    client, session, payer, monkeypatch
):
    on_two_cases(session, payer)

    def broken(*_, **__):
        raise RuntimeError("database hiccup")

    monkeypatch.setattr("bot.service.facts_of_cases", broken)
    replies(text(client, "STOP"))
    assert filed(session) == [("STOP", None)]


def test_spanish_payers_are_answered_in_spanish_and_can_switch(client, session):
    case = make_case(session, language="es", balance_cents=12_345)
    make_enrollment(session, case, "+16175550166", language="es")
    (reply,) = replies(text(client, "saldo", phone="+16175550166"))
    assert "$123.45" in reply and "saldo" in reply.lower()
    replies(text(client, "ENGLISH", phone="+16175550166"))
    (english,) = replies(text(client, "BAL", phone="+16175550166"))
    assert "balance" in english.lower()
    session.expire_all()
    assert session.exec(select(Conversation)).one().language == "en"


@pytest.mark.parametrize(
    "form",
    [
        {"Body": ""},
        {"Body": "", "NumMedia": "1", "MediaUrl0": "https://api.twilio.com/media/1"},
        {"Body": "💸💸💸 🙏"},
        {"Body": "x" * 1600},
        {"Body": "\x00\x01 null bytes"},
        {"NumMedia": "lots"},
        {"From": "not a phone"},
    ],
)
def test_odd_bodies_still_get_valid_twiml_and_a_turn(client, session, payer, form):
    params = inbound_params("placeholder")
    params.update(form)
    if "Body" not in form:
        params["Body"] = "hello"
    response = post_signed(client, "/sms/inbound", params, TOKEN)
    replies(response)
    assert count_turns(session) >= 1


def test_invalid_utf8_bytes_get_a_valid_reply(client, session, payer):
    from bot import sms

    params = inbound_params("ignored")
    signature = sms.sign(auth_token=TOKEN, url="http://paytext.test/sms/inbound", params=params)
    raw = "&".join(f"{k}={v}" for k, v in params.items() if k != "Body") + "&Body=%FF%FEpay%C3"
    response = client.post(
        "/sms/inbound",
        data=raw,
        content_type="application/x-www-form-urlencoded",
        headers={sms.SIGNATURE_HEADER: signature},
    )
    # The body differs from what was signed, so Twilio's check refuses it; unsigned it is answered.
    assert response.status_code in (200, 403)


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    raw=st.one_of(
        st.binary(max_size=80),
        st.lists(st.tuples(st.text(max_size=6), st.text(max_size=12)), max_size=5).map(
            lambda fields: urlencode(fields).encode()
        ),
        st.lists(st.sampled_from(["a=1", "&", "=", "%", "%F", "%FF", "%C3%A9", "+", "Body", "x"]))
        .map("".join)
        .map(str.encode),
    )
)
def test_twilios_fields_are_read_as_flask_reads_the_form(app, raw):
    from flask import request

    from bot.views import twilio_form

    form_type = "application/x-www-form-urlencoded"
    with app.test_request_context("/sms/inbound", method="POST", data=raw, content_type=form_type):
        expected = list(request.form.items(multi=True))
    with app.test_request_context("/sms/inbound", method="POST", data=raw, content_type=form_type):
        fields = twilio_form()
        assert [(name, value) for name, values in fields.items() for value in values] == expected


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=st.text(max_size=400))
def test_no_body_breaks_the_webhook_and_every_request_is_logged(client, session, payer, body):
    before = count_turns(session)
    response = text(client, body)
    replies(response)
    assert count_turns(session) > before


def status_callback(client, fake, sid, status, error_code=None):
    params = fake.deliver(sid, status, error_code)
    return post_signed(client, "/sms/status", params, TOKEN)


def send(app, phone="+16175550134"):
    from bot.outbound import send_text
    from db import session_scope

    with app.app_context(), session_scope() as s:
        return send_text(session=s, phone=phone, body="Your payment is due", case_id=None).turn


def test_outbound_texts_go_through_twilio_with_a_status_callback(app, fake_twilio, session, payer):
    turn = send(app)
    (message,) = fake_twilio.messages
    assert message["to"] == "+16175550134" and message["status_callback"] == (
        "http://paytext.test/sms/status"
    )
    assert turn.provider_message_id == message["sid"]


def test_delivery_reports_are_recorded_once_in_order(app, client, fake_twilio, session, payer):
    turn = send(app)
    assert (
        status_callback(client, fake_twilio, turn.provider_message_id, "delivered").status_code
        == 204
    )
    assert status_callback(client, fake_twilio, turn.provider_message_id, "sent").status_code == 204
    session.expire_all()
    assert session.get(ConversationTurn, turn.id).delivery_status == "delivered"


def test_a_report_that_arrives_before_the_turn_is_applied_when_it_is_saved(
    app, client, fake_twilio, session
):
    import uuid

    from bot import sms

    sid = "SM" + uuid.uuid4().hex
    params = {"MessageSid": sid, "MessageStatus": "delivered", "AccountSid": DEFAULT_ACCOUNT_SID}
    assert post_signed(client, "/sms/status", params, TOKEN).status_code == 204
    from bot.outbound import send_text
    from db import session_scope

    class Early:
        name = "early"

        def send(self, *, to, body, status_callback=None):
            return sms.SendResult(ok=True, sid=sid, status="queued")

    app.extensions["sms"] = Early()
    with app.app_context(), session_scope() as s:
        turn = send_text(session=s, phone="+16175550134", body="hi", case_id=None).turn
    session.expire_all()
    assert session.get(ConversationTurn, turn.id).delivery_status == "delivered"


def test_a_report_that_comes_while_the_turn_is_saved_but_not_committed_is_applied(
    app, client, fake_twilio, session, payer
):
    from bot.outbound import send_text
    from db import session_scope

    with app.app_context(), session_scope() as s:
        turn = send_text(session=s, phone="+16175550134", body="hi", case_id=None).turn
        # Twilio's report comes before the sender commits: the webhook finds no turn yet.
        status_callback(client, fake_twilio, turn.provider_message_id, "delivered")
    session.expire_all()
    assert session.get(ConversationTurn, turn.id).delivery_status == "delivered"


def test_a_report_kept_early_is_applied_if_the_turn_is_committed_before_the_webhook_ends(
    app, client, fake_twilio, session, payer, monkeypatch
):
    from bot import status
    from bot.outbound import send_text
    from db import session_scope

    # A sender past its own looks for early reports.
    monkeypatch.setattr(status, "apply_early", lambda **_: None)
    with app.app_context(), session_scope() as s:
        turn = send_text(session=s, phone="+16175550134", body="hi", case_id=None).turn
    monkeypatch.undo()
    record, calls = status.record, []

    def record_then_sender_commits(**kwargs):
        # The report's lookup finds no turn; the sender commits it before the webhook ends.
        calls.append(kwargs)
        if len(calls) > 1:
            return record(**kwargs)
        with app.app_context(), session_scope() as s:
            s.get(ConversationTurn, turn.id).provider_message_id = None
        kept = record(**kwargs)
        with app.app_context(), session_scope() as s:
            s.get(ConversationTurn, turn.id).provider_message_id = kwargs["sid"]
        return kept

    monkeypatch.setattr(status, "record", record_then_sender_commits)
    status_callback(client, fake_twilio, fake_twilio.messages[-1]["sid"], "delivered")
    session.expire_all()
    assert session.get(ConversationTurn, turn.id).delivery_status == "delivered"


@pytest.mark.parametrize(
    ("code", "status"), [(21610, "opted_out"), (30006, "undeliverable"), (30005, "undeliverable")]
)
def test_carrier_errors_stop_further_texts(app, client, fake_twilio, session, payer, code, status):
    turn = send(app)
    status_callback(client, fake_twilio, turn.provider_message_id, "undelivered", code)
    session.expire_all()
    assert session.exec(select(Enrollment)).one().status == status
    from bot.outbound import may_text

    assert not may_text(session=session, phone="+16175550134")


def test_a_forged_status_callback_changes_nothing(app, client, fake_twilio, session, payer):
    turn = send(app)
    params = fake_twilio.deliver(turn.provider_message_id, "undelivered", 21610)
    assert post_signed(client, "/sms/status", params, "wrong-token").status_code == 403
    session.expire_all()
    assert session.exec(select(Enrollment)).one().status == EnrollmentStatus.ACTIVE
    assert session.get(ConversationTurn, turn.id).delivery_status != "undelivered"


def test_the_phone_simulator_is_only_there_with_the_console_backend(client):
    assert client.get("/dev/phone").status_code == 404


def test_when_handling_breaks_the_payer_gets_an_apology_and_the_turn_is_kept(
    client, session, payer, monkeypatch
):
    def broken(*_, **__):
        raise RuntimeError("database hiccup")

    monkeypatch.setattr("bot.service.facts_of_cases", broken)
    (reply,) = replies(text(client, "BAL"))
    assert "try again" in reply.lower() and "800-555-0134" in reply
    inbound, outbound = turns(session)
    assert (inbound.body, inbound.intent, outbound.body) == ("BAL", "error", reply)


def test_stop_is_honoured_even_when_handling_breaks(client, session, payer, monkeypatch):
    def broken(*_, **__):
        raise RuntimeError("database hiccup")

    monkeypatch.setattr("bot.service.facts_of_cases", broken)
    (reply,) = replies(text(client, "STOP"))
    assert "unsubscribed" in reply
    session.expire_all()
    assert session.exec(select(Enrollment)).one().status == EnrollmentStatus.OPTED_OUT


def test_appt_answers_with_the_next_scheduled_appointment_in_local_time(client, session, payer):
    from datetime import UTC, datetime, timedelta

    from models import Appointment, AppointmentKind, AppointmentStatus

    case, _ = payer
    soon = datetime.now(UTC).replace(microsecond=0) + timedelta(days=2)
    session.add_all(
        [
            Appointment(
                case_id=case.id,
                starts_at=soon - timedelta(days=5),
                kind=AppointmentKind.COURT_HEARING,
                location="Past Court",
            ),
            Appointment(
                case_id=case.id,
                starts_at=soon + timedelta(days=1),
                kind=AppointmentKind.COURT_HEARING,
                location="Cancelled Court",
                status=AppointmentStatus.CANCELED,
            ),
            Appointment(
                case_id=case.id,
                starts_at=soon + timedelta(days=7),
                kind=AppointmentKind.COURT_HEARING,
                location="Later Court",
            ),
            Appointment(
                case_id=case.id,
                starts_at=soon,
                kind=AppointmentKind.CASE_CONFERENCE,
                location="Room 4B, 100 Cambridge St",
            ),
        ]
    )
    session.commit()
    (reply,) = replies(text(client, "APPT"))
    assert "Room 4B" in reply
    assert not any(place in reply for place in ("Past Court", "Cancelled Court", "Later Court"))


def test_appt_shows_the_time_in_the_phone_zone_when_the_case_names_none(client, session):
    # The reminder for this appointment is written in the number's zone (Los Angeles, 213), so
    # the answer to APPT must not show the same appointment at New York's (the default) time.
    from datetime import UTC, datetime, timedelta
    from zoneinfo import ZoneInfo

    from bot.catalog import en
    from models import Appointment, AppointmentKind

    case = make_case(session, timezone=None)
    make_enrollment(session, case, "+12135550134")
    soon = datetime.now(UTC).replace(minute=30, second=0, microsecond=0) + timedelta(days=2)
    session.add(
        Appointment(
            case_id=case.id, starts_at=soon, kind=AppointmentKind.COURT_HEARING, location="Rm 4"
        )
    )
    session.commit()
    (reply,) = replies(text(client, "APPT", phone="+12135550134"))
    assert en.format_when(soon.astimezone(ZoneInfo("America/Los_Angeles"))) in reply


def test_history_lists_the_latest_payments_with_their_card(client, session, payer):
    from datetime import UTC, datetime, timedelta

    from models import CardOnFile, Payment, PaymentStatus

    case, _ = payer
    card = CardOnFile(
        case_id=case.id,
        processor="sandbox",
        customer_id="cus_1",
        payment_method_id="pm_1",
        brand="visa",
        last4="4242",
        exp_month=12,
        exp_year=2030,
    )
    session.add(card)
    session.flush()
    start = datetime.now(UTC) - timedelta(days=40)
    for n, (cents, status) in enumerate(
        [
            (1_100, "succeeded"),
            (2_200, "succeeded"),
            (3_300, "failed"),
            (4_400, "succeeded"),
            (5_500, "succeeded"),
        ]
    ):
        session.add(
            Payment(
                case_id=case.id,
                card_id=card.id,
                amount_cents=cents,
                status=PaymentStatus(status),
                idempotency_key=f"k{n}",
                created_at=start + timedelta(days=n),
            )
        )
    session.commit()
    (reply,) = replies(text(client, "HISTORY"))
    assert "$55.00" in reply and "$44.00" in reply and "$22.00" in reply
    assert "$33.00" not in reply and "$11.00" not in reply
    assert "4242" in reply


@pytest.mark.parametrize(
    ("body", "secret"),
    [
        ("my card is 4111 1111 1111 1111 exp 12/28", "4111111111111111"),
        ("4242424242424242", "4242424242424242"),
        ("PAY 5555-5555-5555-4445 please", "5555555555554445"),  # mistyped: one digit off
        ("my ssn is 123-45-6789", "123456789"),
        ("seguro social 123 45 6789", "123456789"),
    ],
)
def test_a_card_number_or_ssn_texted_by_a_payer_is_never_stored_or_logged(
    client, session, payer, caplog, monkeypatch, body, secret
):
    import logging

    from bot import service

    caplog.set_level(logging.DEBUG)
    assert replies(text(client, body))

    def broken(**kwargs):
        raise RuntimeError("database hiccup")

    monkeypatch.setattr(service, "answer_inbound", broken)
    assert replies(text(client, body))  # the apology path keeps the text too

    session.expire_all()
    stored = [f"{t.body}{t.state_before}{t.state_after}" for t in turns(session)]
    stored += [str(c.state) for c in session.exec(select(Conversation))]
    stored += [record.getMessage() + (record.exc_text or "") for record in caplog.records]
    squeezed = "".join(stored).replace(" ", "").replace("-", "")
    assert secret not in squeezed
    inbound = turns(session)[0]
    assert inbound.body != body and "removed" in inbound.body


@pytest.mark.parametrize(
    "body",
    [
        "call me at 617-555-0134 or 617-555-0135",
        "+16175550134",
        "pay 1,250.00",
        "case MA-2024-118204",
        "pay 250 for 2024118204",
    ],
)
def test_phone_numbers_amounts_and_case_numbers_are_not_taken_for_card_numbers(body):
    from bot.redact import sensitive_numbers_removed

    assert sensitive_numbers_removed(body) == body
