"""Outbound texts: send through the configured gateway and log every one as a turn on its case.

A turn keeps the text with its card and approval links masked (bot.redact): the real links go
to the payer's phone only. An opt-in invitation asked for in the payer's quiet hours is held
until their window opens (invite, send_held_invites).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from time import monotonic
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from flask import current_app
from sqlmodel import Session, select

from billing import links
from bot import messages
from bot.dialogue import case_ending
from bot.redact import link_tokens_masked
from bot.sms import Failure, SendResult
from db import after_commit, session_scope
from jobs.ratelimit import Pacer, send_pacer
from models import (
    Case,
    Conversation,
    ConversationTurn,
    Direction,
    Enrollment,
    EnrollmentStatus,
    utcnow,
)
from phones import NotTextableError, own_numbers, textable_phone

log = logging.getLogger(__name__)

TO_SEND = "to_send"
"""A turn queue_text recorded: it goes once the transaction that recorded it commits."""

CLAIMED = "claimed"
"""Handed to the gateway, its answer not recorded yet; never sent again (as in jobs.reminders)."""

UNKNOWN = "unknown"
"""Claimed by a process that died before recording the answer: it may or may not have gone."""

NOT_SENT = "not_sent"
"""The number opted out between the turn being recorded and sent."""

LEFT_BEHIND_AFTER = timedelta(minutes=2)
"""A queued text still unsent this long after it was recorded lost its sender (a crash
between commit and send); a claim this old lost its answer. send_left_behind settles both."""

_QUEUED = "paytext_queued_texts"
"""Session.info key: ids of the turns queue_text recorded in the session's transaction."""


@dataclass(frozen=True)
class Sent:
    """A text handed to the gateway (or refused by it), and the turn that records it."""

    turn: ConversationTurn
    result: SendResult
    retry: Held | None = None
    """An invitation Twilio refused for now (a 429, say): held to be tried again then."""


def status_callback_url() -> str | None:
    """Where Twilio reports delivery; the console backend has no callbacks."""
    if current_app.config["SMS_BACKEND"] != "twilio":
        return None
    return current_app.config["PUBLIC_BASE_URL"].rstrip("/") + "/sms/status"


def may_text(*, session: Session, phone: str) -> bool:
    """True unless the number opted out or cannot take texts: STOP covers every case it is on,
    and stands even if it was texted before the number was on any case."""
    statuses = set(session.exec(select(Enrollment.status).where(Enrollment.phone == phone)).all())
    blocked = {EnrollmentStatus.OPTED_OUT, EnrollmentStatus.UNDELIVERABLE}
    if not statuses or statuses & blocked:
        return False
    stopped = select(Conversation.id).where(
        Conversation.phone == phone, Conversation.opted_out_at.is_not(None)
    )
    return session.exec(stopped).first() is None


def send_text(
    *,
    session: Session,
    phone: str,
    body: str,
    case_id: int | None,
    enrollment_id: int | None = None,
    reminder_id: int | None = None,
    payment_id: int | None = None,
    staff_user_id: int | None = None,
    intent: str | None = None,
) -> Sent:
    """Send one text now and log it as an outbound turn; the caller commits.

    Provider failures are recorded, not raised: an opted-out or undeliverable number is marked
    so nothing more is sent to it, and a transient failure is left for the caller to retry. A
    text whose outcome is unknown (Twilio's answer was lost) is logged `unknown`: it may have
    gone, so no caller sends it again.
    """
    result = current_app.extensions["sms"].send(
        to=phone, body=body, status_callback=status_callback_url()
    )
    now = utcnow()
    turn = ConversationTurn(
        case_id=case_id,
        enrollment_id=enrollment_id,
        phone=phone,
        direction=Direction.OUTBOUND,
        body=link_tokens_masked(body),
        provider_message_id=result.sid,
        delivery_status=_delivery_status(result),
        error_code=result.error_code,
        intent=intent,
        reminder_id=reminder_id,
        payment_id=payment_id,
        staff_user_id=staff_user_id,
        created_at=now,
        updated_at=now,
    )
    session.add(turn)
    _after_answer(session, turn, result)
    session.flush()
    return Sent(turn, result)


