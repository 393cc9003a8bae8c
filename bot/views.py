"""Twilio's webhooks (inbound texts, delivery status) and the development phone simulator."""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
import xml.etree.ElementTree as ET
from urllib.parse import unquote

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    redirect,
    render_template,
    request,
    url_for,
)
from redis.exceptions import RedisError
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

import db
from bot import service, sms, status
from bot.redact import LINK_MARKER, link_tokens_masked, sensitive_numbers_removed
from bot.service import Inbound
from db import get_session
from models import ConversationTurn, Direction, Enrollment
from phones import PhoneError, format_phone, normalize_phone

bp = Blueprint("bot", __name__)
log = logging.getLogger(__name__)
SIMULATOR_TO = "+18005550100"
"""The agency number the simulator pretends to text when no Twilio sender is configured."""


def _twiml(replies: list[str]) -> Response:
    return Response(sms.twiml(replies), content_type=sms.TWIML_CONTENT_TYPE)


def public_url() -> str:
    """The URL Twilio called: PUBLIC_BASE_URL stands in for our host behind a proxy."""
    base = current_app.config["PUBLIC_BASE_URL"].rstrip("/")
    query = request.query_string.decode("latin-1")
    return f"{base}{request.path}" + (f"?{query}" if query else "")


def twilio_form() -> sms.Fields:
    """The fields Twilio posted.

    Twilio posts them urlencoded, in UTF-8: parse_qsl on the body, exactly as werkzeug's form
    parser does (a test compares the two on any bytes), without the stream and parser objects
    it builds around it (a BAL spent 5% of its time there). Any other content type goes
    through request.form.
    """
    if request.mimetype != "application/x-www-form-urlencoded":
        return sms.Fields.from_pairs(request.form.items(multi=True))
    try:
        body = request.get_data().decode()
    except UnicodeDecodeError:
        return sms.Fields()  # werkzeug's parser gives no fields for a body that is not UTF-8
    return sms.Fields.from_pairs(_form_fields(body))


def _form_fields(body: str) -> list[tuple[str, str]]:
    """parse_qsl(body, keep_blank_values=True, errors="werkzeug.url_quote"), as werkzeug calls
    it, in the fewest steps: that general function was 8% of a BAL's Python."""
    fields = []
    for pair in body.split("&"):
        if not pair:
            continue
        name, _, value = pair.partition("=")
        name, value = name.replace("+", " "), value.replace("+", " ")
        if "%" in name:
            name = unquote(name, errors="werkzeug.url_quote")
        if "%" in value:
            value = unquote(value, errors="werkzeug.url_quote")
        fields.append((name, value))
    return fields


def signature_ok(form: sms.Fields) -> bool:
    """Twilio's X-Twilio-Signature on this request; the console backend has no Twilio to sign."""
    config = current_app.config
    if config["SMS_BACKEND"] != "twilio":
        return True
    return sms.validate_signature(
        auth_token=config["TWILIO_AUTH_TOKEN"],
        url=public_url(),
        params=form,
        signature=request.headers.get(sms.SIGNATURE_HEADER),
    )


def inbound_from_form(form: sms.Fields) -> Inbound:
    """Read Twilio's fields defensively: any body, bad bytes or missing fields still make a text."""
    sender = form.value("From")
    try:
        phone = normalize_phone(sender)
    except PhoneError:
        phone = sender.strip()[:16] or "unknown"
    body = form.value("Body")[: service.MAX_BODY]
    # Bytes that were not UTF-8 arrive as surrogates or U+FFFD; neither can go in the database.
    body = body.encode("utf-8", "replace").decode("utf-8").replace("\x00", "")
    # Never kept, shown to staff or logged: a card number or SSN the payer texted, or the token
    # of a link they texted back.
    body = link_tokens_masked(sensitive_numbers_removed(body))
    try:
        media = int(form.value("NumMedia", "0") or 0)
    except ValueError:
        media = 0
    sid = form.value("MessageSid") or form.value("SmsSid")
    if not sid:
        # Without Twilio's id a retry cannot be recognised; derive one from the request itself.
        sid = "SMlocal" + hashlib.sha256(request.get_data()).hexdigest()[:27]
    return Inbound(message_sid=sid[:64], phone=phone, body=body, media_count=media)


