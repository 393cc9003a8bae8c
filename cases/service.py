"""Cases and enrollments: the writes behind the import, the enroll command and the admin form."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TypeVar

import sqlalchemy as sa
from sqlmodel import Session, select

from cases.importer import CaseRow
from models import (
    Case,
    Conversation,
    Enrollment,
    EnrollmentSource,
    EnrollmentStatus,
    Language,
    utcnow,
)

T = TypeVar("T")

CHUNK = 500
"""Rows per statement in bulk work: under SQLite's variable limit, large enough to be quick."""


def get_by_number(*, session: Session, case_number: str) -> Case | None:
    """The case with this agency case number (case-insensitive), if any."""
    return session.exec(select(Case).where(Case.case_number == case_number.upper())).first()


def opt_outs(*, session: Session, phones: Iterable[str]) -> dict[str, datetime | None]:
    """When each of these numbers last opted out, for those that did (STOP covers every case).

    A STOP is the payer's revocation of consent: it stands until the payer texts START or YES,
    whatever staff or an import later do with the number. It is on the number's enrollments,
    and on its conversation row too, which is where a STOP texted while on no case is kept.
    """
    found: dict[str, datetime | None] = {}
    for chunk in _chunks(sorted(set(phones))):
        stopped_on_cases = sa.select(
            Enrollment.phone.label("phone"), Enrollment.opted_out_at.label("opted_out_at")
        ).where(Enrollment.phone.in_(chunk), Enrollment.status == EnrollmentStatus.OPTED_OUT)
        stopped_numbers = sa.select(Conversation.phone, Conversation.opted_out_at).where(
            Conversation.phone.in_(chunk), Conversation.opted_out_at.is_not(None)
        )
        both = sa.union_all(stopped_on_cases, stopped_numbers).subquery()
        found.update(
            session.execute(
                sa.select(both.c.phone, sa.func.max(both.c.opted_out_at)).group_by(both.c.phone)
            ).all()
        )
    return found


def opt_out_reason(opted_out_at: datetime | None) -> str:
    """Why a new enrollment of a number that opted out starts opted out, for the case page."""
    when = f" on {opted_out_at:%Y-%m-%d}" if opted_out_at else ""
    return f"number opted out of texts{when}; texted again only if the payer texts START"


@dataclass(frozen=True)
class ImportResult:
    created: int
    updated: int
    enrollments_created: int
    """Pending enrollments added, to be invited (the web import's option, invite_imported, or
    `flask enroll --invite-pending`)."""
    opted_out: int = 0
    """Enrollments added for numbers that had opted out: they stay opted out, never invited."""


def apply_import(
    *,
    session: Session,
    rows: Sequence[CaseRow],
    consent_version: str,
    progress: Callable[[int], None] | None = None,
) -> ImportResult:
    """Create or update every case and add pending enrollments; the caller commits once."""
    now = utcnow()
    existing: dict[str, int] = {}
    languages: dict[int, str] = {}  # stored, for enrollments from rows with no language
    for chunk in _chunks([row.case_number.upper() for row in rows]):
        for case_number, case_id, language in session.execute(
            sa.select(Case.case_number, Case.id, Case.language).where(Case.case_number.in_(chunk))
        ):
            existing[case_number] = case_id
            languages[case_id] = language

    new_rows = [row for row in rows if row.case_number.upper() not in existing]
    old_rows = [row for row in rows if row.case_number.upper() in existing]
    insert_cases = sa.insert(Case).returning(Case.case_number, Case.id)
    for chunk in _chunks(new_rows):
        # RETURNING hands back the new ids; selecting them again would scan a table whose
        # planner statistics still say it is empty (PostgreSQL, inside one transaction).
        created = session.connection().execute(
            insert_cases, [{**NEW_CASE_DEFAULTS, **_case_values(row, now)} for row in chunk]
        )
        existing.update(created.all())
        if progress:
            progress(len(chunk))
    for chunk in _chunks(old_rows):
        values = [
            {"id": existing[row.case_number.upper()], **_case_values(row, now)} for row in chunk
        ]
        # Rows keeping their stored language or zone have fewer columns; each run of one shape
        # is a statement of its own, so like shapes go together.
        values.sort(key=lambda value: tuple(value))
        session.execute(sa.update(Case), values)
        if progress:
            progress(len(chunk))

    with_phone = [(existing[row.case_number.upper()], row) for row in rows if row.phone]
    enrolled: set[tuple[int, str]] = set()
    for chunk in _chunks(sorted({case_id for case_id, _ in with_phone})):
        enrolled.update(
            session.execute(
                sa.select(Enrollment.case_id, Enrollment.phone).where(Enrollment.case_id.in_(chunk))
            ).all()
        )
    adding = [(case_id, row) for case_id, row in with_phone if (case_id, row.phone) not in enrolled]
    stopped = opt_outs(session=session, phones=[row.phone for _, row in adding])
    new_enrollments = [
        {
            "case_id": case_id,
            "phone": row.phone,
            **_standing(row.phone, stopped),
            "source": EnrollmentSource.IMPORT,
            "language": row.language or languages.get(case_id, Language.EN),
            "consent_version": consent_version,
            "created_at": now,
            "updated_at": now,
        }
        for case_id, row in adding
    ]
    for chunk in _chunks(new_enrollments):
        session.connection().execute(Enrollment.__table__.insert(), chunk)
    # Fresh statistics, or the next import's lookups are planned as scans of "empty" tables
    # (PostgreSQL), or a phone's enrollments are found through the status index (SQLite).
    if session.get_bind().dialect.name == "postgresql":
        session.execute(sa.text("ANALYZE cases, enrollments"))
    else:
        session.execute(sa.text("ANALYZE cases"))
        session.execute(sa.text("ANALYZE enrollments"))
    opted_out = sum(1 for _, row in adding if row.phone in stopped)
    return ImportResult(len(new_rows), len(old_rows), len(new_enrollments) - opted_out, opted_out)


