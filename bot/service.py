"""The bot's database side: lock a phone's conversation, load its facts, carry out the actions."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from flask import current_app
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, select

from bot import dialogue, messages
from bot.dialogue import (
    Activate,
    AppointmentFacts,
    CardFacts,
    CaseFacts,
    ChargeQuote,
    Facts,
    Handoff,
    OptIn,
    OptOut,
    PaymentFacts,
    PhoneStatus,
    Policy,
    SendCardLink,
    SetLanguage,
    State,
)
from bot.parse import Intent, parse
from jobs.schedule import parse_business_hours
from models import (
    Appointment,
    AppointmentStatus,
    CardOnFile,
    Case,
    CaseStatus,
    Conversation,
    ConversationTurn,
    Direction,
    Enrollment,
    EnrollmentStatus,
    Payment,
    PaymentStatus,
    utcnow,
)
from models import (
    Handoff as HandoffRow,
)
from money import parse_dollars

log = logging.getLogger(__name__)
MAX_BODY = 1600
"""Twilio's longest inbound body; anything longer is cut before it is stored."""


def policy(config: Mapping[str, Any]) -> Policy:
    """The agency rules the dialogue applies, from settings."""
    return Policy(
        agency_name=config["AGENCY_NAME"],
        agency_phone=config["AGENCY_PHONE"],
        hours=parse_business_hours(config["BUSINESS_HOURS"]),
        per_payment_cap_cents=parse_dollars(config["MAX_PAYMENT"]),
        monthly_cap_cents=parse_dollars(config["MONTHLY_PAYMENT_CAP"]),
    )


@dataclass
class Inbound:
    """One message Twilio delivered, reduced to what the bot uses."""

    message_sid: str
    phone: str
    body: str
    media_count: int = 0


@dataclass
class Handled:
    """What the webhook answers, and what to do once the transaction is committed."""

    replies: list[str]
    charge_payment_ids: list[int] = field(default_factory=list)
    replayed: bool = False
    refusal: messages.Reply | None = None


def _upsert_conversation(dialect: str):
    """Insert the phone's row or touch it: either way the row is locked until commit."""
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    table = Conversation.__table__
    statement = insert(table).values(
        phone=sa.bindparam("phone"),
        state=sa.bindparam("empty_state", type_=table.c.state.type),
        language=sa.bindparam("default_language"),
        updated_at=sa.bindparam("now", type_=table.c.updated_at.type),
    )
    return statement.on_conflict_do_update(
        index_elements=["phone"], set_={"updated_at": statement.excluded.updated_at}
    ).returning(table.c.id, table.c.state, table.c.language)


_UPSERTS = {dialect: _upsert_conversation(dialect) for dialect in ("postgresql", "sqlite")}
_INBOUND_BY_SID = sa.select(ConversationTurn.id).where(
    ConversationTurn.provider_message_id == sa.bindparam("sid"),
    ConversationTurn.direction == Direction.INBOUND,
)
_REPLIES_TO = (
    sa.select(ConversationTurn.body)
    .where(ConversationTurn.in_reply_to_id == sa.bindparam("turn_id"))
    .order_by(ConversationTurn.id)
)


def lock_conversation(*, session: Session, phone: str, now: datetime) -> sa.Row:
    """The phone's conversation (id, state, language), locked until commit.

    The first statement is a write: PostgreSQL locks the row, SQLite takes its write lock, so a
    second message from the same phone waits here instead of reading a stale state.
    """
    statement = _UPSERTS[session.get_bind().dialect.name]
    params = {"phone": phone, "empty_state": {}, "default_language": "en", "now": now}
    return session.execute(statement, params).one()


def replies_already_given(*, session: Session, message_sid: str) -> list[str] | None:
    """The replies sent to this MessageSid before, or None if it is new."""
    inbound_id = session.execute(_INBOUND_BY_SID, {"sid": message_sid}).scalar()
    if inbound_id is None:
        return None
    return list(session.execute(_REPLIES_TO, {"turn_id": inbound_id}).scalars())


