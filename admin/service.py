"""What the staff pages read and write; views only parse forms and render these results."""

from __future__ import annotations

import csv
import io
import json
import math
import secrets
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from redis import Redis
from redis.exceptions import WatchError
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from admin import dashboard as figures
from admin.users import end_sessions
from bot import messages
from bot.outbound import Held, Sent, invite, may_text, send_text
from cases import service as cases
from cases.importer import ImportPlan, not_utf8, read_cases
from models import (
    AdminUser,
    Appointment,
    AppointmentKind,
    AppointmentStatus,
    CardOnFile,
    Case,
    Conversation,
    ConversationTurn,
    Direction,
    Enrollment,
    EnrollmentSource,
    EnrollmentStatus,
    Handoff,
    HandoffStatus,
    Payment,
    PaymentStatus,
    Refund,
    Reminder,
    ReminderStatus,
    Role,
    utcnow,
)

PER_PAGE = 25
TIMELINE_PAGE = 500
"""Turns per page of a case's conversation, newest page first; the CSV export has every one."""

INBOX_PAGE = 100
"""Waiting requests per page of the handoffs inbox, oldest first; later pages hold the newest."""

IMPORT_TTL = timedelta(minutes=30)
"""How long an uploaded CSV waits in Redis for its preview to be confirmed."""

FILTERS = {
    "overdue": "Overdue",
    "opted_out": "Opted out",
    "pending": "Pending opt-in",
    "no_card": "No card on file",
    "handoff": "Handoff waiting",
}

CONSENT_WORDING = (
    "{agency} may send automated texts about payments, due dates, appointments and receipts "
    "for case {case_number} to {phone}, about {per_month} messages a month. Message and data "
    "rates may apply. Consent is not required to pay. Reply STOP to opt out, HELP for help."
)
"""What the payer agrees to; shown on the form and stored, filled in, with the enrollment."""


class AdminError(ValueError):
    """A request the staff pages refuse, with the field it concerns and a message to show."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


# --- Cases list ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaseListRow:
    case: Case
    phones: list[tuple[str, str]]  # (last 4, enrollment status)
    handoff_waiting: bool


@dataclass(frozen=True)
class CasePage:
    rows: list[CaseListRow]
    total: int
    page: int
    pages: int


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _has(model: Any, *conditions: Any) -> Any:
    return sa.exists().where(model.case_id == Case.id, *conditions)


def search_cases(
    *,
    session: Session,
    query: str = "",
    case_filter: str | None = None,
    page: int = 1,
    today: date,
    per_page: int = PER_PAGE,
) -> CasePage:
    """Cases matching a case number, name or phone's last digits, with a filter, one page."""
    statement = select(Case)
    query = query.strip()
    if query:
        matches = [
            Case.case_number.ilike(_like(query), escape="\\"),
            Case.payer_name.ilike(_like(query), escape="\\"),
        ]
        digits = "".join(ch for ch in query if ch.isdigit())
        if len(digits) >= 4 and not any(ch.isalpha() for ch in query):
            matches.append(_has(Enrollment, Enrollment.phone.like(f"%{digits}")))
        statement = statement.where(sa.or_(*matches))
    if case_filter == "overdue":
        statement = statement.where(Case.next_due_date < today, Case.balance_cents > 0)
    elif case_filter == "opted_out":
        statement = statement.where(_has(Enrollment, Enrollment.status == "opted_out"))
    elif case_filter == "pending":
        statement = statement.where(_has(Enrollment, Enrollment.status == "pending"))
    elif case_filter == "no_card":
        statement = statement.where(~_has(CardOnFile, CardOnFile.active.is_(True)))
    elif case_filter == "handoff":
        statement = statement.where(_has(Handoff, Handoff.status == HandoffStatus.WAITING))

    total = session.exec(select(sa.func.count()).select_from(statement.subquery())).one()
    pages = max(1, math.ceil(total / per_page))
    page = min(max(page, 1), pages)
    found = list(
        session.exec(
            statement.order_by(Case.case_number).offset((page - 1) * per_page).limit(per_page)
        ).all()
    )
    ids = [case.id for case in found]
    phones: dict[int, list[tuple[str, str]]] = {case_id: [] for case_id in ids}
    waiting: set[int] = set()
    if ids:
        for case_id, phone, status in session.exec(
            select(Enrollment.case_id, Enrollment.phone, Enrollment.status)
            .where(Enrollment.case_id.in_(ids))
            .order_by(Enrollment.id)
        ).all():
            phones[case_id].append((phone[-4:], status))
        waiting = set(
            session.exec(
                select(Handoff.case_id).where(
                    Handoff.case_id.in_(ids), Handoff.status == HandoffStatus.WAITING
                )
            ).all()
        )
    rows = [CaseListRow(case, phones[case.id], case.id in waiting) for case in found]
    return CasePage(rows, total, page, pages)