def _standing(phone: str, stopped: dict[str, datetime | None]) -> dict:
    # A number that opted out on any case stays opted out: never invited, never texted.
    if phone in stopped:
        return {
            "status": EnrollmentStatus.OPTED_OUT,
            "status_reason": opt_out_reason(stopped[phone]),
        }
    return {"status": EnrollmentStatus.PENDING, "status_reason": None}


NEW_CASE_DEFAULTS = {"language": Language.EN, "timezone": None}
"""A new case's language and zone when their cells are empty."""


def _case_values(row: CaseRow, now: datetime) -> dict:
    """The row's columns for a case; an empty language or timezone cell keeps what is stored.

    An empty next_due_date does clear the stored one: it says the case has no due date now.
    """
    values = {
        "case_number": row.case_number.upper(),
        "payer_name": row.payer_name,
        "amount_due_cents": row.amount_due_cents,
        "balance_cents": row.balance_cents,
        "next_due_date": row.next_due_date,
        "updated_at": now,
    }
    if row.language:
        values["language"] = row.language
    if row.timezone:
        values["timezone"] = row.timezone
    return values


def _chunks(items: Iterable[T], size: int = CHUNK) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class EnrollOutcome(StrEnum):
    CREATED_PENDING = "created_pending"
    CREATED_ACTIVE = "created_active"
    ACTIVATED = "activated"
    ALREADY_PENDING = "already_pending"
    ALREADY_ACTIVE = "already_active"
    OPTED_OUT = "opted_out"


def enroll(
    *,
    session: Session,
    case: Case,
    phone: str,
    language: str | None,
    source: EnrollmentSource,
    confirmed: bool,
    consent_version: str,
    consent_text: str | None = None,
    now: datetime | None = None,
) -> tuple[Enrollment, EnrollOutcome]:
    """Put a phone (already E.164) on a case: pending until it says YES, or active if confirmed.

    A number that opted out stays opted out (OPTED_OUT): its record is kept as it is, and on a
    new case it is enrolled opted out, so only the payer's START or YES brings it back.
    """
    now = now or utcnow()
    enrollment = session.exec(
        select(Enrollment).where(Enrollment.case_id == case.id, Enrollment.phone == phone)
    ).first()
    stopped = opt_outs(session=session, phones=[phone])
    if phone in stopped:
        if enrollment is None:
            enrollment = Enrollment(
                case_id=case.id,
                phone=phone,
                status=EnrollmentStatus.OPTED_OUT,
                status_reason=opt_out_reason(stopped[phone]),
                source=source,
                language=Language(language or case.language),
                consent_version=consent_version,
                consent_text=consent_text,
                created_at=now,
                updated_at=now,
            )
            session.add(enrollment)
            session.flush()
        return enrollment, EnrollOutcome.OPTED_OUT
    if enrollment is not None and enrollment.status == EnrollmentStatus.ACTIVE:
        return enrollment, EnrollOutcome.ALREADY_ACTIVE
    if enrollment is not None and enrollment.status == EnrollmentStatus.PENDING and not confirmed:
        return enrollment, EnrollOutcome.ALREADY_PENDING

    created = enrollment is None
    if created:
        enrollment = Enrollment(case_id=case.id, phone=phone, consent_version=consent_version)
    # Re-enrolling an undeliverable number (a new phone, say) starts a fresh consent record.
    enrollment.source = source
    enrollment.language = Language(language or case.language)
    enrollment.consent_version = consent_version
    enrollment.consent_text = consent_text
    enrollment.consented_at = now if confirmed or consent_text else enrollment.consented_at
    enrollment.opted_out_at = None
    enrollment.status_reason = None
    enrollment.updated_at = now
    if confirmed:
        enrollment.status = EnrollmentStatus.ACTIVE
        enrollment.confirmed_at = now
        outcome = EnrollOutcome.CREATED_ACTIVE if created else EnrollOutcome.ACTIVATED
    else:
        enrollment.status = EnrollmentStatus.PENDING
        enrollment.invited_at = None
        enrollment.invite_at = None
        outcome = EnrollOutcome.CREATED_PENDING
    session.add(enrollment)
    session.flush()
    return enrollment, outcome


def invite_imported(*, session: Session, case_numbers: Iterable[str], now: datetime) -> int:
    """Queue the opt-in text of these cases' pending numbers not invited yet; the caller commits.

    Each is held as due now (`invite_at`): the reminder dispatch, every minute, sends it at the
    SMS rate, in the payer's window, and judges it again just before (a STOP meanwhile counts).
    Returns how many were queued.
    """
    table = Enrollment.__table__
    queued = 0
    for chunk in _chunks(sorted({number.upper() for number in case_numbers})):
        cases = sa.select(Case.id).where(Case.case_number.in_(chunk))
        result = session.execute(
            sa.update(table)
            .where(
                table.c.case_id.in_(cases.scalar_subquery()),
                table.c.status == EnrollmentStatus.PENDING,
                table.c.invited_at.is_(None),
                table.c.invite_at.is_(None),
            )
            .values(invite_at=now, updated_at=now)
        )
        queued += result.rowcount or 0
    return queued


def pending_uninvited(*, session: Session, limit: int | None = None) -> list[Enrollment]:
    """Pending enrollments whose opt-in text has not been sent yet, oldest first."""
    query = (
        select(Enrollment)
        .where(Enrollment.status == EnrollmentStatus.PENDING, Enrollment.invited_at.is_(None))
        .order_by(Enrollment.id)
    )
    if limit:
        query = query.limit(limit)
    return list(session.exec(query).all())
