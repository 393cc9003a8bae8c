"""The bot's database side: lock a phone's conversation, load its facts, carry out the actions."""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Any, NamedTuple

import sqlalchemy as sa
from flask import current_app
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, select

from billing.cycles import paid_in_cycles, paid_toward_cycle, previous_due_date
from bot import dialogue, messages
from bot.dialogue import (
    Activate,
    AppointmentFacts,
    CardFacts,
    CaseFacts,
    ChargeQuote,
    DeclineInvitation,
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
from bot.parse import Intent, consents, parse
from bot.redact import link_tokens_masked
from db import Bound, Prepared, bind_together, run_bound, run_together
from db import kept_connection as db_kept_connection
from db import writer as db_writer
from jobs.schedule import case_zone, parse_business_hours, resolve_timezone, zone_named
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
    HandoffStatus,
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
    return _policy(*(config[name] for name in _POLICY_SETTINGS))


_POLICY_SETTINGS = (
    "AGENCY_NAME",
    "AGENCY_PHONE",
    "BUSINESS_HOURS",
    "MAX_PAYMENT",
    "MONTHLY_PAYMENT_CAP",
)


@functools.lru_cache(maxsize=8)
def _policy(name: str, phone: str, hours: str, cap: str, monthly_cap: str) -> Policy:
    # Parsed once per distinct setting values, not once per text.
    return Policy(
        agency_name=name,
        agency_phone=phone,
        hours=parse_business_hours(hours),
        per_payment_cap_cents=parse_dollars(cap),
        monthly_cap_cents=parse_dollars(monthly_cap),
    )


def current_policy() -> Policy:
    """The current app's policy."""
    return policy(current_app.config)


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
    ).returning(table.c.id, table.c.state, table.c.language, table.c.version, table.c.opted_out_at)


_UPSERTS = {
    dialect: Prepared(_upsert_conversation(dialect)) for dialect in ("postgresql", "sqlite")
}
_CONVERSATIONS = Conversation.__table__
_INBOUND_BY_SID = sa.select(ConversationTurn.id).where(
    ConversationTurn.provider_message_id == sa.bindparam("sid"),
    ConversationTurn.direction == Direction.INBOUND,
)
_REPLIES_TO = (
    sa.select(ConversationTurn.body, ConversationTurn.case_id, ConversationTurn.payment_id)
    .where(ConversationTurn.in_reply_to_id == sa.bindparam("turn_id"))
    .order_by(ConversationTurn.id)
)


def replies_already_given(*, session: Session, message_sid: str) -> list[str] | None:
    """The replies sent to this MessageSid before, or None if it is new.

    A card link in them is made again: only its masked copy was stored.
    """
    from billing.links import with_new_links

    inbound_id = session.execute(_INBOUND_BY_SID, {"sid": message_sid}).scalar()
    if inbound_id is None:
        return None
    return [
        with_new_links(row.body, case_id=row.case_id, payment_id=row.payment_id)
        for row in session.execute(_REPLIES_TO, {"turn_id": inbound_id})
    ]


class Conflict(Exception):
    """Another text from the phone was saved after this one's conversation was read."""


@dataclass
class Plan:
    """What one inbound text will do, worked out from its conversation and facts as read."""

    message: Inbound
    now: datetime
    conversation: Any  # (id, state, language, version), or None for a phone never seen
    enrollments: Sequence[Any]
    outcome: dialogue.Outcome
    state_after: dict
    inbound: TurnRef
    replies: list[str] | None  # rendered already, unless an action may change them


def answer_inbound(*, engine: sa.Engine, message: Inbound, now: datetime | None = None) -> Handled:
    """Answer one inbound text and commit: parse, step the dialogue, act, log every turn.

    SQLite has one writer for the whole database, so there the conversation and facts are read
    and the dialogue stepped before taking the write lock, which is held only to save (a few
    statements). If another text from the same phone was saved meanwhile, the text is handled
    again with the lock held from the start, as on PostgreSQL, which locks just the phone's row.

    A MessageSid handled before fails the inbound turn's unique index (IntegrityError) before
    anything is committed: the caller answers with `replies_already_given`. Checking first would
    cost every text a query for what Twilio seldom does.

    The connection is one this thread keeps between texts, not checked for life first: one
    found dead (a database restart) is replaced and the text handled again, which is safe since
    a text committed before the loss fails on its MessageSid the second time.
    """
    try:
        return _answer_inbound(engine, message, now)
    except sa.exc.DBAPIError as error:
        if not error.connection_invalidated:
            raise
        log.warning("database connection lost; text %s handled again", message.message_sid)
        return _answer_inbound(engine, message, now)


def _answer_inbound(engine: sa.Engine, message: Inbound, now: datetime | None) -> Handled:
    with db_kept_connection(engine) as connection:
        if connection.dialect.name == "sqlite":
            now = now or utcnow()
            # Plain SELECTs: SQLite starts no transaction for them, so nothing is held here.
            conversation, enrollments, payment_rows = read_phone(
                connection=connection, phone=message.phone, now=now, body=message.body
            )
            plan = plan_inbound(
                connection=connection,
                message=message,
                conversation=conversation,
                enrollments=enrollments,
                now=now,
                payment_rows=payment_rows,
            )
            # Bound here, so the values are converted (JSON, datetimes) before the lock is taken.
            writes = writes_of(plan, connection.dialect)
            try:
                with db_writer(engine), connection.begin():
                    return apply_plan(connection=connection, plan=plan, writes=writes)
            except Conflict:
                log.info("text %s met another from its phone; handled again", message.message_sid)
        with db_writer(engine), connection.begin():
            return handle_inbound(connection=connection, message=message, now=now)