def _after_answer(session: Session, turn: ConversationTurn, result: SendResult) -> None:
    """What a saved turn's answer leads to: an early delivery report, or a failure recorded."""
    if result.sid:
        from bot.status import apply_early

        apply_early(session=session, turn=turn)
    if not result.ok:
        log.warning(
            "text to %s failed: %s %s", _masked(turn.phone), result.error_code, result.failure
        )
        mark_failure(
            session=session, phone=turn.phone, failure=result.failure, code=result.error_code
        )


def _delivery_status(result: SendResult) -> str | None:
    if result.ok:
        return result.status
    return "unknown" if result.outcome_unknown else "failed"


def queue_text(
    *,
    session: Session,
    phone: str,
    body: str,
    case_id: int | None,
    enrollment_id: int | None = None,
    payment_id: int | None = None,
    intent: str | None = None,
) -> ConversationTurn:
    """Record a text in the caller's transaction; it is sent when that commits, and only then.

    A text sent inside the transaction that decides it (a receipt with the payment it reports)
    goes again when that transaction fails after the send and the work is redone. Recorded
    instead, it goes at most once, the way reminders do: the turn is claimed (committed)
    before the gateway is called, and a claim whose answer was lost is not sent again.

    Only the masked text is recorded, so its links are made again when it goes (however late
    that is): the tokens in `body` are never sent.
    """
    now = utcnow()
    turn = ConversationTurn(
        case_id=case_id,
        enrollment_id=enrollment_id,
        phone=phone,
        direction=Direction.OUTBOUND,
        body=link_tokens_masked(body),
        delivery_status=TO_SEND,
        intent=intent,
        payment_id=payment_id,
        created_at=now,
        updated_at=now,
    )
    session.add(turn)
    session.flush()
    # If sending stops, what was not claimed is sent by send_left_behind; a claim cut short is
    # marked unknown there.
    after_commit(session, _QUEUED, turn.id, lambda _session, turn_ids: send_queued(turn_ids))
    return turn


def send_queued(turn_ids: Sequence[int]) -> int:
    """Send texts queue_text recorded, each at most once; returns how many the gateway took."""
    accepted = 0
    for turn_id in turn_ids:
        turn = _claim(turn_id)
        if turn is None:
            continue
        body = links.with_new_links(turn.body, case_id=turn.case_id, payment_id=turn.payment_id)
        result = current_app.extensions["sms"].send(
            to=turn.phone, body=body, status_callback=status_callback_url()
        )
        _record_answer(turn_id, result)
        accepted += result.ok
    return accepted


def send_left_behind(*, now: datetime | None = None) -> int:
    """Send queued texts whose sender died after the commit; mark lost claims unknown.

    Run by billing's resume_payments; returns how many texts the gateway took.
    """
    cutoff = (now or utcnow()) - LEFT_BEHIND_AFTER
    turns = ConversationTurn.__table__.c
    with session_scope() as session:
        lost = session.execute(
            sa.update(ConversationTurn.__table__)
            .where(turns.delivery_status == CLAIMED, turns.reminder_id.is_(None))
            .where(turns.updated_at < cutoff)
            .values(delivery_status=UNKNOWN, updated_at=utcnow())
        ).rowcount
        waiting = session.exec(
            select(ConversationTurn.id)
            .where(ConversationTurn.delivery_status == TO_SEND)
            .where(ConversationTurn.created_at < cutoff)
            .order_by(ConversationTurn.id)
        ).all()
    if lost:
        log.error("%s text(s) may or may not have gone: their sender died mid-send", lost)
    return send_queued(list(waiting))


