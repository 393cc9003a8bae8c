"""Opt-in invitations go only inside the payer's texting window: asked for in quiet hours, they
are held and sent by the reminder dispatch when the window opens in the payer's zone."""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime, timedelta
from datetime import time as dt_time

import pytest
from sqlmodel import select

from admin.service import enroll_number
from bot.outbound import Held, Sent, invite_pending, send_held_invites
from jobs.ratelimit import Pacer, send_pacer
from jobs.reminders import dispatch_due
from models import ConversationTurn, Enrollment, EnrollmentStatus, Role
from tests.admin_helpers import post_form, reload, signed_in
from tests.factories import make_case, make_enrollment
from tests.sms_helpers import inbound_params, post_signed

# Tuesday 1 December 2026, 05:48 UTC: 00:48 in New York and 23:48 (Monday) in Chicago.
NIGHT = datetime(2026, 12, 1, 5, 48, tzinfo=UTC)
NY_OPENS = datetime(2026, 12, 1, 13, 0, tzinfo=UTC)  # 8:00 AM EST
CHICAGO_OPENS = datetime(2026, 12, 1, 14, 0, tzinfo=UTC)  # 8:00 AM CST
NOON_NY = datetime(2026, 12, 1, 17, 0, tzinfo=UTC)


class Clock:
    """The time the enroll form and the invitations read; a test moves it."""

    def __init__(self, at: datetime):
        self.at = at

    def __call__(self) -> datetime:
        return self.at


@pytest.fixture
def clock(monkeypatch) -> Clock:
    now = Clock(NIGHT)
    for module in ("bot.outbound", "admin.service"):
        monkeypatch.setattr(f"{module}.utcnow", now)
    return now


def sent_to(app) -> list[str]:
    return [sms.to for sms in app.extensions["sms"].sent]


def pending(session, case, phone):
    return make_enrollment(session, case, phone, status=EnrollmentStatus.PENDING)


def invitations(session) -> list[ConversationTurn]:
    session.expire_all()
    query = select(ConversationTurn).where(ConversationTurn.intent == "optin_invite")
    return list(session.exec(query).all())


def payer_texts(app, body: str, phone: str) -> None:
    """An inbound text, signed as the console backend signs the simulator's."""
    token = hashlib.sha256(f"console:{app.config['SECRET_KEY']}".encode()).hexdigest()
    response = post_signed(app.test_client(), "/sms/inbound", inbound_params(body, phone), token)
    assert response.status_code == 200


def test_an_invitation_asked_for_inside_the_window_is_sent_at_once(app, session, clock):
    clock.at = NOON_NY
    make_case(session, case_number="CS-000501", timezone="America/Chicago")
    with app.app_context():
        enrolled = enroll_number(
            session=session,
            config=app.config,
            case_number="CS-000501",
            new_case=None,
            phone="+16175550134",
            language="en",
        )
        session.commit()
    assert isinstance(enrolled.invite, Sent) and enrolled.invite.result.ok
    assert sent_to(app) == ["+16175550134"]
    row = reload(session, Enrollment, enrolled.enrollment.id)
    assert (row.invited_at, row.invite_at) == (NOON_NY, None)