def handle_inbound(
    *, connection: sa.Connection, message: Inbound, now: datetime | None = None
) -> Handled:
    """Answer one inbound text in `connection`'s transaction, the phone's conversation locked.

    Runs as Core: most texts need no ORM. Actions that use it (a payment, a handoff, an opt-out)
    get a Session joined to that same transaction. The caller commits.
    """
    now = now or utcnow()
    phone = message.phone
    # The lock, the phone's rows and, when the request may use them, its payments: on
    # PostgreSQL one round trip (db.run_together).
    reads = [_lock_statement(connection, phone, now), *_phone_reads(phone, now, message.body)]
    results = run_together(connection, reads)
    plan = plan_inbound(
        connection=connection,
        message=message,
        conversation=results[0].one(),
        enrollments=_enrollment_rows(results[1]),
        now=now,
        payment_rows=results[2] if len(results) > 2 else None,
    )
    return apply_plan(connection=connection, plan=plan)


def plan_inbound(
    *,
    connection: sa.Connection,
    message: Inbound,
    conversation: Any,
    enrollments: Sequence[Any],
    now: datetime,
    payment_rows: Sequence[Any] | None = None,
) -> Plan:
    """Read what else the text needs (its cases' payments, unless given) and step the dialogue.

    Nothing is written.
    """
    before = State.from_dict(conversation.state if conversation else {})
    command = parse(message.body)
    if dialogue.needs_payments(before, command):
        since = _payments_since(enrollments, now)
        # Read here unless read with the lock (PostgreSQL) far enough back: a case long overdue
        # needs its payments from further back than the usual read.
        if payment_rows is None or since < now - _PAYMENTS_REACH:
            payment_rows = _PAYMENTS.execute(connection, _payments_params(message.phone, since))
    facts = Facts(
        now=now,
        language=_language(conversation, enrollments),
        phone_status=dialogue.phone_status(
            (e.status for e in enrollments),
            opted_out=conversation is not None and conversation.opted_out_at is not None,
        ),
        policy=current_policy(),
        nonce=message.message_sid,
        cases=facts_of_cases(enrollments, now=now, payment_rows=payment_rows),
        enrolled=bool(enrollments),
        # Only an invitation that went out can be answered: an imported pending case waits.
        invited=any(
            e.status == EnrollmentStatus.PENDING and e.invited_at is not None for e in enrollments
        ),
    )
    outcome = dialogue.step(before, command, facts)
    case_id = _turn_case(outcome, enrollments)
    inbound = TurnRef(
        case_id=case_id,
        enrollment_id=_enrollment_id(enrollments, case_id),
        phone=message.phone,
        intent=str(command.intent),
    )
    return Plan(
        message=message,
        now=now,
        conversation=conversation,
        enrollments=enrollments,
        outcome=outcome,
        state_after=outcome.state.to_dict(),
        inbound=inbound,
        # Actions can refuse a payment or add a card link: those replies are rendered after.
        replies=None if outcome.actions else _render(outcome.replies, outcome.language),
    )


def writes_of(plan: Plan, dialect: sa.Dialect) -> Bound | None:
    """A text without actions writes its conversation and turns, nothing else: all of it bound
    ahead. None for a text with actions, whose replies depend on what the actions do."""
    if plan.outcome.actions:
        return None
    message, inbound = plan.message, plan.inbound
    replies = [
        _reply_statement(inbound, message.message_sid, body, plan.now) for body in plan.replies
    ]
    return bind_together(dialect, [*_save_and_log(plan, dialect), *replies])


def _save_and_log(plan: Plan, dialect: sa.Dialect) -> list[tuple[Prepared, dict]]:
    message = plan.message
    log_inbound = _turn_statement(
        plan.inbound,
        direction=Direction.INBOUND,
        body=message.body,
        now=plan.now,
        provider_message_id=message.message_sid,
        delivery_status="received",
        state_before=plan.conversation.state if plan.conversation else {},
        state_after=plan.state_after,
    )
    return [_save_statement(dialect, plan), log_inbound]