# --- Case page -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaseDetail:
    case: Case
    enrollments: list[Enrollment]
    turns: list[ConversationTurn]
    turns_total: int
    turns_page: int
    turns_pages: int
    payments: list[Payment]
    refunds: dict[int, list[Refund]]
    reminders: list[Reminder]
    appointments: list[Appointment]
    card: CardOnFile | None
    handoffs: list[Handoff]
    staff: dict[int, str] = field(default_factory=dict)

    @property
    def textable_phones(self) -> list[str]:
        """Numbers on the case that may be texted now (active, not opted out anywhere)."""
        return [e.phone for e in self.enrollments if e.status == EnrollmentStatus.ACTIVE]

    @property
    def waiting_handoffs(self) -> list[Handoff]:
        return [h for h in self.handoffs if h.status == HandoffStatus.WAITING]

    @property
    def payments_to_review(self) -> list[Payment]:
        """Payments billing flagged for staff (say, one that went through after it failed) that
        nobody has marked reviewed yet."""
        return [p for p in self.payments if p.review_reason and p.reviewed_at is None]


def clock_phone(enrollments: Sequence[Enrollment]) -> str | None:
    """The number whose clock a case's times are shown and entered by: its first active one
    (reminders are planned by it), else the first enrolled; enrollments in id order."""
    active = [e for e in enrollments if e.status == EnrollmentStatus.ACTIVE]
    first = (active or list(enrollments))[:1]
    return first[0].phone if first else None


def case_zone(case: Case, default: str, phone: str | None) -> str:
    """The zone a case's times are shown and entered in: the one the payer's texts use.

    Payers read times in their local zone (the case's, else their number's, else the agency's),
    so staff quoting a time from the case page must see the same clock; `phone` is the case's
    clock_phone. A mistyped zone on the case falls back rather than breaking the page.
    """
    from bot.service import payer_zone

    return payer_zone(case.timezone, phone, default)


def case_zones(*, session: Session, cases: Sequence[Case], default: str) -> dict[int, str]:
    """case_zone of each case, by case id, with one query for their numbers."""
    enrollments: dict[int, list[Enrollment]] = {case.id: [] for case in cases}
    if enrollments:
        for enrollment in session.exec(
            select(Enrollment)
            .where(Enrollment.case_id.in_(list(enrollments)))
            .order_by(Enrollment.id)
        ).all():
            enrollments[enrollment.case_id].append(enrollment)
    return {case.id: case_zone(case, default, clock_phone(enrollments[case.id])) for case in cases}


def case_turns(case_id: int) -> sa.Subquery:
    """The ids of every turn that concerns a case: those logged on it, and its numbers' turns
    logged on no case from when each number was enrolled on it.

    A number on several cases logs on no case (case_id NULL) what it texts while no one of
    them is being discussed: STOP, START, HELP, MENU, a language switch, "which case?". Those
    concern each case the number was on then; a quote or a balance is logged on its own case.
    A stranger's texts are logged on no case too, and stay off the case it is enrolled on later.
    """
    turn = ConversationTurn
    logged_on_it = select(turn.id).where(turn.case_id == case_id)
    of_its_numbers = (
        select(turn.id)
        .join(Enrollment, Enrollment.phone == turn.phone)
        .where(
            Enrollment.case_id == case_id,
            turn.case_id.is_(None),
            turn.created_at >= Enrollment.created_at,
        )
    )
    return sa.union_all(logged_on_it, of_its_numbers).subquery("case_turns")


