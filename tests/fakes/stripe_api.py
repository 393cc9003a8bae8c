"""A local stand-in for the Stripe API, answering the real stripe SDK with Stripe's JSON shapes.

Covers customers, setup intents, payment methods (including Stripe's pm_card_* test tokens),
payment intents, refunds (and their bank delays), disputes and idempotency keys, with error
injection and webhook signing.
"""

from __future__ import annotations

import base64
import copy
import itertools
import json
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import stripe

from billing.testcards import CARDS_BY_TOKEN, DECLINE_MESSAGES, CardBehaviour, StripeTestCard
from money import format_cents

DEFAULT_SECRET_KEY = "sk_test_fake"

Json = dict[str, Any]


class StripeHttpError(Exception):
    """An error response, raised inside a handler and sent as Stripe's error body."""

    def __init__(self, status: int, error: Json, *, replayable: bool = False):
        super().__init__(error.get("message"))
        self.status = status
        self.error = error
        # Stripe stores the result of a request that ran (a decline) but not one that failed
        # validation, so only the former is replayed for the same idempotency key.
        self.replayable = replayable


def _invalid(
    message: str, *, code: str | None = None, param: str | None = None, status: int = 400
) -> StripeHttpError:
    error: Json = {"type": "invalid_request_error", "message": message}
    if code:
        error["code"] = code
    if param:
        error["param"] = param
    return StripeHttpError(status, error)


def _missing(kind: str, object_id: str, *, param: str = "id", status: int = 404) -> StripeHttpError:
    return _invalid(
        f"No such {kind}: '{object_id}'", code="resource_missing", param=param, status=status
    )


