"""StripeGateway (real SDK against the local Stripe fake) and SandboxGateway (real Redis)."""

from __future__ import annotations

import inspect
import json
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
import redis
import stripe

from billing.gateway import (
    CardError,
    ChargeResult,
    ChargeStatus,
    IdempotencyConflict,
    InvalidWebhook,
    PaymentConfigError,
    PaymentError,
    PaymentGateway,
    PaymentNotFound,
    RefundError,
    RefundStatus,
    SavedCard,
    TransientPaymentError,
)
from billing.sandbox import PREFIX, SandboxGateway
from billing.stripe_gateway import StripeGateway
from billing.testcards import CARDS_BY_NUMBER, TEST_CARDS, StripeTestCard
from tests.fakes.stripe_api import FakeStripe

WEBHOOK_SECRET = "whsec_test_paytext"
VISA = CARDS_BY_NUMBER["4242424242424242"]
AUTHENTICATION_CARD = CARDS_BY_NUMBER["4000002760003184"]
NEXT_YEAR = datetime.now(UTC).year + 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def redis_port() -> Iterator[int]:
    """A throwaway redis-server for the session (to move into conftest.py later)."""
    port = _free_port()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1"]
    process = subprocess.Popen(
        [*command, "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL
    )
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise
            time.sleep(0.02)
    client.close()
    yield port
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def redis_client(redis_port: int) -> Iterator[redis.Redis]:
    """A client on an empty database, bytes in and out as RQ uses it."""
    client = redis.Redis(port=redis_port)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def fake_stripe() -> Iterator[FakeStripe]:
    with FakeStripe() as fake:
        yield fake


@pytest.fixture
def stripe_gateway(fake_stripe: FakeStripe) -> StripeGateway:
    return StripeGateway(
        fake_stripe.secret_key, webhook_secret=WEBHOOK_SECRET, base_url=fake_stripe.url
    )


@pytest.fixture
def sandbox(redis_client: redis.Redis) -> SandboxGateway:
    return SandboxGateway(redis_client, webhook_secret=WEBHOOK_SECRET)


@dataclass
class Harness:
    """A gateway plus what the payer's browser does around it, the same way for both."""

    gateway: PaymentGateway
    save_card: Callable[[str, StripeTestCard], SavedCard]
    authenticate: Callable[[ChargeResult], object]
    intents_created: Callable[[], int]


@pytest.fixture(params=["stripe", "sandbox"])
def harness(request: pytest.FixtureRequest) -> Harness:
    if request.param == "stripe":
        fake: FakeStripe = request.getfixturevalue("fake_stripe")
        gateway: StripeGateway = request.getfixturevalue("stripe_gateway")
        browser = stripe.StripeClient(fake.secret_key, base_addresses={"api": fake.url})

        def save_with_stripe_js(customer_id: str, card: StripeTestCard) -> SavedCard:
            setup = gateway.create_card_setup(
                customer_id=customer_id, case_number="CS-1", idempotency_key=str(uuid.uuid4())
            )
            browser.v1.setup_intents.confirm(setup.setup_id, params={"payment_method": card.token})
            return gateway.card_from_setup(setup_id=setup.setup_id)

        return Harness(
            gateway,
            save_with_stripe_js,
            lambda result: fake.complete_authentication(result.intent_id),
            lambda: fake.payment_intents_created,
        )

    sandbox: SandboxGateway = request.getfixturevalue("sandbox")
    store: redis.Redis = request.getfixturevalue("redis_client")

    def save_with_local_form(customer_id: str, card: StripeTestCard) -> SavedCard:
        setup = sandbox.create_card_setup(
            customer_id=customer_id, case_number="CS-1", idempotency_key=str(uuid.uuid4())
        )
        sandbox.save_test_card(
            setup_id=setup.setup_id,
            card_number=card.number,
            exp_month=12,
            exp_year=NEXT_YEAR,
            cvc="1234" if card.brand == "amex" else "123",
        )
        return sandbox.card_from_setup(setup_id=setup.setup_id)

    return Harness(
        sandbox,
        save_with_local_form,
        lambda result: sandbox.confirm_authentication(
            intent_id=result.intent_id, client_secret=result.client_secret or ""
        ),
        lambda: sum(1 for _ in store.scan_iter(f"{PREFIX}pi:*")),
    )


def _customer_and_card(harness: Harness, card: StripeTestCard = VISA) -> tuple[str, SavedCard]:
    customer_id = harness.gateway.ensure_customer(case_number="CS-1", name="Ana Ruiz")
    return customer_id, harness.save_card(customer_id, card)


def _charge(
    gateway: PaymentGateway,
    customer_id: str,
    card: SavedCard,
    *,
    key: str = "payment-1",
    payment_id: str = "1",
    amount_cents: int = 12_500,
) -> ChargeResult:
    return gateway.charge(
        customer_id=customer_id,
        payment_method_id=card.payment_method_id,
        amount_cents=amount_cents,
        currency="usd",
        idempotency_key=key,
        metadata={"case_number": "CS-1", "payment_id": payment_id},
    )


def _signed(obj: dict, *, secret: str = WEBHOOK_SECRET, age: int = 0) -> tuple[bytes, str]:
    """An event signed the way Stripe signs it, using the SDK's own signing code."""
    timestamp = int(time.time()) - age
    return FakeStripe().signed_event("payment_intent.succeeded", obj, secret, timestamp)


# -- test cards ------------------------------------------------------------------------------


@pytest.mark.parametrize("number", ["4242424242424242", "5555555555554444", "378282246310005"])
def test_cards_that_succeed_are_charged_and_report_brand_and_last4(harness, number):
    card = CARDS_BY_NUMBER[number]
    customer_id, saved = _customer_and_card(harness, card)

    result = _charge(harness.gateway, customer_id, saved)

    assert saved.brand == card.brand and saved.last4 == number[-4:]
    assert result.status is ChargeStatus.SUCCEEDED
    assert result.amount_cents == 12_500
    assert result.charge_id and result.charge_id.startswith("ch_")
    assert (result.card_brand, result.card_last4) == (card.brand, number[-4:])
    assert result.client_secret is None and result.decline_code is None


@pytest.mark.parametrize(
    ("number", "decline_code"),
    [
        ("4000000000000002", "generic_decline"),
        ("4000000000009995", "insufficient_funds"),
        ("4000000000000069", "expired_card"),
    ],
)
def test_declining_cards_come_back_declined_with_their_decline_code(harness, number, decline_code):
    customer_id, saved = _customer_and_card(harness, CARDS_BY_NUMBER[number])

    result = _charge(harness.gateway, customer_id, saved)

    assert result.status is ChargeStatus.DECLINED
    assert result.decline_code == decline_code
    assert result.failure_message
    assert result.charge_id is None
    assert result.card_last4 == number[-4:]
    assert harness.gateway.retrieve_payment(intent_id=result.intent_id) == result


def test_a_card_needing_authentication_waits_for_the_payer_then_succeeds(harness):
    customer_id, saved = _customer_and_card(harness, AUTHENTICATION_CARD)

    result = _charge(harness.gateway, customer_id, saved)

    assert result.status is ChargeStatus.REQUIRES_ACTION
    assert result.client_secret and result.client_secret.startswith(result.intent_id)
    assert result.charge_id is None
    assert harness.gateway.retrieve_payment(intent_id=result.intent_id).client_secret

    harness.authenticate(result)

    completed = harness.gateway.retrieve_payment(intent_id=result.intent_id)
    assert completed.status is ChargeStatus.SUCCEEDED
    assert completed.charge_id and completed.client_secret is None


def test_a_charge_waiting_for_the_payer_can_be_canceled_once_but_not_after_approval(harness):
    customer_id, saved = _customer_and_card(harness, AUTHENTICATION_CARD)
    waiting = _charge(harness.gateway, customer_id, saved)
    approved = _charge(harness.gateway, customer_id, saved, key="payment-2", payment_id="2")
    harness.authenticate(approved)

    canceled = harness.gateway.cancel_payment(intent_id=waiting.intent_id, idempotency_key="c-1")
    again = harness.gateway.cancel_payment(intent_id=waiting.intent_id, idempotency_key="c-1")
    too_late = harness.gateway.cancel_payment(intent_id=approved.intent_id, idempotency_key="c-2")

    assert (canceled.status, canceled.client_secret) == (ChargeStatus.CANCELED, None)
    assert again == canceled
    assert harness.gateway.retrieve_payment(intent_id=waiting.intent_id).status == "canceled"
    assert too_late.status is ChargeStatus.SUCCEEDED


def test_card_from_setup_before_the_payer_finishes_raises_card_error(harness):
    customer_id = harness.gateway.ensure_customer(case_number="CS-1", name="Ana Ruiz")
    setup = harness.gateway.create_card_setup(
        customer_id=customer_id, case_number="CS-1", idempotency_key="setup-1"
    )

    with pytest.raises(CardError):
        harness.gateway.card_from_setup(setup_id=setup.setup_id)
    assert setup.client_secret


def test_ensure_customer_creates_one_customer_per_case_and_keeps_a_stored_id(harness):
    first = harness.gateway.ensure_customer(case_number="CS-9", name="Luis Paz")
    again = harness.gateway.ensure_customer(case_number="CS-9", name="Luis Paz")
    kept = harness.gateway.ensure_customer(
        case_number="CS-9", name="Luis Paz", existing_customer_id="cus_stored"
    )

    assert first.startswith("cus_") and again == first
    assert kept == "cus_stored"


# -- idempotency and lookups -----------------------------------------------------------------


@pytest.mark.parametrize("number", ["4242424242424242", "4000000000009995"])
def test_replaying_a_charge_with_its_key_returns_the_same_intent_and_creates_one(harness, number):
    customer_id, saved = _customer_and_card(harness, CARDS_BY_NUMBER[number])

    first = _charge(harness.gateway, customer_id, saved)
    second = _charge(harness.gateway, customer_id, saved)

    assert second == first
    assert harness.intents_created() == 1


def test_reusing_a_key_with_another_amount_raises_idempotency_conflict(harness):
    customer_id, saved = _customer_and_card(harness)
    _charge(harness.gateway, customer_id, saved, amount_cents=12_500)

    with pytest.raises(IdempotencyConflict):
        _charge(harness.gateway, customer_id, saved, amount_cents=9_900)
    assert harness.intents_created() == 1


def test_find_payment_matches_the_intent_by_payment_id_metadata(harness):
    customer_id, saved = _customer_and_card(harness)
    first = _charge(harness.gateway, customer_id, saved, key="k-1", payment_id="101")
    second = _charge(harness.gateway, customer_id, saved, key="k-2", payment_id="102")

    assert harness.gateway.find_payment(customer_id=customer_id, payment_id="101") == first
    assert harness.gateway.find_payment(customer_id=customer_id, payment_id="102") == second
    assert harness.gateway.find_payment(customer_id=customer_id, payment_id="103") is None


def test_find_payment_reads_past_the_first_page_of_a_long_history(harness):
    customer_id, saved = _customer_and_card(harness)
    oldest = _charge(harness.gateway, customer_id, saved, key="k-0", payment_id="0")
    for number in range(1, 101):
        _charge(harness.gateway, customer_id, saved, key=f"k-{number}", payment_id=str(number))

    assert harness.gateway.find_payment(customer_id=customer_id, payment_id="0") == oldest


@pytest.mark.slow
def test_fifty_concurrent_charges_create_one_intent_per_key(harness):
    customer_id, saved = _customer_and_card(harness)
    keys = [f"k-{n % 10}" for n in range(50)]

    def attempt(key: str) -> ChargeResult | TransientPaymentError:
        try:
            return _charge(harness.gateway, customer_id, saved, key=key, payment_id=key)
        except TransientPaymentError as exc:  # the same key still in flight, as Stripe's 409
            return exc

    with ThreadPoolExecutor(max_workers=50) as pool:
        outcomes = list(pool.map(attempt, keys))

    assert harness.intents_created() == 10
    for key in set(keys):
        results = [o for k, o in zip(keys, outcomes, strict=True) if k == key]
        charged = {r.intent_id for r in results if isinstance(r, ChargeResult)}
        assert len(charged) == 1
        found = harness.gateway.find_payment(customer_id=customer_id, payment_id=key)
        assert found is not None and found.intent_id in charged


# -- refunds ---------------------------------------------------------------------------------


def test_refunds_partial_then_the_rest_and_never_more_than_was_charged(harness):
    customer_id, saved = _customer_and_card(harness)
    paid = _charge(harness.gateway, customer_id, saved, amount_cents=5_000)

    partial = harness.gateway.refund(
        intent_id=paid.intent_id, amount_cents=2_000, idempotency_key="refund-1"
    )
    with pytest.raises(RefundError):
        harness.gateway.refund(
            intent_id=paid.intent_id, amount_cents=3_001, idempotency_key="refund-2"
        )
    rest = harness.gateway.refund(
        intent_id=paid.intent_id, amount_cents=None, idempotency_key="refund-3"
    )
    with pytest.raises(RefundError):
        harness.gateway.refund(intent_id=paid.intent_id, amount_cents=1, idempotency_key="refund-4")

    assert (partial.amount_cents, partial.status) == (2_000, RefundStatus.SUCCEEDED)
    assert rest.amount_cents == 3_000
    assert partial.refund_id.startswith("re_") and rest.refund_id != partial.refund_id


def test_a_refund_replayed_with_its_key_is_made_once(harness):
    customer_id, saved = _customer_and_card(harness)
    paid = _charge(harness.gateway, customer_id, saved, amount_cents=5_000)

    first = harness.gateway.refund(
        intent_id=paid.intent_id, amount_cents=2_000, idempotency_key="refund-1"
    )
    again = harness.gateway.refund(
        intent_id=paid.intent_id, amount_cents=2_000, idempotency_key="refund-1"
    )
    rest = harness.gateway.refund(
        intent_id=paid.intent_id, amount_cents=None, idempotency_key="refund-2"
    )

    assert again == first
    assert rest.amount_cents == 3_000


def test_list_refunds_gives_every_refund_of_a_charge_newest_first(harness):
    customer_id, saved = _customer_and_card(harness)
    paid = _charge(harness.gateway, customer_id, saved, amount_cents=5_000)
    other = _charge(harness.gateway, customer_id, saved, key="payment-2", payment_id="2")
    assert harness.gateway.list_refunds(intent_id=paid.intent_id) == []

    first = harness.gateway.refund(
        intent_id=paid.intent_id, amount_cents=2_000, idempotency_key="refund-1"
    )
    second = harness.gateway.refund(
        intent_id=paid.intent_id, amount_cents=1_000, idempotency_key="refund-2"
    )
    harness.gateway.refund(intent_id=other.intent_id, amount_cents=None, idempotency_key="r-3")

    assert harness.gateway.list_refunds(intent_id=paid.intent_id) == [second, first]


def test_a_declined_charge_cannot_be_refunded(harness):
    customer_id, saved = _customer_and_card(harness, CARDS_BY_NUMBER["4000000000000002"])
    declined = _charge(harness.gateway, customer_id, saved)

    with pytest.raises(RefundError):
        harness.gateway.refund(
            intent_id=declined.intent_id, amount_cents=None, idempotency_key="refund-1"
        )


def test_charges_under_fifty_cents_or_without_a_payment_id_are_never_sent(harness):
    customer_id, saved = _customer_and_card(harness)

    with pytest.raises(PaymentError) as too_small:
        _charge(harness.gateway, customer_id, saved, amount_cents=49)
    with pytest.raises(ValueError, match="payment_id"):
        harness.gateway.charge(
            customer_id=customer_id,
            payment_method_id=saved.payment_method_id,
            amount_cents=5_000,
            idempotency_key="k-1",
            metadata={"case_number": "CS-1"},
        )

    assert too_small.value.code == "amount_too_small"
    assert harness.intents_created() == 0


# -- Stripe failures -------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 503, 429, 409])
def test_outages_rate_limits_and_key_locks_are_transient_and_a_retry_charges_once(
    fake_stripe, stripe_gateway, status
):
    customer_id = stripe_gateway.ensure_customer(case_number="CS-1", name="Ana Ruiz")
    # Stripe's test token stands in for a saved card; each use makes a fresh PaymentMethod.
    card = SavedCard("pm_card_visa", "visa", "4242", 12, NEXT_YEAR)
    fake_stripe.fail_next(status=status)

    with pytest.raises(TransientPaymentError):
        _charge(stripe_gateway, customer_id, card)
    retried = _charge(stripe_gateway, customer_id, card)

    assert retried.status is ChargeStatus.SUCCEEDED
    assert fake_stripe.payment_intents_created == 1
    assert fake_stripe.charges_created == 1


def test_an_unreachable_stripe_is_transient():
    gateway = StripeGateway(
        "sk_test_fake", webhook_secret=WEBHOOK_SECRET, base_url=f"http://127.0.0.1:{_free_port()}"
    )

    with pytest.raises(TransientPaymentError):
        gateway.retrieve_payment(intent_id="pi_123")


def test_a_refused_api_key_is_a_configuration_error(fake_stripe):
    gateway = StripeGateway(
        "sk_test_wrong", webhook_secret=WEBHOOK_SECRET, base_url=fake_stripe.url
    )

    with pytest.raises(PaymentConfigError):
        gateway.ensure_customer(case_number="CS-1", name="Ana Ruiz")


# -- webhooks --------------------------------------------------------------------------------


def test_a_correctly_signed_webhook_parses_to_its_event(harness):
    payload, header = _signed({"id": "pi_123", "object": "payment_intent", "amount": 5000})

    event = harness.gateway.parse_webhook(payload=payload, signature_header=header)

    assert event.id == json.loads(payload)["id"]
    assert event.type == "payment_intent.succeeded"
    assert event.object_id == "pi_123"
    assert event.data["amount"] == 5000


def test_a_webhook_signed_with_another_secret_is_rejected(harness):
    payload, header = _signed({"id": "pi_123"}, secret="whsec_attacker")

    with pytest.raises(InvalidWebhook):
        harness.gateway.parse_webhook(payload=payload, signature_header=header)


def test_a_webhook_whose_body_was_altered_is_rejected(harness):
    payload, header = _signed({"id": "pi_123", "amount": 5000})

    with pytest.raises(InvalidWebhook):
        harness.gateway.parse_webhook(
            payload=payload.replace(b"5000", b"9000"), signature_header=header
        )


def test_a_webhook_signed_301_seconds_ago_is_rejected_and_290_accepted(harness):
    stale_payload, stale_header = _signed({"id": "pi_123"}, age=301)
    fresh_payload, fresh_header = _signed({"id": "pi_123"}, age=290)

    with pytest.raises(InvalidWebhook):
        harness.gateway.parse_webhook(payload=stale_payload, signature_header=stale_header)
    assert harness.gateway.parse_webhook(payload=fresh_payload, signature_header=fresh_header)


@pytest.mark.parametrize("header", [None, "", "garbage", "t=abc,v1=00", "v1=deadbeef"])
def test_a_webhook_without_a_usable_signature_header_is_rejected(harness, header):
    payload, _ = _signed({"id": "pi_123"})

    with pytest.raises(InvalidWebhook):
        harness.gateway.parse_webhook(payload=payload, signature_header=header)


def test_gateways_refuse_to_start_without_a_webhook_secret(redis_client):
    with pytest.raises(PaymentConfigError):
        StripeGateway("sk_test_fake", webhook_secret="")
    with pytest.raises(PaymentConfigError):
        SandboxGateway(redis_client, webhook_secret="")


def test_sandbox_signed_events_verify_with_the_stripe_sdk(sandbox):
    payload, header = sandbox.signed_event("payment_intent.succeeded", {"id": "pi_123"})

    assert stripe.WebhookSignature.verify_header(payload, header, WEBHOOK_SECRET, tolerance=300)
    assert sandbox.parse_webhook(payload=payload, signature_header=header).object_id == "pi_123"


# -- sandbox cards ---------------------------------------------------------------------------


def _everything_stored(store: redis.Redis) -> bytes:
    chunks: list[bytes] = []
    for key in store.scan_iter():
        chunks.append(key)
        kind = store.type(key)
        if kind == b"hash":
            chunks.extend(b"%s=%s" % pair for pair in store.hgetall(key).items())
        elif kind == b"string":
            chunks.append(store.get(key) or b"")
        else:
            raise AssertionError(f"the scan does not read {kind!r} keys yet: {key!r}")
    return b"\n".join(chunks)


def _grouped(number: str) -> str:
    """A card number the way payers type it: 4242 4242 4242 4242."""
    return " ".join(number[i : i + 4] for i in range(0, len(number), 4))


def test_sandbox_never_stores_a_card_number(sandbox, redis_client):
    customer_id = sandbox.ensure_customer(case_number="CS-1", name="Ana Ruiz")
    for index, card in enumerate(TEST_CARDS):
        setup = sandbox.create_card_setup(
            customer_id=customer_id, case_number="CS-1", idempotency_key=f"setup-{index}"
        )
        saved = sandbox.save_test_card(
            setup_id=setup.setup_id,
            card_number=_grouped(card.number),
            exp_month=12,
            exp_year=NEXT_YEAR % 100,
            cvc="1234" if card.brand == "amex" else "123",
        )
        _charge(sandbox, customer_id, saved, key=f"k-{index}", payment_id=str(index))

    stored = _everything_stored(redis_client)

    assert b"4242" in stored  # the scan does see the stored last 4 digits
    for card in TEST_CARDS:
        for typed in (card.number, _grouped(card.number)):
            assert typed[:-4].encode() not in stored
            assert typed[-9:].encode() not in stored


@pytest.mark.parametrize(
    ("number", "exp_month", "exp_year", "cvc", "code"),
    [
        ("4111111111111111", 12, NEXT_YEAR, "123", "not_test_card"),
        ("4242424242424241", 12, NEXT_YEAR, "123", "invalid_number"),
        ("4242", 12, NEXT_YEAR, "123", "invalid_number"),
        ("4242424242424242", 13, NEXT_YEAR, "123", "invalid_expiry_month"),
        ("4242424242424242", 1, 2020, "123", "invalid_expiry_year"),
        ("4242424242424242", 12, NEXT_YEAR, "12", "invalid_cvc"),
        ("378282246310005", 12, NEXT_YEAR, "123", "invalid_cvc"),
    ],
)
def test_sandbox_refuses_cards_that_are_not_valid_test_cards(
    sandbox, number, exp_month, exp_year, cvc, code
):
    customer_id = sandbox.ensure_customer(case_number="CS-1", name="Ana Ruiz")
    setup = sandbox.create_card_setup(
        customer_id=customer_id, case_number="CS-1", idempotency_key="setup-1"
    )

    with pytest.raises(CardError) as refused:
        sandbox.save_test_card(
            setup_id=setup.setup_id,
            card_number=number,
            exp_month=exp_month,
            exp_year=exp_year,
            cvc=cvc,
        )

    assert refused.value.code == code
    assert number not in str(refused.value)
    if code == "not_test_card":
        assert "Only Stripe test card numbers work in the sandbox" in str(refused.value)


def test_a_sandbox_card_form_submitted_twice_saves_one_card(sandbox):
    customer_id = sandbox.ensure_customer(case_number="CS-1", name="Ana Ruiz")
    setup = sandbox.create_card_setup(
        customer_id=customer_id, case_number="CS-1", idempotency_key="setup-1"
    )
    form = {"card_number": VISA.number, "exp_month": 12, "exp_year": NEXT_YEAR, "cvc": "123"}
    saved = sandbox.save_test_card(setup_id=setup.setup_id, **form)

    with pytest.raises(CardError):
        sandbox.save_test_card(setup_id=setup.setup_id, **form)
    assert sandbox.card_from_setup(setup_id=setup.setup_id) == saved


def test_sandbox_authentication_needs_the_intents_own_client_secret(sandbox):
    customer_id = sandbox.ensure_customer(case_number="CS-1", name="Ana Ruiz")
    setup = sandbox.create_card_setup(
        customer_id=customer_id, case_number="CS-1", idempotency_key="setup-1"
    )
    saved = sandbox.save_test_card(
        setup_id=setup.setup_id,
        card_number=AUTHENTICATION_CARD.number,
        exp_month=12,
        exp_year=NEXT_YEAR,
        cvc="123",
    )
    pending = _charge(sandbox, customer_id, saved)

    with pytest.raises(PaymentError):
        sandbox.confirm_authentication(intent_id=pending.intent_id, client_secret="pi_x_secret_y")
    assert sandbox.retrieve_payment(intent_id=pending.intent_id).status is (
        ChargeStatus.REQUIRES_ACTION
    )


def test_stripe_reads_a_dispute_as_it_stands_and_the_sandbox_has_none(
    fake_stripe, stripe_gateway, sandbox
):
    browser = stripe.StripeClient(fake_stripe.secret_key, base_addresses={"api": fake_stripe.url})
    customer_id = stripe_gateway.ensure_customer(case_number="CS-1", name="Ana Ruiz")
    setup = stripe_gateway.create_card_setup(
        customer_id=customer_id, case_number="CS-1", idempotency_key="setup-1"
    )
    browser.v1.setup_intents.confirm(setup.setup_id, params={"payment_method": VISA.token})
    saved = stripe_gateway.card_from_setup(setup_id=setup.setup_id)
    paid = _charge(stripe_gateway, customer_id, saved)
    opened = fake_stripe.dispute(paid.charge_id)

    found = stripe_gateway.retrieve_dispute(dispute_id=opened["id"])
    assert (found.status, found.amount_cents, found.intent_id) == (
        "needs_response",
        12_500,
        paid.intent_id,
    )
    assert found.funds_withdrawn
    fake_stripe.close_dispute(opened["id"], "won")
    assert not stripe_gateway.retrieve_dispute(dispute_id=opened["id"]).funds_withdrawn
    with pytest.raises(PaymentNotFound):
        sandbox.retrieve_dispute(dispute_id=opened["id"])


# -- the interface ---------------------------------------------------------------------------


def test_both_gateways_take_exactly_the_protocols_arguments():
    methods = [name for name, value in vars(PaymentGateway).items() if inspect.isfunction(value)]
    methods = [name for name in methods if not name.startswith("_")]

    def shape(function: Callable) -> list[tuple]:
        signature = inspect.signature(function)
        parameters = [
            (p.name, p.kind, p.default, p.annotation) for p in signature.parameters.values()
        ]
        return [*parameters, signature.return_annotation]

    assert len(methods) == 11
    for name in methods:
        expected = shape(getattr(PaymentGateway, name))
        assert shape(getattr(StripeGateway, name)) == expected, name
        assert shape(getattr(SandboxGateway, name)) == expected, name
    assert {StripeGateway.name, SandboxGateway.name} == {"stripe", "sandbox"}


def test_an_issuers_soft_decline_asking_for_authentication_waits_for_the_payer():
    # The issuer, not Stripe, asked for 3D Secure: a card_declined error whose decline_code is
    # authentication_required. The payer can approve it on-session; their card is fine.
    from billing.stripe_gateway import _charge_from_intent

    method = {"id": "pm_1", "card": {"brand": "visa", "last4": "3184"}}
    intent = {
        "id": "pi_1",
        "amount": 25_000,
        "status": "requires_payment_method",
        "client_secret": "pi_1_secret_abc",
        "payment_method": None,
        "metadata": {"payment_id": "7"},
        "last_payment_error": {
            "type": "card_error",
            "code": "card_declined",
            "decline_code": "authentication_required",
            "message": "Your card was declined. This transaction requires authentication.",
            "payment_method": method,
        },
    }

    result = _charge_from_intent(intent)

    assert result.status is ChargeStatus.REQUIRES_ACTION
    assert result.client_secret == "pi_1_secret_abc"
    assert result.card_last4 == "3184"