def case_detail(
    *, session: Session, case_id: int, turns_page: int = 1, per_page: int = TIMELINE_PAGE
) -> CaseDetail | None:
    """Everything the case page shows, with one page of turns (page 1 the newest), oldest first.

    A page number out of range shows the nearest page rather than an empty conversation.
    """
    case = session.get(Case, case_id)
    if case is None:
        return None
    on_case = case_turns(case_id)
    turns_total = session.exec(select(sa.func.count()).select_from(on_case)).one()
    turns_pages = max(1, math.ceil(turns_total / per_page))
    turns_page = min(max(turns_page, 1), turns_pages)
    turns = list(
        session.exec(
            select(ConversationTurn)
            .join(on_case, on_case.c.id == ConversationTurn.id)
            .order_by(ConversationTurn.created_at.desc(), ConversationTurn.id.desc())
            .offset((turns_page - 1) * per_page)
            .limit(per_page)
        ).all()
    )[::-1]
    payments = list(
        session.exec(
            select(Payment).where(Payment.case_id == case_id).order_by(Payment.created_at.desc())
        ).all()
    )
    refunds: dict[int, list[Refund]] = {}
    if payments:
        for refund in session.exec(
            select(Refund)
            .where(Refund.payment_id.in_([p.id for p in payments]))
            .order_by(Refund.created_at)
        ).all():
            refunds.setdefault(refund.payment_id, []).append(refund)
    staff_ids = {t.staff_user_id for t in turns if t.staff_user_id}
    handoffs = list(
        session.exec(
            select(Handoff).where(Handoff.case_id == case_id).order_by(Handoff.created_at.desc())
        ).all()
    )
    staff_ids |= {h.answered_by for h in handoffs if h.answered_by}
    staff_ids |= {p.reviewed_by for p in payments if p.reviewed_by}
    staff = {}
    if staff_ids:
        staff = dict(
            session.exec(
                select(AdminUser.id, AdminUser.email).where(AdminUser.id.in_(staff_ids))
            ).all()
        )
    return CaseDetail(
        case=case,
        enrollments=list(
            session.exec(
                select(Enrollment).where(Enrollment.case_id == case_id).order_by(Enrollment.id)
            ).all()
        ),
        turns=turns,
        turns_total=turns_total,
        turns_page=turns_page,
        turns_pages=turns_pages,
        payments=payments,
        refunds=refunds,
        reminders=list(
            session.exec(
                select(Reminder).where(Reminder.case_id == case_id).order_by(Reminder.send_at)
            ).all()
        ),
        appointments=list(
            session.exec(
                select(Appointment)
                .where(Appointment.case_id == case_id)
                .order_by(Appointment.starts_at)
            ).all()
        ),
        card=session.exec(
            select(CardOnFile).where(CardOnFile.case_id == case_id, CardOnFile.active.is_(True))
        ).first(),
        handoffs=handoffs,
        staff=staff,
    )


# --- Enrollment ------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewCase:
    payer_name: str
    amount_due_cents: int
    balance_cents: int
    next_due_date: date | None


@dataclass(frozen=True)
class Enrolled:
    case: Case
    enrollment: Enrollment
    outcome: cases.EnrollOutcome
    case_created: bool
    invite: Sent | Held | None
    """The invitation sent now, or held for the payer's quiet hours; None if none went now."""
    opted_out_at: datetime | None = None
    """When the number last opted out, if it did (then it stays opted out: OPTED_OUT)."""


def consent_text(*, config: Mapping[str, Any], case_number: str, phone: str) -> str:
    """The consent wording filled in for one case and number, as stored with the enrollment."""
    from bot.service import policy
    from phones import format_phone

    return CONSENT_WORDING.format(
        agency=config["AGENCY_NAME"],
        case_number=case_number,
        phone=format_phone(phone) if phone.startswith("+") else phone,
        per_month=policy(config).messages_per_month,
    )


def enroll_number(
    *,
    session: Session,
    config: Mapping[str, Any],
    case_number: str,
    new_case: NewCase | None,
    phone: str,
    language: str,
    now: datetime | None = None,
) -> Enrolled:
    """Enroll a number (creating the case if asked) and text the double opt-in; caller commits.

    The opt-in text goes now inside the payer's texting window, else it is held until it opens.

    Raises AdminError, having written nothing, when the case is missing, or exists with other
    details than the new case given. When a submission made at the same moment (a
    double-click) writes the case or the enrollment first, the session is rolled back and the
    enrollment tried again on what that one wrote: already pending, and not texted twice.
    """
    arguments = {
        "session": session,
        "config": config,
        "case_number": case_number,
        "new_case": new_case,
        "phone": phone,
        "language": language,
        "now": now or utcnow(),
    }
    try:
        return _enroll_number(**arguments)
    except IntegrityError:
        session.rollback()
        return _enroll_number(**arguments)


def _same_case(case: Case, new_case: NewCase) -> bool:
    """The case already holds exactly these new-case details (the form sent twice)."""
    return (
        case.payer_name,
        case.amount_due_cents,
        case.balance_cents,
        case.next_due_date,
    ) == (
        new_case.payer_name,
        new_case.amount_due_cents,
        new_case.balance_cents,
        new_case.next_due_date,
    )