def apply_plan(*, connection: sa.Connection, plan: Plan, writes: Bound | None = None) -> Handled:
    """Save the conversation, log the turns and carry out the actions; raise Conflict if the
    conversation changed since `plan` read it. Runs in `connection`'s transaction."""
    message, now, outcome, inbound = plan.message, plan.now, plan.outcome, plan.inbound
    if not outcome.actions:
        # Most texts: the save and every turn in one go (one round trip on PostgreSQL).
        writes = writes or writes_of(plan, connection.dialect)
        saved, logged, *_ = run_bound(connection, writes)
        if saved.rowcount != 1:
            raise Conflict(message.message_sid)
        inbound.id = logged.one().id
        return Handled(replies=plan.replies)

    saved, logged = run_together(connection, _save_and_log(plan, connection.dialect))
    if saved.rowcount != 1:
        raise Conflict(message.message_sid)
    inbound.id = logged.one().id
    handled = Handled(replies=[])
    if outcome.actions:
        params: dict[str, Any] = {}
        with Session(bind=connection, expire_on_commit=False) as session:
            for action in outcome.actions:
                _carry_out(
                    action,
                    session=session,
                    message=message,
                    enrollments=plan.enrollments,
                    inbound=inbound,
                    params=params,
                    handled=handled,
                    now=now,
                )
            session.flush()
        replies = (handled.refusal,) if handled.refusal is not None else outcome.replies
        handled.replies = _render(replies, outcome.language, params)

    run_together(
        connection,
        [_reply_statement(inbound, message.message_sid, body, now) for body in handled.replies],
    )
    return handled


def _render(
    replies: Sequence[messages.Reply], language: messages.Language, params: Mapping | None = None
) -> list[str]:
    rendered = []
    for reply in replies:
        if params and "url" in params and "url" in messages.placeholders(reply.key):
            reply = reply.with_params(url=params["url"])
        rendered.append(messages.render_reply(reply, language))
    return rendered


def _save_statement(dialect: sa.Dialect, plan: Plan) -> tuple[Prepared, dict]:
    """Save the conversation if its version is still the one read: it changes one row or none."""
    values = {
        "new_state": plan.state_after,
        "new_language": str(plan.outcome.language),
        "now": plan.now,
    }
    conversation = plan.conversation
    if conversation is None:
        return _INSERT_CONVERSATION[dialect.name], {
            **values,
            "phone": plan.message.phone,
        }
    return _SAVE_CONVERSATION, {
        **values,
        "conversation_id": conversation.id,
        "read": conversation.version,
    }


def _lock_statement(connection: sa.Connection, phone: str, now: datetime) -> tuple[Prepared, dict]:
    return _UPSERTS[connection.dialect.name], {
        "phone": phone,
        "empty_state": {},
        "default_language": "en",
        "now": now,
    }


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
_TURN_COLUMNS = (
    "case_id",
    "enrollment_id",
    "phone",
    "direction",
    "body",
    "intent",
    "provider_message_id",
    "delivery_status",
    "state_before",
    "state_after",
    "in_reply_to_id",
    "payment_id",
    "created_at",
    "updated_at",
)
_INSERT_TURN = Prepared(
    _TURNS.insert()
    .values({name: sa.bindparam(name, type_=_TURNS.c[name].type) for name in _TURN_COLUMNS})
    .returning(_TURNS.c.id)
)
_INBOUND_ID = (
    sa.select(_TURNS.c.id)
    .where(_TURNS.c.provider_message_id == sa.bindparam("reply_to_sid", type_=sa.String))
    .scalar_subquery()
)
_INSERT_REPLY = Prepared(
    _TURNS.insert()
    .values(
        {
            **{
                name: sa.bindparam(name, type_=_TURNS.c[name].type)
                for name in _TURN_COLUMNS
                if name != "in_reply_to_id"
            },
            "in_reply_to_id": _INBOUND_ID,
        }
    )
    .returning(_TURNS.c.id)
)
_SET_TURN_PAYMENT = (
    _TURNS.update()
    .where(_TURNS.c.id == sa.bindparam("turn_id"))
    .values(payment_id=sa.bindparam("b_payment_id"))
)
_SAVE_CONVERSATION = Prepared(
    _CONVERSATIONS.update()
    .where(
        _CONVERSATIONS.c.id == sa.bindparam("conversation_id"),
        _CONVERSATIONS.c.version == sa.bindparam("read"),
    )
    .values(
        state=sa.bindparam("new_state", type_=_CONVERSATIONS.c.state.type),
        language=sa.bindparam("new_language"),
        version=_CONVERSATIONS.c.version + 1,
        updated_at=sa.bindparam("now", type_=_CONVERSATIONS.c.updated_at.type),
    )
)


def _insert_conversation(dialect: str):
    """A phone's first conversation row; nothing if another text created it meanwhile."""
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    return (
        insert(_CONVERSATIONS)
        .values(
            phone=sa.bindparam("phone"),
            state=sa.bindparam("new_state", type_=_CONVERSATIONS.c.state.type),
            language=sa.bindparam("new_language"),
            version=1,
            updated_at=sa.bindparam("now", type_=_CONVERSATIONS.c.updated_at.type),
        )
        .on_conflict_do_nothing(index_elements=["phone"])
    )


_INSERT_CONVERSATION = {
    dialect: Prepared(_insert_conversation(dialect)) for dialect in ("postgresql", "sqlite")
}


def _turn_statement(
    ref: TurnRef, *, direction: Direction, body: str, now: datetime, **extra
) -> tuple[Prepared, dict]:
    """Log one turn with Core, not the ORM: every inbound text writes two or more of them."""
    values = dict.fromkeys(_TURN_COLUMNS)
    values.update(
        case_id=ref.case_id,
        enrollment_id=ref.enrollment_id,
        phone=ref.phone,
        direction=str(direction),
        body=body,
        intent=ref.intent,
        created_at=now,
        updated_at=now,
        **extra,
    )
    return _INSERT_TURN, values


