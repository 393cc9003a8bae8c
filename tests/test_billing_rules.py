"""Billing's pure rules: caps and balance, confirmation codes, months, signed links."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.links import LinkError, LinkKind, make_token, read_token
from billing.service import (
    CODE_ALPHABET,
    Limits,
    charge_problem,
    confirmation_code,
    month_start,
)
from bot.messages import render
from bot.segments import segments

LIMITS = Limits(per_payment_cents=500_000, monthly_cents=1_000_000)
NOW = datetime(2025, 11, 20, 15, 0, tzinfo=UTC)
SECRET = "test-secret-key"


def problem(amount, *, balance=100_000, in_flight=0, month_paid=0, limits=LIMITS):
    return charge_problem(
        amount_cents=amount,
        balance_cents=balance,
        in_flight_cents=in_flight,
        month_paid_cents=month_paid,
        limits=limits,
    )


# -- caps and balance -------------------------------------------------------------------------


def test_a_payment_within_the_balance_and_both_caps_may_be_charged():
    assert problem(25_000) is None
    assert problem(100_000) is None


def test_more_than_the_balance_is_refused_naming_the_balance():
    assert problem(100_001) == ("amount_over_balance", {"balance": 100_000})


def test_payments_already_confirmed_hold_their_share_of_the_balance_and_are_named():
    # "up to $500.00" on a $1,000.00 balance says why: a payment of $500.00 is processing.
    assert problem(60_000, in_flight=50_000) == (
        "amount_over_available",
        {"amount": 50_000, "balance": 100_000, "available": 50_000},
    )
    assert problem(50_000, in_flight=50_000) is None
    text = render("amount_over_available", problem(60_000, in_flight=50_000)[1], "en")
    assert "$500.00 is still processing" in text and "up to $500.00" in text


def test_a_balance_a_processing_payment_covers_is_not_offered_up_to_nothing():
    # Not "reply PAY and an amount up to $0.00".
    assert problem(5_000, in_flight=100_000) == (
        "balance_processing",
        {"amount": 100_000, "balance": 100_000},
    )
    assert problem(5_000, in_flight=99_990)[0] == "balance_processing"  # 10 cents left
    for language in ("en", "es"):
        text = render("balance_processing", {"amount": 100_000, "balance": 100_000}, language)
        assert "$0.00" not in text and "$1,000.00" in text


def test_more_than_the_per_payment_cap_is_refused():
    limits = Limits(per_payment_cents=10_000, monthly_cents=1_000_000)
    assert problem(10_001, limits=limits) == ("amount_over_cap", {"cap": 10_000})
    assert problem(10_000, limits=limits) is None


def test_more_than_is_left_of_the_monthly_cap_is_refused_naming_what_is_left():
    assert problem(50_000, month_paid=960_000) == (
        "amount_over_monthly",
        {"cap": 1_000_000, "remaining": 40_000},
    )


def test_a_case_at_its_monthly_cap_is_told_the_limit_is_reached():
    assert problem(5_000, month_paid=1_000_000) == ("monthly_limit_reached", {"cap": 1_000_000})


def test_nothing_is_charged_on_a_case_that_owes_nothing():
    assert problem(5_000, balance=0) == ("nothing_owed", {})


def test_less_than_the_processor_minimum_is_refused():
    assert problem(49) == ("amount_too_small", {"minimum": 50})


# -- confirmation codes -----------------------------------------------------------------------


def test_a_confirmation_code_is_eight_characters_that_cannot_be_misread():
    code = confirmation_code(1)
    assert len(code) == 8
    assert set(code) <= set(CODE_ALPHABET)
    assert not set("0O1IL") & set(CODE_ALPHABET)


def test_every_payment_gets_its_own_confirmation_code():
    codes = {confirmation_code(payment_id) for payment_id in range(1, 200_001)}
    assert len(codes) == 200_000


@given(st.integers(min_value=1, max_value=2**39 - 1), st.integers(min_value=1, max_value=2**39 - 1))
def test_two_different_payment_ids_never_share_a_code(first, second):
    assert (confirmation_code(first) == confirmation_code(second)) == (first == second)


def test_neighbouring_payments_do_not_get_neighbouring_codes():
    first, second = confirmation_code(1000), confirmation_code(1001)
    assert sum(a == b for a, b in zip(first, second, strict=True)) < 4


def test_confirmation_codes_are_the_same_every_time_so_job_and_webhook_agree():
    assert confirmation_code(42) == confirmation_code(42)


# -- months -----------------------------------------------------------------------------------


def test_the_month_starts_at_local_midnight_on_the_first():
    la = ZoneInfo("America/Los_Angeles")
    # 03:00 UTC on March 1 is still February 28 in Los Angeles.
    start = month_start(datetime(2025, 3, 1, 3, 0, tzinfo=UTC), la)
    assert start == datetime(2025, 2, 1, tzinfo=la)
    assert start.astimezone(UTC) == datetime(2025, 2, 1, 8, 0, tzinfo=UTC)


# -- links ------------------------------------------------------------------------------------


def token(kind=LinkKind.CARD, subject=7, expires=NOW + timedelta(hours=1), secret=SECRET):
    return make_token(secret=secret, kind=kind, subject_id=subject, expires_at=expires)


def test_a_link_reads_back_its_subject_and_expiry():
    link = read_token(secret=SECRET, kind=LinkKind.CARD, token=token(), now=NOW)
    assert link.subject_id == 7
    assert link.expires_at == NOW + timedelta(hours=1)
    assert len(link.nonce) == 12


def test_two_links_for_the_same_case_differ():
    assert token() != token()


def test_an_expired_link_is_refused_as_expired():
    with pytest.raises(LinkError) as raised:
        read_token(secret=SECRET, kind=LinkKind.CARD, token=token(expires=NOW), now=NOW)
    assert raised.value.code == "expired"


@pytest.mark.parametrize("position", [0, 5, 12, 20, 34])
def test_a_link_with_any_character_changed_is_refused(position):
    original = token()
    swapped = "A" if original[position] != "A" else "B"
    forged = original[:position] + swapped + original[position + 1 :]
    with pytest.raises(LinkError) as raised:
        read_token(secret=SECRET, kind=LinkKind.CARD, token=forged, now=NOW)
    assert raised.value.code == "invalid"


@pytest.mark.parametrize("garbage", ["", "x", "not a token!", "A" * 35, "%%%"])
def test_garbage_is_refused_as_invalid(garbage):
    with pytest.raises(LinkError, match="not valid"):
        read_token(secret=SECRET, kind=LinkKind.CARD, token=garbage, now=NOW)


def test_a_card_link_does_not_open_the_approval_page():
    with pytest.raises(LinkError):
        read_token(secret=SECRET, kind=LinkKind.AUTH, token=token(), now=NOW)


def test_a_link_signed_with_another_key_is_refused():
    with pytest.raises(LinkError):
        read_token(secret=SECRET, kind=LinkKind.CARD, token=token(secret="other"), now=NOW)


def test_link_tokens_are_short_enough_for_a_text():
    assert len(token(subject=2**32 - 1)) == 35


@pytest.mark.parametrize("language", ["en", "es"])
@pytest.mark.parametrize("key", ["card_link", "declined", "auth_required"])
def test_texts_with_a_real_link_fit_two_segments(key, language):
    url = "https://pay.example-agency.gov/pay/card/" + token(subject=2_000_000_000)
    params = {
        "agency": "San Bernardino County Child Support Svcs",
        "agency_phone": "+18663994096",
        "amount": 1_234_567,
        "reason": "card_not_supported",
        "url": url,
    }
    assert segments(render(key, params, language)) <= 2


def test_a_link_spelled_with_different_unused_base64_bits_is_refused():
    original = token()
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(original[-1])
    # 26 bytes fill 35 characters with 2 bits to spare: flipping those keeps the same bytes.
    respelled = original[:-1] + alphabet[last ^ 1]
    with pytest.raises(LinkError):
        read_token(secret=SECRET, kind=LinkKind.CARD, token=respelled, now=NOW)