def _enroll_number(
    *,
    session: Session,
    config: Mapping[str, Any],
    case_number: str,
    new_case: NewCase | None,
    phone: str,
    language: str,
    now: datetime,
) -> Enrolled:
    case = cases.get_by_number(session=session, case_number=case_number)
    created = False
    if case is None:
        if new_case is None:
            raise AdminError(
                f"No case numbered {case_number}. To create it, fill in the payer name, "
                "amount due and balance below.",
                field="case_number",
            )
        case = Case(
            case_number=case_number.upper(),
            payer_name=new_case.payer_name,
            amount_due_cents=new_case.amount_due_cents,
            balance_cents=new_case.balance_cents,
            next_due_date=new_case.next_due_date,
            language=language,
            created_at=now,
            updated_at=now,
        )
        session.add(case)
        session.flush()
        created = True
    elif new_case is not None and not _same_case(case, new_case):
        raise AdminError(
            f"Case {case.case_number} already exists; leave the new-case fields empty to "
            "enroll a number on it (its amounts are changed by the import).",
            field="case_number",
        )
    enrollment, outcome = cases.enroll(
        session=session,
        case=case,
        phone=phone,
        language=language,
        source=EnrollmentSource.ADMIN,
        confirmed=False,
        consent_version=config["CONSENT_VERSION"],
        consent_text=consent_text(config=config, case_number=case.case_number, phone=phone),
        now=now,
    )
    if outcome == cases.EnrollOutcome.OPTED_OUT:
        # A STOP is the payer's revocation of consent; staff cannot override it.
        stopped = cases.opt_outs(session=session, phones=[phone])
        return Enrolled(case, enrollment, outcome, created, None, stopped.get(phone))
    # An imported number never invited gets its invitation (now, or when the payer's quiet hours
    # end); one invited already does not.
    invitation = invite(session=session, enrollment=enrollment, case=case, now=now)
    if outcome != cases.EnrollOutcome.ALREADY_ACTIVE:
        replan(session=session, case_id=case.id)
    return Enrolled(case, enrollment, outcome, created, invitation)


# --- Texts from staff ------------------------------------------------------------------------


def _textable(session: Session, case_id: int, phone: str) -> Enrollment:
    enrollment = session.exec(
        select(Enrollment).where(Enrollment.case_id == case_id, Enrollment.phone == phone)
    ).first()
    if enrollment is None:
        raise AdminError("That number is not on this case.", field="phone")
    if enrollment.status != EnrollmentStatus.ACTIVE or not may_text(session=session, phone=phone):
        raise AdminError(
            f"That number is {enrollment.status.replace('_', ' ')}; it cannot be texted.",
            field="phone",
        )
    return enrollment


def send_staff_reply(
    *,
    session: Session,
    config: Mapping[str, Any],
    case_id: int,
    phone: str,
    text: str,
    staff_user_id: int,
) -> Sent:
    """Text a staff member's reply, logged as theirs, and mark that phone's handoffs answered.

    Another number on the case that asked for a person is still waiting: it got no text.
    """
    enrollment = _textable(session, case_id, phone)
    body = messages.render(
        "staff_reply", {"agency": config["AGENCY_NAME"], "text": text}, enrollment.language
    )
    sent = send_text(
        session=session,
        phone=phone,
        body=body,
        case_id=case_id,
        enrollment_id=enrollment.id,
        staff_user_id=staff_user_id,
        intent="staff_reply",
    )
    if sent.result.ok:
        now = utcnow()
        for handoff in session.exec(
            select(Handoff).where(
                Handoff.case_id == case_id,
                Handoff.phone == phone,
                Handoff.status == HandoffStatus.WAITING,
            )
        ).all():
            handoff.status = HandoffStatus.ANSWERED
            handoff.answered_by = staff_user_id
            handoff.answered_at = now
            session.add(handoff)
    return sent


def send_card_link(
    *, session: Session, config: Mapping[str, Any], case_id: int, phone: str, staff_user_id: int
) -> Sent:
    """Text the payer a link to add or replace the card on file."""
    from billing.links import card_link_url

    enrollment = _textable(session, case_id, phone)
    body = messages.render(
        "card_link",
        {"agency": config["AGENCY_NAME"], "url": card_link_url(case_id=case_id)},
        enrollment.language,
    )
    return send_text(
        session=session,
        phone=phone,
        body=body,
        case_id=case_id,
        enrollment_id=enrollment.id,
        staff_user_id=staff_user_id,
        intent="card_link",
    )


