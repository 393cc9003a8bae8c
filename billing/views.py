"""Billing's HTTP routes: the payer's card page, the payment approval page, the Stripe webhook.

The pages are opened from links in texts (billing.links), so the signed token in the URL is
what authorises them. With Stripe the card number goes from the payer's browser straight to
Stripe (Stripe.js from js.stripe.com, as Stripe's PCI rules require); with the sandbox a local
form takes only Stripe's test card numbers, checks them, hands them to the sandbox and forgets
them: they are never logged, stored or echoed back into the page.
"""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime
from typing import Any

from flask import (
    Blueprint,
    Response,
    current_app,
    g,
    jsonify,
    make_response,
    render_template,
    request,
)
from flask_wtf.csrf import CSRFError

from billing import links, service
from billing.cards import active_card
from billing.gateway import (
    CardError,
    ChargeResult,
    ChargeStatus,
    InvalidWebhook,
    PaymentError,
    TransientPaymentError,
)
from billing.links import LinkError, LinkKind
from billing.testcards import TEST_CARDS, check_test_card
from bot.messages import KEYS, Language, render
from db import get_session
from models import CardOnFile, Case, Payment, PaymentStatus

bp = Blueprint("billing", __name__)
log = logging.getLogger(__name__)

SIGNATURE_HEADER = "Stripe-Signature"


# -- the Stripe webhook -----------------------------------------------------------------------


@bp.post("/stripe/webhook")
def stripe_webhook():
    """Verify, deduplicate and apply one Stripe event; 400 for anything not signed by Stripe."""
    gateway = current_app.extensions["payments"]
    try:
        event = gateway.parse_webhook(
            payload=request.get_data(), signature_header=request.headers.get(SIGNATURE_HEADER)
        )
    except InvalidWebhook as exc:
        log.warning("Stripe webhook refused: %s", exc)
        return jsonify(error="invalid signature or body"), 400
    session = get_session()
    try:
        outcome = service.handle_event(session=session, gateway=gateway, event=event)
        session.commit()
    except TransientPaymentError as exc:
        # Rolled back with the event id, so Stripe's redelivery is handled afresh.
        session.rollback()
        log.warning("Stripe event %s deferred: %s", event.id, exc)
        return jsonify(error="processor unavailable, retry later"), 503
    log.info("Stripe event %s (%s): %s", event.id, event.type, outcome)
    return jsonify(received=True, outcome=outcome)


# -- the card page ----------------------------------------------------------------------------


@bp.get("/pay/card/<token>")
def card_page(token: str):
    """The page where a payer saves (or replaces) the card PayText charges when they say YES."""
    opened = _open_card_link(token)
    if isinstance(opened, Response):
        return opened
    link, case = opened
    return _card_form(link, case)


@bp.post("/pay/card/<token>")
def card_submit(token: str):
    """Save the card: the sandbox form's test card, or the SetupIntent Stripe.js confirmed."""
    opened = _open_card_link(token)
    if isinstance(opened, Response):
        return opened
    link, case = opened
    gateway = current_app.extensions["payments"]
    if gateway.name == "sandbox":
        problem = _check_sandbox_form(request.form)
        if problem is not None:
            return _card_form(link, case, error=problem, status=400)
    if not links.claim(link):
        return _page_message("page.link_title", "page.link_expired", case=case, status=410)
    session = get_session()
    try:
        setup = service.card_setup_for_link(
            session=session, gateway=gateway, case_id=case.id, nonce=link.nonce
        )
        if gateway.name == "sandbox":
            _save_test_card(gateway, setup.setup_id, request.form)
        card = service.save_card_from_setup(
            session=session, gateway=gateway, case_id=case.id, setup_id=setup.setup_id
        )
        session.commit()
    except CardError as exc:
        session.rollback()
        links.release(link)
        return _card_form(link, case, error=exc.code or "other", status=400)
    except PaymentError as exc:
        session.rollback()
        links.release(link)
        log.warning("card for case %s not saved: %s (%s)", case.id, type(exc).__name__, exc.code)
        return _page_message("page.error_title", "page.try_later", case=case, status=503)
    return _page_message(
        "page.card_saved_title",
        "page.card_saved",
        case=case,
        brand=_brand(card.brand),
        last4=card.last4,
    )


def _open_card_link(token: str) -> tuple[links.Link, Case] | Response:
    try:
        link = links.verify(LinkKind.CARD, token)
    except LinkError as exc:
        case = get_session().get(Case, exc.subject_id) if exc.subject_id else None
        return _link_error(exc.code, case)
    case = get_session().get(Case, link.subject_id)
    if case is None:
        return _link_error("invalid", None)
    if links.is_used(link):
        return _page_message("page.link_title", "page.link_expired", case=case, status=410)
    return link, case


