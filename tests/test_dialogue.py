"""The conversation: what a payer's message does, given the state and the case facts."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

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
    Outcome,
    PaymentFacts,
    PhoneStatus,
    Policy,
    Quote,
    SendCardLink,
    SetLanguage,
    Stage,
    State,
    needs_payments,
    phone_status,
    step,
)
from bot.messages import placeholders, render_reply
from bot.parse import parse
from bot.segments import segments
from jobs.schedule import parse_business_hours

LA = "America/Los_Angeles"
NY = "America/New_York"
WED_10AM_LA = datetime(2025, 12, 3, 18, 0, tzinfo=UTC)
POLICY = Policy(agency_name="Riverside County DCSS", agency_phone="+18663994096")
VISA = CardFacts("Visa", "1234")
CARD_URL = "https://pay.example.gov/c/abc123"


def case(**changes) -> CaseFacts:
    """Case 4821: $1,250.00 owed, $250.00 due Dec 15, Visa on file."""
    base = CaseFacts(
        case_id=1,
        case_number="CS-2024-004821",
        amount_due_cents=25_000,
        balance_cents=125_000,
        next_due_date=date(2025, 12, 15),
        timezone=LA,
        card=VISA,
    )
    return replace(base, **changes)


SECOND = case(case_id=2, case_number="CS-2023-017730", balance_cents=40_000, amount_due_cents=0)


def facts(*cases: CaseFacts, **changes) -> Facts:
    base = Facts(
        now=WED_10AM_LA,
        language="en",
        phone_status=PhoneStatus.ACTIVE,
        policy=POLICY,
        nonce="SM0001",
        cases=cases or (case(),),
    )
    return replace(base, **changes)


def send(body: str, known: Facts | None = None, state: State | None = None) -> Outcome:
    return step(state or State(), parse(body), known or facts())


def keys(outcome: Outcome) -> tuple[str, ...]:
    return tuple(reply.key for reply in outcome.replies)


def texts(outcome: Outcome) -> list[str]:
    """Render replies as the web layer does, filling the card link when one was asked for."""
    out = []
    for reply in outcome.replies:
        if "url" in placeholders(reply.key):
            assert any(isinstance(a, SendCardLink) for a in outcome.actions)
            reply = reply.with_params(url=CARD_URL)
        out.append(render_reply(reply, outcome.language))
    return out


def text(outcome: Outcome) -> str:
    (only,) = texts(outcome)
    return only


def conversation(*bodies: str, known: Facts | None = None, minutes_apart: int = 1) -> Outcome:
    """Send several messages in a row, a minute apart, each with its own message id."""
    known = known or facts()
    state, outcome = State(), None
    for i, body in enumerate(bodies):
        now = known.now + timedelta(minutes=i * minutes_apart)
        outcome = step(state, parse(body), replace(known, now=now, nonce=f"SM{i:04d}"))
        state = outcome.state
    assert outcome is not None
    return outcome


# STOP and consent.


@pytest.mark.parametrize(
    "before",
    [
        (),
        ("PAY",),  # awaiting confirmation
        ("BAL",),  # choosing a case (two cases below)
    ],
)
def test_stop_opts_out_with_exactly_one_confirmation_from_any_state(before):
    outcome = conversation(*before, "STOP", known=facts(case(), SECOND))
    assert outcome.actions == (OptOut(),)
    assert keys(outcome) == ("opted_out",)
    assert outcome.state.stage is Stage.IDLE and outcome.state.quote is None


@pytest.mark.parametrize("status", list(PhoneStatus))
def test_stop_opts_out_whatever_the_phone_status(status):
    outcome = send("stop", facts(phone_status=status))
    assert OptOut() in outcome.actions


def test_the_stop_confirmation_reads_like_a_carrier_confirmation():
    assert text(send("STOP")) == (
        "You're unsubscribed from Riverside County DCSS texts. No more messages will be sent. "
        "Reply START to resubscribe."
    )


def test_a_sentence_that_plainly_revokes_consent_opts_out():
    assert send("please stop texting me").actions == (OptOut(),)
    assert send("ya no me envíen mensajes").actions == (OptOut(),)


def test_stop_in_the_middle_of_a_payment_means_a_later_yes_charges_nothing():
    stopped = conversation("PAY", "STOP")
    later = step(stopped.state, parse("YES"), facts(phone_status=PhoneStatus.OPTED_OUT))
    assert not any(isinstance(a, ChargeQuote) for a in later.actions)


def test_a_repeated_stop_is_recorded_again_but_not_answered():
    outcome = send("STOP", facts(phone_status=PhoneStatus.OPTED_OUT))
    assert outcome.actions == (OptOut(),)
    assert outcome.replies == ()


@pytest.mark.parametrize("body", ["BAL", "PAY 50", "hello", "MENU", "2", "agent", "ESPAÑOL", "no"])
def test_an_opted_out_phone_gets_no_reply_and_nothing_done(body):
    outcome = send(body, facts(phone_status=PhoneStatus.OPTED_OUT))
    assert outcome.replies == () and outcome.actions == ()


@pytest.mark.parametrize(
    ("body", "confirmation"),
    [
        ("START", "Reply HELP for help, STOP to opt out."),
        ("unstop", "Reply HELP for help, STOP to opt out."),
        ("YES", "Reply HELP for help, STOP to opt out."),
        # Written in Spanish, answered in Spanish.
        ("sí", "Responda AYUDA para obtener ayuda o STOP para darse de baja."),
        ("comenzar", "Responda AYUDA para obtener ayuda o STOP para darse de baja."),
    ],
)
def test_start_or_yes_while_opted_out_opts_back_in_with_a_confirmation(body, confirmation):
    outcome = send(body, facts(phone_status=PhoneStatus.OPTED_OUT))
    assert outcome.actions == (OptIn(),)
    assert keys(outcome) == ("opted_in",)
    assert confirmation in text(outcome)


@pytest.mark.parametrize("body", ["ok", "Ok thanks", "Ok gracias", "sure", "claro", "yeah"])
def test_an_acknowledgement_of_the_opt_out_does_not_re_subscribe(body):
    outcome = send(body, facts(phone_status=PhoneStatus.OPTED_OUT))
    assert outcome.actions == () and outcome.replies == ()


def test_help_is_answered_even_while_opted_out():
    outcome = send("HELP", facts(phone_status=PhoneStatus.OPTED_OUT))
    # It says the number is unsubscribed and how to come back; no MENU, which would go unanswered.
    assert keys(outcome) == ("help_opted_out",) and outcome.actions == ()
    assert "MENU" not in text(outcome) and "Reply START" in text(outcome)
    assert "STOP" not in text(outcome)


# Double opt-in.


def test_yes_on_a_pending_enrollment_activates_and_says_what_texts_to_expect():
    outcome = send("YES", facts(phone_status=PhoneStatus.PENDING))
    assert outcome.actions == (Activate(),)
    welcome = text(outcome)
    for words in ("reminders", "receipts", "about 6 msgs/month", "Msg & data rates may apply"):
        assert words in welcome
    assert welcome.endswith("Reply HELP for help, STOP to opt out.")


def test_si_on_a_pending_enrollment_welcomes_in_spanish():
    outcome = send("Sí", facts(phone_status=PhoneStatus.PENDING, language="es"))
    assert outcome.actions == (Activate(),)
    assert "Pueden aplicarse tarifas de mensajes y datos" in text(outcome)


def test_yes_from_a_phone_active_on_one_case_accepts_the_invitation_for_another():
    invited = facts(invited=True)
    outcome = send("YES", invited)
    assert outcome.actions == (Activate(),) and keys(outcome) == ("welcome",)
    assert send("START", invited).actions == (Activate(), OptIn())  # and any stopped case
    # A live quote comes first: YES pays it, the invitation waits.
    assert isinstance(conversation("PAY", "YES", known=invited).actions[0], ChargeQuote)
    assert send("ok", invited).actions == ()  # only a plain YES answers an invitation


def test_no_from_a_phone_active_on_one_case_declines_only_the_invitation_for_another():
    invited = facts(invited=True)
    outcome = send("no", invited)
    assert outcome.actions == (DeclineInvitation(),) and keys(outcome) == ("invite_declined",)
    # A live quote comes first: NO drops the payment, the invitation waits.
    quoted = conversation("PAY", "NO", known=invited)
    assert quoted.actions == () and keys(quoted) == ("pay_cancelled",)
    # Without an invitation, NO is only NO.
    assert keys(send("no")) == ("nothing_to_confirm",)


def test_yes_after_an_invitation_answers_it_even_with_an_old_payment_offer_kept():
    invited = facts(invited=True)
    outcome = conversation("PAY", "YES", known=invited, minutes_apart=3 * 24 * 60)
    assert outcome.actions == (Activate(),) and keys(outcome) == ("welcome",)
    # Without an invitation waiting, the late YES quotes again, as for anyone.
    assert keys(conversation("PAY", "YES", minutes_apart=3 * 24 * 60)) == (
        "quote_expired",
        "pay_quote",
    )


def test_start_on_a_pending_phone_also_opts_back_in_its_stopped_cases():
    outcome = send("START", facts(phone_status=PhoneStatus.PENDING))
    assert outcome.actions == (Activate(), OptIn())
    assert send("YES", facts(phone_status=PhoneStatus.PENDING)).actions == (Activate(),)


def test_no_on_a_pending_enrollment_declines_like_an_opt_out():
    outcome = send("no", facts(phone_status=PhoneStatus.PENDING))
    assert outcome.actions == (OptOut(),)
    assert keys(outcome) == ("enroll_declined",)


@pytest.mark.parametrize("body", ["BAL", "PAY 50", "hello", "4821"])
def test_anything_else_while_pending_asks_for_yes_and_reveals_nothing(body):
    outcome = send(body, facts(phone_status=PhoneStatus.PENDING))
    assert keys(outcome) == ("confirm_enrollment",)
    assert outcome.actions == ()
    assert "$" not in text(outcome)


def test_a_language_switch_while_pending_repeats_the_question_in_that_language():
    outcome = send("español", facts(phone_status=PhoneStatus.PENDING))
    assert outcome.actions == (SetLanguage("es"),)
    assert text(outcome).startswith("Riverside County DCSS: Responda SI para recibir")


# Numbers that are on no case.


@pytest.mark.parametrize("body", ["BAL", "PAY 50", "4821", "HELP", "hi"])
def test_an_unknown_number_gets_a_generic_reply_and_learns_nothing(body):
    outcome = send(body, facts(phone_status=PhoneStatus.UNENROLLED, cases=()))
    assert outcome.actions == ()
    assert text(outcome) == (
        "Riverside County DCSS: We couldn't find a case for this phone number. "
        "Please call (866) 399-4096. Msg & data rates may apply. Reply STOP to opt out."
    )


def test_an_unknown_number_writing_in_spanish_is_answered_in_spanish():
    outcome = send("hola, cuánto debo", facts(phone_status=PhoneStatus.UNENROLLED, cases=()))
    assert "No encontramos un caso con este teléfono" in text(outcome)


@pytest.mark.parametrize(
    ("body", "disclosure"),
    [
        ("HELP", "Msg & data rates may apply"),
        ("AYUDA", "Pueden aplicarse tarifas de mensajes y datos"),
    ],
)
def test_help_from_an_unknown_number_still_says_what_carriers_require(body, disclosure):
    """HELP answers name the program, a contact, the rates and how to stop (CTIA), enrolled or
    not."""
    reply = text(send(body, facts(phone_status=PhoneStatus.UNENROLLED, cases=())))
    assert reply.startswith("Riverside County DCSS: ")
    assert "(866) 399-4096" in reply
    assert disclosure in reply
    assert "STOP" in reply


# Numbers that texted STOP before they were on any case.


def test_a_number_that_texted_stop_while_on_no_case_stands_opted_out():
    assert phone_status((), opted_out=True) is PhoneStatus.OPTED_OUT
    assert phone_status((), opted_out=False) is PhoneStatus.UNENROLLED


def test_a_stop_recorded_for_the_number_wins_over_any_case_status():
    for statuses in (("active",), ("pending",), ("active", "opted_out"), ("undeliverable",)):
        assert phone_status(statuses, opted_out=True) is PhoneStatus.OPTED_OUT


def test_without_a_stop_for_the_number_its_cases_decide_where_it_stands():
    assert phone_status(("opted_out", "active"), opted_out=False) is PhoneStatus.ACTIVE
    assert phone_status(("opted_out", "pending"), opted_out=False) is PhoneStatus.PENDING
    assert phone_status(("undeliverable",), opted_out=False) is PhoneStatus.OPTED_OUT
    assert phone_status(("opted_out",), opted_out=False) is PhoneStatus.OPTED_OUT


@pytest.mark.parametrize(
    ("body", "confirmation"),
    [
        ("STOP", "You're unsubscribed from Riverside County DCSS texts."),
        ("ALTO", "Se dio de baja de los mensajes de Riverside County DCSS."),
        ("no me manden mas mensajes", "Se dio de baja de los mensajes de Riverside County DCSS."),
    ],
)
def test_stop_from_a_number_on_no_case_is_confirmed_in_the_language_it_was_written_in(
    body, confirmation
):
    outcome = send(body, facts(phone_status=PhoneStatus.UNENROLLED, cases=()))
    assert outcome.actions == (OptOut(),)
    assert text(outcome).startswith(confirmation)


@pytest.mark.parametrize("body", ["hola", "hi", "BAL", "PAY 50", "4821", "MENU", "ok", "no"])
def test_a_number_on_no_case_that_opted_out_gets_no_reply(body):
    outcome = send(body, facts(phone_status=PhoneStatus.OPTED_OUT, cases=(), enrolled=False))
    assert outcome.replies == () and outcome.actions == ()


def test_a_number_on_no_case_that_opted_out_is_answered_help_and_can_opt_back_in():
    """Told again that no case has this number, not promised payment texts it will not get."""
    stopped = facts(phone_status=PhoneStatus.OPTED_OUT, cases=(), enrolled=False)
    help_reply = send("HELP", stopped)
    assert keys(help_reply) == ("help_opted_out_no_case",)
    # Opted out already: not told to text STOP, but how to come back.
    assert "STOP" not in text(help_reply) and "Reply START" in text(help_reply)
    assert "couldn't find a case" in text(help_reply) and "(866) 399-4096" in text(help_reply)
    spanish = send("AYUDA", stopped)
    assert "STOP" not in text(spanish) and "Responda START" in text(spanish)
    assert "no encontramos un caso" in text(spanish)
    for body in ("START", "UNSTOP", "YES"):
        outcome = send(body, stopped)
        assert outcome.actions == (OptIn(),) and keys(outcome) == ("unknown_number",)


def test_a_payer_on_a_case_who_opted_out_is_answered_help_and_welcomed_back():
    stopped = facts(phone_status=PhoneStatus.OPTED_OUT, cases=(), enrolled=True)
    assert keys(send("HELP", stopped)) == ("help_opted_out",)
    outcome = send("START", stopped)
    assert outcome.actions == (OptIn(),) and keys(outcome) == ("opted_in",)


# Paying.


def test_pay_quotes_the_amount_due_with_the_card_and_due_date_and_asks_yes_or_no():
    outcome = send("PAY")
    assert text(outcome) == (
        "Pay $250.00 on case ending 4821 with your Visa card ending 1234? Due Dec 15. "
        "Reply YES within 10 minutes to pay, or NO if you do not want to."
    )
    quote = outcome.state.quote
    assert outcome.state.stage is Stage.AWAITING_CONFIRMATION
    assert (quote.case_id, quote.amount_cents, quote.last4) == (1, 25_000, "1234")
    assert quote.expires_at == WED_10AM_LA + timedelta(minutes=10)
    assert outcome.actions == ()  # nothing is charged before YES


def test_pay_with_an_amount_quotes_that_amount():
    assert send("pay $1,000").state.quote.amount_cents == 100_000
    assert send("quiero pagar 40.50").state.quote.amount_cents == 4_050


def test_the_quote_is_never_more_than_the_balance():
    outcome = send("PAY", facts(case(amount_due_cents=25_000, balance_cents=10_000)))
    assert outcome.state.quote.amount_cents == 10_000


def test_yes_on_a_live_quote_charges_it_once_and_goes_back_to_idle():
    quoted = conversation("PAY")
    outcome = conversation("PAY", "YES")
    quote = quoted.state.quote
    assert outcome.actions == (ChargeQuote(1, 25_000, quote.quote_id, "1234"),)
    assert text(outcome) == (
        "Thank you. Your payment of $250.00 is being processed. We'll text your receipt shortly."
    )
    assert outcome.state.stage is Stage.IDLE
    again = conversation("PAY", "YES", "YES")
    assert again.actions == () and keys(again) == ("nothing_to_confirm",)


def test_each_quote_has_its_own_id_and_a_retried_message_gets_the_same_one():
    first = send("PAY", facts(nonce="SMaaa")).state.quote.quote_id
    retried = send("PAY", facts(nonce="SMaaa")).state.quote.quote_id
    other = send("PAY", facts(nonce="SMbbb")).state.quote.quote_id
    assert first == retried != other


def test_yes_after_the_quote_expired_quotes_again_instead_of_charging():
    outcome = conversation("PAY", "YES", minutes_apart=10)
    assert not any(isinstance(a, ChargeQuote) for a in outcome.actions)
    assert keys(outcome) == ("quote_expired", "pay_quote")
    assert outcome.state.quote.expires_at == WED_10AM_LA + timedelta(minutes=20)
    assert texts(outcome)[0] == "Your last payment offer expired, so nothing was charged."


def test_yes_just_before_the_quote_expires_still_charges():
    state = send("PAY").state
    outcome = step(state, parse("yes"), facts(now=WED_10AM_LA + timedelta(minutes=9, seconds=59)))
    assert isinstance(outcome.actions[0], ChargeQuote)


def test_yes_after_the_card_changed_quotes_again_with_the_new_card():
    state = send("PAY").state
    new_card = facts(case(card=CardFacts("Mastercard", "9876")), nonce="SM0002")
    outcome = step(state, parse("YES"), new_card)
    assert outcome.actions == ()
    assert "Mastercard card ending 9876" in texts(outcome)[1]


def test_no_on_a_quote_cancels_it():
    outcome = conversation("PAY", "no")
    assert outcome.actions == () and outcome.state.quote is None
    assert text(outcome) == (
        "OK, the payment is canceled and nothing was charged. Reply PAY to start again."
    )


def test_an_unreadable_reply_to_a_quote_repeats_the_question_and_keeps_the_quote():
    outcome = conversation("PAY", "hmm")
    assert (
        text(outcome)
        == "Reply YES to pay $250.00 with your card ending 1234, or NO if you do not want to."
    )
    assert outcome.state.quote is not None
    assert isinstance(conversation("PAY", "hmm", "yes").actions[0], ChargeQuote)


@pytest.mark.parametrize("body", ["yes pay 100", "Sí, pagar 100", "yes but only $100"])
def test_yes_naming_another_amount_quotes_that_amount_and_charges_nothing(body):
    outcome = conversation("PAY", body)
    assert outcome.actions == ()
    assert outcome.state.quote.amount_cents == 10_000
    assert "$100.00" in text(outcome)
    assert isinstance(conversation("PAY", body, "YES").actions[0], ChargeQuote)
    assert conversation("PAY", body, "YES").actions[0].amount_cents == 10_000


def test_yes_naming_the_quoted_amount_charges_it():
    outcome = conversation("PAY", "yes 250")
    assert outcome.actions[0].amount_cents == 25_000


def test_yes_with_an_amount_that_cannot_be_taken_says_so_and_charges_nothing():
    outcome = conversation("PAY", "yes 0.999")
    assert outcome.actions == () and keys(outcome) == ("amount_format",)


def test_yes_long_after_a_quote_quotes_again():
    outcome = conversation("PAY", "YES", minutes_apart=45)
    assert keys(outcome) == ("quote_expired", "pay_quote")
    assert outcome.actions == ()


def test_a_language_switch_during_a_quote_keeps_it_and_asks_again_in_that_language():
    outcome = conversation("PAY", "ESPAÑOL")
    assert outcome.language == "es" and outcome.state.quote is not None
    assert keys(outcome) == ("language_set", "confirm_prompt")
    assert "$250.00" in texts(outcome)[1]
    assert isinstance(conversation("PAY", "ESPAÑOL", "SI").actions[-1], ChargeQuote)


def test_a_language_switch_while_choosing_a_case_asks_again_in_that_language():
    outcome = conversation("BAL", "SPANISH", known=TWO_CASES)
    assert keys(outcome) == ("language_set", "choose_case")
    assert outcome.state.stage is Stage.CHOOSING_CASE
    assert keys(conversation("BAL", "SPANISH", "7730", known=TWO_CASES)) == ("balance_no_due",)


def test_another_request_drops_the_quote():
    outcome = conversation("PAY", "BAL", "YES")
    assert outcome.actions == () and keys(outcome) == ("nothing_to_confirm",)


def test_yes_with_nothing_to_confirm_says_so():
    assert keys(send("YES")) == ("nothing_to_confirm",)


@pytest.mark.parametrize(
    ("body", "changes", "policy", "key", "says"),
    [
        ("PAY 0.50", {}, {}, "amount_too_small", "The smallest payment by text is $1.00."),
        ("PAY 0", {}, {}, "amount_too_small", "$1.00"),
        ("PAY -5", {}, {}, "amount_too_small", "$1.00"),
        ("PAY 50.555", {}, {}, "amount_format", "like PAY 50 or PAY 125.50"),
        ("PAY 12.3.4", {}, {}, "amount_format", "like PAY 50 or PAY 125.50"),
        ("PAY 2000", {}, {}, "amount_over_balance", "an amount up to $1,250.00"),
        (
            "PAY 6000",
            {"balance_cents": 900_000},
            {"per_payment_cap_cents": 500_000},
            "amount_over_cap",
            "at one time is $5,000.00",
        ),
        (
            "PAY 600",
            {"month_paid_cents": 950_000},
            {"monthly_cap_cents": 1_000_000},
            "amount_over_monthly",
            "up to $10,000.00 a month by text, and $500.00 is left",
        ),
        (
            "PAY 50",
            {"month_paid_cents": 1_000_000},
            {"monthly_cap_cents": 1_000_000},
            "monthly_limit_reached",
            "limit of $10,000.00",
        ),
    ],
)
def test_an_amount_we_cannot_take_gets_a_reply_that_says_what_is_allowed(
    body, changes, policy, key, says
):
    known = facts(case(**changes), policy=replace(POLICY, **policy))
    outcome = send(body, known)
    assert keys(outcome) == (key,)
    assert says in text(outcome)
    assert outcome.state.quote is None and outcome.actions == ()


@pytest.mark.parametrize("body", ["PAGAR 125,50", "pagar 50,00"])
def test_a_spanish_amount_with_a_decimal_comma_is_asked_again_with_a_period(body):
    # Never read as $12,550.00; the reply says what to change, not only an example.
    outcome = send(body, facts(language="es"))
    assert keys(outcome) == ("amount_format",) and outcome.state.quote is None
    assert "PAGAR 125.50, con punto y no con coma antes de los centavos." in text(outcome)


def test_a_balance_under_the_minimum_can_still_be_paid_off():
    outcome = send("PAY", facts(case(amount_due_cents=50, balance_cents=50)))
    assert outcome.state.quote.amount_cents == 50


def test_pay_with_nothing_owed_says_so():
    outcome = send("PAY 50", facts(case(balance_cents=0, amount_due_cents=0)))
    assert text(outcome) == "Case ending 4821 has no balance. Nothing is owed right now."
    assert outcome.state.quote is None


@pytest.mark.parametrize("balance", [0, -25_000])
def test_yes_after_the_balance_was_paid_off_meanwhile_says_nothing_is_owed(balance):
    """A payment reported failed that went through after all, say, while the quote waited."""
    quoted = send("PAY")
    paid_off = facts(case(balance_cents=balance))
    outcome = step(quoted.state, parse("YES"), replace(paid_off, nonce="SM0002"))
    assert outcome.actions == ()
    assert text(outcome) == "Case ending 4821 has no balance. Nothing is owed right now."
    spanish = step(quoted.state, parse("SI"), replace(paid_off, language="es", nonce="SM0002"))
    assert "-$" not in text(spanish) and "$0.00" not in text(spanish)


def test_pay_when_nothing_is_due_this_cycle_asks_for_an_amount():
    known = facts(case(amount_due_cents=0))
    assert keys(send("PAY", known)) == ("pay_ask_amount",)
    assert send("PAY 50", known).state.quote.amount_cents == 5_000


def test_pay_without_a_card_sends_a_card_link_the_web_layer_fills_in():
    outcome = send("PAY", facts(case(card=None)))
    assert outcome.actions == (SendCardLink(1),)
    (reply,) = outcome.replies
    assert "url" in placeholders(reply.key) and "url" not in reply.params
    assert text(outcome) == (
        f"Riverside County DCSS: To pay by text, first add a debit or credit card here: {CARD_URL} "
        "Then reply PAY."
    )
    assert outcome.state.quote is None


# Balance, history, appointments.


def test_balance_gives_the_balance_the_amount_due_and_the_due_date():
    assert text(send("BAL")) == (
        "Case ending 4821: balance $1,250.00. Next payment: $250.00 due Dec 15. Reply PAY to pay."
    )
    assert text(send("saldo", facts(language="es"))) == (
        "Caso que termina en 4821: saldo $1,250.00. Siguiente pago: $250.00, vence el "
        "15 de dic. Responda PAGAR para pagar."
    )


def test_balance_with_no_payment_scheduled_says_so():
    outcome = send("BAL", facts(case(amount_due_cents=0, next_due_date=None)))
    assert "No payment is scheduled right now." in text(outcome)


# What this cycle still owes: payments that succeeded or are in flight count (billing.cycles).

PAID_THIS_CYCLE = {"balance_cents": 100_000, "cycle_paid_cents": 25_000}
IN_FLIGHT = PaymentFacts(datetime(2025, 12, 2, 17, 0, tzinfo=UTC), 25_000, "processing", "1234")
# Paid by text yesterday, not through yet: billing lowers the balance only when it succeeds.
PAYING = {"cycle_paid_cents": 25_000, "processing_cents": 25_000, "processing": IN_FLIGHT}


def test_balance_once_this_cycle_is_paid_says_it_is_covered_with_the_new_balance():
    assert text(send("BAL", facts(case(**PAID_THIS_CYCLE)))) == (
        "Case ending 4821: balance $1,000.00. Your $250.00 payment due Dec 15 is covered. "
        "To pay more, reply PAY and an amount."
    )
    assert text(send("saldo", facts(case(**PAID_THIS_CYCLE), language="es"))) == (
        "Caso que termina en 4821: saldo $1,000.00. Ya tiene cubierto el pago de $250.00 que "
        "vence el 15 de dic. Para abonar otro monto, responda PAGAR y el monto."
    )


def test_pay_once_this_cycle_is_paid_asks_how_much_instead_of_quoting_the_installment_again():
    known = facts(case(**PAID_THIS_CYCLE))
    outcome = send("PAY", known)
    assert outcome.state.quote is None and outcome.actions == ()
    assert text(outcome) == (
        "Your $250.00 payment due Dec 15 on case ending 4821 is covered. Your balance is "
        "$1,000.00. To pay more, reply PAY and an amount, like PAY 50."
    )
    assert send("PAY 100", known).state.quote.amount_cents == 10_000
    assert isinstance(conversation("PAY 100", "YES", known=known).actions[0], ChargeQuote)


def test_after_a_partial_payment_bal_and_pay_ask_for_the_rest_of_the_installment():
    known = facts(case(balance_cents=115_000, cycle_paid_cents=10_000))
    assert "Next payment: $150.00 due Dec 15." in text(send("BAL", known))
    assert send("PAY", known).state.quote.amount_cents == 15_000


def test_a_payment_still_in_flight_counts_and_bal_names_it():
    assert text(send("BAL", facts(case(**PAYING)))) == (
        "Case ending 4821: balance $1,250.00. Your $250.00 payment due Dec 15 is covered. "
        "A payment of $250.00 from Dec 2 is still processing. To pay more, reply PAY and an "
        "amount."
    )


def test_pay_while_a_payment_is_in_flight_says_so_and_paying_again_stays_allowed():
    known = facts(case(**PAYING))
    asked = send("PAY", known)
    assert keys(asked) == ("pay_covered",) and asked.state.quote is None
    assert "A payment of $250.00 from Dec 2 is still processing." in text(asked)
    quoted = send("PAY 250", known)
    assert text(quoted) == (
        "Pay $250.00 on case ending 4821 with your Visa card ending 1234? Due Dec 15. "
        "A payment of $250.00 from Dec 2 is still processing. "
        "Reply YES within 10 minutes to pay, or NO if you do not want to."
    )
    paid_again = conversation("PAY 250", "YES", known=known)
    assert [a.amount_cents for a in paid_again.actions if isinstance(a, ChargeQuote)] == [25_000]


def test_a_payment_in_flight_for_part_of_the_installment_leaves_the_rest_quoted_with_a_warning():
    partly = PaymentFacts(IN_FLIGHT.created_at, 10_000, "requires_action", "1234")
    known = facts(case(cycle_paid_cents=10_000, processing_cents=10_000, processing=partly))
    outcome = send("PAY", known)
    assert outcome.state.quote.amount_cents == 15_000
    assert "Pay $150.00" in text(outcome) and "$100.00 from Dec 2 is still processing" in text(
        outcome
    )
    spanish = send("PAGAR", replace(known, language="es"))
    assert "Un pago de $100.00 del 2 de dic. sigue en proceso." in text(spanish)


@pytest.mark.parametrize("amount_due", [0, 5_000, 25_000])
@pytest.mark.parametrize("balance", [0, 5_000, 20_000, 100_000])
@pytest.mark.parametrize("this", [0, 5_000, 25_000, 40_000])
@pytest.mark.parametrize("previous", [None, 0, 10_000, 25_000, 50_000])
@pytest.mark.parametrize("in_flight", [0, 5_000])
def test_bal_and_pay_call_the_cycle_paid_exactly_when_its_reminder_would(
    amount_due, balance, this, previous, in_flight
):
    from billing.cycles import is_paid, paid_toward_cycle

    after = balance - in_flight  # the rules take the balance with in-flight payments off
    left = paid_toward_cycle(
        amount_due_cents=amount_due,
        balance_cents=after,
        paid_in_cycle_cents=this,
        paid_in_previous_cycle_cents=previous,
    )
    known = case(
        amount_due_cents=amount_due,
        balance_cents=balance,
        cycle_paid_cents=left,
        processing_cents=in_flight,
    )
    reminder_skipped = is_paid(
        amount_due_cents=amount_due,
        balance_cents=after,
        paid_in_cycle_cents=this,
        paid_in_previous_cycle_cents=previous,
    )
    assert (known.owed_cents == 0) == reminder_skipped


def test_history_lists_the_last_three_payments_newest_first_in_local_dates():
    def paid(day, cents, status="succeeded"):
        return PaymentFacts(datetime(2025, 11, day, 20, tzinfo=UTC), cents, status, "1234")

    payments = (
        paid(1, 10_000),
        paid(3, 20_000),
        paid(5, 30_000, "failed"),
        paid(7, 40_000, "refunded"),
        paid(9, 50_000, "processing"),
        paid(8, 60_000, "canceled"),
    )
    outcome = send("HISTORY", facts(case(recent_payments=payments)))
    assert text(outcome) == (
        "Recent payments on case ending 4821:\n"
        "Nov 9: $500.00, card 1234 (processing)\n"
        "Nov 7: $400.00, card 1234 (refunded)\n"
        "Nov 3: $200.00, card 1234"
    )


def test_a_payment_late_in_the_evening_is_dated_in_the_case_time_zone():
    late = PaymentFacts(datetime(2025, 11, 4, 6, 30, tzinfo=UTC), 10_000, "succeeded", "1234")
    assert "Nov 3: $100.00" in text(send("HISTORY", facts(case(recent_payments=(late,)))))


def test_history_without_payments_says_none_yet():
    assert text(send("HISTORY")) == "No payments yet on case ending 4821."


def test_appointment_shows_the_kind_local_time_and_place():
    hearing = AppointmentFacts(
        datetime(2025, 12, 8, 17, 30, tzinfo=UTC), "court_hearing", location="Dept 12, Room 305"
    )
    outcome = send("APPT", facts(case(next_appointment=hearing)))
    assert (
        text(outcome) == "You have a court hearing on Mon, Dec 8 at 9:30 AM at Dept 12, Room 305."
    )
    es = send("cita", facts(case(next_appointment=hearing), language="es"))
    assert text(es) == (
        "Tiene una audiencia en la corte el 8 de dic. a las 9:30 a.m. en Dept 12, Room 305."
    )


def test_a_virtual_appointment_gives_the_video_link():
    link = "https://zoom.us/j/123"
    counter = AppointmentFacts(
        datetime(2025, 12, 8, 17, 30, tzinfo=UTC), "virtual_counter", video_link=link
    )
    outcome = send("APPT", facts(case(next_appointment=counter)))
    assert text(outcome).endswith(f"Join by video: {link}")


def test_a_hearing_in_person_or_by_video_gives_both_the_place_and_the_link():
    link = "https://zoom.us/j/123"
    hearing = AppointmentFacts(
        datetime(2025, 12, 8, 17, 30, tzinfo=UTC),
        "court_hearing",
        location="Room 5",
        video_link=link,
    )
    outcome = send("APPT", facts(case(next_appointment=hearing)))
    assert text(outcome) == (
        f"You have a court hearing on Mon, Dec 8 at 9:30 AM at Room 5, or join by video: {link}"
    )
    es = send("cita", facts(case(next_appointment=hearing), language="es"))
    assert "en Room 5, o puede conectarse por video: " + link in text(es)


@pytest.mark.parametrize("starts_at", [None, WED_10AM_LA - timedelta(hours=1)])
def test_no_upcoming_appointment_says_so(starts_at):
    appt = starts_at and AppointmentFacts(starts_at, "case_conference", location="Room 1")
    outcome = send("APPT", facts(case(next_appointment=appt)))
    assert text(outcome) == "You have no upcoming appointments on case ending 4821."


# A person.


def test_agent_during_business_hours_hands_off_and_promises_a_reply_shortly():
    outcome = send("talk to a person")
    assert outcome.actions == (Handoff(1, "talk to a person"),)
    assert text(outcome) == "Thanks. We're open, so a staff member will text you back shortly."


@pytest.mark.parametrize(
    ("local_now", "opens"),
    [
        (datetime(2025, 12, 5, 16, 30), "Mon, Dec 8 at 8:30 AM"),  # Friday at closing time
        (datetime(2025, 12, 6, 11, 0), "Mon, Dec 8 at 8:30 AM"),  # Saturday
        (datetime(2025, 12, 3, 7, 0), "Wed, Dec 3 at 8:30 AM"),  # early on a weekday
        (datetime(2025, 12, 3, 20, 0), "Thu, Dec 4 at 8:30 AM"),  # evening
    ],
)
def test_agent_after_hours_says_when_a_person_will_text_back(local_now, opens):
    now = local_now.replace(tzinfo=ZoneInfo(LA)).astimezone(UTC)
    outcome = send("AGENT", facts(now=now))
    assert isinstance(outcome.actions[0], Handoff)
    assert text(outcome) == (
        f"Thanks. We're closed now. A staff member will text you after we open {opens}."
    )


def test_business_hours_are_judged_in_the_case_time_zone():
    five_pm_in_new_york = datetime(2025, 12, 3, 22, 0, tzinfo=UTC)  # 2 PM in Los Angeles
    assert keys(send("AGENT", facts(now=five_pm_in_new_york))) == ("agent_open",)
    in_ny = facts(case(timezone=NY), now=five_pm_in_new_york)
    assert keys(send("AGENT", in_ny)) == ("agent_closed",)


def test_the_next_opening_is_right_across_a_daylight_saving_change():
    saturday = datetime(2025, 11, 1, 20, 0, tzinfo=UTC)  # Sat Nov 1, PDT; Monday is PST
    (reply,) = send("AGENT", facts(now=saturday)).replies
    opens = reply.params["opens_at"]
    assert opens.astimezone(UTC) == datetime(2025, 11, 3, 16, 30, tzinfo=UTC)


def test_agent_replies_follow_the_agency_hours():
    saturday_mornings = replace(POLICY, hours=parse_business_hours("Sat 09:00-12:00"))
    outcome = send("AGENT", facts(policy=saturday_mornings))
    assert text(outcome).endswith("after we open Sat, Dec 6 at 9:00 AM.")


# Menu and language.


@pytest.mark.parametrize("body", ["MENU", "hello", "asdf", "", "👍", "9"])
def test_menu_and_unreadable_messages_get_the_numbered_menu(body):
    outcome = send(body)
    assert text(outcome) == (
        "Riverside County DCSS. Reply with a number:\n1 Pay\n2 Balance\n3 Payment history\n"
        "4 Appointments\n5 Talk to a person\n6 Español\n0 Help"
    )


@pytest.mark.parametrize(
    ("digit", "key"),
    [
        ("1", "pay_quote"),
        ("2", "balance"),
        ("3", "history_none"),
        ("4", "appt_none"),
        ("5", "agent_open"),
        ("6", "language_set"),
        ("0", "help"),
    ],
)
def test_menu_digits_do_what_the_menu_says(digit, key):
    assert keys(send(digit)) == (key,)


def test_six_switches_to_the_other_language():
    to_spanish = send("6")
    assert to_spanish.actions == (SetLanguage("es"),) and to_spanish.language == "es"
    to_english = send("6", facts(language="es"))
    assert to_english.actions == (SetLanguage("en"),) and to_english.language == "en"


def test_a_language_switch_confirms_in_the_new_language():
    outcome = send("ESPAÑOL")
    assert outcome.actions == (SetLanguage("es"),)
    assert (
        text(outcome)
        == "Listo, le escribiremos en español. Responda ENGLISH para cambiar a inglés."
    )


def test_help_names_the_agency_its_phone_the_frequency_rates_and_how_to_stop():
    assert text(send("HELP")) == (
        "Riverside County DCSS: Payment and appointment texts for your case, about 6 msgs/month. "
        "Msg & data rates may apply. For help call (866) 399-4096. "
        "Reply MENU for options, STOP to opt out."
    )


# Several cases.


TWO_CASES = facts(case(), SECOND)


def test_a_phone_on_several_cases_is_asked_which_case_before_any_case_answer():
    outcome = send("BAL", TWO_CASES)
    assert text(outcome) == (
        "You have more than one case. Reply with the ending of the case you mean: 4821 or 7730"
    )
    assert outcome.state.stage is Stage.CHOOSING_CASE


def test_cases_that_end_alike_are_told_apart_by_more_digits():
    alike = facts(case(case_number="MA-2024-118204"), case(case_id=2, case_number="MA-2023-558204"))
    question = text(send("BAL", alike))
    assert question.endswith(": 18204 or 58204")  # as few digits as tell them apart
    outcome = conversation("BAL", "58204", known=alike)
    assert keys(outcome) == ("balance",) and outcome.state.case_id == 2


def test_naming_the_case_answers_the_original_request():
    outcome = conversation("BAL", "7730", known=TWO_CASES)
    assert text(outcome).startswith("Case ending 7730: balance $400.00.")


def test_a_payment_amount_survives_the_case_question():
    outcome = conversation("PAY 50", "4821", known=TWO_CASES)
    assert (outcome.state.quote.case_id, outcome.state.quote.amount_cents) == (1, 5_000)


def test_the_chosen_case_is_kept_for_the_rest_of_the_conversation():
    outcome = conversation("BAL", "7730", "APPT", known=TWO_CASES)
    assert text(outcome) == "You have no upcoming appointments on case ending 7730."


def test_the_chosen_case_is_forgotten_after_thirty_minutes_of_silence():
    outcome = conversation("BAL", "7730", "APPT", known=TWO_CASES, minutes_apart=31)
    assert keys(outcome) == ("choose_case",)


def test_digits_that_match_no_case_ask_again_and_keep_the_request():
    outcome = conversation("BAL", "9999", known=TWO_CASES)
    assert text(outcome) == (
        "None of your cases ends in 9999. Reply with the ending of one of them: 4821 or 7730"
    )
    assert conversation("BAL", "9999", "4821", known=TWO_CASES).replies[0].key == "balance"


def test_another_request_while_choosing_a_case_is_answered_and_the_first_one_dropped():
    assert keys(conversation("BAL", "HELP", known=TWO_CASES)) == ("help",)
    outcome = conversation("BAL", "HELP", "4821", known=TWO_CASES)
    assert keys(outcome) == ("case_selected",)  # the case is chosen, the balance not sent
    assert text(outcome) == "OK, now using case ending 4821. Reply MENU for options."


def test_sending_another_case_number_switches_case():
    outcome = conversation("BAL", "7730", "4821", "BAL", known=TWO_CASES)
    assert text(outcome).startswith("Case ending 4821:")


def test_a_quote_on_one_case_is_charged_to_that_case():
    outcome = conversation("BAL", "7730", "PAY 25", "YES", known=TWO_CASES)
    assert outcome.actions[0].case_id == 2


def test_a_case_named_in_the_request_is_the_one_answered_whatever_was_chosen_before():
    outcome = conversation("BAL", "4821", "pay $40 on case 7730", known=TWO_CASES)
    assert (outcome.state.quote.case_id, outcome.state.quote.amount_cents) == (2, 4_000)
    assert text(outcome).startswith("Pay $40.00 on case ending 7730")
    # "case 4821 pay" quotes case 4821's amount due, never $4,821.00.
    named_first = send("case 4821 pay", TWO_CASES)
    assert (named_first.state.quote.case_id, named_first.state.quote.amount_cents) == (1, 25_000)


def test_a_case_named_in_the_request_that_is_not_the_payers_is_refused_not_guessed():
    outcome = send("pay 40 on case 9999")  # one case, 4821
    assert text(outcome) == (
        "None of your cases ends in 9999. Reply with the ending of one of them: 4821"
    )
    assert outcome.state.quote is None and outcome.actions == ()


def test_cases_whose_digits_are_the_same_are_named_by_their_whole_numbers():
    twins = facts(case(case_number="CS-1001"), case(case_id=2, case_number="PA-1001"))
    question = text(send("BAL", twins))
    assert question.endswith(": CS-1001 or PA-1001")
    for answer in ("PA-1001", "pa 1001", "pa1001"):
        outcome = conversation("BAL", answer, known=twins)
        assert keys(outcome) == ("balance",) and outcome.state.case_id == 2, answer
    named = send("pay 20 on case PA-1001", twins)
    assert named.state.quote.case_id == 2
    assert keys(conversation("BAL", "1001", known=twins)) == ("case_not_found",)


def test_a_case_whose_digits_end_another_cases_is_named_by_all_its_digits():
    nested = facts(case(case_number="CS-1001"), case(case_id=2, case_number="CS-21001"))
    assert text(send("BAL", nested)).endswith(": 1001 or 21001")
    assert conversation("BAL", "1001", known=nested).state.case_id == 1
    assert conversation("BAL", "21001", known=nested).state.case_id == 2


def test_a_case_number_with_too_few_digits_is_named_whole():
    short = facts(case(case_number="CS-1"), case(case_id=2, case_number="SMITH"))
    assert text(send("BAL", short)).endswith(": CS-1 or SMITH")
    outcome = conversation("BAL", "smith", known=short)
    assert outcome.state.case_id == 2 and text(outcome).startswith("Case ending SMITH:")


def test_a_whole_case_number_with_its_letters_chooses_the_case():
    outcome = conversation("BAL", "CS-2023-017730", known=TWO_CASES)
    assert text(outcome).startswith("Case ending 7730: balance $400.00.")


@pytest.mark.parametrize("body", ["no", "no thanks", "never mind? no", "nope"])
def test_no_while_choosing_a_case_drops_the_request(body):
    outcome = conversation("PAY", "no", known=TWO_CASES)
    assert text(outcome) == "OK, nothing was done. Reply MENU for options."
    assert outcome.state.stage is Stage.IDLE and outcome.actions == ()


def test_thanks_while_choosing_a_case_asks_again():
    assert keys(conversation("PAY", "thanks", known=TWO_CASES)) == ("choose_case",)


def test_a_mistyped_case_ending_on_a_phone_with_several_cases_is_not_read_as_an_amount():
    outcome = send("4822", TWO_CASES)
    assert keys(outcome) == ("case_not_found",) and outcome.state.quote is None


# Natural answers to a reminder or a quote.


@pytest.mark.parametrize("body", ["Yes I will be there at 9", "ok I paid 100", "yes 100"])
def test_a_yes_with_a_number_but_no_pay_and_no_quote_offers_nothing(body):
    outcome = send(body)
    assert keys(outcome) == ("nothing_to_confirm",) and outcome.state.quote is None


@pytest.mark.parametrize("body", ["ok, no thanks", "ok wait", "ok not now", "okay thank you"])
def test_a_yes_taken_back_or_a_thank_you_to_a_quote_charges_nothing(body):
    outcome = conversation("PAY", body)
    assert outcome.actions == () and outcome.state.quote is not None


def test_ok_alto_to_a_quote_opts_out_and_charges_nothing():
    outcome = conversation("PAY", "ok alto")
    assert outcome.actions == (OptOut(),)


def test_yes_naming_another_case_on_a_quote_never_charges_the_quoted_case():
    quoted = conversation("BAL", "4821", "PAY", "yes case 7730", known=TWO_CASES)
    assert not any(isinstance(a, ChargeQuote) for a in quoted.actions)
    # The request goes to the case named (7730 has nothing due: it asks how much).
    assert quoted.state.case_id == 2 and keys(quoted) == ("pay_ask_amount",)
    assert "case ending 7730" in text(quoted)
    same = conversation("BAL", "4821", "PAY", "yes case 4821", known=TWO_CASES)
    assert same.actions[0].case_id == 1


@pytest.mark.parametrize("body", ["12 50", "12-15"])
def test_numbers_with_spaces_or_dashes_are_no_amount(body):
    assert send(body).state.quote is None


def test_an_amount_over_what_a_payment_in_flight_leaves_is_refused_naming_that_payment():
    flying = facts(case(processing_cents=25_000, cycle_paid_cents=25_000, processing=IN_FLIGHT))
    outcome = send("PAY 1100", flying)
    assert outcome.state.quote is None
    assert "$250.00 is still processing" in text(outcome) and "up to $1,000.00" in text(outcome)
    covered = facts(case(balance_cents=25_000, processing_cents=25_000, processing=IN_FLIGHT))
    outcome = send("PAY 50", covered)
    assert outcome.state.quote is None and "$0.00" not in text(outcome)
    assert "nothing more to pay" in text(outcome)


def test_pay_all_leaves_out_a_payment_still_in_flight():
    flying = facts(case(processing_cents=25_000, cycle_paid_cents=25_000))
    assert send("pay all", flying).state.quote.amount_cents == 100_000


@pytest.mark.parametrize(
    "body", ["please cancel my payment", "dont charge me twice", "I want to cancel the payment"]
)
def test_only_a_plain_no_declines_an_invitation_or_an_enrollment(body):
    assert send(body, facts(invited=True)).actions == ()
    assert send(body, facts(phone_status=PhoneStatus.PENDING)).actions == ()


@pytest.mark.parametrize(
    ("body", "amount"), [("yes pay", 25_000), ("ok pay it", 25_000), ("yes, pay 100", 10_000)]
)
def test_a_yes_that_says_pay_with_no_quote_waiting_quotes_a_payment(body, amount):
    outcome = send(body)
    assert outcome.state.quote is not None and outcome.state.quote.amount_cents == amount
    assert outcome.actions == ()  # quoted, never charged without its own YES


def test_a_yes_that_says_pay_reads_the_payments_like_pay_does():
    assert needs_payments(State(), parse("yes pay 100"))
    assert not needs_payments(State(), parse("yes"))


@pytest.mark.parametrize(("body", "amount"), [("250", 25_000), ("50", 5_000), ("1250", 125_000)])
def test_a_bare_number_that_is_no_menu_choice_is_an_amount_to_pay(body, amount):
    outcome = send(body)
    assert outcome.state.quote.amount_cents == amount


@pytest.mark.parametrize("body", ["2", "0", "05"])
def test_menu_numbers_stay_menu_choices(body):
    assert send(body).state.quote is None


def test_pay_all_quotes_the_whole_balance():
    outcome = send("pay all")
    assert outcome.state.quote.amount_cents == 125_000
    assert text(outcome).startswith("Pay $1,250.00 on case ending 4821")


def test_pay_all_over_the_per_payment_cap_says_what_is_allowed():
    capped = facts(policy=replace(POLICY, per_payment_cap_cents=100_000))
    outcome = send("pay my full balance", capped)
    assert outcome.state.quote is None and "$1,000.00" in text(outcome)


def test_pay_all_survives_the_case_question():
    mid = conversation("pay all", known=TWO_CASES).state
    assert State.from_dict(json.loads(json.dumps(mid.to_dict()))) == mid
    outcome = conversation("pay all", "7730", known=TWO_CASES)
    assert outcome.state.quote.amount_cents == 40_000


@pytest.mark.parametrize("body", ["thanks", "Thank you!", "gracias"])
def test_thanks_gets_a_short_answer_not_the_whole_menu(body):
    assert keys(send(body)) == ("thanks",)


def test_ok_thanks_to_a_quote_asks_again_and_charges_nothing():
    outcome = conversation("PAY", "ok thanks")
    assert keys(outcome) == ("confirm_prompt",) and outcome.actions == ()
    assert outcome.state.quote is not None


# Language.


@pytest.mark.parametrize("body", ["hola, ¿cuánto debo?", "saldo", "quiero pagar 50", "ayuda"])
def test_a_payer_enrolled_in_english_who_writes_spanish_is_answered_in_spanish(body):
    outcome = send(body)  # enrolled in English
    assert outcome.language == "es"
    assert not any(isinstance(a, SetLanguage) for a in outcome.actions)  # reminders stay English


@pytest.mark.parametrize("body", ["YES", "PAY", "STOP", "BAL", "ok"])
def test_a_payer_enrolled_in_spanish_who_texts_an_english_keyword_stays_in_spanish(body):
    assert send(body, facts(language="es")).language == "es"


# State and facts.


def test_state_survives_a_json_round_trip():
    mid_choice = conversation("PAY 50", known=TWO_CASES).state
    mid_quote = conversation("BAL", "7730", "PAY 25", known=TWO_CASES).state
    for state in (State(), mid_choice, mid_quote):
        assert State.from_dict(json.loads(json.dumps(state.to_dict()))) == state


def test_a_missing_or_empty_saved_state_is_a_fresh_state():
    assert State.from_dict(None) == State.from_dict({}) == State()


def test_facts_refuse_a_naive_clock_and_a_missing_message_id():
    with pytest.raises(ValueError, match="timezone-aware"):
        facts(now=datetime(2025, 12, 3, 10, 0))
    with pytest.raises(ValueError, match="nonce"):
        facts(nonce="")


@pytest.mark.parametrize("language", ["en", "es"])
def test_every_reply_in_a_long_conversation_renders_within_two_segments(language):
    long_case = case(
        case_number="CS-2024-004821",
        balance_cents=1_234_567,
        amount_due_cents=1_234_567,
        card=CardFacts("American Express", "1234"),
        next_appointment=AppointmentFacts(
            WED_10AM_LA + timedelta(days=7), "virtual_counter", video_link="https://zoom.us/j/9"
        ),
    )
    known = facts(
        long_case,
        replace(SECOND, card=None),
        language=language,
        policy=replace(POLICY, agency_name="San Bernardino County Child Support Svcs"),
        now=datetime(2025, 12, 6, 3, 0, tzinfo=UTC),  # after hours
    )
    bodies = ["hi", "BAL", "4821", "HISTORY", "APPT", "AGENT", "PAY 99999", "PAY", "hmm", "NO"]
    bodies += ["PAY", "YES", "7730", "PAY", "HELP", "MENU", "9999", "6", "STOP", "START"]
    state = State()
    for i, body in enumerate(bodies):
        status = PhoneStatus.OPTED_OUT if body == "START" else PhoneStatus.ACTIVE
        turn = replace(known, nonce=f"SM{i}", phone_status=status)
        outcome = step(state, parse(body), turn)
        for rendered in texts(outcome):
            assert segments(rendered) <= 2, rendered
        state = outcome.state


# The payments a text needs (the webhook loads them only then).

BODIES = [
    "BAL",
    "saldo",
    "PAY",
    "PAY 50",
    "pagar 40.5",
    "$75",
    "YES",
    "si",
    "NO",
    "HISTORY",
    "pagos",
    "APPT",
    "citas",
    "AGENT",
    "HELP",
    "ayuda",
    "MENU",
    "0",
    "1",
    "2",
    "3",
    "4",
    "5",
    "6",
    "9",
    "4821",
    "7730",
    "case 7730",
    "ESPAÑOL",
    "ENGLISH",
    "STOP",
    "alto",
    "START",
    "",
    "👍",
    "hmm",
]
PAID = (
    PaymentFacts(WED_10AM_LA - timedelta(days=2), 25_000, "succeeded", "1234"),
    PaymentFacts(WED_10AM_LA - timedelta(days=40), 10_000, "refunded", "1234"),
    PaymentFacts(WED_10AM_LA - timedelta(hours=1), 5_000, "pending", "9999"),
)
QUOTE = Quote("q-1", 1, 25_000, "1234", WED_10AM_LA + timedelta(minutes=5))
STATES = [
    State(),
    State(case_id=1),
    State(case_id=2, updated_at=WED_10AM_LA - timedelta(minutes=3)),
    State(quote=QUOTE, case_id=1),
    State(quote=replace(QUOTE, expires_at=WED_10AM_LA - timedelta(minutes=1))),
    State(pending=parse("HISTORY")),
    State(pending=parse("PAY 20")),
    State(updated_at=WED_10AM_LA - timedelta(hours=2), quote=QUOTE),
]


def test_a_text_said_not_to_need_payments_is_answered_the_same_without_them():
    """needs_payments() may only say no where the payments change nothing in the answer.

    Every state, body, phone status and case count above, with payments that matter (history
    lines, a month near the cap), against the same facts without them.
    """
    paid = {"cycle_paid_cents": 25_000, "processing_cents": 5_000, "processing": PAID[2]}
    second = replace(SECOND, recent_payments=PAID[:1], month_paid_cents=999_000, **paid)
    without = {
        "recent_payments": (),
        "month_paid_cents": 0,
        "cycle_paid_cents": 0,
        "processing_cents": 0,
        "processing": None,
    }
    answered_without = 0
    for state, body, status, month_paid, two_cases in itertools.product(
        STATES, BODIES, PhoneStatus, [0, 999_000], [False, True]
    ):
        command = parse(body)
        if needs_payments(state, command):
            continue
        first = case(recent_payments=PAID, month_paid_cents=month_paid, **paid)
        known = facts(*((first, second) if two_cases else (first,)), phone_status=status)
        bare = replace(known, cases=tuple(replace(c, **without) for c in known.cases))
        assert step(state, command, bare) == step(state, command, known), (state, body, status)
        answered_without += 1
    assert answered_without > 500  # BAL, APPT, HELP, STOP... from every quiet state


@pytest.mark.parametrize("body", ["APPT", "AGENT", "HELP", "STOP", "MENU", "ESPAÑOL"])
def test_the_common_requests_are_answered_without_reading_payments(body):
    assert not needs_payments(State(), parse(body))


@pytest.mark.parametrize("body", ["PAY", "PAY 50", "BAL", "HISTORY", "1", "2", "3", "4821"])
def test_payments_balance_history_and_menu_choices_read_payments(body):
    assert needs_payments(State(), parse(body))


def test_evolve_changes_states_and_outcomes_as_dataclasses_replace_does():
    from bot.dialogue import _evolve

    state = State(case_id=1, quote=QUOTE, pending=parse("PAY 20"), updated_at=WED_10AM_LA)
    for changes in ({}, {"quote": None}, {"case_id": 2, "pending": None}):
        assert _evolve(state, **changes) == replace(state, **changes)
    outcome = send("BAL")
    assert _evolve(outcome, state=state) == replace(outcome, state=state)