def test_invite_pending_in_quiet_hours_holds_each_until_its_payers_window_opens(
    app, runner, session, clock
):
    chicago = pending(session, make_case(session, timezone="America/Chicago"), "+16175550134")
    # No zone on the case: the 617 area code's, New York.
    boston = [
        pending(session, make_case(session, timezone=None), phone)
        for phone in ("+16175550135", "+16175550136")
    ]
    result = runner.invoke(args=["enroll", "--invite-pending"])
    assert result.exit_code == 0, result.output
    assert "Invited 0 pending number(s); 0 could not be texted." in result.output
    assert (
        "3 held for the payers' quiet hours, to be sent when each payer's texting window opens: "
        "1 at 8:00 AM CST on Dec 1, 2 at 8:00 AM EST." in result.output
    )
    assert sent_to(app) == [] and invitations(session) == []
    assert reload(session, Enrollment, chicago.id).invite_at == CHICAGO_OPENS
    assert {reload(session, Enrollment, e.id).invite_at for e in boston} == {NY_OPENS}

    with app.app_context():
        assert dispatch_due(now=NY_OPENS - timedelta(minutes=1)).invites_due == 0
        assert sent_to(app) == []
        assert dispatch_due(now=NY_OPENS).invites_due == 2
        assert sorted(sent_to(app)) == ["+16175550135", "+16175550136"]
        assert dispatch_due(now=CHICAGO_OPENS).invites_due == 1
    assert sorted(sent_to(app)) == ["+16175550134", "+16175550135", "+16175550136"]
    for enrollment in (chicago, *boston):
        row = reload(session, Enrollment, enrollment.id)
        assert row.invited_at is not None and row.invite_at is None
        assert row.status == EnrollmentStatus.PENDING  # until the payer's YES
    assert len(invitations(session)) == 3


def test_the_enroll_form_in_quiet_hours_says_when_the_opt_in_text_will_go(
    app, client, session, clock
):
    signed_in(client, session, Role.STAFF)
    clock.at = datetime(2026, 12, 1, 5, 46, tzinfo=UTC)  # 00:46 EST
    make_case(session, case_number="CS-000502", timezone=None)
    response = post_form(
        client,
        "/admin/enroll",
        {"case_number": "CS-000502", "phone": "617-555-0134", "language": "en", "consent": "y"},
        follow_redirects=True,
    )
    page = response.get_data(as_text=True)
    assert "The opt-in text will be sent at 8:00 AM EST, when the payer&#39;s quiet hours end" in (
        page
    )
    assert "The opt-in text was sent" not in page
    assert "Opt-in text held" in page and "Dec 1, 2026 8:00 AM EST" in page
    assert sent_to(app) == []

    with app.app_context():
        dispatch_due(now=NY_OPENS)
    assert sent_to(app) == ["+16175550134"]
    (turn,) = invitations(session)
    assert turn.case_id is not None and turn.enrollment_id is not None


def test_a_payer_in_another_zone_is_told_the_day_too(app, session, clock):
    clock.at = datetime(2026, 12, 1, 4, 0, tzinfo=UTC)  # 22:00 Monday in Chicago
    make_case(session, case_number="CS-000503", timezone="America/Chicago")
    with app.app_context():
        enrolled = enroll_number(
            session=session,
            config=app.config,
            case_number="CS-000503",
            new_case=None,
            phone="+16175550134",
            language="en",
        )
    assert isinstance(enrolled.invite, Held)
    assert enrolled.invite.at == CHICAGO_OPENS
    assert enrolled.invite.when() == "8:00 AM CST on Dec 1"
    assert sent_to(app) == []


def test_stop_texted_before_the_window_opens_cancels_the_held_invitation(
    app, runner, session, clock
):
    enrollment = pending(session, make_case(session), "+16175550134")
    runner.invoke(args=["enroll", "--invite-pending"])
    assert reload(session, Enrollment, enrollment.id).invite_at == NY_OPENS

    payer_texts(app, "STOP", "+16175550134")
    row = reload(session, Enrollment, enrollment.id)
    assert (row.status, row.invite_at) == (EnrollmentStatus.OPTED_OUT, None)
    with app.app_context():
        assert send_held_invites(now=NY_OPENS) == 0
        dispatch_due(now=NY_OPENS)
    assert invitations(session) == []
    assert sent_to(app) == []  # the STOP was confirmed in the webhook's reply


