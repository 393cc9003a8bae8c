"""End to end through the webhook, on the sandbox: PAY -> quote -> YES -> receipt."""

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlmodel import select

from billing.cards import attach_test_card
from billing.cycles import previous_due_date
from bot.catalog.en import format_date
from models import Case, ConversationTurn, Payment, PaymentStatus, utcnow
from tests.factories import make_case, make_enrollment
from tests.sms_helpers import inbound_params, post_signed, replies


def text(client, body, phone="+16175550134"):
    return replies(post_signed(client, "/sms/inbound", inbound_params(body, phone), None))


@pytest.fixture
def payer(app, session):
    case = make_case(
        session, case_number="CS-004821", amount_due_cents=25_000, balance_cents=100_000
    )
    make_enrollment(session, case, "+16175550134")
    with app.app_context():
        attach_test_card(
            session=session,
            gateway=app.extensions["payments"],
            case=case,
            number="4242424242424242",
            exp_month=12,
            exp_year=2030,
        )
        session.commit()
    return case


def test_pay_quotes_yes_charges_once_and_a_receipt_follows(app, client, session, payer):
    (quote,) = text(client, "PAY")
    assert "$250.00" in quote and "4242" in quote
    (processing,) = text(client, "YES")
    assert "being processed" in processing.lower()
    session.expire_all()
    payment = session.exec(select(Payment)).one()
    assert (payment.status, payment.amount_cents) == (PaymentStatus.SUCCEEDED, 25_000)
    assert session.get(Case, payer.id).balance_cents == 75_000
    receipt = app.extensions["sms"].sent[-1]
    assert "$250.00" in receipt.body and payment.confirmation_code in receipt.body
    assert "$750.00" in receipt.body
    logged = session.exec(
        select(ConversationTurn).where(ConversationTurn.payment_id == payment.id)
    ).all()
    assert receipt.body in {turn.body for turn in logged}
    # A second YES has no live quote: nothing more is charged.
    text(client, "YES")
    session.expire_all()
    assert len(session.exec(select(Payment)).all()) == 1
    assert session.get(Case, payer.id).balance_cents == 75_000


def test_pay_an_amount_over_the_balance_is_refused_before_any_charge(client, session, payer):
    (reply,) = text(client, "PAY 2000")
    assert "$1,000.00" in reply
    text(client, "YES")
    assert session.exec(select(Payment)).all() == []


def test_pay_with_no_card_sends_a_secure_link(client, session):
    case = make_case(session)
    make_enrollment(session, case, "+16175550155")
    (reply,) = text(client, "PAY", phone="+16175550155")
    assert "http://paytext.test/pay/card/" in reply


@pytest.fixture
def queued(config):
    """Charges wait in Redis for a worker instead of running inline."""
    config["RQ_ASYNC"] = True


def test_a_second_quick_payment_over_the_balance_is_refused_with_a_reason(
    queued, app, client, session, payer
):
    text(client, "PAY 600")
    text(client, "YES")
    # The $600.00 not charged yet holds its share of the $1,000.00: no quote for 600 more.
    (refused,) = text(client, "PAY 600")
    assert "$600.00 is still processing" in refused and "up to $400.00" in refused
    (reply,) = text(client, "YES")
    assert "being processed" not in reply.lower()
    assert len(session.exec(select(Payment)).all()) == 1
    (quote,) = text(client, "PAY 400")
    assert "Reply YES" in quote


@pytest.mark.parametrize("balance", [30, 49])
def test_a_balance_below_the_smallest_charge_is_not_offered_and_the_payer_is_told_whom_to_call(
    client, session, payer, balance
):
    payer.balance_cents = balance
    session.add(payer)
    session.commit()
    (reply,) = text(client, "PAY")
    assert "Reply YES" not in reply  # no quote that YES could never charge
    assert f"$0.{balance}" in reply and "$0.50" in reply and "800-555-0134" in reply
    (again,) = text(client, f"PAY 0.{balance}")
    assert again == reply
    text(client, "YES")
    assert session.exec(select(Payment)).all() == []