def _insert_turn(
    connection: sa.Connection,
    ref: TurnRef,
    *,
    direction: Direction,
    body: str,
    now: datetime,
    **extra,
) -> int:
    statement, values = _turn_statement(ref, direction=direction, body=body, now=now, **extra)
    return statement.execute(connection, values).one().id


def _reply_statement(
    inbound: TurnRef, inbound_sid: str, body: str, now: datetime
) -> tuple[Prepared, dict]:
    """Log a TwiML reply to the inbound turn with this MessageSid, in the same transaction."""
    values = _reply_values(inbound, body, now)
    del values["in_reply_to_id"]
    # Found by its MessageSid, not its id, so the reply can go with the inbound turn's insert.
    return _INSERT_REPLY, {**values, "reply_to_sid": inbound_sid}


def _insert_reply(connection: sa.Connection, inbound: TurnRef, body: str, now: datetime) -> int:
    """Log a TwiML reply to `inbound` (logged already, with its id)."""
    values = _reply_values(inbound, body, now)
    values["in_reply_to_id"] = inbound.id
    return _INSERT_TURN.execute(connection, values).one().id


def _reply_values(inbound: TurnRef, body: str, now: datetime) -> dict:
    """The outbound turn of a TwiML reply to `inbound`, not yet linked to it; a card link in it
    is stored masked (on the case it is for: the dialogue's case, SendCardLink's)."""
    _, values = _turn_statement(
        inbound,
        direction=Direction.OUTBOUND,
        body=link_tokens_masked(body),
        now=now,
        delivery_status="twiml",
        payment_id=inbound.payment_id,
    )
    return values


_E = Enrollment.__table__
_C = Case.__table__
_K = CardOnFile.__table__
_A = Appointment.__table__
_P = Payment.__table__
_NOW = sa.bindparam("now", type_=_E.c.updated_at.type)

# Built once: statement construction costs more than the queries on this hot path. They are run on
# the session's Connection, as Core, so no ORM loading happens per text.
_K2, _A2 = _K.alias("latest_card"), _A.alias("upcoming")
_CARD_ID = (
    sa.select(sa.func.max(_K2.c.id))
    .where(_K2.c.case_id == _C.c.id, _K2.c.active.is_(True))
    .correlate(_C)
    .scalar_subquery()
)
_APPOINTMENT_ID = (
    sa.select(_A2.c.id)
    .where(
        _A2.c.case_id == _C.c.id,
        _A2.c.status == AppointmentStatus.SCHEDULED,
        _A2.c.starts_at > _NOW,
    )
    .order_by(_A2.c.starts_at, _A2.c.id)
    .limit(1)
    .correlate(_C)
    .scalar_subquery()
)
_SENDER = sa.select(sa.bindparam("b_phone", type_=_E.c.phone.type).label("phone")).subquery(
    "sender"
)
_PHONE_ROWS = Prepared(
    sa.select(
        _CONVERSATIONS.c.id.label("conversation_id"),
        _CONVERSATIONS.c.state.label("conversation_state"),
        _CONVERSATIONS.c.language.label("conversation_language"),
        _CONVERSATIONS.c.version.label("conversation_version"),
        _CONVERSATIONS.c.opted_out_at.label("conversation_opted_out_at"),
        _E.c.id,
        _E.c.case_id,
        _E.c.phone,
        _E.c.status,
        _E.c.language,
        _E.c.updated_at,
        _E.c.invited_at,
        (_C.c.status == CaseStatus.OPEN).label("case_open"),
        _C.c.case_number,
        _C.c.amount_due_cents,
        _C.c.balance_cents,
        _C.c.next_due_date,
        _C.c.timezone,
        _K.c.brand.label("card_brand"),
        _K.c.last4.label("card_last4"),
        _A.c.starts_at.label("appointment_at"),
        _A.c.kind.label("appointment_kind"),
        _A.c.location.label("appointment_location"),
        _A.c.video_link.label("appointment_link"),
    )
    # One row per enrollment, or one row of NULLs for a phone on no case: with the phone's
    # conversation on every row, the webhook reads all it needs in one statement.
    # Flat outer joins (an enrollment always has its case): nested ones made SQLite read every
    # enrollment before picking the phone's.
    .select_from(
        _SENDER.outerjoin(_CONVERSATIONS, _CONVERSATIONS.c.phone == _SENDER.c.phone)
        .outerjoin(_E, _E.c.phone == _SENDER.c.phone)
        .outerjoin(_C, _C.c.id == _E.c.case_id)
        .outerjoin(_K, _K.c.id == _CARD_ID)
        .outerjoin(_A, _A.c.id == _APPOINTMENT_ID)
    )
    .order_by(_E.c.id)
)


class ConversationRow(NamedTuple):
    """A phone's conversation as read (the row the locking upsert returns has the same names)."""

    id: int
    state: dict
    language: str
    version: int
    opted_out_at: datetime | None