def handle_inbound(*, session: Session, message: Inbound, now: datetime | None = None) -> Handled:
    """Answer one inbound text: parse, step the dialogue, act, log every turn. Caller commits."""
    now = now or utcnow()
    conversation = lock_conversation(session=session, phone=message.phone, now=now)
    earlier = replies_already_given(session=session, message_sid=message.message_sid)
    if earlier is not None:
        return Handled(earlier, replayed=True)

    enrollments = session.execute(_ENROLLMENTS, {"b_phone": message.phone}).all()
    status = phone_status(enrollments)
    language = _language(conversation, enrollments)
    facts = Facts(
        now=now,
        language=language,
        phone_status=status,
        policy=policy(current_app.config),
        nonce=message.message_sid,
        cases=case_facts(session=session, enrollments=enrollments, now=now),
    )
    before = State.from_dict(conversation.state)
    command = parse(message.body)
    outcome = dialogue.step(before, command, facts)

    case_id = _turn_case(outcome.state, facts, enrollments)
    inbound = TurnRef(
        case_id=case_id,
        enrollment_id=_enrollment_id(enrollments, case_id),
        phone=message.phone,
        intent=str(command.intent),
    )
    inbound.id = _insert_turn(
        session,
        inbound,
        direction=Direction.INBOUND,
        body=message.body,
        now=now,
        provider_message_id=message.message_sid,
        delivery_status="received",
        state_before=conversation.state or {},
        state_after=outcome.state.to_dict(),
    )

    handled = Handled(replies=[])
    params: dict[str, Any] = {}
    for action in outcome.actions:
        _carry_out(
            action,
            session=session,
            message=message,
            enrollments=enrollments,
            inbound=inbound,
            params=params,
            handled=handled,
            now=now,
            language=outcome.language,
        )
    replies = (handled.refusal,) if handled.refusal is not None else outcome.replies
    for reply in replies:
        if "url" in messages.placeholders(reply.key) and "url" in params:
            reply = reply.with_params(url=params["url"])
        handled.replies.append(messages.render_reply(reply, outcome.language))

    for body in handled.replies:
        _insert_reply(session, inbound, body, now)
    session.execute(
        _SAVE_CONVERSATION,
        {
            "conversation_id": conversation.id,
            "new_state": outcome.state.to_dict(),
            "new_language": str(outcome.language),
            "now": now,
        },
    )
    return handled


@dataclass
class TurnRef:
    """What the handler keeps of the inbound turn it logged (the row is written with Core)."""

    case_id: int | None
    enrollment_id: int | None
    phone: str
    intent: str
    id: int | None = None
    payment_id: int | None = None


_TURNS = ConversationTurn.__table__
_INSERT_TURN = _TURNS.insert().returning(_TURNS.c.id)
_CONVERSATIONS = Conversation.__table__
_SAVE_CONVERSATION = (
    _CONVERSATIONS.update()
    .where(_CONVERSATIONS.c.id == sa.bindparam("conversation_id"))
    .values(
        state=sa.bindparam("new_state", type_=_CONVERSATIONS.c.state.type),
        language=sa.bindparam("new_language"),
        updated_at=sa.bindparam("now", type_=_CONVERSATIONS.c.updated_at.type),
    )
)


def _insert_turn(
    session: Session, ref: TurnRef, *, direction: Direction, body: str, now: datetime, **extra
) -> int:
    """Log one turn with Core, not the ORM: every inbound text writes two or more of them."""
    values = {
        "case_id": ref.case_id,
        "enrollment_id": ref.enrollment_id,
        "phone": ref.phone,
        "direction": str(direction),
        "body": body,
        "intent": ref.intent,
        "created_at": now,
        "updated_at": now,
        **extra,
    }
    return session.execute(_INSERT_TURN, values).scalar_one()


def _insert_reply(session: Session, inbound: TurnRef, body: str, now: datetime) -> int:
    """Log a TwiML reply to `inbound`."""
    return _insert_turn(
        session,
        inbound,
        direction=Direction.OUTBOUND,
        body=body,
        now=now,
        delivery_status="twiml",
        in_reply_to_id=inbound.id,
        payment_id=inbound.payment_id,
    )


def phone_status(enrollments: Sequence[Any]) -> PhoneStatus:
    """Where a phone stands: active on any case wins, then pending, then opted out."""
    statuses = {e.status for e in enrollments}
    if EnrollmentStatus.ACTIVE in statuses:
        return PhoneStatus.ACTIVE
    if EnrollmentStatus.PENDING in statuses:
        return PhoneStatus.PENDING
    if statuses & {EnrollmentStatus.OPTED_OUT, EnrollmentStatus.UNDELIVERABLE}:
        return PhoneStatus.OPTED_OUT
    return PhoneStatus.UNENROLLED