class FakeStripe:
    """Stripe's /v1 API on 127.0.0.1 for the stripe SDK; use as a context manager."""

    def __init__(self, secret_key: str = DEFAULT_SECRET_KEY):
        self.secret_key = secret_key
        self.payment_intents_created = 0
        self.charges_created = 0
        self.refunds_created = 0
        # What a new refund's status is: "pending" plays a bank that takes days to return it.
        self.new_refund_status = "succeeded"
        self._lock = threading.RLock()
        self._objects: dict[str, Json] = {}
        self._cards: dict[str, StripeTestCard] = {}  # payment method id -> how it behaves
        self._intent_order: list[str] = []  # oldest first
        self._idempotency: dict[str, tuple[str, int, Json]] = {}
        self._failures: deque[int] = deque()
        self._clock = itertools.count(int(time.time()))
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._routes: list[tuple[str, re.Pattern[str], Callable[..., Json]]] = [
            ("POST", re.compile(r"/v1/customers"), self._create_customer),
            ("GET", re.compile(r"/v1/customers/(?P<oid>[^/]+)"), self._getter("customer")),
            ("POST", re.compile(r"/v1/setup_intents"), self._create_setup_intent),
            ("GET", re.compile(r"/v1/setup_intents/(?P<oid>[^/]+)"), self._getter("setup_intent")),
            ("POST", re.compile(r"/v1/setup_intents/(?P<oid>[^/]+)/confirm"), self._confirm_setup),
            (
                "GET",
                re.compile(r"/v1/payment_methods/(?P<oid>[^/]+)"),
                self._getter("payment_method"),
            ),
            ("POST", re.compile(r"/v1/payment_methods/(?P<oid>[^/]+)/attach"), self._attach),
            ("POST", re.compile(r"/v1/payment_intents"), self._create_payment_intent),
            ("GET", re.compile(r"/v1/payment_intents"), self._list_payment_intents),
            (
                "GET",
                re.compile(r"/v1/payment_intents/(?P<oid>[^/]+)"),
                self._getter("payment_intent"),
            ),
            (
                "POST",
                re.compile(r"/v1/payment_intents/(?P<oid>[^/]+)/cancel"),
                self._cancel_payment_intent,
            ),
            ("GET", re.compile(r"/v1/charges/(?P<oid>[^/]+)"), self._getter("charge")),
            ("GET", re.compile(r"/v1/disputes/(?P<oid>[^/]+)"), self._getter("dispute")),
            ("POST", re.compile(r"/v1/refunds"), self._create_refund),
            ("GET", re.compile(r"/v1/refunds"), self._list_refunds),
            ("GET", re.compile(r"/v1/refunds/(?P<oid>[^/]+)"), self._getter("refund")),
        ]

    # -- running ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL to hand to StripeGateway(base_url=...)."""
        if self._server is None:
            raise RuntimeError("FakeStripe is not running; use it in a with block")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeStripe:
        self._server = _Server(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(
            # A short poll keeps shutdown, and so each test's teardown, quick.
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.01},
            daemon=True,
        )
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self._server = None

    # -- test helpers ----------------------------------------------------------------------

    def fail_next(self, status: int = 500, times: int = 1) -> None:
        """Answer the next `times` requests with an error of this HTTP status, doing nothing."""
        with self._lock:
            self._failures.extend([status] * times)

    def get(self, object_id: str) -> Json:
        """A copy of any stored object, by id."""
        with self._lock:
            return copy.deepcopy(self._objects[object_id])

    def complete_authentication(self, intent_id: str) -> Json:
        """Do what Stripe.js does when the payer passes 3D Secure: the intent succeeds."""
        with self._lock:
            intent = self._objects[intent_id]
            if intent["payment_method"] is None:
                intent["payment_method"] = intent["last_payment_error"]["payment_method"]["id"]
            intent["last_payment_error"] = None
            intent["next_action"] = None
            self._succeed(intent)
            return copy.deepcopy(intent)

    def fail_authentication(self, intent_id: str) -> Json:
        """Do what Stripe does when the payer fails 3D Secure: the intent needs a payment method.

        The page stays open: Stripe.js may still confirm it, and complete_authentication plays that.
        """
        with self._lock:
            intent = self._objects[intent_id]
            # Off-session, Stripe already moved the card onto the authentication_required error.
            method_id = (
                intent["payment_method"] or intent["last_payment_error"]["payment_method"]["id"]
            )
            method = self._objects[method_id]
            intent.update(
                status="requires_payment_method",
                payment_method=None,
                next_action=None,
                last_payment_error={
                    "type": "card_error",
                    "code": "payment_intent_authentication_failure",
                    "message": "The provided payment method has failed authentication.",
                    "payment_method": copy.deepcopy(method),
                },
            )
            return copy.deepcopy(intent)

    def settle_refund(self, refund_id: str, status: str) -> Json:
        """Move a refund on, as the bank does: succeeded, or failed and given back to the charge."""
        with self._lock:
            refund = self._objects[refund_id]
            refund["status"] = status
            if status in ("failed", "canceled"):
                charge = self._objects[refund["charge"]]
                charge["amount_refunded"] -= refund["amount"]
                charge["refunded"] = False
                if status == "failed":
                    refund["failure_reason"] = "expired_or_canceled_card"
            return copy.deepcopy(refund)

    def dispute(
        self, charge_id: str, status: str = "needs_response", *, amount: int | None = None
    ) -> Json:
        """Open a dispute on a charge, as the cardholder's bank does; returns it for an event.

        By default it is for what is not refunded; a bank may dispute the whole charge even so
        (`amount`), and Stripe then takes back that much.
        """
        with self._lock:
            charge = self._objects[charge_id]
            charge["disputed"] = True
            dispute = self._store(
                "dp",
                "dispute",
                amount=charge["amount"] - charge["amount_refunded"] if amount is None else amount,
                charge=charge_id,
                currency=charge["currency"],
                payment_intent=charge["payment_intent"],
                reason="fraudulent",
                status=status,
                metadata={},
            )
            return copy.deepcopy(dispute)

    def close_dispute(self, dispute_id: str, status: str) -> Json:
        """Move a dispute on (under_review, won, lost...); returns it for an event."""
        with self._lock:
            self._objects[dispute_id]["status"] = status
            return copy.deepcopy(self._objects[dispute_id])

    def signed_event(
        self,
        event_type: str,
        obj: Json,
        secret: str,
        timestamp: int | None = None,
    ) -> tuple[bytes, str]:
        """A Stripe event body and its Stripe-Signature header, signed by the SDK's own code."""
        created = int(time.time()) if timestamp is None else timestamp
        event = {
            "id": _new_id("evt"),
            "object": "event",
            "api_version": stripe.api_version,
            "created": created,
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "type": event_type,
            "data": {"object": obj},
        }
        payload = json.dumps(event)
        header = stripe.WebhookSignature.generate_signature_header(payload, secret, created)
        return payload.encode(), header

    # -- request handling ------------------------------------------------------------------

    def handle(
        self, method: str, target: str, headers: Any, body: bytes
    ) -> tuple[int, Json, dict[str, str]]:
        """Answer one HTTP request: (status, JSON body, extra headers)."""
        if not self._authorized(headers.get("Authorization", "")):
            error = {"type": "invalid_request_error", "message": "Invalid API Key provided"}
            return 401, {"error": error}, {}
        parts = urlsplit(target)
        params = _parse_form(body.decode() if method == "POST" else parts.query)
        with self._lock:
            if self._failures:
                status = self._failures.popleft()
                return status, {"error": _injected_error(status)}, {}
            key = headers.get("Idempotency-Key") if method == "POST" else None
            fingerprint = json.dumps([method, parts.path, params], sort_keys=True)
            if key and key in self._idempotency:
                stored_fingerprint, status, stored = self._idempotency[key]
                if stored_fingerprint != fingerprint:
                    return 400, {"error": _idempotency_error(key)}, {}
                return status, copy.deepcopy(stored), {"Idempotent-Replayed": "true"}
            status, response, replayable = self._dispatch(method, parts.path, params)
            if key and replayable:
                self._idempotency[key] = (fingerprint, status, copy.deepcopy(response))
            return status, response, {}

    def _authorized(self, header: str) -> bool:
        scheme, _, credentials = header.partition(" ")
        if scheme == "Bearer":
            return secrets.compare_digest(credentials, self.secret_key)
        if scheme == "Basic":
            user = base64.b64decode(credentials).decode().partition(":")[0]
            return secrets.compare_digest(user, self.secret_key)
        return False

    def _dispatch(self, method: str, path: str, params: Json) -> tuple[int, Json, bool]:
        for route_method, pattern, handler in self._routes:
            match = pattern.fullmatch(path)
            if route_method == method and match:
                try:
                    return 200, handler(params, **match.groupdict()), True
                except StripeHttpError as exc:
                    return exc.status, {"error": exc.error}, exc.replayable
        return 404, {"error": _invalid(f"Unrecognized request URL ({method}: {path})").error}, False

    def _getter(self, kind: str) -> Callable[..., Json]:
        def retrieve(params: Json, oid: str) -> Json:
            return self._render(self._find(kind, oid), params.get("expand", []))

        return retrieve

    # -- resources -------------------------------------------------------------------------

    def _create_customer(self, params: Json) -> Json:
        customer = self._store(
            "cus",
            "customer",
            name=params.get("name"),
            email=params.get("email"),
            metadata=params.get("metadata", {}),
        )
        return self._render(customer, params.get("expand", []))

    def _create_setup_intent(self, params: Json) -> Json:
        customer = params.get("customer")
        if customer:
            self._find("customer", customer, param="customer", status=400)
        setup = self._store(
            "seti",
            "setup_intent",
            customer=customer,
            payment_method=None,
            payment_method_types=params.get("payment_method_types", ["card"]),
            status="requires_payment_method",
            usage=params.get("usage", "off_session"),
            metadata=params.get("metadata", {}),
            last_setup_error=None,
            next_action=None,
        )
        setup["client_secret"] = f"{setup['id']}_secret_{secrets.token_hex(12)}"
        if _flag(params.get("confirm")):
            return self._confirm_setup(params, setup["id"])
        return self._render(setup, params.get("expand", []))

    def _confirm_setup(self, params: Json, oid: str) -> Json:
        setup = self._find("setup_intent", oid)
        if setup["status"] not in ("requires_payment_method", "requires_confirmation"):
            raise _invalid(
                f"This SetupIntent is in status {setup['status']} and cannot be confirmed",
                code="setup_intent_unexpected_state",
            )
        reference = params.get("payment_method") or setup["payment_method"]
        if not reference:
            raise _invalid("A payment method is required", code="parameter_missing")
        method = self._payment_method(reference, setup["customer"], attach=True)
        setup.update(payment_method=method["id"], status="succeeded")
        return self._render(setup, params.get("expand", []))

    def _attach(self, params: Json, oid: str) -> Json:
        customer = params.get("customer")
        if not customer:
            raise _invalid("Missing required param: customer.", param="customer")
        self._find("customer", customer, param="customer", status=400)
        return self._render(self._payment_method(oid, customer, attach=True), [])

    def _payment_method(self, reference: str, customer: str | None, *, attach: bool) -> Json:
        """An existing payment method, or a new one made from a pm_card_* test token."""
        card = CARDS_BY_TOKEN.get(reference)
        if card is None:
            method = self._find("payment_method", reference, param="payment_method", status=400)
            if customer and method["customer"] not in (None, customer):
                raise _invalid(
                    "The provided PaymentMethod belongs to another Customer.",
                    param="payment_method",
                )
        else:
            method = self._store(
                "pm",
                "payment_method",
                type="card",
                customer=None,
                metadata={},
                billing_details={"address": None, "email": None, "name": None, "phone": None},
                card={
                    "brand": card.brand,
                    "last4": card.last4,
                    "exp_month": 12,
                    "exp_year": time.gmtime().tm_year + 3,
                    "funding": "credit",
                    "country": "US",
                },
            )
            self._cards[method["id"]] = card
        if attach and customer:
            method["customer"] = customer
        return method

    def _create_payment_intent(self, params: Json) -> Json:
        amount = _integer(params, "amount")
        if amount < 50:
            raise _invalid("Amount must be at least $0.50 usd", code="amount_too_small")
        if not params.get("currency"):
            raise _invalid("Missing required param: currency.", param="currency")
        customer = params.get("customer")
        if customer:
            self._find("customer", customer, param="customer", status=400)
        method_id = None
        if params.get("payment_method"):
            method_id = self._payment_method(params["payment_method"], customer, attach=False)["id"]
        intent = self._store(
            "pi",
            "payment_intent",
            amount=amount,
            amount_received=0,
            currency=params["currency"],
            customer=customer,
            payment_method=method_id,
            payment_method_types=["card"],
            capture_method="automatic",
            confirmation_method="automatic",
            status="requires_confirmation" if method_id else "requires_payment_method",
            metadata=params.get("metadata", {}),
            description=params.get("description"),
            latest_charge=None,
            last_payment_error=None,
            next_action=None,
        )
        intent["client_secret"] = f"{intent['id']}_secret_{secrets.token_hex(12)}"
        self._intent_order.append(intent["id"])
        self.payment_intents_created += 1
        if _flag(params.get("confirm")):
            self._confirm_intent(intent, off_session=_flag(params.get("off_session")))
        return self._render(intent, params.get("expand", []))

    def _confirm_intent(self, intent: Json, *, off_session: bool) -> None:
        method_id = intent["payment_method"]
        if not method_id:
            raise _invalid(
                "You cannot confirm this PaymentIntent because it's missing a payment method.",
                code="payment_intent_unexpected_state",
            )
        card = self._cards[method_id]
        if card.behaviour is CardBehaviour.SUCCEEDS:
            self._succeed(intent)
        elif card.behaviour is CardBehaviour.REQUIRES_AUTHENTICATION and not off_session:
            intent.update(
                status="requires_action",
                next_action={"type": "use_stripe_sdk", "use_stripe_sdk": {}},
            )
        else:
            self._fail(intent, card)

    def _cancel_payment_intent(self, params: Json, oid: str) -> Json:
        intent = self._find("payment_intent", oid)
        if intent["status"] in ("succeeded", "canceled"):
            raise _invalid(
                "You cannot cancel this PaymentIntent because it has a status of"
                f" {intent['status']}.",
                code="payment_intent_unexpected_state",
            )
        intent.update(
            status="canceled",
            canceled_at=next(self._clock),
            cancellation_reason=params.get("cancellation_reason"),
            next_action=None,
        )
        return self._render(intent, params.get("expand", []))

    def _succeed(self, intent: Json) -> None:
        charge = self._charge(intent, "succeeded")
        intent.update(status="succeeded", amount_received=intent["amount"], latest_charge=charge)

    def _fail(self, intent: Json, card: StripeTestCard) -> None:
        """Decline the way Stripe does off-session: a 402 carrying the failed intent."""
        method = self._objects[intent["payment_method"]]
        if card.behaviour is CardBehaviour.REQUIRES_AUTHENTICATION:
            code = decline_code = "authentication_required"
        else:
            decline_code = card.decline_code or "generic_decline"
            code = "expired_card" if decline_code == "expired_card" else "card_declined"
        error: Json = {
            "type": "card_error",
            "code": code,
            "decline_code": decline_code,
            "message": DECLINE_MESSAGES[decline_code],
            "payment_method": copy.deepcopy(method),
        }
        if code != "authentication_required":
            error["charge"] = self._charge(intent, "failed", error)
        # After a failure Stripe detaches the card from the intent and keeps it on the error.
        intent.update(
            status="requires_payment_method",
            payment_method=None,
            last_payment_error=error,
            latest_charge=error.get("charge"),
        )
        body = {**error, "payment_intent": self._render(intent, [])}
        raise StripeHttpError(402, body, replayable=True)

    def _charge(self, intent: Json, status: str, error: Json | None = None) -> str:
        method = self._objects[intent["payment_method"]]
        charge = self._store(
            "ch",
            "charge",
            amount=intent["amount"],
            amount_refunded=0,
            captured=status == "succeeded",
            currency=intent["currency"],
            customer=intent["customer"],
            paid=status == "succeeded",
            payment_intent=intent["id"],
            payment_method=method["id"],
            payment_method_details={"type": "card", "card": copy.deepcopy(method["card"])},
            refunded=False,
            status=status,
            failure_code=error and error["code"],
            failure_message=error and error["message"],
            metadata=copy.deepcopy(intent["metadata"]),
        )
        self.charges_created += 1
        return charge["id"]

    def _list_payment_intents(self, params: Json) -> Json:
        limit = min(max(_integer(params, "limit", default=10), 1), 100)
        ids = list(reversed(self._intent_order))  # Stripe lists newest first
        if params.get("customer"):
            ids = [i for i in ids if self._objects[i]["customer"] == params["customer"]]
        if params.get("starting_after"):
            after = params["starting_after"]
            if after not in ids:
                raise _missing("payment_intent", after, param="starting_after", status=400)
            ids = ids[ids.index(after) + 1 :]
        expand = [p.removeprefix("data.") for p in params.get("expand", [])]
        return {
            "object": "list",
            "url": "/v1/payment_intents",
            "has_more": len(ids) > limit,
            "data": [self._render(self._objects[i], expand) for i in ids[:limit]],
        }

    def _create_refund(self, params: Json) -> Json:
        if params.get("payment_intent"):
            intent = self._find("payment_intent", params["payment_intent"], status=400)
            charge_id = intent["latest_charge"] if intent["status"] == "succeeded" else None
            if charge_id is None:
                raise _invalid(
                    f"PaymentIntent {intent['id']} does not have a successful charge to refund.",
                    code="charge_not_refundable",
                )
        elif params.get("charge"):
            charge_id = params["charge"]
        else:
            raise _invalid("One of charge or payment_intent is required.", code="parameter_missing")
        charge = self._find("charge", charge_id, param="charge", status=400)
        remaining = charge["amount"] - charge["amount_refunded"]
        if remaining <= 0:
            raise _invalid(
                f"Charge {charge_id} has already been refunded.", code="charge_already_refunded"
            )
        amount = _integer(params, "amount", default=remaining)
        if amount <= 0:
            raise _invalid("Invalid positive integer", code="parameter_invalid_integer")
        if amount > remaining:
            raise _invalid(
                f"Refund amount ({format_cents(amount)}) is greater than unrefunded amount on"
                f" charge ({format_cents(remaining)})",
                code="amount_too_large",
                param="amount",
            )
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] == charge["amount"]
        refund = self._store(
            "re",
            "refund",
            amount=amount,
            charge=charge_id,
            currency=charge["currency"],
            payment_intent=charge["payment_intent"],
            status=self.new_refund_status,
            reason=params.get("reason"),
            metadata=params.get("metadata", {}),
        )
        self.refunds_created += 1
        return self._render(refund, params.get("expand", []))

    def _list_refunds(self, params: Json) -> Json:
        limit = min(max(_integer(params, "limit", default=10), 1), 100)
        refunds = [o for o in self._objects.values() if o["object"] == "refund"]
        if params.get("payment_intent"):
            refunds = [r for r in refunds if r["payment_intent"] == params["payment_intent"]]
        ids = [r["id"] for r in reversed(refunds)]  # newest first
        if params.get("starting_after"):
            after = params["starting_after"]
            if after not in ids:
                raise _missing("refund", after, param="starting_after", status=400)
            ids = ids[ids.index(after) + 1 :]
        return {
            "object": "list",
            "url": "/v1/refunds",
            "has_more": len(ids) > limit,
            "data": [self._render(self._objects[i], []) for i in ids[:limit]],
        }

    # -- storage ---------------------------------------------------------------------------

    def _store(self, prefix: str, kind: str, **fields: Any) -> Json:
        obj = {"id": _new_id(prefix), "object": kind, "created": next(self._clock)}
        obj.update(fields, livemode=False)
        self._objects[obj["id"]] = obj
        return obj

    def _find(self, kind: str, object_id: str, *, param: str = "id", status: int = 404) -> Json:
        obj = self._objects.get(object_id)
        if obj is None or obj["object"] != kind:
            raise _missing(kind, object_id, param=param, status=status)
        return obj

    def _render(self, obj: Json, expand: list[str]) -> Json:
        """A copy of obj with the named id fields replaced by the objects they point to."""
        rendered = copy.deepcopy(obj)
        for field in expand:
            value = rendered.get(field)
            if isinstance(value, str) and value in self._objects:
                rendered[field] = copy.deepcopy(self._objects[value])
        return rendered


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Many clients connect at once in the concurrency tests; the default backlog is 5.
    request_queue_size = 128