_RANKED_PAYMENTS = (
    sa.select(
        _P.c.case_id,
        _P.c.created_at,
        _P.c.amount_cents,
        _P.c.refunded_cents,
        _P.c.status,
        _K.c.last4,
        sa.func.row_number()
        .over(partition_by=_P.c.case_id, order_by=(_P.c.created_at.desc(), _P.c.id.desc()))
        .label("rank"),
    )
    .select_from(_P.outerjoin(_K, _P.c.card_id == _K.c.id))
    .where(
        # By phone alone: with a status test too, SQLite may pick the status index and read
        # every active enrollment. case_facts() keeps the active cases' rows.
        _P.c.case_id.in_(sa.select(_E.c.case_id).where(_E.c.phone == sa.bindparam("b_phone")))
    )
    .where(_P.c.status != PaymentStatus.FAILED, _P.c.status != PaymentStatus.CANCELED)
    .subquery()
)
_E3 = _E.alias("texting")
# When the case's earliest active enrollment was confirmed: from then on a phone could pay by
# text, so billing.cycles judges the previous cycle too (as reminders do, across all phones).
_TEXTING_SINCE = (
    sa.select(
        sa.type_coerce(
            sa.func.min(sa.func.coalesce(_E3.c.confirmed_at, _E3.c.created_at)),
            _E3.c.created_at.type,
        )
    )
    .where(_E3.c.case_id == _RANKED_PAYMENTS.c.case_id, _E3.c.status == EnrollmentStatus.ACTIVE)
    .correlate(_RANKED_PAYMENTS)
    .scalar_subquery()
    .label("texting_since")
)
_PAYMENTS = Prepared(
    sa.select(_RANKED_PAYMENTS, _TEXTING_SINCE)
    .where(
        sa.or_(
            _RANKED_PAYMENTS.c.rank <= dialogue.HISTORY_SIZE,
            _RANKED_PAYMENTS.c.created_at >= sa.bindparam("since", type_=_P.c.created_at.type),
        )
    )
    .order_by(_RANKED_PAYMENTS.c.case_id, _RANKED_PAYMENTS.c.rank)
)


def _phone_reads(phone: str, now: datetime, body: str) -> list[tuple[Prepared, dict]]:
    """The phone's rows and, when a text with this body may use them, its payments."""
    reads = [(_PHONE_ROWS, {"b_phone": phone, "now": now})]
    if dialogue.needs_payments(State(), parse(body)):
        reads.append((_PAYMENTS, _payments_params(phone, now - _PAYMENTS_REACH)))
    return reads


def read_phone(
    *, connection: sa.Connection, phone: str, now: datetime, body: str = ""
) -> tuple[ConversationRow | None, list[Any], list[Any] | None]:
    """The phone's conversation; its enrollments, oldest first, each with its case, card and
    next appointment; and its payments if a text with this body may use them, else None.
    Without a lock: the caller decides what a change since means."""
    rows, *payments = run_together(connection, _phone_reads(phone, now, body))
    first = rows[0]  # the sender row is always there
    conversation = (
        None
        if first.conversation_id is None
        else ConversationRow(
            first.conversation_id,
            first.conversation_state,
            first.conversation_language,
            first.conversation_version,
            first.conversation_opted_out_at,
        )
    )
    return conversation, _enrollment_rows(rows), payments[0] if payments else None


def _enrollment_rows(rows: Sequence[Any]) -> list[Any]:
    return [row for row in rows if row.id is not None]


def phone_rows(*, connection: sa.Connection, phone: str, now: datetime) -> list[Any]:
    """The phone's enrollments, oldest first, each with its case, card and next appointment."""
    return read_phone(connection=connection, phone=phone, now=now)[1]


def case_facts(
    *, connection: sa.Connection, rows: Sequence[Any], now: datetime
) -> tuple[CaseFacts, ...]:
    """What the dialogue may know about each open case the phone is active on, payments too."""
    phone = rows[0].phone if rows else ""
    since = _payments_since(rows, now)
    payment_rows = _PAYMENTS.execute(connection, _payments_params(phone, since)) if rows else []
    return facts_of_cases(rows, now=now, payment_rows=payment_rows)