_IDS = sa.bindparam("ids", expanding=True)
# Built once: statement construction costs more than the queries on this hot path.
_CASES = (
    sa.select(
        Case.id,
        Case.case_number,
        Case.amount_due_cents,
        Case.balance_cents,
        Case.next_due_date,
        Case.timezone,
    )
    .where(Case.id.in_(_IDS), Case.status == CaseStatus.OPEN)
    .order_by(Case.id)
)
_CARDS = (
    sa.select(CardOnFile.case_id, CardOnFile.brand, CardOnFile.last4)
    .where(CardOnFile.case_id.in_(_IDS), CardOnFile.active.is_(True))
    .order_by(CardOnFile.id)
)
_RANKED_PAYMENTS = (
    sa.select(
        Payment.case_id,
        Payment.created_at,
        Payment.amount_cents,
        Payment.status,
        CardOnFile.last4,
        sa.func.row_number()
        .over(partition_by=Payment.case_id, order_by=(Payment.created_at.desc(), Payment.id.desc()))
        .label("rank"),
    )
    .join(CardOnFile, Payment.card_id == CardOnFile.id, isouter=True)
    .where(Payment.case_id.in_(_IDS))
    .where(Payment.status.not_in([PaymentStatus.FAILED, PaymentStatus.CANCELED]))
    .subquery()
)
_PAYMENTS = (
    sa.select(_RANKED_PAYMENTS)
    .where(_RANKED_PAYMENTS.c.rank <= dialogue.HISTORY_SIZE)
    .order_by(_RANKED_PAYMENTS.c.case_id, _RANKED_PAYMENTS.c.rank)
)
_APPOINTMENTS = (
    sa.select(
        Appointment.case_id,
        Appointment.starts_at,
        Appointment.kind,
        Appointment.location,
        Appointment.video_link,
    )
    .where(
        Appointment.case_id.in_(_IDS),
        Appointment.status == AppointmentStatus.SCHEDULED,
        Appointment.starts_at > sa.bindparam("now", type_=Appointment.__table__.c.starts_at.type),
    )
    .order_by(Appointment.starts_at.desc())
)


def case_facts(
    *, session: Session, enrollments: Sequence[Any], now: datetime
) -> tuple[CaseFacts, ...]:
    """What the dialogue may know about each open case the phone is active on."""
    from billing.service import month_paid_cents

    case_ids = sorted({e.case_id for e in enrollments if e.status == EnrollmentStatus.ACTIVE})
    if not case_ids:
        return ()
    ids = {"ids": case_ids}
    cases = session.execute(_CASES, ids).all()
    # Rows come oldest card first and latest appointment first: the last one seen wins.
    cards = {row.case_id: CardFacts(row.brand, row.last4) for row in session.execute(_CARDS, ids)}
    appointments = {
        row.case_id: AppointmentFacts(
            row.starts_at, str(row.kind), row.location or "", row.video_link or ""
        )
        for row in session.execute(_APPOINTMENTS, {**ids, "now": now})
    }
    payments: dict[int, list[PaymentFacts]] = {}
    for row in session.execute(_PAYMENTS, ids):
        created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC)
        payments.setdefault(row.case_id, []).append(
            PaymentFacts(created, row.amount_cents, str(row.status), row.last4 or "")
        )
    default_zone = current_app.config["DEFAULT_TIMEZONE"]
    return tuple(
        CaseFacts(
            case_id=case.id,
            case_number=case.case_number,
            amount_due_cents=case.amount_due_cents,
            balance_cents=case.balance_cents,
            next_due_date=case.next_due_date,
            timezone=case.timezone or default_zone,
            card=cards.get(case.id),
            recent_payments=tuple(payments.get(case.id, ())),
            next_appointment=appointments.get(case.id),
            month_paid_cents=month_paid_cents(
                session=session,
                case_id=case.id,
                now=now,
                timezone=case.timezone or default_zone,
            ),
        )
        for case in cases
    )


def _carry_out(action, *, session, message, enrollments, inbound, params, handled, now, language):
    phone = {"b_phone": message.phone, "now": now}
    if isinstance(action, OptOut):
        opt_out(session=session, phone=message.phone, enrollments=enrollments, now=now)
    elif isinstance(action, OptIn):
        session.execute(_OPT_IN, phone)
    elif isinstance(action, Activate):
        session.execute(_ACTIVATE, phone)
    elif isinstance(action, SetLanguage):
        session.execute(_SET_LANGUAGE, {**phone, "b_language": str(action.language)})
    elif isinstance(action, ChargeQuote):
        from billing.service import PaymentRefused, payment_for_quote

        try:
            payment = payment_for_quote(
                session=session, quote=action, authorized_turn_id=inbound.id
            )
        except PaymentRefused as refused:
            # Caps or balance changed since the quote (an earlier YES not charged yet, say).
            handled.refusal = refused.reply
            return
        inbound.payment_id = payment.id
        session.execute(
            _TURNS.update().where(_TURNS.c.id == inbound.id).values(payment_id=payment.id)
        )
        handled.charge_payment_ids.append(payment.id)
    elif isinstance(action, SendCardLink):
        from billing.links import card_link_url

        params["url"] = card_link_url(case_id=action.case_id)
    elif isinstance(action, Handoff):
        session.add(
            HandoffRow(
                case_id=action.case_id, phone=message.phone, turn_id=inbound.id, created_at=now
            )
        )
    else:  # pragma: no cover - a new action type must be handled here
        raise TypeError(f"unhandled action {action!r}")


