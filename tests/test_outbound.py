"""Texts sent outside reminders (receipts, invitations) go once, even when Twilio's answer is lost.

Driven through the real twilio SDK against the local fake of its API.
"""

from __future__ import annotations

import pytest
from sqlmodel import select

from billing import service
from models import Enrollment, EnrollmentStatus
from tests.billing_helpers import add_card, confirmed_payment, reload, texts
from tests.factories import make_case, make_enrollment
from tests.fakes.twilio_api import FakeTwilio

PHONE = "+16175550134"


@pytest.fixture
def twilio(config):
    """The fake Twilio; ask for it before `app` so the app sends through it."""
    with FakeTwilio() as fake:
        config.update(fake.settings())
        yield fake


def test_an_invitation_whose_answer_was_lost_counts_as_sent_and_is_not_sent_again(
    twilio, app, runner, session, daytime
):
    case = make_case(session)
    enrollment = make_enrollment(session, case, PHONE, status=EnrollmentStatus.PENDING)
    twilio.hang_up_after_accepting()
    result = runner.invoke(args=["enroll", "--invite-pending"])
    # Reported as sent, not as a failure: it may well have gone, and it will not go again.
    assert result.exit_code == 0 and "Invited 1 pending number(s); 0 could not" in result.output
    (turn,) = texts(session, intent="optin_invite")
    assert (turn.delivery_status, turn.provider_message_id) == ("unknown", None)
    assert reload(session, Enrollment, enrollment.id).invited_at is not None

    runner.invoke(args=["enroll", "--invite-pending"])
    assert [message["to"] for message in twilio.messages] == [PHONE]


def test_an_invitation_refused_before_reaching_twilio_is_sent_by_the_next_run(
    twilio, app, runner, session, daytime
):
    case = make_case(session)
    enrollment = make_enrollment(session, case, PHONE, status=EnrollmentStatus.PENDING)
    twilio.fail_next(20429, status=429)
    runner.invoke(args=["enroll", "--invite-pending"])
    assert reload(session, Enrollment, enrollment.id).invited_at is None

    runner.invoke(args=["enroll", "--invite-pending"])
    assert [message["to"] for message in twilio.messages] == [PHONE]
    assert reload(session, Enrollment, enrollment.id).invited_at is not None


def test_a_receipt_whose_answer_was_lost_is_logged_unknown_and_the_number_stays_textable(
    twilio, app, session
):
    case = make_case(session)
    make_enrollment(session, case, PHONE)
    card = add_card(app, session, case)
    payment = confirmed_payment(app, session, case, card, 25_000)
    twilio.hang_up_after_accepting()
    with app.app_context():
        service.enqueue_charge(payment_id=payment.id)  # runs inline: charge, then the receipt
    (receipt,) = texts(session, intent="receipt")
    assert (receipt.delivery_status, receipt.provider_message_id) == ("unknown", None)
    statuses = session.exec(select(Enrollment.status).where(Enrollment.phone == PHONE)).all()
    assert statuses == [EnrollmentStatus.ACTIVE]

    with app.app_context():
        service.enqueue_charge(payment_id=payment.id)
    assert len(twilio.messages) == 1 and len(texts(session, intent="receipt")) == 1


def test_a_held_invitation_whose_answer_was_lost_counts_as_sent_and_is_not_sent_again(
    twilio, app, session
):
    from datetime import UTC, datetime

    from bot.outbound import invite_pending, send_held_invites

    night, opens = datetime(2026, 12, 1, 5, 48, tzinfo=UTC), datetime(2026, 12, 1, 13, tzinfo=UTC)
    enrollment = make_enrollment(session, make_case(session), PHONE, status="pending")
    with app.app_context():
        assert len(invite_pending(now=night).held) == 1
        twilio.hang_up_after_accepting()
        assert send_held_invites(now=opens) == 1
        assert send_held_invites(now=opens) == 0
        invite_pending(now=opens)
    (turn,) = texts(session, intent="optin_invite")
    assert (turn.delivery_status, turn.provider_message_id) == ("unknown", None)
    assert reload(session, Enrollment, enrollment.id).invited_at == opens
    assert [message["to"] for message in twilio.messages] == [PHONE]


def test_a_held_invitation_refused_before_reaching_twilio_is_retried_once_later(
    twilio, app, session
):
    from datetime import UTC, datetime

    from bot.outbound import INVITE_RETRY_AFTER, invite_pending, send_held_invites

    night, opens = datetime(2026, 12, 1, 5, 48, tzinfo=UTC), datetime(2026, 12, 1, 13, tzinfo=UTC)
    enrollment = make_enrollment(session, make_case(session), PHONE, status="pending")
    with app.app_context():
        invite_pending(now=night)
        twilio.fail_next(20429, status=429)
        assert send_held_invites(now=opens) == 0
        row = reload(session, Enrollment, enrollment.id)
        assert (row.invited_at, row.invite_at) == (None, opens + INVITE_RETRY_AFTER)
        assert send_held_invites(now=opens + INVITE_RETRY_AFTER) == 1
        assert send_held_invites(now=opens + 2 * INVITE_RETRY_AFTER) == 0
    assert [message["to"] for message in twilio.messages] == [PHONE]
    assert reload(session, Enrollment, enrollment.id).invited_at == opens + INVITE_RETRY_AFTER


def test_two_senders_of_one_invitation_send_it_once(app, session):
    import db
    from bot.outbound import send_invite

    case = make_case(session)
    enrollment = make_enrollment(session, case, PHONE, status=EnrollmentStatus.PENDING)
    with app.app_context(), db.session_scope() as first, db.session_scope() as second:
        # Both read the enrollment uninvited, as the form sent twice and a dispatch might.
        mine, theirs = (s.get(Enrollment, enrollment.id) for s in (first, second))
        sent = send_invite(session=first, enrollment=mine, case_number=case.case_number)
        first.commit()
        again = send_invite(session=second, enrollment=theirs, case_number=case.case_number)
    assert sent is not None and sent.result.ok and again is None
    assert len(app.extensions["sms"].sent) == 1
