"""The data PayText runs on. Money is int cents; datetimes are timezone-aware UTC."""

from __future__ import annotations

from datetime import UTC, date, datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Stores aware datetimes as UTC; returns them aware (SQLite keeps no zone of its own)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime stored; use timezone-aware UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _when(*, nullable: bool = True, index: bool = False):
    """A UTC timestamp column."""
    return Field(default=None, sa_type=UTCDateTime, nullable=nullable, index=index)


def _created():
    return Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


def _status(default: StrEnum, *, index: bool = False):
    """StrEnums are stored as plain strings so new values need no enum migration."""
    return Field(default=default, sa_type=sa.String(24), nullable=False, index=index)


# Named constraints let Alembic alter them the same way on SQLite and PostgreSQL.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Language(StrEnum):
    EN = "en"
    ES = "es"


class CaseStatus(StrEnum):
    OPEN = "open"
    CLOSED = "closed"


class EnrollmentStatus(StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    OPTED_OUT = "opted_out"
    UNDELIVERABLE = "undeliverable"
    DECLINED = "declined"  # said NO to this case's invitation while texting about another


class EnrollmentSource(StrEnum):
    ADMIN = "admin"
    IMPORT = "import"
    KEYWORD = "keyword"
    CLI = "cli"


class Direction(StrEnum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


class PaymentStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    REQUIRES_ACTION = "requires_action"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    # The payer's bank took the money back (a chargeback) while the agency disputes it; if the
    # agency wins it is succeeded again, if it loses, dispute_lost.
    DISPUTED = "disputed"
    DISPUTE_LOST = "dispute_lost"


class ReminderKind(StrEnum):
    DUE_SOON = "due_soon"
    DUE_TODAY = "due_today"
    OVERDUE = "overdue"
    APPOINTMENT = "appointment"
    APPOINTMENT_CANCELED = "appt_canceled"
    """Sent once, when an appointment the payer was reminded of is canceled."""
    APPOINTMENT_MOVED = "appt_moved"
    """Sent when an appointment the payer was reminded of moves, unless its reminder for the
    new time goes about as soon."""


class ReminderStatus(StrEnum):
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DEFERRED = "deferred"
    SKIPPED = "skipped"
    CANCELED = "canceled"
    FAILED = "failed"


class AppointmentKind(StrEnum):
    CASE_CONFERENCE = "case_conference"
    COURT_HEARING = "court_hearing"
    VIRTUAL_COUNTER = "virtual_counter"


class AppointmentStatus(StrEnum):
    SCHEDULED = "scheduled"
    CANCELED = "canceled"


class HandoffStatus(StrEnum):
    WAITING = "waiting"
    ANSWERED = "answered"
    CLOSED = "closed"


class Role(StrEnum):
    ADMIN = "admin"
    STAFF = "staff"


class Case(SQLModel, table=True):
    """A child-support (or utility, or clinic) account that payers text about."""

    __tablename__ = "cases"

    id: int | None = Field(default=None, primary_key=True)
    case_number: str = Field(sa_type=sa.String(32), unique=True, index=True)
    payer_name: str = Field(sa_type=sa.String(120))
    amount_due_cents: int = Field(default=0, sa_type=sa.BigInteger)
    balance_cents: int = Field(default=0, sa_type=sa.BigInteger)
    next_due_date: date | None = Field(default=None, index=True)
    language: Language = Field(default=Language.EN, sa_type=sa.String(2))
    timezone: str | None = Field(default=None, sa_type=sa.String(64))
    status: CaseStatus = _status(CaseStatus.OPEN)
    processor_customer_id: str | None = Field(default=None, sa_type=sa.String(64))
    created_at: datetime = _created()
    updated_at: datetime = _created()


class Enrollment(SQLModel, table=True):
    """A phone number on a case, with the consent record behind every text we send it."""

    __tablename__ = "enrollments"
    __table_args__ = (
        sa.UniqueConstraint("case_id", "phone", name="uq_enrollment_case_phone"),
        # Phone and status together: with a phone index and a status index, SQLite (no
        # statistics yet) answered "this phone's pending enrollments" by reading every pending one.
        sa.Index("ix_enrollments_phone_status", "phone", "status"),
    )

    id: int | None = Field(default=None, primary_key=True)
    case_id: int = Field(foreign_key="cases.id", index=True)
    phone: str = Field(sa_type=sa.String(16))
    status: EnrollmentStatus = _status(EnrollmentStatus.PENDING, index=True)
    source: EnrollmentSource = _status(EnrollmentSource.ADMIN)
    language: Language = Field(default=Language.EN, sa_type=sa.String(2))
    consent_version: str = Field(sa_type=sa.String(32))
    consent_text: str | None = Field(default=None, sa_type=sa.Text)
    status_reason: str | None = Field(default=None, sa_type=sa.String(200))
    consented_at: datetime | None = _when()
    invited_at: datetime | None = _when()
    # An invitation asked for during the payer's quiet hours waits for their window to open;
    # the periodic dispatch sends it then (bot.outbound.send_held_invites).
    invite_at: datetime | None = _when(index=True)
    confirmed_at: datetime | None = _when()
    opted_out_at: datetime | None = _when()
    created_at: datetime = _created()
    updated_at: datetime = _created()


class Conversation(SQLModel, table=True):
    """The dialogue state of one phone number (it may be enrolled on several cases)."""

    __tablename__ = "conversations"

    id: int | None = Field(default=None, primary_key=True)
    phone: str = Field(sa_type=sa.String(16), unique=True, index=True)
    state: dict = Field(default_factory=dict, sa_type=sa.JSON)
    language: Language = Field(default=Language.EN, sa_type=sa.String(2))
    # Bumped by every text that changes the conversation: a webhook that read the row without
    # locking it saves only if nobody saved since (bot.service.apply_plan).
    version: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    # The number's own opt-out: set by every STOP it texts, cleared by START (or YES) only. A
    # number that texted STOP before it was on any case has no enrollment to record it on.
    opted_out_at: datetime | None = _when()
    updated_at: datetime = _created()


class ConversationTurn(SQLModel, table=True):
    """One inbound or outbound message, logged against the case it concerns.

    No case: a stranger's text, or one about no one case from a number on several (the case
    page shows those on each of the number's cases; admin.service.case_turns).
    """

    __tablename__ = "conversation_turns"

    id: int | None = Field(default=None, primary_key=True)
    case_id: int | None = Field(default=None, foreign_key="cases.id", index=True)
    enrollment_id: int | None = Field(default=None, foreign_key="enrollments.id")
    phone: str = Field(sa_type=sa.String(16), index=True)
    direction: Direction = Field(sa_type=sa.String(8))
    body: str = Field(default="", sa_type=sa.Text)
    provider_message_id: str | None = Field(default=None, sa_type=sa.String(64), unique=True)
    delivery_status: str | None = Field(default=None, sa_type=sa.String(24))
    error_code: int | None = None
    intent: str | None = Field(default=None, sa_type=sa.String(24))
    state_before: dict | None = Field(default=None, sa_type=sa.JSON)
    state_after: dict | None = Field(default=None, sa_type=sa.JSON)
    in_reply_to_id: int | None = Field(default=None, foreign_key="conversation_turns.id")
    payment_id: int | None = Field(default=None, foreign_key="payments.id")
    reminder_id: int | None = Field(default=None, foreign_key="reminders.id")
    staff_user_id: int | None = Field(default=None, foreign_key="admin_users.id")
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
    updated_at: datetime = _created()


class CardOnFile(SQLModel, table=True):
    """A card saved at the processor: ids and what a payer recognises it by, never its number."""

    __tablename__ = "cards_on_file"

    id: int | None = Field(default=None, primary_key=True)
    case_id: int = Field(foreign_key="cases.id", index=True)
    processor: str = Field(sa_type=sa.String(16))
    customer_id: str = Field(sa_type=sa.String(64))
    payment_method_id: str = Field(sa_type=sa.String(64))
    brand: str = Field(sa_type=sa.String(24))
    last4: str = Field(sa_type=sa.String(4))
    exp_month: int
    exp_year: int
    active: bool = Field(default=True, index=True)
    created_at: datetime = _created()
    replaced_at: datetime | None = _when()


class Payment(SQLModel, table=True):
    """A charge the payer confirmed by text; a unique idempotency key rules out a double charge."""

    __tablename__ = "payments"

    id: int | None = Field(default=None, primary_key=True)
    case_id: int = Field(foreign_key="cases.id", index=True)
    card_id: int | None = Field(default=None, foreign_key="cards_on_file.id")
    amount_cents: int = Field(sa_type=sa.BigInteger)
    currency: str = Field(default="usd", sa_type=sa.String(3))
    status: PaymentStatus = _status(PaymentStatus.PENDING, index=True)
    idempotency_key: str = Field(sa_type=sa.String(80), unique=True)
    processor: str = Field(default="sandbox", sa_type=sa.String(16))
    processor_payment_id: str | None = Field(default=None, sa_type=sa.String(64), unique=True)
    processor_charge_id: str | None = Field(default=None, sa_type=sa.String(64))
    client_secret_hint: str | None = Field(default=None, sa_type=sa.String(16))
    confirmation_code: str | None = Field(default=None, sa_type=sa.String(16), unique=True)
    failure_code: str | None = Field(default=None, sa_type=sa.String(48))
    failure_message: str | None = Field(default=None, sa_type=sa.String(300))
    refunded_cents: int = Field(default=0, sa_type=sa.BigInteger)
    # What a dispute put back on the balance, so winning it takes exactly that off again.
    disputed_cents: int = Field(
        default=0, sa_type=sa.BigInteger, sa_column_kwargs={"server_default": "0"}
    )
    balance_applied: bool = False
    # Why staff should look at this payment (billing.service.REVIEW_REASONS), shown on the case
    # page: say, money Stripe took after the payer was told the payment had failed.
    review_reason: str | None = Field(default=None, sa_type=sa.String(48))
    # When and by whom staff marked it reviewed: the case page stops asking, and keeps saying so.
    reviewed_at: datetime | None = _when()
    reviewed_by: int | None = Field(default=None, foreign_key="admin_users.id")
    # Turns point at payments and payments at turns; use_alter breaks the cycle for PostgreSQL.
    authorized_turn_id: int | None = Field(
        default=None,
        sa_column=sa.Column(
            sa.Integer,
            sa.ForeignKey(
                "conversation_turns.id", use_alter=True, name="fk_payments_authorized_turn"
            ),
        ),
    )
    attempts: int = 0
    created_at: datetime = _created()
    updated_at: datetime = _created()
    succeeded_at: datetime | None = _when()


class Refund(SQLModel, table=True):
    """Money sent back on a payment, by an admin."""

    __tablename__ = "refunds"

    id: int | None = Field(default=None, primary_key=True)
    payment_id: int = Field(foreign_key="payments.id", index=True)
    amount_cents: int = Field(sa_type=sa.BigInteger)
    status: str = Field(default="pending", sa_type=sa.String(24))
    idempotency_key: str = Field(sa_type=sa.String(80), unique=True)
    processor_refund_id: str | None = Field(default=None, sa_type=sa.String(64), unique=True)
    balance_applied: bool = False
    admin_user_id: int | None = Field(default=None, foreign_key="admin_users.id")
    created_at: datetime = _created()
    updated_at: datetime = _created()


class Appointment(SQLModel, table=True):
    """A case conference, court hearing or virtual counter visit."""

    __tablename__ = "appointments"

    id: int | None = Field(default=None, primary_key=True)
    case_id: int = Field(foreign_key="cases.id", index=True)
    starts_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    kind: AppointmentKind = _status(AppointmentKind.CASE_CONFERENCE)
    location: str | None = Field(default=None, sa_type=sa.String(200))
    video_link: str | None = Field(default=None, sa_type=sa.String(300))
    status: AppointmentStatus = _status(AppointmentStatus.SCHEDULED)
    created_at: datetime = _created()
    updated_at: datetime = _created()


class Reminder(SQLModel, table=True):
    """A text planned for one due cycle (or appointment); the database is the schedule."""

    __tablename__ = "reminders"
    __table_args__ = (
        sa.UniqueConstraint("case_id", "kind", "cycle", name="uq_reminder_case_kind_cycle"),
        sa.Index("ix_reminders_due", "status", "send_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    case_id: int = Field(foreign_key="cases.id", index=True)
    kind: ReminderKind = Field(sa_type=sa.String(16))
    cycle: str = Field(sa_type=sa.String(32))
    appointment_id: int | None = Field(default=None, foreign_key="appointments.id")
    send_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    status: ReminderStatus = _status(ReminderStatus.SCHEDULED)
    reason: str | None = Field(default=None, sa_type=sa.String(64))
    attempts: int = 0
    """Times its texts were tried; holds (quiet hours, a payment in flight) are not tries."""
    claim_token: int = 0
    """Bumped by every claim: a job works on the row only while the token it was given holds."""
    sent_at: datetime | None = _when()
    created_at: datetime = _created()
    updated_at: datetime = _created()


class Handoff(SQLModel, table=True):
    """A payer asked for a person (AGENT); staff answer from the case page."""

    __tablename__ = "handoffs"

    id: int | None = Field(default=None, primary_key=True)
    case_id: int = Field(foreign_key="cases.id", index=True)
    phone: str = Field(sa_type=sa.String(16))
    turn_id: int | None = Field(default=None, foreign_key="conversation_turns.id")
    status: HandoffStatus = _status(HandoffStatus.WAITING, index=True)
    answered_by: int | None = Field(default=None, foreign_key="admin_users.id")
    created_at: datetime = _created()
    answered_at: datetime | None = _when()


class WebhookEvent(SQLModel, table=True):
    """A processor event already handled; a replay of the same id changes nothing."""

    __tablename__ = "webhook_events"
    __table_args__ = (sa.UniqueConstraint("source", "event_id", name="uq_webhook_source_event"),)

    id: int | None = Field(default=None, primary_key=True)
    source: str = Field(sa_type=sa.String(16))
    event_id: str = Field(sa_type=sa.String(80))
    event_type: str = Field(sa_type=sa.String(64))
    received_at: datetime = _created()


class AdminUser(SQLModel, table=True):
    """Agency staff who sign in to /admin."""

    __tablename__ = "admin_users"

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(sa_type=sa.String(254), unique=True, index=True)
    password_hash: str = Field(sa_type=sa.String(200))
    role: Role = _status(Role.STAFF)
    failed_logins: int = 0
    locked_until: datetime | None = _when()
    last_login_at: datetime | None = _when()
    # Part of every session cookie's user id; bumping it ends the user's sessions everywhere.
    session_version: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    created_at: datetime = _created()
    updated_at: datetime = _created()