def _claim(turn_id: int) -> ConversationTurn | None:
    """Commit the claim on a queued turn before its text goes; None if it is not to go now."""
    with session_scope() as session:
        turn = session.get(ConversationTurn, turn_id)
        if turn is None or turn.delivery_status != TO_SEND:
            return None
        allowed = may_text(session=session, phone=turn.phone)
        claimed = session.execute(
            sa.update(ConversationTurn)
            .where(ConversationTurn.id == turn_id, ConversationTurn.delivery_status == TO_SEND)
            .values(delivery_status=CLAIMED if allowed else NOT_SENT, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        ).rowcount
    return turn if claimed and allowed else None


def _record_answer(turn_id: int, result: SendResult) -> None:
    """Save the gateway's answer on a claimed turn, as send_text does for a new one."""
    with session_scope() as session:
        turn = session.get(ConversationTurn, turn_id)
        turn.provider_message_id = result.sid
        turn.delivery_status = _delivery_status(result)
        turn.error_code = result.error_code
        turn.updated_at = utcnow()
        session.add(turn)
        _after_answer(session, turn, result)


def mark_failure(
    *, session: Session, phone: str, failure: Failure | None, code: int | None
) -> None:
    """Stop texting a number the carrier says opted out or cannot receive texts."""
    if failure == Failure.OPTED_OUT:
        status, reason = EnrollmentStatus.OPTED_OUT, f"carrier reported opt-out ({code})"
    elif failure == Failure.UNDELIVERABLE:
        status, reason = EnrollmentStatus.UNDELIVERABLE, f"undeliverable ({code})"
    else:
        return
    now = utcnow()
    for enrollment in session.exec(select(Enrollment).where(Enrollment.phone == phone)).all():
        if enrollment.status in (EnrollmentStatus.OPTED_OUT, EnrollmentStatus.UNDELIVERABLE):
            continue
        enrollment.status = status
        enrollment.status_reason = reason
        enrollment.updated_at = now
        if status == EnrollmentStatus.OPTED_OUT:
            enrollment.opted_out_at = now
        session.add(enrollment)


# --- opt-in invitations ----------------------------------------------------------------------

HELD_INVITES_PER_JOB = 500
"""Held invitations one job sends, one at a time; any more are left for the next dispatch.

Nor does a job take a new one once the next dispatch is due (REMINDER_DISPATCH_SECONDS): that
dispatch's job goes on with the rest. At a low SMS rate two jobs at once would each wait for a
slot for the same invitations (only one sends it), and a job that ran on would be stopped by RQ
(jobs.reminders.SEND_JOB_TIMEOUT) perhaps mid-send."""

INVITE_RETRY_AFTER = timedelta(minutes=5)
"""An invitation Twilio refused for now (a 429, say) is tried again this much later."""


@dataclass(frozen=True)
class Held:
    """An invitation asked for in the payer's quiet hours: it goes at `at`, as their window opens.

    `zone` is the payer's clock (as reminders judge it); `asked_at`, when it was asked for.
    """

    at: datetime
    zone: ZoneInfo
    asked_at: datetime

    def when(self) -> str:
        """'8:00 AM EST' on the payer's clock, with the day when it is not theirs today."""
        local = self.at.astimezone(self.zone)
        shown = f"{local:%-I:%M %p %Z}"
        if local.date() != self.asked_at.astimezone(self.zone).date():
            shown += f" on {local:%b %-d}"
        return shown


def _reach(*, case_tz: str | None, phone: str):
    """The payer's clocks and window, judged as reminders judge them."""
    from jobs.reminders import current_policy, phone_reach

    return phone_reach(case_tz=case_tz, phone=phone, policy=current_policy())


def invite(
    *,
    session: Session,
    enrollment: Enrollment,
    case: Case,
    now: datetime | None = None,
    commit_claim: bool = False,
    pacer: Pacer | None = None,
) -> Sent | Held | None:
    """Text the double opt-in invitation now if the payer's window is open, else hold it.

    A held invitation waits in `invite_at` for the window to open in the payer's zone, and the
    reminder dispatch sends it then (send_held_invites). One Twilio refused for now (a 429, or
    an error that proves nothing reached it) is held the same way INVITE_RETRY_AFTER later (in
    the payer's window), and the Sent returned says when (`retry`). None when it is not to go:
    it went (or may have) already, the enrollment is not pending, or the number opted out; a
    number that cannot take these texts (phones.textable_phone) is marked undeliverable, saying
    why.

    With `pacer` (callers sending many, which own their session) the text waits for its send
    slot (the SMS rate the reminders keep too) before the claim, so a sender stopped while
    waiting has claimed nothing. The session is committed first, so nothing is held open while
    it waits, and the enrollment is judged again after, by the clock then (`now` if given): a
    STOP or the window closing meanwhile counts.
    """
    at = now or utcnow()
    judged = _judge(session=session, enrollment=enrollment, case=case, now=at)
    if pacer is not None and judged is not None and not isinstance(judged, Held):
        session.commit()
        if pacer.wait():
            fresh = session.get(Enrollment, enrollment.id, populate_existing=True)
            if fresh is None:
                return None
            enrollment, at = fresh, now or utcnow()
            judged = _judge(session=session, enrollment=enrollment, case=case, now=at)
    if judged is None or isinstance(judged, Held):
        return judged
    reach = judged
    sent = send_invite(
        session=session,
        enrollment=enrollment,
        case_number=case.case_number,
        now=at,
        commit_claim=commit_claim,
    )
    if sent is None or not sent.result.retryable:
        return sent
    if pacer is not None and sent.result.error_code == 20429:
        pacer.pause(1.0)  # Twilio says slow down: every sender waits a second, as reminders do
    # Nothing reached Twilio: the claim was released, and the dispatch tries it again.
    enrollment.invite_at = reach.next_allowed(at + INVITE_RETRY_AFTER)
    enrollment.updated_at = at
    session.add(enrollment)
    session.flush()
    return Sent(sent.turn, sent.result, retry=Held(enrollment.invite_at, reach.zone, at))


def _judge(*, session: Session, enrollment: Enrollment, case: Case, now: datetime):
    """Whether an invitation goes at `now`: the payer's reach if it does, Held if it waits for
    their window, None if it is not to go (recording why on the enrollment)."""
    if enrollment.status != EnrollmentStatus.PENDING or enrollment.invited_at is not None:
        return None
    if not may_text(session=session, phone=enrollment.phone):
        enrollment.invite_at = None
        session.add(enrollment)
        return None
    try:
        # Enrolled before the form, the command and the import refused such numbers.
        textable_phone(enrollment.phone, own=own_numbers(current_app.config))
    except NotTextableError as refused:
        enrollment.status = EnrollmentStatus.UNDELIVERABLE
        enrollment.status_reason = f"{refused}; no opt-in text was sent"[:200]
        enrollment.invite_at = None
        enrollment.updated_at = now
        session.add(enrollment)
        return None
    reach = _reach(case_tz=case.timezone, phone=enrollment.phone)
    if not reach.allows(now):
        enrollment.invite_at = reach.next_allowed(now)
        enrollment.updated_at = now
        session.add(enrollment)
        session.flush()
        return Held(enrollment.invite_at, reach.zone, now)
    return reach


def send_invite(
    *,
    session: Session,
    enrollment: Enrollment,
    case_number: str,
    now: datetime | None = None,
    commit_claim: bool = False,
) -> Sent | None:
    """Text the double opt-in invitation now, once; the enrollment stays pending until YES.

    The enrollment is claimed first (invited_at set while still empty), so two senders at once
    (the form sent twice, a dispatch beside `flask enroll --invite-pending`) send it once: None
    for the one that finds it claimed. With `commit_claim` the claim is committed before the
    text goes, so no retry can send it again. A text the gateway refused is released, to be sent
    again later; one that may have gone counts as sent: inviting twice costs the payer a text.
    Quiet hours are the caller's to judge (invite).
    """
    from bot.service import policy

    now = now or utcnow()
    claimed = session.execute(
        sa.update(Enrollment)
        .where(
            Enrollment.id == enrollment.id,
            Enrollment.status == EnrollmentStatus.PENDING,
            Enrollment.invited_at.is_(None),
        )
        .values(invited_at=now, invite_at=None, updated_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    session.refresh(enrollment)
    if not claimed:
        return None
    if commit_claim:
        session.commit()
    config = current_app.config
    body = messages.render(
        "optin_invite",
        {
            "agency": config["AGENCY_NAME"],
            "case_last4": case_ending(case_number),
            "per_month": policy(config).messages_per_month,
        },
        enrollment.language,
    )
    sent = send_text(
        session=session,
        phone=enrollment.phone,
        body=body,
        case_id=enrollment.case_id,
        enrollment_id=enrollment.id,
        intent="optin_invite",
    )
    if not (sent.result.ok or sent.result.outcome_unknown):
        enrollment.invited_at = None
        session.add(enrollment)
    return sent


@dataclass(frozen=True)
class Invitations:
    """What `invite_pending` did with the pending, uninvited enrollments."""

    sent: int = 0
    failed: int = 0
    opted_out: int = 0
    """Not texted: the number opted out (on any case) or cannot receive texts."""
    held: tuple[Held, ...] = ()
    """Asked for in the payer's quiet hours: each goes when the payer's window opens."""
    retrying: tuple[Held, ...] = ()
    """Refused by Twilio for now (a 429, say): each is tried again then by the dispatch."""


def invite_pending(
    limit: int | None = None, *, now: datetime | None = None, pacer: Pacer | None = None
) -> Invitations:
    """Invite pending, uninvited enrollments that may be texted: now, or when their window opens.

    Those sent now keep the SMS rate (`pacer`, by default the one the reminders share); each is
    judged by the clock when its turn comes, or by `now` if given.
    """
    from cases.service import pending_uninvited

    pacer = pacer or send_pacer()
    sent = failed = opted_out = 0
    held: list[Held] = []
    retrying: list[Held] = []
    with session_scope() as session:
        for enrollment in pending_uninvited(session=session, limit=limit):
            # An import or a re-enrollment never undoes a STOP; checked at the last moment.
            if not may_text(session=session, phone=enrollment.phone):
                opted_out += 1
                continue
            case = session.get(Case, enrollment.case_id)
            outcome = invite(
                session=session,
                enrollment=enrollment,
                case=case,
                now=now,
                commit_claim=True,
                pacer=pacer,
            )
            if isinstance(outcome, Held):
                held.append(outcome)
            elif outcome is None and not may_text(session=session, phone=enrollment.phone):
                opted_out += 1  # cannot take texts, or opted out while waiting for its slot
            elif outcome is not None:
                # One Twilio did not answer may have gone: counted as sent, never sent again.
                if outcome.result.ok or outcome.result.outcome_unknown:
                    sent += 1
                elif outcome.retry is not None:
                    retrying.append(outcome.retry)
                else:
                    failed += 1
            session.commit()
    return Invitations(sent, failed, opted_out, tuple(held), tuple(retrying))


def held_invites_due(*, session: Session, now: datetime) -> int:
    """How many held invitations are due by `now` (the reminder dispatch sends them)."""
    query = sa.select(sa.func.count()).select_from(Enrollment).where(*_held_due(now))
    return session.execute(query).scalar_one()


def _held_due(now: datetime) -> tuple:
    return (
        Enrollment.status == EnrollmentStatus.PENDING,
        Enrollment.invited_at.is_(None),
        Enrollment.invite_at <= now,
    )


def send_held_invites(
    *,
    now: datetime | None = None,
    limit: int = HELD_INVITES_PER_JOB,
    pacer: Pacer | None = None,
) -> int:
    """Send the invitations held for quiet hours whose window has opened; returns how many went.

    They keep the SMS rate (`pacer`, by default the one the reminders share), so held
    invitations and reminders due at the same moment go no faster together than either alone.
    Each is reloaded and judged again just before it goes (by the clock then, or by `now` if
    given): one whose number opted out since, or whose enrollment is no longer pending or is
    gone, is dropped; one whose window closed again (the dispatch ran late) waits for the next
    opening. Safe to run twice, or twice at once. It stops taking new ones when the next
    dispatch is due (HELD_INVITES_PER_JOB).
    """
    clock, now = now, now or utcnow()
    pacer = pacer or send_pacer()
    stop_at = monotonic() + current_app.config["REMINDER_DISPATCH_SECONDS"]
    with session_scope() as session:
        due = session.exec(
            select(Enrollment.id)
            .where(*_held_due(now))
            .order_by(Enrollment.invite_at, Enrollment.id)
            .limit(limit)
        ).all()
    went = 0
    for enrollment_id in due:
        if monotonic() >= stop_at:
            break  # the next dispatch's job goes on with the rest
        with session_scope() as session:
            enrollment = session.get(Enrollment, enrollment_id)
            if enrollment is None or enrollment.invite_at is None or enrollment.invite_at > now:
                continue
            case = session.get(Case, enrollment.case_id)
            outcome = invite(
                session=session,
                enrollment=enrollment,
                case=case,
                now=clock,
                commit_claim=True,
                pacer=pacer,
            )
            # One Twilio refused for now is held again by invite, to be tried later.
            if isinstance(outcome, Sent) and (outcome.result.ok or outcome.result.outcome_unknown):
                went += 1
    return went


def _masked(phone: str) -> str:
    return f"***{phone[-4:]}"