def facts_of_cases(
    rows: Sequence[Any], *, now: datetime, payment_rows: Sequence[Any] | None
) -> tuple[CaseFacts, ...]:
    """The open cases the phone is active on, from its rows and its payments' rows.

    Without payment rows (None) the cases come without payments (dialogue.needs_payments).
    """
    from billing.service import COUNTED, IN_FLIGHT, month_start

    active = [r for r in rows if r.status == EnrollmentStatus.ACTIVE and r.case_open]
    if not active:
        return ()
    default_zone = current_app.config["DEFAULT_TIMEZONE"]
    # The month a cap counts is the case's (as billing counts it); times are shown where the
    # payer is, as reminders show them: the case's zone, else the number's, else the default.
    zones = {r.case_id: r.timezone for r in active}
    local = {r.case_id: payer_zone(r.timezone, r.phone, default_zone) for r in active}
    recent: dict[int, list[PaymentFacts]] = {}
    month_paid = dict.fromkeys(zones, 0)
    counted: dict[int, list[tuple[datetime, int]]] = {case_id: [] for case_id in zones}
    in_flight = dict.fromkeys(zones, 0)
    newest_in_flight: dict[int, PaymentFacts] = {}
    texting_since: dict[int, datetime | None] = {}
    if payment_rows:
        months = {
            case_id: month_start(now, case_zone(name, default_zone))
            for case_id, name in zones.items()
        }
        for row in payment_rows:
            if row.case_id not in zones:  # a closed case: no facts
                continue
            created = row.created_at
            created = created if created.tzinfo else created.replace(tzinfo=UTC)
            payment = PaymentFacts(created, row.amount_cents, str(row.status), row.last4 or "")
            if row.rank <= dialogue.HISTORY_SIZE:
                recent.setdefault(row.case_id, []).append(payment)
            if row.status not in COUNTED:
                continue
            net = row.amount_cents - row.refunded_cents
            if created >= months[row.case_id]:
                month_paid[row.case_id] += net
            counted[row.case_id].append((created, net))
            texting_since[row.case_id] = row.texting_since
            if row.status in IN_FLIGHT:
                in_flight[row.case_id] += row.amount_cents
                # Rows come newest first within a case.
                newest_in_flight.setdefault(row.case_id, payment)
    cycle_paid = {
        row.case_id: _paid_toward_cycle(
            row,
            payments=counted[row.case_id],
            in_flight_cents=in_flight[row.case_id],
            zone=local[row.case_id],
            texting_since=texting_since.get(row.case_id),
        )
        for row in active
    }
    return tuple(
        CaseFacts(
            case_id=row.case_id,
            case_number=row.case_number,
            amount_due_cents=row.amount_due_cents,
            balance_cents=row.balance_cents,
            next_due_date=row.next_due_date,
            timezone=local[row.case_id],
            card=CardFacts(row.card_brand, row.card_last4) if row.card_last4 else None,
            recent_payments=tuple(recent.get(row.case_id, ())),
            next_appointment=(
                AppointmentFacts(
                    row.appointment_at,
                    str(row.appointment_kind),
                    row.appointment_location or "",
                    row.appointment_link or "",
                )
                if row.appointment_at is not None
                else None
            ),
            month_paid_cents=month_paid[row.case_id],
            cycle_paid_cents=cycle_paid[row.case_id],
            processing_cents=in_flight[row.case_id],
            processing=newest_in_flight.get(row.case_id),
        )
        for row in sorted(active, key=lambda r: r.case_id)
    )


def _paid_toward_cycle(
    row: Any,
    *,
    payments: Sequence[tuple[datetime, int]],
    in_flight_cents: int,
    zone: str,
    texting_since: datetime | None,
) -> int:
    """What the case's payments left toward the cycle due next, judged as its reminders judge it
    (billing.cycles); 0 for a case with no installment due or no payments."""
    if not payments or row.next_due_date is None or row.amount_due_cents <= 0:
        return 0
    paid_in_cycle, paid_before = paid_in_cycles(
        payments, due_date=row.next_due_date, zone=zone_named(zone), texting_since=texting_since
    )
    return paid_toward_cycle(
        amount_due_cents=row.amount_due_cents,
        balance_cents=row.balance_cents - in_flight_cents,
        paid_in_cycle_cents=paid_in_cycle,
        paid_in_previous_cycle_cents=paid_before,
    )


@functools.lru_cache(maxsize=4096)
def payer_zone(case_tz: str | None, phone: str | None, default: str) -> str:
    """The zone a payer's dates and times are shown in: the case's, else the number's."""
    return resolve_timezone(case_tz=case_tz, phone=phone, default=default).key


_PAYMENTS_REACH = timedelta(days=100)
"""How far back payments are read when the cases are not known yet (with the first read): this
month's for the cap, and the current and previous cycles of a case due within a month or a
month overdue. A case due further back has its payments read again (_payments_since)."""


def _payments_params(phone: str, since: datetime) -> dict:
    """The phone's latest payments and everything since `since`.

    One query for all: history, this month's total for the cap (counted per case zone in
    facts_of_cases) and what each case's current and previous cycles were paid.
    """
    return {"b_phone": phone, "since": since}


def _payments_since(rows: Sequence[Any], now: datetime) -> datetime:
    """From when the phone's payments are needed: _PAYMENTS_REACH, or further back for a case
    whose previous cycle began before that (a day's margin covers every zone)."""
    since = now - _PAYMENTS_REACH
    for row in rows:
        if row.next_due_date is not None:
            begins = previous_due_date(previous_due_date(row.next_due_date)) - timedelta(days=1)
            since = min(since, datetime.combine(begins, time(0), tzinfo=UTC))
    return since


