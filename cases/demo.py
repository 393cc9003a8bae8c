"""Demo data for `make run`: a few realistic cases, numbers, appointments and sandbox cards."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from flask import Flask
from sqlmodel import Session

from billing.cards import attach_test_card
from cases import service
from models import (
    Appointment,
    AppointmentKind,
    Case,
    Enrollment,
    EnrollmentSource,
    EnrollmentStatus,
    utcnow,
)

# 555-01XX numbers are reserved for fiction, so demo texts can never reach a real phone.
DEMO_CASES = [
    # case number, name, language, zone, due $, balance $, due in days, phone, status, card
    (
        "MA-2024-118204",
        "Ana Rivera",
        "es",
        "America/New_York",
        250_00,
        1_250_00,
        2,
        "+16175550134",
        "active",
        "4242424242424242",
    ),
    (
        "MA-2023-007731",
        "James Carter",
        "en",
        "America/New_York",
        180_00,
        540_00,
        5,
        "+16175550135",
        "active",
        "5555555555554444",
    ),
    (
        "CA-2022-554120",
        "Luis Ortega",
        "es",
        "America/Los_Angeles",
        320_00,
        960_00,
        9,
        "+13105550136",
        "active",
        None,
    ),
    (
        "CA-2021-330918",
        "Luis Ortega",
        "es",
        "America/Los_Angeles",
        95_00,
        95_00,
        12,
        "+13105550136",
        "active",
        "4000000000009995",
    ),
    (
        "MA-2025-201567",
        "Keisha Brown",
        "en",
        "America/New_York",
        210_00,
        0,
        20,
        "+16175550137",
        "pending",
        None,
    ),
]


def seed(*, session: Session, app: Flask) -> int:
    """Add the demo cases that are missing; returns how many were created."""
    created = 0
    today = utcnow().date()
    for number, name, language, zone, due, balance, days, phone, status, card_number in DEMO_CASES:
        if service.get_by_number(session=session, case_number=number) is not None:
            continue
        case = Case(
            case_number=number,
            payer_name=name,
            language=language,
            timezone=zone,
            amount_due_cents=due,
            balance_cents=balance,
            next_due_date=today + timedelta(days=days),
        )
        session.add(case)
        session.flush()
        session.add(
            Enrollment(
                case_id=case.id,
                phone=phone,
                status=EnrollmentStatus(status),
                source=EnrollmentSource.ADMIN,
                language=language,
                consent_version=app.config["CONSENT_VERSION"],
                consent_text="Demo enrollment: consent recorded by seed-demo.",
                consented_at=utcnow(),
                confirmed_at=utcnow() if status == "active" else None,
            )
        )
        if card_number:
            attach_test_card(
                session=session,
                gateway=app.extensions["payments"],
                case=case,
                number=card_number,
                exp_month=12,
                exp_year=today.year + 3,
            )
        _appointments(session, case, today, ZoneInfo(zone))
        created += 1
    return created


def _appointments(session: Session, case: Case, today: date, zone: ZoneInfo) -> None:
    def local(days: int, hour: int, minute: int = 0) -> datetime:
        moment = datetime.combine(today + timedelta(days=days), time(hour, minute), tzinfo=zone)
        return moment.astimezone(UTC)

    if case.case_number == "MA-2024-118204":
        session.add(
            Appointment(
                case_id=case.id,
                starts_at=local(3, 10, 30),
                kind=AppointmentKind.CASE_CONFERENCE,
                video_link="https://zoom.example.org/j/83512249077",
            )
        )
    if case.case_number == "MA-2023-007731":
        session.add(
            Appointment(
                case_id=case.id,
                starts_at=local(8, 9),
                kind=AppointmentKind.COURT_HEARING,
                location="Suffolk Probate and Family Court, 24 New Chardon St, Boston",
            )
        )
    if case.case_number == "CA-2022-554120":
        session.add(
            Appointment(
                case_id=case.id,
                starts_at=local(4, 14),
                kind=AppointmentKind.VIRTUAL_COUNTER,
                video_link="https://zoom.example.org/j/61120934412",
            )
        )