def _handler_for(fake: FakeStripe) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._answer("GET")

        def do_POST(self) -> None:
            self._answer("POST")

        def _answer(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            status, response, extra = fake.handle(method, self.path, self.headers, body)
            data = json.dumps(response).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Request-Id", _new_id("req"))
            for name, value in extra.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep pytest output clean; failures show in assertions instead

    return Handler


def _parse_form(text: str) -> Json:
    """Decode Stripe's bracket notation: metadata[payment_id]=7&expand[0]=x -> nested values."""
    result: Json = {}
    for key, value in parse_qsl(text, keep_blank_values=True):
        names = re.findall(r"[^\[\]]+", key)
        node = result
        for name in names[:-1]:
            node = node.setdefault(name, {})
        node[names[-1]] = value
    return _listify(result)


def _listify(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    if node and all(key.isdigit() for key in node):
        return [_listify(node[key]) for key in sorted(node, key=int)]
    return {key: _listify(value) for key, value in node.items()}


def _integer(params: Json, name: str, *, default: int | None = None) -> int:
    raw = params.get(name)
    if raw is None and default is not None:
        return default
    if raw is None:
        raise _invalid(f"Missing required param: {name}.", code="parameter_missing", param=name)
    try:
        return int(raw)
    except ValueError:
        raise _invalid("Invalid integer", code="parameter_invalid_integer", param=name) from None


def _flag(raw: Any) -> bool:
    return raw == "true"


def _injected_error(status: int) -> Json:
    if status == 429:
        return {
            "type": "invalid_request_error",
            "code": "rate_limit",
            "message": "Request rate limit exceeded.",
        }
    if status == 409:
        return {
            "type": "idempotency_error",
            "code": "idempotency_key_in_use",
            "message": "There is currently another in-progress request using this Idempotent Key.",
        }
    return {"type": "api_error", "message": "Something went wrong on Stripe's end."}


def _idempotency_error(key: str) -> Json:
    return {
        "type": "idempotency_error",
        "message": (
            "Keys for idempotent requests can only be used with the same parameters they were"
            f" first used with. Try using a key other than '{key}' if you meant to execute a"
            " different request."
        ),
    }


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"
