"""Delivery reports: Twilio's statuses for a text, applied once and in order however they come."""

from __future__ import annotations

from flask import current_app
from sqlmodel import Session, select

from bot.outbound import mark_failure
from bot.sms import classify
from db import after_commit
from models import ConversationTurn, utcnow

RANK = {
    "accepted": 1,
    "scheduled": 1,
    "queued": 1,
    "sending": 2,
    "sent": 3,
    "delivered": 4,
    "undelivered": 4,
    "failed": 4,
    "read": 5,
    "canceled": 4,
}
"""How far along each status is; a report never moves a text back (sent after delivered)."""


EARLY_KEY = "paytext:sms-status:{sid}"
EARLY_TTL = 24 * 3600


def apply_early(*, session: Session, turn: ConversationTurn) -> None:
    """Apply a report that arrived before `turn` was saved.

    With none yet, look again once the session commits: a report that comes while the turn is
    saved but not committed finds no turn (so it waits in Redis), and could come after this
    look. The webhook looks for the turn again after keeping a report (settle_early), so
    between the two every report is applied.
    """
    if not turn.provider_message_id:
        return
    redis = current_app.extensions["redis"]
    key = EARLY_KEY.format(sid=turn.provider_message_id)
    early = redis.hgetall(key)
    if not early:
        _look_again_after_commit(session, turn.provider_message_id)
    if early:
        redis.delete(key)
        code = int(_text(early.get(b"error_code", b"0")) or 0)
        session.flush()
        record(
            session=session,
            sid=turn.provider_message_id,
            status=_text(early[b"status"]),
            error_code=code or None,
        )


def settle_early(*, session: Session, sid: str) -> bool:
    """Apply a kept report if its turn has been committed since; commits. True if applied."""
    if not current_app.extensions["redis"].exists(EARLY_KEY.format(sid=sid)):
        return False
    turn = session.exec(
        select(ConversationTurn).where(ConversationTurn.provider_message_id == sid)
    ).first()
    if turn is None:
        return False
    apply_early(session=session, turn=turn)
    session.commit()
    return True


def _look_again_after_commit(session: Session, sid: str) -> None:
    after_commit(session, "paytext_early_sids", sid, _settle_after_commit)


def _settle_after_commit(session: Session, sids: list[str]) -> None:
    # A report kept meanwhile is applied in a session of its own.
    redis = current_app.extensions["redis"]
    kept = [sid for sid in dict.fromkeys(sids) if redis.exists(EARLY_KEY.format(sid=sid))]
    if not kept:
        return
    with Session(session.get_bind(), expire_on_commit=False) as other:
        for sid in kept:
            settle_early(session=other, sid=sid)


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def newer(current: str | None, incoming: str) -> bool:
    """True when `incoming` says more than `current` about where the text is."""
    return RANK.get(incoming, 0) > RANK.get(current or "", 0)


def record(*, session: Session, sid: str, status: str, error_code: int | None) -> bool:
    """Apply a status report to the turn with this message id; False when nothing changed.

    A report for a turn not saved yet is kept in Redis: the caller commits, then calls
    settle_early in case the turn was committed meanwhile.
    """
    turn = session.exec(
        select(ConversationTurn).where(ConversationTurn.provider_message_id == sid)
    ).first()
    if turn is None:
        # The report beat our own commit of the send: keep it until the turn exists.
        redis = current_app.extensions["redis"]
        key = EARLY_KEY.format(sid=sid)
        if newer(_text(redis.hget(key, "status")), status):
            redis.hset(key, mapping={"status": status, "error_code": error_code or 0})
            redis.expire(key, EARLY_TTL)
        return False
    if error_code:
        mark_failure(
            session=session, phone=turn.phone, failure=classify(error_code, None), code=error_code
        )
    if not newer(turn.delivery_status, status):
        return False
    turn.delivery_status = status
    turn.error_code = error_code or turn.error_code
    turn.updated_at = utcnow()
    session.add(turn)
    return True
