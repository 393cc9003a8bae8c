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
    twilio, app, runner, session
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
    twilio, app, runner, session
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