def test_start_after_a_stop_invites_a_case_never_offered_rather_than_signing_it_up(
    app, runner, session, clock
):
    stopped = make_enrollment(
        session,
        make_case(session, case_number="CS-000601"),
        "+16175550134",
        status=EnrollmentStatus.PENDING,
        confirmed_at=None,
    )
    runner.invoke(args=["enroll", "--invite-pending"])  # held for the night
    offered = make_enrollment(
        session,
        make_case(session, case_number="CS-000602"),
        "+16175550134",
        status=EnrollmentStatus.PENDING,
        confirmed_at=None,
        invited_at=NIGHT - timedelta(days=1),  # its invitation went out yesterday
    )
    payer_texts(app, "STOP", "+16175550134")
    payer_texts(app, "START", "+16175550134")

    # START answers the invitation the payer had; the other case they never heard of is not
    # signed up behind their back: its invitation goes, in their window, and waits for YES.
    assert reload(session, Enrollment, offered.id).status == EnrollmentStatus.ACTIVE
    row = reload(session, Enrollment, stopped.id)
    assert (row.status, row.confirmed_at, row.opted_out_at) == (
        EnrollmentStatus.PENDING,
        None,
        None,
    )
    assert row.invite_at is not None
    # Noon in New York, tomorrow: after the START, whatever the day the suite runs.
    noon = datetime.combine(row.invite_at.date() + timedelta(days=1), dt_time(17), UTC)
    with app.app_context():
        assert send_held_invites(now=noon) == 1
    assert sent_to(app) == ["+16175550134"]
    assert reload(session, Enrollment, stopped.id).invited_at == noon


def test_a_number_on_no_case_that_opts_out_while_held_is_not_invited(app, runner, session, clock):
    enrollment = pending(session, make_case(session), "+16175550134")
    runner.invoke(args=["enroll", "--invite-pending"])
    # The STOP was kept on the number alone (as a STOP texted while on no case is).
    from bot.service import record_opt_out

    record_opt_out(connection=session.connection(), phone="+16175550134", now=NIGHT)
    session.commit()
    with app.app_context():
        assert send_held_invites(now=NY_OPENS) == 0
    assert sent_to(app) == []
    assert reload(session, Enrollment, enrollment.id).invite_at is None


def test_a_held_invitation_whose_enrollment_was_removed_is_not_sent(app, runner, session, clock):
    enrollment = pending(session, make_case(session), "+16175550134")
    runner.invoke(args=["enroll", "--invite-pending"])
    session.delete(reload(session, Enrollment, enrollment.id))
    session.commit()
    with app.app_context():
        assert dispatch_due(now=NY_OPENS).invites_due == 0
        assert send_held_invites(now=NY_OPENS) == 0
    assert sent_to(app) == []


def test_a_held_invitation_goes_once_however_often_it_is_asked_for_and_dispatched(
    app, runner, session, clock
):
    enrollment = pending(session, make_case(session), "+16175550134")
    for _ in range(2):
        result = runner.invoke(args=["enroll", "--invite-pending"])
        assert "1 held for the payers' quiet hours" in result.output
    clock.at = NY_OPENS
    with app.app_context():
        assert send_held_invites(now=NY_OPENS) == 1
        assert send_held_invites(now=NY_OPENS) == 0
        assert dispatch_due(now=NY_OPENS).invites_due == 0
    again = runner.invoke(args=["enroll", "--invite-pending"])
    assert "Invited 0 pending number(s)" in again.output and "held" not in again.output
    assert sent_to(app) == ["+16175550134"]
    assert len(invitations(session)) == 1
    assert reload(session, Enrollment, enrollment.id).invited_at == NY_OPENS


def test_a_held_invitation_asked_for_again_in_the_window_goes_now_and_not_again(
    app, runner, session, clock
):
    pending(session, make_case(session), "+16175550134")
    runner.invoke(args=["enroll", "--invite-pending"])
    clock.at = NOON_NY
    assert (
        "Invited 1 pending number(s)" in runner.invoke(args=["enroll", "--invite-pending"]).output
    )
    with app.app_context():
        assert send_held_invites(now=NOON_NY) == 0
    assert sent_to(app) == ["+16175550134"]