# --- Payments --------------------------------------------------------------------------------


def refundable_cents(payment: Payment) -> int:
    """What is left to refund on a payment."""
    if payment.status != PaymentStatus.SUCCEEDED:
        return 0
    return max(payment.amount_cents - payment.refunded_cents, 0)


def refund(
    *,
    session: Session,
    payment_id: int,
    amount_cents: int | None,
    admin_user_id: int,
    nonce: str | None = None,
) -> Refund:
    """Refund all or part of a succeeded payment (admins only); AdminError when not possible.

    The form's nonce becomes the idempotency key, so a double-click refunds once.
    """
    from billing.service import RefundRefused, refund_payment

    payment = session.get(Payment, payment_id)
    if payment is None:
        raise AdminError("No such payment.")
    left = refundable_cents(payment)
    if left <= 0:
        raise AdminError("Nothing is left to refund on this payment.", field="amount")
    if amount_cents is not None and amount_cents > left:
        from money import format_cents

        raise AdminError(
            f"At most {format_cents(left)} can be refunded on this payment.", field="amount"
        )
    try:
        return refund_payment(
            session=session,
            payment_id=payment_id,
            amount_cents=amount_cents,
            admin_user_id=admin_user_id,
            idempotency_key=f"admin-refund:{payment_id}:{nonce}" if nonce else None,
        )
    except RefundRefused as exc:
        raise AdminError(str(exc), field="amount") from exc


# --- Appointments ----------------------------------------------------------------------------


def local_to_utc(day: date, clock: time, zone: str) -> datetime:
    """A wall-clock date and time in `zone` as an aware UTC instant."""
    return datetime.combine(day, clock, tzinfo=ZoneInfo(zone)).astimezone(UTC)


def replan(*, session: Session, case_id: int) -> None:
    """Re-plan the case's reminders after its appointments or due date changed."""
    from jobs.reminders import plan_case

    plan_case(session=session, case_id=case_id)


def add_appointment(
    *,
    session: Session,
    case_id: int,
    starts_at: datetime,
    kind: AppointmentKind,
    location: str | None,
    video_link: str | None,
    now: datetime | None = None,
) -> tuple[Appointment, bool]:
    """Schedule an appointment in the future and re-plan reminders; caller commits.

    Returns it and whether it was added: the same appointment (kind, time, place and link)
    already scheduled on the case is not added again, as a form sent twice (a double-click) would
    otherwise text the payer two reminders for it.
    """
    now = now or utcnow()
    if starts_at <= now:
        raise AdminError("The appointment must be in the future.", field="day")
    # The case's row lock makes a second submission wait for the first's commit and see it.
    session.exec(select(Case.id).where(Case.id == case_id).with_for_update()).first()
    same = session.exec(
        select(Appointment).where(
            Appointment.case_id == case_id,
            Appointment.kind == kind,
            Appointment.starts_at == starts_at,
            Appointment.location.is_(None)
            if location is None
            else Appointment.location == location,
            Appointment.video_link.is_(None)
            if video_link is None
            else Appointment.video_link == video_link,
            Appointment.status == AppointmentStatus.SCHEDULED,
        )
    ).first()
    if same is not None:
        return same, False
    appointment = Appointment(
        case_id=case_id,
        starts_at=starts_at,
        kind=kind,
        location=location,
        video_link=video_link,
        created_at=now,
        updated_at=now,
    )
    session.add(appointment)
    session.flush()
    replan(session=session, case_id=case_id)
    return appointment, True


def move_appointment(
    *, session: Session, appointment_id: int, starts_at: datetime, now: datetime | None = None
) -> bool:
    """Move a scheduled appointment to a future time and re-plan reminders; caller commits.
    True when the payer, who had been reminded of the old time, is to be texted the new one."""
    from jobs.reminders import notify_moved

    now = now or utcnow()
    appointment = _scheduled(session, appointment_id)
    if starts_at <= now:
        raise AdminError("The new time must be in the future.", field="day")
    if appointment.starts_at == starts_at:
        # Moved to the time it already has (the form sent twice, say): nothing moved, so the
        # payer is not reminded of it again (a move after its reminder went plans another).
        return False
    appointment.starts_at = starts_at
    appointment.updated_at = now
    session.add(appointment)
    session.flush()
    replan(session=session, case_id=appointment.case_id)
    # A payer who was reminded of the old time is told the new one, or they would come then.
    return notify_moved(session=session, appointment=appointment, now=now)