def opt_out(*, session: Session, phone: str, enrollments: Sequence[Any], now: datetime) -> None:
    """STOP: every enrollment of the phone is opted out and their cases' reminders cancelled."""
    from jobs.reminders import cancel_pending

    session.execute(_OPT_OUT, {"b_phone": phone, "now": now})
    touched = {e.case_id for e in enrollments}
    # A case keeps its reminders while another phone on it is still active.
    still_active = set(
        session.exec(
            select(Enrollment.case_id).where(
                Enrollment.case_id.in_(touched), Enrollment.status == EnrollmentStatus.ACTIVE
            )
        ).all()
    )
    cancel_pending(session=session, case_ids=touched - still_active, reason="opted_out")


_E = Enrollment.__table__
_ENROLLMENTS = (
    sa.select(_E.c.id, _E.c.case_id, _E.c.status, _E.c.language, _E.c.updated_at)
    .where(_E.c.phone == sa.bindparam("b_phone"))
    .order_by(_E.c.id)
)
_NOW = sa.bindparam("now", type_=_E.c.updated_at.type)
_OPT_OUT = (
    _E.update()
    .where(_E.c.phone == sa.bindparam("b_phone"), _E.c.status != EnrollmentStatus.OPTED_OUT)
    .values(
        status=EnrollmentStatus.OPTED_OUT,
        opted_out_at=_NOW,
        status_reason="opted out by text",
        updated_at=_NOW,
    )
)
_OPT_IN = (
    _E.update()
    .where(_E.c.phone == sa.bindparam("b_phone"), _E.c.status == EnrollmentStatus.OPTED_OUT)
    .values(
        status=EnrollmentStatus.ACTIVE,
        consented_at=_NOW,
        confirmed_at=_NOW,
        opted_out_at=None,
        status_reason="opted back in by text",
        updated_at=_NOW,
    )
)
_ACTIVATE = (
    _E.update()
    .where(_E.c.phone == sa.bindparam("b_phone"), _E.c.status == EnrollmentStatus.PENDING)
    .values(
        status=EnrollmentStatus.ACTIVE,
        confirmed_at=_NOW,
        consented_at=sa.func.coalesce(_E.c.consented_at, _NOW),
        updated_at=_NOW,
    )
)
_SET_LANGUAGE = (
    _E.update()
    .where(_E.c.phone == sa.bindparam("b_phone"))
    .values(language=sa.bindparam("b_language"), updated_at=_NOW)
)


def _language(conversation: sa.Row, enrollments: Sequence[Any]) -> messages.Language:
    if conversation.state or not enrollments:
        return messages.Language(conversation.language)
    # A new conversation speaks the language the payer was enrolled in.
    return messages.Language(enrollments[0].language)


def _turn_case(state: State, facts: Facts, enrollments: Sequence[Any]) -> int | None:
    """The case a turn is logged on: the one being discussed, else the phone's only or newest."""
    if state.case_id is not None:
        return state.case_id
    if state.quote is not None:
        return state.quote.case_id
    if len(facts.cases) == 1:
        return facts.cases[0].case_id
    if enrollments:
        return max(
            enrollments, key=lambda e: (e.updated_at or datetime.min.replace(tzinfo=UTC), e.id)
        ).case_id
    return None


def _enrollment_id(enrollments: Sequence[Any], case_id: int | None) -> int | None:
    return next((e.id for e in enrollments if e.case_id == case_id), None)


def handle_failed_inbound(*, session: Session, message: Inbound) -> str:
    """After an error: still honour STOP, keep a record of the message, and say what happened."""
    now = utcnow()
    enrollments = session.execute(_ENROLLMENTS, {"b_phone": message.phone}).all()
    language = enrollments[0].language if enrollments else "en"
    config = current_app.config
    if parse(message.body).intent is Intent.STOP:
        # Opt-out wins over everything, a broken dependency included.
        session.execute(_OPT_OUT, {"b_phone": message.phone, "now": now})
        reply = messages.render("opted_out", {"agency": config["AGENCY_NAME"]}, language)
    else:
        reply = messages.render(
            "try_again",
            {"agency": config["AGENCY_NAME"], "agency_phone": config["AGENCY_PHONE"]},
            language,
        )
    seen = session.exec(
        select(ConversationTurn.id).where(
            ConversationTurn.provider_message_id == message.message_sid
        )
    ).first()
    first = enrollments[0] if enrollments else None
    inbound = TurnRef(
        case_id=first.case_id if first else None,
        enrollment_id=first.id if first else None,
        phone=message.phone,
        intent="error",
    )
    inbound.id = _insert_turn(
        session,
        inbound,
        direction=Direction.INBOUND,
        body=message.body,
        now=now,
        provider_message_id=None if seen else message.message_sid,
        delivery_status="received",
    )
    _insert_reply(session, inbound, reply, now)
    return reply