def test_a_dispatch_that_runs_late_into_the_night_holds_the_invitation_again(
    app, runner, session, clock
):
    enrollment = pending(session, make_case(session), "+16175550134")
    runner.invoke(args=["enroll", "--invite-pending"])
    late = datetime(2026, 12, 2, 2, 30, tzinfo=UTC)  # 21:30 EST: the window closed again
    with app.app_context():
        assert send_held_invites(now=late) == 0
    assert sent_to(app) == []
    assert reload(session, Enrollment, enrollment.id).invite_at == NY_OPENS + timedelta(days=1)


def test_a_dry_run_dispatch_counts_held_invitations_and_sends_none(app, runner, session, clock):
    pending(session, make_case(session), "+16175550134")
    runner.invoke(args=["enroll", "--invite-pending"])
    with app.app_context():
        assert dispatch_due(now=NY_OPENS, dry_run=True).invites_due == 1
    assert sent_to(app) == []


def test_invite_pending_still_skips_numbers_that_opted_out(app, session, clock):
    from tests.factories import make_stopped_enrollment

    make_stopped_enrollment(session, make_case(session))
    pending(session, make_case(session), "+16175550134")
    with app.app_context():
        done = invite_pending()
    assert (done.opted_out, done.held, done.sent) == (1, (), 0)
    assert sent_to(app) == []


def test_numbers_enrolled_before_the_rule_that_cannot_take_texts_are_not_invited(
    app, runner, session, daytime
):
    uk, own = (
        pending(session, make_case(session), phone) for phone in ("+442079460958", "+18005550134")
    )
    fine = pending(session, make_case(session), "+16175550134")
    result = runner.invoke(args=["enroll", "--invite-pending"])
    assert "Invited 1 pending number(s)" in result.output
    assert "2 not invited: the number opted out of texts (or cannot receive them)" in result.output
    assert sent_to(app) == [fine.phone]
    for enrollment, why in ((uk, "not a North American (+1) number"), (own, "agency's own")):
        row = reload(session, Enrollment, enrollment.id)
        assert row.status == EnrollmentStatus.UNDELIVERABLE and row.invited_at is None
        assert why in row.status_reason and "no opt-in text was sent" in row.status_reason


# --- the SMS rate --------------------------------------------------------------------------------


@pytest.fixture
def paced(config) -> dict:
    """The app at one text a second; ask for it before `app`."""
    config["SMS_RATE_PER_SECOND"] = 1
    return config


class Sleeps:
    """A pacer's sleep that only records how long each wait would have been."""

    def __init__(self, then=None):
        self.waits: list[float] = []
        self.then = then

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        if self.then:
            self.then(len(self.waits))


def fake_pacer(app, sleep: Sleeps) -> Pacer:
    """The pacer the invitations take by default (send_pacer), with a sleep that does not."""
    with app.app_context():
        return send_pacer(sleep=sleep)


def test_held_invitations_keep_the_sms_rate(paced, app, runner, session, clock):
    phones = [f"+1617555{1000 + n:04d}" for n in range(30)]
    for phone in phones:
        pending(session, make_case(session), phone)
    runner.invoke(args=["enroll", "--invite-pending"])  # in the night: all held
    sleeps = Sleeps()
    started = time.monotonic()
    with app.app_context():
        assert send_held_invites(now=NY_OPENS, pacer=fake_pacer(app, sleeps)) == 30
    took = time.monotonic() - started
    assert sorted(sent_to(app)) == phones
    # One a second: the n-th waits for the slot n seconds after the first (less the real time
    # spent getting there), so thirty take 29 seconds, not the instant they took unpaced.
    assert len(sleeps.waits) == 29
    assert all(n - took <= wait <= n for n, wait in enumerate(sleeps.waits, start=1))