def cancel_appointment(
    *, session: Session, appointment_id: int, now: datetime | None = None
) -> bool:
    """Cancel a scheduled appointment and re-plan reminders; caller commits. True when the
    payer, who had been reminded of it, is to be texted that it is canceled."""
    from jobs.reminders import notify_canceled

    now = now or utcnow()
    appointment = _scheduled(session, appointment_id)
    appointment.status = AppointmentStatus.CANCELED
    appointment.updated_at = now
    session.add(appointment)
    session.flush()
    replan(session=session, case_id=appointment.case_id)
    # A payer who was reminded of it is told it is off, or they would come to it.
    return notify_canceled(session=session, appointment=appointment, now=now)


def _scheduled(session: Session, appointment_id: int) -> Appointment:
    appointment = session.get(Appointment, appointment_id)
    if appointment is None:
        raise AdminError("No such appointment.")
    if appointment.status != AppointmentStatus.SCHEDULED:
        raise AdminError("That appointment is already canceled.")
    return appointment


# --- Export ----------------------------------------------------------------------------------

EXPORT_COLUMNS = (
    "record",
    "time_utc",
    "time_local",
    "phone",
    "direction",
    "status",
    "text",
    "intent",
    "consent_version",
    "source",
    "staff",
)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    # A cell starting with = + - @ (a payer's text '=HYPERLINK(...)', say) would run as a formula
    # when the file is opened in a spreadsheet (CSV injection), so it gets a leading apostrophe.
    # Every phone (+16175550134) starts with '+' and so reads '+16175550134 in the file: that is
    # the guard, not a typo; strip the apostrophe before reading the column as numbers.
    return "'" + text if text.startswith(_FORMULA_START) else text