def _card_form(link: links.Link, case: Case, *, error: str | None = None, status: int = 200):
    session = get_session()
    gateway = current_app.extensions["payments"]
    current = active_card(session=session, case_id=case.id)
    context: dict[str, Any] = {
        "case_last4": service.case_last4(case),
        "current": current,
        "current_brand": _brand(current.brand) if current else None,
        "error_key": _card_error_key(error) if error else None,
    }
    if gateway.name == "sandbox":
        context["test_cards"] = TEST_CARDS
        return _render("pay/card_sandbox.html", case, status=status, **context)
    publishable_key = current_app.config["STRIPE_PUBLISHABLE_KEY"]
    if not publishable_key:
        log.error("STRIPE_PUBLISHABLE_KEY is not set: the card page cannot load Stripe.js")
        return _page_message("page.error_title", "page.try_later", case=case, status=503)
    try:
        setup = service.card_setup_for_link(
            session=session, gateway=gateway, case_id=case.id, nonce=link.nonce
        )
        session.commit()
    except PaymentError as exc:
        session.rollback()
        log.warning("card setup for case %s failed: %s (%s)", case.id, type(exc).__name__, exc.code)
        return _page_message("page.error_title", "page.try_later", case=case, status=503)
    context |= {"client_secret": setup.client_secret, "publishable_key": publishable_key}
    return _render("pay/card_stripe.html", case, status=status, stripe=True, **context)


def _check_sandbox_form(form) -> str | None:
    """The reason the typed card cannot be saved, as a CardError code; None if it can."""
    try:
        month, year = _expiry(form)
        check_test_card(
            form.get("number", ""),
            exp_month=month,
            exp_year=year,
            cvc=form.get("cvc", "").strip(),
            today=datetime.now(UTC).date(),
        )
    except CardError as exc:
        return exc.code or "other"
    return None


def _save_test_card(gateway, setup_id: str, form) -> None:
    month, year = _expiry(form)
    try:
        gateway.save_test_card(
            setup_id=setup_id,
            card_number=form.get("number", ""),
            exp_month=month,
            exp_year=year,
            cvc=form.get("cvc", "").strip(),
        )
    except CardError as exc:
        # A double-submitted form: the first request saved the card on this setup already.
        if exc.code != "setup_already_complete":
            raise


def _expiry(form) -> tuple[int, int]:
    month, year = form.get("exp_month", "").strip(), form.get("exp_year", "").strip()
    if not month.isdigit():
        raise CardError("The expiry month is not valid.", code="invalid_expiry_month")
    if not year.isdigit():
        raise CardError("The expiry year is not valid.", code="invalid_expiry_year")
    return int(month), int(year)


def _card_error_key(code: str) -> str:
    key = f"page.card_error.{code}"
    return key if key in KEYS else "page.card_error.other"


# -- the payment approval page ----------------------------------------------------------------


@bp.get("/pay/auth/<token>")
def auth_page(token: str):
    """The page where a payer approves a payment their bank held for authentication."""
    opened = _open_auth_link(token)
    if isinstance(opened, Response):
        return opened
    payment, case = opened
    return _auth_state(payment, case, confirm=False)


@bp.post("/pay/auth/<token>")
def auth_submit(token: str):
    """After Stripe.js (or the sandbox button) approved: record the outcome and say so."""
    opened = _open_auth_link(token)
    if isinstance(opened, Response):
        return opened
    payment, case = opened
    return _auth_state(payment, case, confirm=True)


def _open_auth_link(token: str) -> tuple[Payment, Case] | Response:
    session = get_session()
    try:
        link = links.verify(LinkKind.AUTH, token)
    except LinkError as exc:
        payment = session.get(Payment, exc.subject_id) if exc.subject_id else None
        return _link_error(exc.code, session.get(Case, payment.case_id) if payment else None)
    payment = session.get(Payment, link.subject_id)
    if payment is None:
        return _link_error("invalid", None)
    return payment, session.get(Case, payment.case_id)


def _auth_state(payment: Payment, case: Case, *, confirm: bool):
    """Show where the payment stands, first settling it with the processor's current state."""
    session = get_session()
    gateway = current_app.extensions["payments"]
    amount = payment.amount_cents
    if payment.status == PaymentStatus.REQUIRES_ACTION:
        try:
            result = service.requires_action_result(payment=payment)
            if confirm and gateway.name == "sandbox" and result.client_secret:
                result = gateway.confirm_authentication(
                    intent_id=result.intent_id, client_secret=result.client_secret
                )
            if result.status is not ChargeStatus.REQUIRES_ACTION:
                service.apply_charge_result(session=session, payment_id=payment.id, result=result)
                session.commit()
                session.refresh(payment)
        except PaymentError as exc:
            session.rollback()
            log.warning("approval of payment %s: %s (%s)", payment.id, type(exc).__name__, exc.code)
            return _page_message("page.error_title", "page.try_later", case=case, status=503)
        if payment.status == PaymentStatus.REQUIRES_ACTION:
            return _auth_form(payment, case, result)
    if payment.status == PaymentStatus.SUCCEEDED:
        return _page_message("page.auth_done_title", "page.auth_done", case=case, amount=amount)
    if payment.status in (PaymentStatus.FAILED, PaymentStatus.CANCELED):
        return _page_message("page.auth_failed_title", "page.auth_failed", case=case, amount=amount)
    return _page_message("page.auth_title", "page.auth_closed", case=case)