@bp.post("/sms/inbound")
def inbound():
    """Answer a payer's text with TwiML, within Twilio's 15 seconds, whatever it contains."""
    form = twilio_form()
    if not signature_ok(form):
        log.warning("inbound text refused: missing or wrong X-Twilio-Signature")
        abort(403)
    message = inbound_from_form(form)
    replies, charge_payment_ids = _answer(db.engine(), message)
    if charge_payment_ids:
        from billing.service import enqueue_charge

        for payment_id in charge_payment_ids:
            try:
                enqueue_charge(payment_id=payment_id)
            except RedisError as exc:
                # The payment is committed and the reply says it is being processed, which it
                # is: resume_payments queues a payment left unqueued once Redis answers. A 500
                # here would leave the payer with no answer at all.
                log.error(
                    "charge of payment %s not queued (Redis: %s); resume_payments will queue it",
                    payment_id,
                    type(exc).__name__,
                )
    return _twiml(replies)


def _answer(engine, message: Inbound) -> tuple[list[str], list[int]]:
    """The replies to `message`, committed, and the payments it confirmed."""
    try:
        handled = service.answer_inbound(engine=engine, message=message)
        return handled.replies, handled.charge_payment_ids
    except Exception as error:
        earlier = _earlier_replies(message) if isinstance(error, IntegrityError) else None
        if earlier is not None:
            # Twilio sent this MessageSid before (a retry, or a duplicate racing the first one):
            # the same answer, and nothing done twice.
            return earlier, []
        log.exception("inbound text %s could not be handled", message.message_sid)
    session = get_session()
    try:
        with db.writer(engine):
            reply = service.handle_failed_inbound(session=session, message=message)
            session.commit()
        return ([] if reply is None else [reply]), []
    except Exception:  # the database itself is down: still answer Twilio
        session.rollback()
        log.exception("could not record the failed inbound text %s", message.message_sid)
        return [], []


def _earlier_replies(message: Inbound) -> list[str] | None:
    session = get_session()
    try:
        return service.replies_already_given(session=session, message_sid=message.message_sid)
    except Exception:
        session.rollback()
        return None


@bp.post("/sms/status")
def delivery_status():
    """Twilio's delivery report for a text we sent: recorded once, whatever order they come in."""
    form = twilio_form()
    if not signature_ok(form):
        log.warning("status callback refused: missing or wrong X-Twilio-Signature")
        abort(403)
    sid = form.value("MessageSid") or form.value("SmsSid")
    new_status = (form.value("MessageStatus") or form.value("SmsStatus")).lower()
    if not sid or not new_status:
        return Response("missing MessageSid or MessageStatus", status=400)
    code = form.value("ErrorCode")
    session = get_session()
    with db.writer(db.engine()):  # queued with the inbound texts' writes on SQLite
        status.record(
            session=session,
            sid=sid,
            status=new_status,
            error_code=int(code) if code and code.isdigit() else None,
        )
        session.commit()
        # Kept for a turn not committed yet? It may have been committed since (status.apply_early).
        status.settle_early(session=session, sid=sid)
    return Response(status=204)


def _simulator_enabled() -> None:
    if current_app.config["SMS_BACKEND"] != "console":
        abort(404)


@bp.get("/dev/phone")
def phone_simulator():
    """Text the bot as a payer would (console backend only)."""
    _simulator_enabled()
    session = get_session()
    phones = sorted(set(session.exec(select(Enrollment.phone)).all()))
    phone = request.args.get("phone") or (phones[0] if phones else "")
    return render_template(
        "dev/phone.html",
        phones=[(p, format_phone(p)) for p in phones],
        phone=phone,
        turns=_thread(phone),
        error=request.args.get("error"),
    )