def test_a_balance_at_the_smallest_charge_can_still_be_paid_off(client, session, payer):
    payer.balance_cents = 50
    session.add(payer)
    session.commit()
    (quote,) = text(client, "PAY")
    assert "$0.50" in quote
    (processing,) = text(client, "YES")
    assert "being processed" in processing.lower()
    session.expire_all()
    assert session.get(Case, payer.id).balance_cents == 0


def local_date(case, moment) -> str:
    """A date as the payer's texts write it, in the case's zone."""
    return format_date(moment.astimezone(ZoneInfo(case.timezone)).date())


def test_once_this_cycle_is_paid_bal_says_it_is_covered_and_pay_asks_how_much(
    app, client, session, payer
):
    """The reviewer's sequence: PAY, YES, receipt, then BAL and PAY."""
    due = format_date(payer.next_due_date)
    text(client, "PAY")
    text(client, "YES")
    assert "New balance: $750.00" in app.extensions["sms"].sent[-1].body
    (balance,) = text(client, "BAL")
    assert balance == (
        f"Case ending 4821: balance $750.00. Your $250.00 payment due {due} is covered. "
        "To pay more, reply PAY and an amount."
    )
    (asked,) = text(client, "PAY")
    assert asked == (
        f"Your $250.00 payment due {due} on case ending 4821 is covered. Your balance is "
        "$750.00. To pay more, reply PAY and an amount, like PAY 50."
    )
    (nothing,) = text(client, "YES")  # no quote was made: nothing to confirm, nothing charged
    assert "no payment waiting" in nothing.lower()
    session.expire_all()
    assert len(session.exec(select(Payment)).all()) == 1
    # Paying ahead is still a PAY and an amount away.
    (extra,) = text(client, "PAY 100")
    assert extra.startswith("Pay $100.00 on case ending 4821")
    assert "processing" not in extra


@pytest.fixture
def needs_approval(app, session):
    """A case whose card's bank asks the payer to approve each payment (3-D Secure)."""
    case = make_case(
        session, case_number="CS-007730", amount_due_cents=25_000, balance_cents=100_000
    )
    make_enrollment(session, case, "+16175550177")
    with app.app_context():
        attach_test_card(
            session=session,
            gateway=app.extensions["payments"],
            case=case,
            number="4000002760003184",
            exp_month=12,
            exp_year=2030,
        )
        session.commit()
    return case


def test_a_payment_waiting_for_approval_is_named_before_a_second_one_which_stays_allowed(
    client, session, needs_approval
):
    phone = "+16175550177"
    due = format_date(needs_approval.next_due_date)
    text(client, "PAY", phone)
    text(client, "YES", phone)
    session.expire_all()
    first = session.exec(select(Payment)).one()
    assert first.status == PaymentStatus.REQUIRES_ACTION
    made = local_date(needs_approval, first.created_at)
    waiting = f"A payment of $250.00 from {made} is still processing."
    # Not through yet: the balance is unchanged, but the installment is no longer asked for.
    (balance,) = text(client, "BAL", phone)
    assert balance == (
        f"Case ending 7730: balance $1,000.00. Your $250.00 payment due {due} is covered. "
        f"{waiting} To pay more, reply PAY and an amount."
    )
    (asked,) = text(client, "PAY", phone)
    assert "is covered" in asked and waiting in asked
    (quote,) = text(client, "PAY 250", phone)
    assert quote.startswith("Pay $250.00 on case ending 7730") and waiting in quote
    (processing,) = text(client, "YES", phone)
    assert "being processed" in processing.lower()
    session.expire_all()
    payments = session.exec(select(Payment).order_by(Payment.id)).all()
    assert [(p.amount_cents, p.status) for p in payments] == [
        (25_000, PaymentStatus.REQUIRES_ACTION),
        (25_000, PaymentStatus.REQUIRES_ACTION),
    ]


def paid_on(session, case, amount: int, at, status=PaymentStatus.SUCCEEDED) -> None:
    """A payment by text made at `at` (the balance is set by the test)."""
    session.add(
        Payment(
            case_id=case.id,
            amount_cents=amount,
            status=status,
            idempotency_key=f"paid-{case.id}-{at.isoformat()}",
            created_at=at,
            succeeded_at=at,
        )
    )
    session.commit()