def _carry_out(action, *, session, message, enrollments, inbound, params, handled, now):
    phone = {"b_phone": message.phone, "now": now}
    connection = session.connection()
    if isinstance(action, OptOut):
        opt_out(session=session, phone=message.phone, enrollments=enrollments, now=now)
    elif isinstance(action, OptIn):
        connection.execute(_OPT_IN, phone)
        connection.execute(_REINVITE, phone)
        connection.execute(_PHONE_OPTED_IN, phone)
    elif isinstance(action, Activate):
        # The cases whose invitation went out; only when none did (imported, or an invitation
        # still held for the night) does the YES take every pending case, its hold cleared.
        if connection.execute(_ACTIVATE_INVITED, phone).rowcount == 0:
            connection.execute(_ACTIVATE, phone)
    elif isinstance(action, DeclineInvitation):
        connection.execute(_DECLINE_INVITATION, phone)
    elif isinstance(action, SetLanguage):
        connection.execute(_SET_LANGUAGE, {**phone, "b_language": str(action.language)})
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
        connection.execute(_SET_TURN_PAYMENT, {"turn_id": inbound.id, "b_payment_id": payment.id})
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
    """STOP: the number and its enrollments are opted out, reminders cancelled, handoffs closed."""
    from jobs.reminders import cancel_pending

    record_opt_out(connection=session.connection(), phone=phone, now=now)
    session.execute(_OPT_OUT, {"b_phone": phone, "now": now})
    session.execute(_CLOSE_HANDOFFS, {"b_phone": phone, "now": now})
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


def record_opt_out(*, connection: sa.Connection, phone: str, now: datetime) -> None:
    """Record the number's own opt-out on its conversation row, made if it has none yet.

    It stands whether or not the number is on any case, until the number texts START or YES.
    """
    _RECORD_OPT_OUT[connection.dialect.name].execute(connection, {"phone": phone, "now": now})


def _record_opt_out(dialect: str):
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    table = Conversation.__table__
    when = sa.bindparam("now", type_=table.c.opted_out_at.type)
    statement = insert(table).values(
        phone=sa.bindparam("phone"), state={}, language="en", opted_out_at=when, updated_at=when
    )
    # The latest revocation is the one kept, as each STOP is recorded again. The version moves
    # on, so a text read before the opt-out (SQLite reads unlocked) is handled again, not
    # answered: the webhook's fallback records a STOP with no other save of the conversation.
    return statement.on_conflict_do_update(
        index_elements=["phone"],
        set_={"opted_out_at": statement.excluded.opted_out_at, "version": table.c.version + 1},
    )


_RECORD_OPT_OUT = {
    dialect: Prepared(_record_opt_out(dialect)) for dialect in ("postgresql", "sqlite")
}
_NUMBER_OPTED_OUT = sa.select(_CONVERSATIONS.c.id).where(
    _CONVERSATIONS.c.phone == sa.bindparam("b_phone"), _CONVERSATIONS.c.opted_out_at.is_not(None)
)
_PHONE_OPTED_IN = (
    _CONVERSATIONS.update()
    .where(_CONVERSATIONS.c.phone == sa.bindparam("b_phone"))
    .values(opted_out_at=None)
)
_ENROLLMENTS = (
    sa.select(_E.c.id, _E.c.case_id, _E.c.status, _E.c.language, _E.c.updated_at)
    .where(_E.c.phone == sa.bindparam("b_phone"))
    .order_by(_E.c.id)
)
_OPT_OUT = (
    _E.update()
    # A declined case stays declined: START after a STOP must not take it on.
    .where(
        _E.c.phone == sa.bindparam("b_phone"),
        _E.c.status.not_in((EnrollmentStatus.OPTED_OUT, EnrollmentStatus.DECLINED)),
    )
    .values(
        status=EnrollmentStatus.OPTED_OUT,
        opted_out_at=_NOW,
        status_reason="opted out by text",
        # An invitation held for quiet hours is not sent after a STOP.
        invite_at=None,
        updated_at=_NOW,
    )
)
_H = HandoffRow.__table__
# Staff may not text a number that opted out, so its AGENT request would wait in the queue for
# ever; closed with no staff member, it stays on the case page as closed at the opt-out.
_CLOSE_HANDOFFS = (
    _H.update()
    .where(_H.c.phone == sa.bindparam("b_phone"), _H.c.status == HandoffStatus.WAITING)
    .values(status=HandoffStatus.CLOSED, answered_at=_NOW)
)
_STOPPED = (
    _E.c.phone == sa.bindparam("b_phone"),
    _E.c.status.in_((EnrollmentStatus.OPTED_OUT, EnrollmentStatus.UNDELIVERABLE)),
)
# A case the payer never heard of: it was pending, its invitation not sent yet, when the number
# stopped (or it was enrolled while the number was opted out).
_NEVER_OFFERED = sa.and_(_E.c.confirmed_at.is_(None), _E.c.invited_at.is_(None))
_OPT_IN = (
    _E.update()
    # An undeliverable number that texts START evidently gets texts again. A case whose
    # invitation went out is taken, as START answers an invitation.
    .where(*_STOPPED, sa.not_(_NEVER_OFFERED))
    .values(
        status=EnrollmentStatus.ACTIVE,
        consented_at=_NOW,
        confirmed_at=_NOW,
        opted_out_at=None,
        status_reason="opted back in by text",
        updated_at=_NOW,
    )
)
# START does not sign the payer up for a case they were never asked about: it goes back to
# pending, its invitation due now (sent by the next dispatch, in the payer's window), and the
# payer's YES to that invitation activates it.
_REINVITE = (
    _E.update()
    .where(*_STOPPED, _NEVER_OFFERED)
    .values(
        status=EnrollmentStatus.PENDING,
        opted_out_at=None,
        status_reason="opted back in by text; opt-in text to follow",
        invite_at=_NOW,
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
        invite_at=None,
        updated_at=_NOW,
    )
)
# A YES answers the invitations that went out: one still held for the payer's quiet hours is
# sent in the morning and answered on its own.
_ACTIVATE_INVITED = _ACTIVATE.where(_E.c.invited_at.is_not(None))
_DECLINE_INVITATION = (
    _E.update()
    .where(
        _E.c.phone == sa.bindparam("b_phone"),
        _E.c.status == EnrollmentStatus.PENDING,
        _E.c.invited_at.is_not(None),
    )
    .values(
        # Declined, not opted out: the number still takes texts about its other cases.
        status=EnrollmentStatus.DECLINED,
        status_reason="declined the invitation by text",
        invite_at=None,
        updated_at=_NOW,
    )
)
_SET_LANGUAGE = (
    _E.update()
    .where(_E.c.phone == sa.bindparam("b_phone"))
    .values(language=sa.bindparam("b_language"), updated_at=_NOW)
)