@bp.get("/dev/phone/thread")
def phone_thread():
    """The thread alone, polled by the simulator so receipts and reminders appear as they come."""
    _simulator_enabled()
    return render_template("dev/_thread.html", turns=_thread(request.args.get("phone", "")))


@bp.post("/dev/phone")
def phone_send():
    """Send the typed text through /sms/inbound, signed the way Twilio signs it."""
    _simulator_enabled()
    raw_phone = request.form.get("phone", "")
    body = request.form.get("body", "")
    try:
        phone = normalize_phone(raw_phone)
    except PhoneError as exc:
        return redirect(url_for("bot.phone_simulator", phone=raw_phone, error=str(exc)))
    config = current_app.config
    params = {
        "MessageSid": "SM" + uuid.uuid4().hex,
        "AccountSid": config["TWILIO_ACCOUNT_SID"] or "ACconsole",
        "From": phone,
        "To": config["TWILIO_FROM_NUMBER"] or SIMULATOR_TO,
        "Body": body,
        "NumMedia": "0",
    }
    url = config["PUBLIC_BASE_URL"].rstrip("/") + url_for("bot.inbound")
    token = hashlib.sha256(f"console:{config['SECRET_KEY']}".encode()).hexdigest()
    signature = sms.sign(auth_token=token, url=url, params=params)
    with current_app.test_client() as client:
        response = client.post(
            url_for("bot.inbound"), data=params, headers={sms.SIGNATURE_HEADER: signature}
        )
    if response.status_code != 200:
        return redirect(
            url_for(
                "bot.phone_simulator", phone=phone, error=f"webhook answered {response.status_code}"
            )
        )
    _keep_replies(params["MessageSid"], response.get_data())
    return redirect(url_for("bot.phone_simulator", phone=phone))


def _keep_replies(message_sid: str, twiml: bytes) -> None:
    """Have the console gateway keep the TwiML replies the phone got, as it does what it sends:
    their turns hold any link masked."""
    # Our own webhook's reply, from the test client.
    texts = [m.text or "" for m in ET.fromstring(twiml).iter("Message")]  # noqa: S314
    inbound = (
        select(ConversationTurn.id)
        .where(ConversationTurn.provider_message_id == message_sid)
        .where(ConversationTurn.direction == Direction.INBOUND)
        .scalar_subquery()
    )
    reply_ids = get_session().exec(
        select(ConversationTurn.id)
        .where(ConversationTurn.in_reply_to_id == inbound)
        .order_by(ConversationTurn.id)
    )
    gateway = current_app.extensions["sms"]
    for turn_id, text in zip(reply_ids, texts, strict=False):
        gateway.keep_delivered(_twiml_key(turn_id), text)


def _twiml_key(turn_id: int) -> str:
    return f"twiml-{turn_id}"


_LINK = re.compile(r"(https?://\S+?/pay/(?:card|auth)/[A-Za-z0-9_-]+)")


def _thread(phone: str) -> list[dict]:
    """The phone's latest turns, each as the phone saw it: a link the turn holds masked is the
    real one the console gateway kept, as a link to click, while that is kept."""
    if not phone:
        return []
    session = get_session()
    turns = session.exec(
        select(ConversationTurn)
        .where(ConversationTurn.phone == phone)
        .order_by(ConversationTurn.created_at, ConversationTurn.id)
    ).all()
    gateway = current_app.extensions["sms"]
    thread = []
    for turn in list(turns)[-200:]:
        parts = [turn.body]
        if turn.direction == Direction.OUTBOUND and LINK_MARKER in turn.body:
            key = turn.provider_message_id or _twiml_key(turn.id)
            # Split around the links: every second part is one.
            parts = _LINK.split(gateway.delivered(key) or turn.body)
        thread.append({"turn": turn, "parts": parts})
    return thread
