"""Test-data factories: real rows with sensible defaults, overridable per test."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from sqlmodel import Session

from models import Case, Enrollment, EnrollmentSource, EnrollmentStatus, utcnow

_numbers = itertools.count(1001)


def make_case(session: Session, **fields) -> Case:
    """A case owing $250.00 a month with $1,000.00 outstanding, due in ten days."""
    values = {
        "case_number": f"CS-{next(_numbers):06d}",
        "payer_name": "Ana Rivera",
        "amount_due_cents": 25_000,
        "balance_cents": 100_000,
        "next_due_date": utcnow().date() + timedelta(days=10),
        "language": "en",
        "timezone": "America/New_York",
    }
    values.update(fields)
    case = Case(**values)
    session.add(case)
    session.commit()
    return case


def make_enrollment(session: Session, case: Case, phone: str = "+16175550134", **fields):
    """An active enrollment of `phone` on `case`."""
    values = {
        "case_id": case.id,
        "phone": phone,
        "status": EnrollmentStatus.ACTIVE,
        "source": EnrollmentSource.ADMIN,
        "language": case.language,
        "consent_version": "test",
        "consented_at": utcnow(),
        "confirmed_at": utcnow(),
    }
    values.update(fields)
    enrollment = Enrollment(**values)
    session.add(enrollment)
    session.commit()
    return enrollment


STOPPED_AT = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)


def make_stopped_enrollment(session: Session, case: Case, phone: str = "+16175550134"):
    """`phone` texted STOP (at STOPPED_AT) while enrolled on `case`."""
    return make_enrollment(
        session,
        case,
        phone,
        status=EnrollmentStatus.OPTED_OUT,
        opted_out_at=STOPPED_AT,
        status_reason="opted out by text",
    )