def test_held_invitations_wait_behind_the_reminders_sent_at_the_same_moment(
    paced, app, runner, session, clock
):
    for n in range(3):
        pending(session, make_case(session), f"+1617555{1000 + n:04d}")
    runner.invoke(args=["enroll", "--invite-pending"])
    with app.app_context():
        # 8:00: the reminder lanes (jobs.reminders builds each lane's pacer so) take ten slots.
        lane = Pacer(app.extensions["redis"], rate_per_second=app.config["SMS_RATE_PER_SECOND"])
        assert lane.reserve(10) == 0
        sleeps = Sleeps()
        started = time.monotonic()
        assert send_held_invites(now=NY_OPENS, pacer=fake_pacer(app, sleeps)) == 3
    took = time.monotonic() - started
    assert len(sleeps.waits) == 3
    assert all(n - took <= wait <= n for n, wait in enumerate(sleeps.waits, start=10))


def test_the_dispatch_paces_held_invitations_at_the_configured_rate(
    paced, app, runner, session, clock, monkeypatch
):
    from functools import partial

    for n in range(5):
        pending(session, make_case(session), f"+1617555{1000 + n:04d}")
    runner.invoke(args=["enroll", "--invite-pending"])
    sleeps = Sleeps()
    monkeypatch.setattr("bot.outbound.send_pacer", partial(send_pacer, sleep=sleeps))
    with app.app_context():
        assert dispatch_due(now=NY_OPENS).invites_due == 5
    assert len(sent_to(app)) == 5
    assert len(sleeps.waits) == 4 and sleeps.waits[-1] > 3


def test_invite_pending_for_many_numbers_keeps_the_sms_rate(paced, app, session, clock):
    clock.at = NOON_NY
    for n in range(5):
        pending(session, make_case(session), f"+1617555{1000 + n:04d}")
    sleeps = Sleeps()
    with app.app_context():
        assert invite_pending(pacer=fake_pacer(app, sleeps)).sent == 5
    assert len(sent_to(app)) == 5
    assert len(sleeps.waits) == 4 and sleeps.waits[-1] > 3


def test_a_stop_texted_while_an_invitation_waits_for_its_slot_is_kept(paced, app, session, clock):
    from bot.service import record_opt_out

    clock.at = NOON_NY
    first, second = (
        pending(session, make_case(session), phone) for phone in ("+16175551000", "+16175551001")
    )

    def stop_the_second(waits: int) -> None:
        record_opt_out(connection=session.connection(), phone=second.phone, now=NOON_NY)
        session.commit()

    with app.app_context():
        done = invite_pending(pacer=fake_pacer(app, Sleeps(then=stop_the_second)))
    assert (done.sent, done.opted_out) == (1, 1)
    assert sent_to(app) == [first.phone]
    assert reload(session, Enrollment, second.id).invited_at is None


def test_a_held_invitations_job_leaves_the_rest_to_the_next_dispatchs_job(
    paced, app, runner, session, clock, monkeypatch
):
    app.config["REMINDER_DISPATCH_SECONDS"] = 10
    phones = [f"+1617555{1000 + n:04d}" for n in range(30)]
    for phone in phones:
        pending(session, make_case(session), phone)
    runner.invoke(args=["enroll", "--invite-pending"])
    sleeps = Sleeps()
    # The job's clock reads the time of the slot it last waited for, as if it had slept.
    monkeypatch.setattr(
        "bot.outbound.monotonic", lambda: time.monotonic() + max(sleeps.waits, default=0)
    )
    pacer = fake_pacer(app, sleeps)
    with app.app_context():
        # One a second: by its tenth second, when the next dispatch comes, it has sent eleven.
        assert send_held_invites(now=NY_OPENS, pacer=pacer) == 11
        assert dispatch_due(now=NY_OPENS, dry_run=True).invites_due == 19
        assert send_held_invites(now=NY_OPENS, pacer=pacer) == 11
        assert send_held_invites(now=NY_OPENS, pacer=pacer) == 8
    assert sorted(sent_to(app)) == phones
