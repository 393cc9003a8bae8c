"""Texts sent outside reminders (receipts, invitations) go once, even when Twilio's answer is lost.

Driven through the real twilio SDK against the local fake of its API.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

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
    result = runner.invoke(args=["enroll", "--invite-pending"])
    # Not a failure: it is held, to be tried again.
    assert result.exit_code == 0, result.output
    assert "Invited 0 pending number(s); 0 could not be texted." in result.output
    assert "1 not sent: Twilio was busy or could not take them for now" in result.output
    assert reload(session, Enrollment, enrollment.id).invited_at is None

    runner.invoke(args=["enroll", "--invite-pending"])
    assert [message["to"] for message in twilio.messages] == [PHONE]
    assert reload(session, Enrollment, enrollment.id).invited_at is not None


NOON = datetime(2026, 12, 1, 17, tzinfo=UTC)  # a Tuesday, 12:00 PM EST


@pytest.fixture
def noon(monkeypatch) -> list[datetime]:
    """The clock the enroll form and the invitations read, at NOON; a test moves it."""
    now = [NOON]
    for module in ("bot.outbound", "admin.service"):
        monkeypatch.setattr(f"{module}.utcnow", lambda: now[0])
    return now


def test_an_invitation_from_the_enroll_form_refused_with_a_429_is_retried_5_minutes_later(
    twilio, app, client, session, noon
):
    from bot.outbound import INVITE_RETRY_AFTER
    from jobs.reminders import dispatch_due
    from models import Role
    from tests.admin_helpers import post_form, signed_in

    signed_in(client, session, Role.STAFF)
    make_case(session, case_number="CS-000501", timezone="America/New_York")
    twilio.fail_next(20429, status=429)
    response = post_form(
        client,
        "/admin/enroll",
        {"case_number": "CS-000501", "phone": "617-555-0134", "language": "en", "consent": "y"},
        follow_redirects=True,
    )
    page = response.get_data(as_text=True)
    assert "Twilio was busy; the opt-in text will be retried at 12:05 PM EST." in page
    assert "could not be sent" not in page and "Opt-in text held" in page
    enrollment = session.exec(select(Enrollment)).one()
    assert (enrollment.invited_at, enrollment.invite_at) == (None, NOON + INVITE_RETRY_AFTER)
    (refused,) = texts(session, intent="optin_invite")
    assert (refused.delivery_status, refused.error_code) == ("failed", 20429)

    with app.app_context():
        assert dispatch_due(now=NOON + timedelta(minutes=1)).invites_due == 0
        assert dispatch_due(now=NOON + INVITE_RETRY_AFTER).invites_due == 1
        for later in (10, 60, 24 * 60):
            assert dispatch_due(now=NOON + timedelta(minutes=later)).invites_due == 0
    assert [message["to"] for message in twilio.messages] == [PHONE]
    row = reload(session, Enrollment, enrollment.id)
    assert (row.invited_at, row.invite_at) == (NOON + INVITE_RETRY_AFTER, None)


def test_a_retry_is_held_for_the_payers_window_when_it_closes_meanwhile(twilio, app, session, noon):
    from admin.service import enroll_number
    from bot.outbound import Sent

    noon[0] = datetime(2026, 12, 2, 1, 58, tzinfo=UTC)  # 8:58 PM EST: two minutes left
    make_case(session, case_number="CS-000501", timezone="America/New_York")
    twilio.fail_next(20429, status=429)
    with app.app_context():
        enrolled = enroll_number(
            session=session,
            config=app.config,
            case_number="CS-000501",
            new_case=None,
            phone=PHONE,
            language="en",
        )
        session.commit()
    assert isinstance(enrolled.invite, Sent) and enrolled.invite.retry is not None
    assert enrolled.invite.retry.when() == "8:00 AM EST on Dec 2"
    assert reload(session, Enrollment, enrolled.enrollment.id).invite_at == datetime(
        2026, 12, 2, 13, tzinfo=UTC
    )


@pytest.mark.parametrize(
    ("code", "status", "kept"),
    [
        (21211, 400, EnrollmentStatus.UNDELIVERABLE),  # an invalid number
        (21610, 400, EnrollmentStatus.OPTED_OUT),  # the payer opted out with the carrier
        (30006, 400, EnrollmentStatus.UNDELIVERABLE),  # a landline
    ],
)
def test_an_invitation_refused_for_good_is_not_retried(
    twilio, app, session, noon, code, status, kept
):
    from admin.service import enroll_number

    make_case(session, case_number="CS-000501", timezone="America/New_York")
    twilio.fail_next(code, status=status)
    with app.app_context():
        enrolled = enroll_number(
            session=session,
            config=app.config,
            case_number="CS-000501",
            new_case=None,
            phone=PHONE,
            language="en",
        )
        session.commit()
    assert enrolled.invite.retry is None and not enrolled.invite.result.ok
    row = reload(session, Enrollment, enrolled.enrollment.id)
    assert (row.status, row.invited_at, row.invite_at) == (kept, None, None)


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