def _language(conversation: Any, enrollments: Sequence[Any]) -> messages.Language:
    """The payer's language: the conversation's (ESPAÑOL/ENGLISH set it) once the phone is active
    on a case. Until then, the language it was enrolled in, which the invitation went out in:
    anything the number texted before it was enrolled was a stranger's text."""
    active = any(e.status == EnrollmentStatus.ACTIVE for e in enrollments)
    # A conversation with no state yet is the row PostgreSQL's lock has just made.
    if enrollments and (conversation is None or not conversation.state or not active):
        return messages.Language(_newest(enrollments).language)
    if conversation is not None:
        return messages.Language(conversation.language)
    return messages.Language.EN


def _newest(enrollments: Sequence[Any]) -> Any:
    """The enrollment changed last (read through UTCDateTime, so aware), the later one on a tie."""
    return max(enrollments, key=lambda e: (e.updated_at or _LONG_AGO, e.id))


_LONG_AGO = datetime.min.replace(tzinfo=UTC)


# Actions that change every enrollment of the number, whichever case is being discussed.
_PHONE_WIDE = (OptOut, OptIn, Activate, DeclineInvitation, SetLanguage)


def _turn_case(outcome: dialogue.Outcome, enrollments: Sequence[Any]) -> int | None:
    """The case a text and its replies are logged on: the one being discussed, unless the text
    changed every case of the number (STOP, START, accepting an invitation, a language); else
    the number's only case. None for a number on several cases (or on none): the case page
    shows such a turn on each case the number was on (admin.service.case_turns)."""
    state = outcome.state
    if state.quote is not None:  # the quote is asked again after a language switch, too
        return state.quote.case_id
    phone_wide = any(isinstance(action, _PHONE_WIDE) for action in outcome.actions)
    if state.case_id is not None and not phone_wide:
        return state.case_id
    if len(enrollments) == 1:
        return enrollments[0].case_id
    return None


def _enrollment_id(enrollments: Sequence[Any], case_id: int | None) -> int | None:
    return next((e.id for e in enrollments if e.case_id == case_id), None)


def handle_failed_inbound(*, session: Session, message: Inbound) -> str | None:
    """After an error: still honour STOP, keep a record of the message, and say what happened.

    None when nothing may be said: the number opted out, and this is not its START or HELP.
    """
    now = utcnow()
    enrollments = session.execute(_ENROLLMENTS, {"b_phone": message.phone}).all()
    language = enrollments[0].language if enrollments else "en"
    config = current_app.config
    command = parse(message.body)
    number_stopped = session.execute(_NUMBER_OPTED_OUT, {"b_phone": message.phone}).first()
    status = dialogue.phone_status(
        (e.status for e in enrollments), opted_out=number_stopped is not None
    )
    stopped = status == PhoneStatus.OPTED_OUT
    reply: str | None = None
    if command.intent is Intent.STOP:
        # Opt-out wins over everything, a broken dependency included.
        record_opt_out(connection=session.connection(), phone=message.phone, now=now)
        session.execute(_OPT_OUT, {"b_phone": message.phone, "now": now})
        session.execute(_CLOSE_HANDOFFS, {"b_phone": message.phone, "now": now})
        if not stopped:  # one confirmation, as when nothing breaks
            reply = messages.render("opted_out", {"agency": config["AGENCY_NAME"]}, language)
    elif not stopped or consents(command) or command.intent is Intent.HELP:
        # An opted-out number gets not even an apology, unless it asked to opt in or for help.
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
    # Logged like any text about no one case: on a number's only case, else on none.
    only = enrollments[0] if len(enrollments) == 1 else None
    inbound = TurnRef(
        case_id=only.case_id if only else None,
        enrollment_id=only.id if only else None,
        phone=message.phone,
        intent="error",
    )
    connection = session.connection()
    inbound.id = _insert_turn(
        connection,
        inbound,
        direction=Direction.INBOUND,
        body=message.body,
        now=now,
        provider_message_id=None if seen else message.message_sid,
        delivery_status="received",
    )
    if reply is not None:
        _insert_reply(connection, inbound, reply, now)
    return reply