def texting_case(session, *, due, balance: int, phone: str = "+16175550190"):
    """A case whose payer has paid by text for months, owing $250.00 a cycle."""
    case = make_case(session, next_due_date=due, balance_cents=balance, amount_due_cents=25_000)
    make_enrollment(session, case, phone, confirmed_at=utcnow() - timedelta(days=400))
    return case


def test_last_cycles_installment_paid_late_leaves_this_cycles_to_pay_as_reminders_judge_it(
    client, session
):
    due = utcnow().date() + timedelta(days=10)
    case = texting_case(session, due=due, balance=75_000)
    late = datetime.combine(previous_due_date(due) + timedelta(days=2), time(12), tzinfo=UTC)
    paid_on(session, case, 25_000, late)
    (balance,) = text(client, "BAL", "+16175550190")
    assert f"Next payment: $250.00 due {format_date(due)}." in balance


def test_a_case_long_overdue_has_its_cycle_read_from_as_far_back_as_it_began(client, session):
    due = utcnow().date() - timedelta(days=80)  # its cycle began some 110 days ago
    case = texting_case(session, due=due, balance=50_000)
    began = datetime.combine(previous_due_date(due) + timedelta(days=2), time(12), tzinfo=UTC)
    last_due = datetime.combine(previous_due_date(due), time(12), tzinfo=UTC)
    paid_on(session, case, 25_000, last_due)  # the cycle before, on its due date
    paid_on(session, case, 25_000, began)
    for days in (1, 2, 3):  # newer, but taken back by the bank: they pay nothing
        paid_on(session, case, 5_000, utcnow() - timedelta(days=days), PaymentStatus.DISPUTE_LOST)
    (balance,) = text(client, "BAL", "+16175550190")
    assert f"Your $250.00 payment due {format_date(due)} is covered." in balance


@pytest.fixture
def own_redis(config, tmp_path):
    """A Redis of the test's own, which it can stop and start again with its data."""
    from scripts import embedded_redis

    (tmp_path / "redis").mkdir()
    server = embedded_redis.start(data_dir=str(tmp_path / "redis"))
    config["REDIS_URL"] = f"{server.url}/0"
    yield server
    server.stop()


def test_a_yes_while_redis_is_down_is_answered_and_charged_once_redis_is_back(
    own_redis, app, client, session, payer, tmp_path
):
    from billing.jobs import resume_payments
    from scripts import embedded_redis

    text(client, "PAY")
    own_redis.stop()

    (processing,) = text(client, "YES")

    assert "being processed" in processing.lower()
    payment = session.exec(select(Payment)).one()
    assert payment.status == PaymentStatus.PENDING
    back = embedded_redis.start(own_redis.port, data_dir=str(tmp_path / "redis"))
    try:
        with app.app_context():
            assert resume_payments(stale_after_seconds=0) == 1
        session.expire_all()
        assert session.get(Payment, payment.id).status == PaymentStatus.SUCCEEDED
        assert session.get(Case, payer.id).balance_cents == 75_000
    finally:
        back.stop()


def test_card_texts_a_link_to_replace_the_card_on_file_that_works(app, client, session, payer):
    # An expired or lost card: PAY would quote the old one, so CARD sends a fresh link.
    (reply,) = text(client, "CARD")
    assert "To replace your card ending 4242" in reply and "/pay/card/" in reply
    token = reply.split("/pay/card/")[1].split()[0]
    assert client.get(f"/pay/card/{token}").status_code == 200  # a live link, not the old one
    (spanish,) = text(client, "cambiar mi tarjeta", phone="+16175550134")
    assert "/pay/card/" in spanish
    turn = session.exec(select(ConversationTurn).where(ConversationTurn.intent == "card")).first()
    assert turn is not None and turn.case_id == payer.id
    assert token not in turn.body  # the link's token is never kept


def test_card_with_no_card_on_file_sends_the_add_a_card_link(client, session):
    case = make_case(session, case_number="CS-004822")
    make_enrollment(session, case, "+16175550136")
    (reply,) = text(client, "new card", phone="+16175550136")
    assert "first add a debit or credit card here" in reply and "/pay/card/" in reply
