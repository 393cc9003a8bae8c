"""Outbound texts: send through the configured gateway and log every one as a turn on its case."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flask import current_app
from sqlmodel import Session, select

from bot import messages
from bot.dialogue import case_ending
from bot.sms import Failure, SendResult
from db import session_scope
from models import (
    ConversationTurn,
    Direction,
    Enrollment,
    EnrollmentStatus,
    utcnow,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sent:
    """A text handed to the gateway (or refused by it), and the turn that records it."""

    turn: ConversationTurn
    result: SendResult


def status_callback_url() -> str | None:
    """Where Twilio reports delivery; the console backend has no callbacks."""
    if current_app.config["SMS_BACKEND"] != "twilio":
        return None
    return current_app.config["PUBLIC_BASE_URL"].rstrip("/") + "/sms/status"


def may_text(*, session: Session, phone: str) -> bool:
    """True unless the number opted out or cannot take texts: STOP covers every case it is on."""
    statuses = set(session.exec(select(Enrollment.status).where(Enrollment.phone == phone)).all())
    blocked = {EnrollmentStatus.OPTED_OUT, EnrollmentStatus.UNDELIVERABLE}
    return bool(statuses) and not (statuses & blocked)


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
        body=body,
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
    if result.sid:
        from bot.status import apply_early

        apply_early(session=session, turn=turn)
    if not result.ok:
        log.warning("text to %s failed: %s %s", _masked(phone), result.error_code, result.failure)
        mark_failure(session=session, phone=phone, failure=result.failure, code=result.error_code)
    session.flush()
    return Sent(turn, result)


def _delivery_status(result: SendResult) -> str | None:
    if result.ok:
        return result.status
    return "unknown" if result.outcome_unknown else "failed"


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


def send_invite(*, session: Session, enrollment: Enrollment, case_number: str) -> Sent:
    """Text the double opt-in invitation now; the enrollment stays pending until YES."""
    from bot.service import policy

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
    if sent.result.ok or sent.result.outcome_unknown:
        # An invitation that may have gone counts as sent: inviting twice costs the payer a text.
        enrollment.invited_at = utcnow()
        session.add(enrollment)
    return sent


def invite_pending(limit: int | None = None) -> tuple[int, int]:
    """Text the double opt-in invitation to pending, uninvited enrollments; (sent, failed)."""
    from cases.service import pending_uninvited
    from models import Case

    sent = failed = 0
    with session_scope() as session:
        for enrollment in pending_uninvited(session=session, limit=limit):
            case_number = session.get(Case, enrollment.case_id).case_number
            if send_invite(
                session=session, enrollment=enrollment, case_number=case_number
            ).result.ok:
                sent += 1
            else:
                failed += 1
            session.commit()
    return sent, failed


def _masked(phone: str) -> str:
    return f"***{phone[-4:]}"