def export_rows(*, session: Session, case_id: int, zone: str) -> Iterator[list[str]]:
    """The consent records and every turn of a case as CSV rows, header first."""
    tz = ZoneInfo(zone)

    def times(moment: datetime | None) -> list[str]:
        if moment is None:
            return ["", ""]
        return [moment.isoformat(), moment.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S %Z")]

    yield list(EXPORT_COLUMNS)
    for e in session.exec(
        select(Enrollment).where(Enrollment.case_id == case_id).order_by(Enrollment.id)
    ).all():
        events = [
            ("consented", e.consented_at),
            ("invited", e.invited_at),
            ("confirmed", e.confirmed_at),
            ("opted_out", e.opted_out_at),
        ]
        for name, moment in events:
            if moment is None:
                continue
            text = e.consent_text if name == "consented" else (e.status_reason or "")
            yield [
                _cell(v)
                for v in [
                    f"consent:{name}",
                    *times(moment),
                    e.phone,
                    "",
                    e.status,
                    text,
                    "",
                    e.consent_version,
                    e.source,
                    "",
                ]
            ]
    staff = dict(session.exec(select(AdminUser.id, AdminUser.email)).all())
    on_case = case_turns(case_id)
    last_id = 0
    while True:
        # Batches keep a case with years of texts from being loaded at once.
        batch = session.exec(
            select(ConversationTurn)
            .join(on_case, on_case.c.id == ConversationTurn.id)
            .where(ConversationTurn.id > last_id)
            .order_by(ConversationTurn.id)
            .limit(1000)
        ).all()
        if not batch:
            return
        for t in batch:
            yield [
                _cell(v)
                for v in [
                    "turn",
                    *times(t.created_at),
                    t.phone,
                    t.direction,
                    t.delivery_status or "",
                    t.body,
                    t.intent or "",
                    "",
                    "",
                    staff.get(t.staff_user_id, ""),
                ]
            ]
        last_id = batch[-1].id


def csv_text(rows: Iterator[list[str]]) -> Iterator[str]:
    """CSV lines, one string per row, for a streamed response."""
    for row in rows:
        buffer = io.StringIO()
        csv.writer(buffer).writerow(row)
        yield buffer.getvalue()


# --- Import ----------------------------------------------------------------------------------


def decode_upload(data: bytes) -> str:
    """The uploaded file as text; AdminError when it is not UTF-8."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise AdminError(f"The file is {not_utf8(data, exc)}.", field="file") from exc


def plan_import(text: str, *, config: Mapping[str, Any]) -> ImportPlan:
    """Check every line with the same rules as `flask cases import`."""
    from phones import own_numbers

    return read_cases(io.StringIO(text, newline=""), own=own_numbers(config))


def existing_case_numbers(*, session: Session, plan: ImportPlan) -> set[str]:
    """Which of the plan's case numbers are already cases (they will be updated)."""
    numbers = [row.case_number.upper() for row in plan.rows]
    found: set[str] = set()
    for start in range(0, len(numbers), cases.CHUNK):
        chunk = numbers[start : start + cases.CHUNK]
        found.update(session.exec(select(Case.case_number).where(Case.case_number.in_(chunk))))
    return found


def _import_key(token: str) -> str:
    return f"paytext:admin:import:{token}"


def stash_import(
    *, redis: Redis, text: str, user_id: int, filename: str, token: str | None = None
) -> str:
    """Keep a checked upload until the preview is confirmed; returns the token to confirm with.

    Given the token of a preview taken by a confirm that then failed, puts it back.
    """
    token = token or secrets.token_urlsafe(24)
    payload = json.dumps({"user_id": user_id, "filename": filename, "text": text})
    redis.set(_import_key(token), payload, ex=int(IMPORT_TTL.total_seconds()))
    return token


def take_import(*, redis: Redis, token: str, user_id: int) -> tuple[str, str]:
    """The stashed upload (filename, text) for its uploader, removed so it applies once.

    Another user's attempt leaves it for its uploader: the owner is checked before the key
    goes, and WATCH makes the check and the delete one step, so two confirms cannot both take it.
    """
    key = _import_key(token)
    with redis.pipeline() as pipe:
        while True:
            try:
                pipe.watch(key)
                raw = pipe.get(key)
                if raw is None:
                    raise AdminError(
                        "That preview has expired or was already imported; upload the file again."
                    )
                payload = json.loads(raw)
                if payload["user_id"] != user_id:
                    raise AdminError("That preview belongs to someone else; upload the file again.")
                pipe.multi()
                pipe.delete(key)
                pipe.execute()
            except WatchError:
                continue  # taken or put back meanwhile: look again
            return payload["filename"], payload["text"]


# --- Handoffs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class InboxRow:
    handoff: Handoff
    case: Case
    request: ConversationTurn | None


@dataclass(frozen=True)
class InboxPage:
    rows: list[InboxRow]
    total: int
    page: int
    pages: int
    per_page: int

    @property
    def first(self) -> int:
        """The position in the queue of this page's first row (1 for the oldest request)."""
        return (self.page - 1) * self.per_page + 1 if self.rows else 0

    @property
    def last(self) -> int:
        return self.first + len(self.rows) - 1 if self.rows else 0


def handoff_inbox(*, session: Session, page: int = 1, per_page: int = INBOX_PAGE) -> InboxPage:
    """Waiting AGENT requests, oldest first, a page at a time, with their case and the payer's
    message; a page number out of range shows the nearest page."""
    waiting = (
        select(Handoff, Case)
        .join(Case, Case.id == Handoff.case_id)
        .where(Handoff.status == HandoffStatus.WAITING)
    )
    total = session.exec(select(sa.func.count()).select_from(waiting.subquery())).one()
    pages = max(1, math.ceil(total / per_page))
    page = min(max(page, 1), pages)
    rows = session.exec(
        # The id breaks ties, so no request falls between two pages or shows on both.
        waiting.order_by(Handoff.created_at, Handoff.id)
        .offset((page - 1) * per_page)
        .limit(per_page)
    ).all()
    turn_ids = [h.turn_id for h, _ in rows if h.turn_id]
    turns = {}
    if turn_ids:
        turns = {
            t.id: t
            for t in session.exec(
                select(ConversationTurn).where(ConversationTurn.id.in_(turn_ids))
            ).all()
        }
    found = [InboxRow(h, c, turns.get(h.turn_id)) for h, c in rows]
    return InboxPage(found, total, page, pages, per_page)


def close_handoff(
    *, session: Session, handoff_id: int, staff_user_id: int, now: datetime | None = None
) -> Handoff:
    """Take a request for a person out of the queue without a text; caller commits.

    For a payer reached another way (a phone call) or who can no longer be texted; who closed
    it and when are kept in the answered_by and answered_at columns.
    """
    handoff = session.get(Handoff, handoff_id)
    if handoff is None:
        raise AdminError("No such request for a person.")
    if handoff.status != HandoffStatus.WAITING:
        raise AdminError(f"That request is already {handoff.status}; nothing changed.")
    handoff.status = HandoffStatus.CLOSED
    handoff.answered_by = staff_user_id
    handoff.answered_at = now or utcnow()
    session.add(handoff)
    return handoff


def mark_payment_reviewed(
    *, session: Session, payment_id: int, staff_user_id: int, now: datetime | None = None
) -> Payment:
    """Staff checked a payment billing flagged (a refund made, or no second payment found): the
    case page stops asking and says who checked it when. The caller commits."""
    payment = session.get(Payment, payment_id)
    if payment is None:
        raise AdminError("No such payment.")
    if not payment.review_reason:
        raise AdminError("That payment is not waiting for a review; nothing changed.")
    if payment.reviewed_at is not None:
        raise AdminError("That payment was already marked reviewed; nothing changed.")
    payment.reviewed_at = now or utcnow()
    payment.reviewed_by = staff_user_id
    session.add(payment)
    return payment


def waiting_handoff_count(*, session: Session) -> int:
    """How many AGENT requests wait for a reply."""
    return session.exec(
        select(sa.func.count()).where(Handoff.status == HandoffStatus.WAITING)
    ).one()


# --- Dashboard -------------------------------------------------------------------------------


def dashboard(*, session: Session, zone: str, days: int = 14, now: datetime | None = None):
    """The dashboard's figures for the last `days` local days."""
    now = now or utcnow()
    day_list, start = figures.window(now, days, zone)
    outbound = session.exec(
        select(ConversationTurn.created_at, ConversationTurn.delivery_status).where(
            ConversationTurn.direction == Direction.OUTBOUND,
            ConversationTurn.created_at >= start,
        )
    ).all()
    paid = session.exec(
        select(Payment.succeeded_at, Payment.amount_cents).where(
            Payment.status == PaymentStatus.SUCCEEDED, Payment.succeeded_at >= start
        )
    ).all()
    # Per number, not per enrollment: one STOP stops every case the number is on, and a number
    # on no case keeps its STOP on its conversation row alone. Each counts once, on its latest.
    stops = sa.union_all(
        select(Enrollment.phone.label("phone"), Enrollment.opted_out_at.label("at")).where(
            Enrollment.opted_out_at >= start
        ),
        select(Conversation.phone, Conversation.opted_out_at).where(
            Conversation.opted_out_at >= start
        ),
    ).subquery()
    opted = session.exec(select(sa.func.max(stops.c.at)).group_by(stops.c.phone)).all()
    reminders = session.exec(
        select(Reminder.case_id, Reminder.sent_at).where(
            Reminder.status == ReminderStatus.SENT, Reminder.sent_at >= start
        )
    ).all()
    turn = ConversationTurn
    texted = (turn.direction == Direction.INBOUND, turn.created_at >= start)
    # A text logged on no case, from a number on several, answers each case it was on then.
    inbound = session.execute(
        sa.union_all(
            select(turn.case_id, turn.created_at).where(*texted, turn.case_id.is_not(None)),
            select(Enrollment.case_id, turn.created_at)
            .join(Enrollment, Enrollment.phone == turn.phone)
            .where(*texted, turn.case_id.is_(None), turn.created_at >= Enrollment.created_at),
        )
    ).all()
    return figures.Dashboard(
        days=day_list,
        texts=figures.texts_per_day(outbound, day_list, zone),
        payments=figures.payments_per_day(paid, day_list, zone),
        opt_outs=figures.opt_outs_per_day(opted, day_list, zone),
        replies=figures.replies_per_day(reminders, inbound, day_list, zone),
    )


# --- Users -----------------------------------------------------------------------------------


def list_users(*, session: Session) -> list[AdminUser]:
    """Every staff account, by email."""
    return list(session.exec(select(AdminUser).order_by(AdminUser.email)).all())


def set_role(*, session: Session, user_id: int, role: Role, acting_user_id: int) -> AdminUser:
    """Change a user's role, ending their sessions; an admin cannot demote themself."""
    user = session.get(AdminUser, user_id)
    if user is None:
        raise AdminError("No such user.")
    if user_id == acting_user_id and role != Role.ADMIN:
        raise AdminError("You cannot remove your own admin role; ask another admin.")
    if user.role != role:
        # The user signs in again under the new role rather than keep a session from the old one.
        end_sessions(user)
    user.role = role
    user.updated_at = utcnow()
    session.add(user)
    return user


def unlock_user(*, session: Session, user_id: int) -> AdminUser:
    """Lift a sign-in lock-out."""
    user = session.get(AdminUser, user_id)
    if user is None:
        raise AdminError("No such user.")
    user.failed_logins = 0
    user.locked_until = None
    user.updated_at = utcnow()
    session.add(user)
    return user