def _auth_form(payment: Payment, case: Case, result: ChargeResult) -> Response:
    card = get_session().get(CardOnFile, payment.card_id) if payment.card_id else None
    context = {
        "amount": payment.amount_cents,
        "last4": card.last4 if card else (result.card_last4 or ""),
    }
    if current_app.extensions["payments"].name == "sandbox":
        return _render("pay/auth_sandbox.html", case, **context)
    publishable_key = current_app.config["STRIPE_PUBLISHABLE_KEY"]
    if not publishable_key:
        log.error("STRIPE_PUBLISHABLE_KEY is not set: the approval page cannot load Stripe.js")
        return _page_message("page.error_title", "page.try_later", case=case, status=503)
    context |= {
        "client_secret": result.client_secret,
        "payment_method_id": card.payment_method_id if card else "",
        "publishable_key": publishable_key,
    }
    return _render("pay/auth_stripe.html", case, stripe=True, **context)


@bp.errorhandler(CSRFError)
def _form_refused(_error: CSRFError) -> Response:
    """A payer form without its CSRF token (cookie not kept, page left open): a payer page."""
    token = (request.view_args or {}).get("token", "")
    opener = _open_auth_link if request.endpoint == "billing.auth_submit" else _open_card_link
    opened = opener(token)
    if isinstance(opened, Response):
        return opened
    _, case = opened
    return _page_message("page.error_title", "page.form_refused", case=case, status=400)


# -- rendering --------------------------------------------------------------------------------


def _language(case: Case | None) -> str:
    """The page language: ?lang= when the payer switched, else the one their texts are in."""
    asked = request.args.get("lang")
    if asked in tuple(Language):
        return asked
    if case is None:
        return Language.EN
    # The payer may have texted ESPAÑOL / ENGLISH since staff set the case's language.
    contact = service.payer_contact(session=get_session(), case=case)
    return contact.language if contact is not None else str(case.language)


def _render(
    template: str, case: Case | None, *, status: int = 200, stripe: bool = False, **ctx: Any
) -> Response:
    language = _language(case)
    config = current_app.config
    base = {"agency": config["AGENCY_NAME"], "agency_phone": config["AGENCY_PHONE"]}

    def t(key: str, **params: Any) -> str:
        return render(key, {**base, **params}, language)

    other = Language.ES if language == Language.EN else Language.EN
    g.csp_nonce = secrets.token_urlsafe(16)
    g.pay_page_stripe = stripe
    html = render_template(
        template,
        t=t,
        lang=language,
        other_lang=str(other),
        switch_url=f"{request.path}?lang={other}",
        nonce=g.csp_nonce,
        agency=config["AGENCY_NAME"],
        **ctx,
    )
    return make_response(html, status)


def _page_message(
    title_key: str, text_key: str, *, case: Case | None, status: int = 200, **params: Any
) -> Response:
    return _render(
        "pay/message.html",
        case,
        status=status,
        title_key=title_key,
        text_key=text_key,
        params=params,
    )


def _link_error(code: str, case: Case | None) -> Response:
    """The link's page refused, in its case's language when a genuine link names the case."""
    key = "page.link_expired" if code == "expired" else "page.link_invalid"
    return _page_message(
        "page.link_title", key, case=case, status=410 if code == "expired" else 404
    )


def _brand(brand: str) -> str:
    return {"amex": "American Express", "mastercard": "Mastercard", "visa": "Visa"}.get(
        brand, brand.title()
    )


@bp.after_request
def _page_headers(response: Response) -> Response:
    """Payer pages are never cached or framed, and run only our own (or Stripe's) scripts."""
    if not request.path.startswith("/pay/"):
        return response
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    # same-origin keeps the token in the URL away from other sites yet lets CSRF see the referrer.
    response.headers["Referrer-Policy"] = "same-origin"
    nonce = g.get("csp_nonce", "")
    if g.get("pay_page_stripe"):
        policy = (
            f"default-src 'self'; script-src 'nonce-{nonce}' https://js.stripe.com; "
            "frame-src https://js.stripe.com https://hooks.stripe.com; "
            "connect-src https://api.stripe.com; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data: https://*.stripe.com; form-action 'self'; base-uri 'none'; "
            "frame-ancestors 'none'"
        )
    else:
        policy = (
            f"default-src 'none'; style-src 'nonce-{nonce}'; form-action 'self'; "
            "base-uri 'none'; frame-ancestors 'none'"
        )
    response.headers["Content-Security-Policy"] = policy
    return response
