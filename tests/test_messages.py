"""Catalogues, rendering and SMS segment counting."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

import pytest

from bot.catalog import en, es
from bot.dialogue import _MENU as MENU_DIGITS
from bot.messages import (
    CATALOGUES,
    KEYS,
    MESSAGE_KEYS,
    PLACEHOLDERS,
    Kind,
    Language,
    Reply,
    placeholders,
    render,
    render_reply,
)
from bot.parse import Intent, parse
from bot.segments import Encoding, encoding, segments

AGENCY = "San Bernardino County Child Support Svcs"  # 40 characters, the longest we allow
LA = "America/Los_Angeles"
_AGENCY = {"agency": AGENCY, "agency_phone": "+18663994096"}
LATE_EVENING = datetime(2025, 10, 1, 6, 59, tzinfo=UTC)  # Sep 30, 11:59 PM in Los Angeles
LONGEST = {
    "agency": AGENCY,
    "agency_phone": "+18663994096",
    "amount": 1_234_567,
    "amount_due": 1_234_567,
    "available": 1_234_567,
    "balance": 1_234_567,
    "cap": 1_234_567,
    "minimum": 1_234_567,
    "remaining": 1_234_567,
    "brand": "American Express",
    "case_last4": "4821",
    "last4": "1234",
    "digits": "123456789012",
    "cases": ("4821", "7730", "1190", "5512"),
    "code": "PT-20250930-ABC12345",
    "date": LATE_EVENING,
    "due_date": date(2025, 9, 30),
    "location": "Superior Court, Dept 12 Rm 305",
    "minutes": 10,
    "per_month": 10,
    "text": "We got your message about the payment plan. Please bring your last two pay stubs "
    "to the office when you come in next.",
    "url": "https://pay.example-agency.gov/c/8f3k2q9zx7w4m1n6p5r0t2v8y01",
    "video_link": "https://zoom.us/j/98765432101?pwd=Q2x3ZkR0aE5vT1lWbXc4ZzZabc",
    "tz": LA,
    "processing": Reply(
        "processing.payment", {"amount": 1_234_567, "date": LATE_EVENING, "tz": LA}
    ),
    "payments": tuple(
        Reply(
            "history.refunded",
            {"date": LATE_EVENING, "amount": 1_234_567, "last4": "1234", "tz": LA},
        )
        for _ in range(3)
    ),
}
APPOINTMENT_KINDS = ("case_conference", "court_hearing", "virtual_counter", "other")
DECLINE_CODES = (
    "generic_decline",
    "insufficient_funds",
    "expired_card",
    "incorrect_cvc",
    "card_not_supported",
    "processing_error",
    "lost_card",
    "stolen_card",
)


def variants(key: str):
    """LONGEST params, once per appointment kind, decline reason and weekday the key can show."""
    names = placeholders(key)
    kinds = APPOINTMENT_KINDS if "kind" in names else ("other",)
    reasons = DECLINE_CODES if "reason" in names else ("other",)
    days = range(7) if names & {"when", "opens_at"} else range(1)
    for kind in kinds:
        for reason in reasons:
            for day in days:
                when = datetime(2025, 9, 22, 19, 45, tzinfo=UTC) + timedelta(days=day)
                yield {**LONGEST, "kind": kind, "reason": reason, "when": when, "opens_at": when}


def test_long_values_are_as_long_as_the_brief_allows():
    assert len(AGENCY) == 40
    assert len(LONGEST["location"]) == 30
    assert len(LONGEST["url"]) >= 60


@pytest.mark.parametrize("language", list(Language))
@pytest.mark.parametrize("key", MESSAGE_KEYS)
def test_every_message_fits_in_two_segments_with_the_longest_values(key, language):
    for params in variants(key):
        text = render(key, params, language)
        assert segments(text) <= 2, f"{language} {key}: {segments(text)} segments\n{text}"


@pytest.mark.parametrize("language", list(Language))
@pytest.mark.parametrize("key", MESSAGE_KEYS)
def test_catalogue_wording_stays_in_the_gsm_alphabet(key, language):
    # One á, í, ó or ú halves what a segment holds; only payer-supplied values may cause it.
    for params in variants(key):
        assert encoding(render(key, params, language)) is Encoding.GSM7


def test_both_catalogues_have_the_same_keys():
    assert set(en.MESSAGES) == set(es.MESSAGES) == KEYS


@pytest.mark.parametrize("key", sorted(KEYS))
def test_both_catalogues_use_the_same_placeholders_for_a_key(key):
    assert placeholders(key, "en") == placeholders(key, "es")


def test_every_placeholder_has_a_declared_kind():
    used = set().union(*(placeholders(key) for key in KEYS))
    assert used <= set(PLACEHOLDERS)
    assert set(PLACEHOLDERS) <= used  # no stale declarations either


def test_every_choice_has_a_fallback_fragment():
    for name, kind in PLACEHOLDERS.items():
        if kind is Kind.CHOICE:
            assert f"{name}.other" in KEYS


def test_amounts_are_formatted_as_dollars_in_both_languages():
    params = {"amount": 123_456, "last4": "1234"}
    assert "$1,234.56" in render("confirm_prompt", params, "en")
    assert "$1,234.56" in render("confirm_prompt", params, "es")


def test_dates_are_written_the_way_each_language_writes_them():
    params = {
        "case_last4": "4821",
        "balance": 5000,
        "amount_due": 2500,
        "due_date": date(2025, 12, 1),
        "processing": None,
    }
    assert "due Dec 1." in render("balance", params, "en")
    assert "vence el 1 de dic. Responda" in render("balance", params, "es")


def test_an_abbreviation_at_the_end_of_a_sentence_keeps_a_single_period():
    when = datetime(2025, 12, 1, 21, 0, tzinfo=UTC)
    text = render("appt_next", {"kind": "other", "when": when, "location": "Acme Inc."}, "en")
    assert text.endswith("at Acme Inc.")


def test_times_are_shown_in_the_case_time_zone():
    params = {"kind": "court_hearing", "when": datetime(2025, 12, 1, 17, 30, tzinfo=UTC), "tz": LA}
    assert "on Mon, Dec 1 at 9:30 AM" in render("appt_next_no_place", {**params, **_AGENCY}, "en")
    assert "el 1 de dic. a las 9:30 a.m." in render(
        "appt_next_no_place", {**params, **_AGENCY}, "es"
    )


def test_noon_midnight_and_one_oclock_read_naturally():
    def when(hour):
        moment = datetime(2025, 12, 1, hour, 0, tzinfo=UTC)
        return {"kind": "other", "when": moment, "location": "Room 4"}

    assert "at 12:00 PM" in render("appt_next", when(12), "en")
    assert "at 12:00 AM" in render("appt_next", when(0), "en")
    assert "a las 12:00 p.m." in render("appt_next", when(12), "es")
    assert "a la 1:00 p.m." in render("appt_next", when(13), "es")
    assert "a la 1:00 a.m." in render("appt_next", when(1), "es")


def test_a_payment_late_in_the_evening_shows_the_local_date_not_the_utc_one():
    line = Reply("history.succeeded", {"date": LATE_EVENING, "amount": 100, "last4": "1", "tz": LA})
    assert render_reply(line, "en").startswith("Sep 30:")
    assert render_reply(line, "es").startswith("30 de sept.:")


def test_a_naive_datetime_is_refused():
    params = {"kind": "other", "when": datetime(2025, 12, 1, 9, 0), "location": "Room 4"}
    with pytest.raises(ValueError, match="timezone-aware"):
        render("appt_next", params, "en")


def test_a_missing_value_names_the_placeholder():
    with pytest.raises(KeyError, match="url"):
        render("card_link", {"agency": AGENCY}, "en")


def test_the_agency_phone_is_shown_the_way_people_write_it():
    text = render("unknown_number", {"agency": "DCSS", "agency_phone": "+18663994096"}, "en")
    assert "call (866) 399-4096." in text


def test_decline_codes_get_plain_reasons_and_lost_or_stolen_cards_read_as_a_generic_decline():
    def reason(code):
        return render("declined", {**LONGEST, "reason": code}, "en")

    assert "doesn't have enough funds" in reason("insufficient_funds")
    assert "has expired" in reason("expired_card")
    assert reason("lost_card") == reason("stolen_card") == reason("generic_decline")
    assert "Your bank did not approve it." in reason("stolen_card")


def test_case_lists_are_joined_with_or_in_each_language():
    def cases(*endings):
        return {"cases": endings}

    assert render("choose_case", cases("4821"), "en").endswith(": 4821")
    assert render("choose_case", cases("4821", "7730"), "en").endswith(": 4821 or 7730")
    assert render("choose_case", cases("4821", "7730", "1190"), "es").endswith(
        "responda 4821, 7730 o 1190."
    )


def test_history_lines_are_rendered_one_per_line():
    text = render("history", {"case_last4": "4821", "payments": LONGEST["payments"]}, "en")
    assert text.count("\n") == 3
    assert "Sep 30: $12,345.67, card 1234 (refunded)" in text


def test_with_params_adds_the_card_link_without_losing_the_other_params():
    reply = Reply("card_link", {"agency": AGENCY}).with_params(url="https://x.example/c/1")
    assert render_reply(reply, "en").startswith(AGENCY + ": To pay by text")
    assert "https://x.example/c/1" in render_reply(reply, "en")


def test_an_unknown_language_is_refused():
    with pytest.raises(ValueError):
        render("menu", {"agency": AGENCY}, "fr")


# Segments.


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 0),
        ("a", 1),
        ("a" * 160, 1),
        ("a" * 161, 2),
        ("a" * 306, 2),
        ("a" * 307, 3),
        ("€" * 80, 1),  # extension characters take two septets
        ("€" * 81, 2),
        ("é ñ ü à ¿ ¡ Ñ É Ç" * 8, 1),  # all in the GSM basic table
        ("á" * 70, 1),
        ("á" * 71, 2),
        ("á" * 134, 2),
        ("á" * 135, 3),
        ("😀" * 35, 1),  # a surrogate pair is two UCS-2 units
        ("😀" * 36, 2),
    ],
)
def test_segments_follow_gsm_and_ucs2_limits(text, expected):
    assert segments(text) == expected


def test_an_escape_sequence_is_never_split_between_segments():
    text = "a" * 152 + "€" + "a" * 152  # 306 septets, but € cannot straddle the boundary
    assert segments(text) == 3


def test_a_surrogate_pair_is_never_split_between_segments():
    text = "á" * 66 + "😀" + "á" * 66  # 134 units, but the emoji cannot straddle the boundary
    assert segments(text) == 3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Reply YES to pay", Encoding.GSM7),
        ("Responda SI, ¿está bien?", Encoding.UCS2),  # á is not in GSM-7
        ("Español, inglés, ¡listo! ¿sí?", Encoding.UCS2),  # í is not either
        ("Español, inglés, ¡listo!", Encoding.GSM7),
        ("{curly} [square] ~tilde~ | ^ \\ €", Encoding.GSM7),
        ("ç", Encoding.UCS2),  # only the capital Ç is in the table
        ("smart ’quote’", Encoding.UCS2),
        ("\x1b", Encoding.UCS2),
    ],
)
def test_encoding_is_gsm7_only_when_every_character_is_in_the_gsm_tables(text, expected):
    assert encoding(text) is expected


def test_card_brands_are_written_as_printed_on_the_card():
    from bot.messages import placeholders

    key = next(k for k in MESSAGE_KEYS if "brand" in placeholders(k))
    params = {name: LONGEST[name] for name in placeholders(key)}
    for raw, printed in (("visa", "Visa"), ("amex", "American Express"), ("Elo", "Elo")):
        for language in ("en", "es"):
            text = render(key, params | {"brand": raw}, language)
            assert printed in text and (raw == printed or raw not in text)


@pytest.mark.parametrize("language", list(Language))
@pytest.mark.parametrize("key", ["receipt", "refund"])
def test_a_balance_in_credit_is_said_as_a_credit_within_two_segments(key, language):
    text = render(key, {**LONGEST, "balance": -1_234_567}, language)
    assert (
        "-$" not in text
        and "$12,345.67 " + ("in credit" if language == "en" else "a su favor") in text
    )
    assert segments(text) <= 2 and encoding(text) is Encoding.GSM7


@pytest.mark.parametrize("language", list(Language))
def test_a_payment_still_processing_is_said_in_its_own_sentence_or_not_at_all(language):
    params = {**LONGEST, "amount": 25_000, "amount_due": 25_000, "due_date": date(2025, 12, 11)}
    note = Reply("processing.payment", {"amount": 25_000, "date": LATE_EVENING, "tz": LA})
    said = render("pay_quote", {**params, "processing": note}, language)
    unsaid = render("pay_quote", {**params, "processing": None}, language)
    if language == "en":
        assert "Due Dec 11. A payment of $250.00 from Sep 30 is still processing. Reply YES" in said
        assert "Due Dec 11. Reply YES" in unsaid
    else:
        assert "11 de dic. Un pago de $250.00 del 30 de sept. sigue en proceso. Responda" in said
        assert "11 de dic. Responda" in unsaid


def test_the_spanish_pay_ask_names_the_case_before_the_due_date_not_after_it():
    # "que vence el 3 de dic. del caso ..." read as a date "of the case".
    params = {
        "amount_due": 25_000,
        "due_date": date(2025, 12, 3),
        "case_last4": "8204",
        "balance": 100_000,
        "processing": None,
    }
    text = render("pay_covered", params, "es")
    assert text.startswith(
        "Ya tiene cubierto el pago de $250.00 del caso que termina en 8204, que vence el 3 de dic. "
        "Su saldo es $1,000.00."
    )


RATES = {"en": "Msg & data rates may apply.", "es": "Pueden aplicarse tarifas de mensajes y datos."}
FREQUENCY = {"en": r"about 7 msgs/month", "es": r"unos 7 (?:mensajes )?al mes"}
CONSENT_KEYS = ("optin_invite", "confirm_enrollment", "welcome", "opted_in", "help")


@pytest.mark.parametrize("language", list(Language))
@pytest.mark.parametrize("key", CONSENT_KEYS)
def test_every_text_that_asks_for_or_confirms_consent_says_how_often_rates_and_how_to_stop(
    key, language
):
    # A YES to confirm_enrollment is consent as much as one to the invitation it repeats.
    text = render(key, {**LONGEST, "per_month": 7}, language)
    assert re.search(FREQUENCY[language], text), text
    assert RATES[language] in text and "STOP" in text


# Keywords the texts tell the payer to send.

KEYWORDS = {
    "en": {
        "START": Intent.START,
        "STOP": Intent.STOP,
        "HELP": Intent.HELP,
        "YES": Intent.YES,
        "NO": Intent.NO,
        "MENU": Intent.MENU,
        "PAY": Intent.PAY,
        "APPT": Intent.APPOINTMENT,
        "CARD": Intent.CARD,
        "ESPAÑOL": Intent.LANGUAGE,
    },
    "es": {
        "START": Intent.START,
        "STOP": Intent.STOP,
        "AYUDA": Intent.HELP,
        "SI": Intent.YES,
        "NO": Intent.NO,
        "MENU": Intent.MENU,
        "PAGAR": Intent.PAY,
        "CITA": Intent.APPOINTMENT,
        "TARJETA": Intent.CARD,
        "ENGLISH": Intent.LANGUAGE,
    },
}
_ASKED = re.compile(r"\b(?:Reply|reply|Responda|responda)\b[^.:?]*(?:\.[0-9][^.:?]*)*")
_KEYWORD = re.compile(r"\b([A-ZÑ]{2,})(?: ([0-9]+(?:\.[0-9]{2})?))?\b")


def asked_keywords(language: str) -> set[tuple[str, str | None]]:
    """(keyword, amount) pairs every text and page in a language tells the payer to send."""
    found = set()
    for template in CATALOGUES[Language(language)].MESSAGES.values():
        for asked in _ASKED.finditer(template):
            found.update(_KEYWORD.findall(asked[0]))
    return {(word, amount or None) for word, amount in found}


@pytest.mark.parametrize("language", list(Language))
def test_every_keyword_a_text_asks_for_parses_to_its_command_in_that_language(language):
    asked = asked_keywords(language)
    # Every keyword is found (the table is not stale) and a new one must be added to it.
    assert {word for word, _ in asked} == set(KEYWORDS[language])
    for word, amount in asked:
        command = parse(f"{word} {amount}" if amount else word)
        assert command.intent is KEYWORDS[language][word], (word, command)
        if command.intent is Intent.LANGUAGE:
            assert command.language != language  # it switches to the other one
        else:
            # A Spanish text never asks for an English-only word (PAY, YES), nor the reverse.
            assert command.language in (None, language), (word, command)
        if amount:
            assert command.amount_cents == round(float(amount) * 100)


@pytest.mark.parametrize("language", list(Language))
def test_every_menu_choice_means_the_same_typed_as_a_word_as_sent_as_its_number(language):
    lines = render("menu", {"agency": AGENCY}, language).splitlines()[1:]
    assert len(lines) == len(MENU_DIGITS)
    for line in lines:
        digit, label = line.split(" ", 1)
        assert parse(label).intent is MENU_DIGITS[digit], line
