"""Message bodies payers really send, and the Command each must give."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.parse import STOP_WORDS, Command, Intent, consents, parse

PAY, YES, NO, BAL = Intent.PAY, Intent.YES, Intent.NO, Intent.BALANCE
HIST, APPT, AGENT, HELP = Intent.HISTORY, Intent.APPOINTMENT, Intent.AGENT, Intent.HELP
MENU, DIGITS, LANG, STOP = Intent.MENU, Intent.DIGITS, Intent.LANGUAGE, Intent.STOP
START, UNKNOWN, EMPTY, THANKS = Intent.START, Intent.UNKNOWN, Intent.EMPTY, Intent.THANKS
CARD = Intent.CARD

# (body, intent, detail): detail is the amount in cents or the amount error for PAY, the digits
# for DIGITS and the target language for LANGUAGE; None otherwise.
MESSAGES = [
    # Paying, with and without an amount.
    ("PAY", PAY, None),
    ("pay", PAY, None),
    ("Pay.", PAY, None),
    ("PAY 50", PAY, 5000),
    ("pay $1,250.00", PAY, 125000),
    ("Pay $50 please", PAY, 5000),
    ("pay$50", PAY, 5000),
    ("pay 50 dollars", PAY, 5000),
    # "50 cents" is half a dollar, never $50.00 (the quote would ask to charge a hundred times it).
    ("pay 50 cents", PAY, 50),
    ("pay 75 cent", PAY, 75),
    ("pagar 75 centavos", PAY, 75),
    ("pay 1.50 cents", PAY, "not_a_number"),
    ("pay 0 cents", PAY, "zero"),
    ("pay $50 cents", PAY, "not_a_number"),
    ("pay 50 ¢", PAY, 50),
    ("pay 50¢", PAY, 50),
    ("pagar 50 céntimos", PAY, 50),
    # Dollars and cents in words are one amount: $1.50, not the $1.00 the first number gives.
    ("pay 1 dollar 50 cents", PAY, 150),
    ("PAY $1 and 50 cents", PAY, 150),
    ("pay 12 and 50 cents", PAY, 1250),
    ("pay 1,250 dollars and 99 cents", PAY, 125099),
    ("pagar 1 dólar con 50 centavos", PAY, 150),
    ("Pagar 20 dolares y 5 centavos", PAY, 2005),
    ("yes 2 dollars and 25 cents", YES, 225),
    ("1 dollar 50 cents", PAY, 150),
    ("50 cents please", PAY, 50),
    ("75 centavos por favor", PAY, 75),
    ("pay 1.50 dollars and 20 cents", PAY, "not_a_number"),
    ("pay 3 dollars and 150 cents", PAY, "not_a_number"),
    ("pay 0 dollars and 0 cents", PAY, "zero"),
    ("Pay 75.25", PAY, 7525),
    ("pay $ 40", PAY, 4000),
    ("PAY (50)", PAY, 5000),
    ("pay 50.", PAY, 5000),
    ("pay now", PAY, None),
    ("pay my bill", PAY, None),
    ("Pay my balance", PAY, None),
    ("payment", PAY, None),
    ("I want to pay 100", PAY, 10000),
    ("can I pay $200 today?", PAY, 20000),
    ("i'd like to make a payment", PAY, None),
    ("PAGAR", PAY, None),
    ("pagar 40.5", PAY, 4050),
    ("PAGAR 40.50", PAY, 4050),
    ("Pago 100", PAY, 10000),
    ("pago", PAY, None),
    ("quiero pagar 50", PAY, 5000),
    ("Quiero pagar", PAY, None),
    ("quisiera hacer un pago", PAY, None),
    ("pagr", PAY, None),
    ("pagr 50", PAY, 5000),
    ("$50", PAY, 5000),
    ("$1,250.00", PAY, 125000),
    ("50.00", PAY, 5000),
    ("$75 please", PAY, 7500),
    ("pay 50.555", PAY, "too_many_decimals"),
    ("pay -50", PAY, "negative"),
    ("pay $-20", PAY, "negative"),
    ("pay 0", PAY, "zero"),
    ("PAY $0.00", PAY, "zero"),
    ("pay 12.3.4", PAY, "not_a_number"),
    ("pay 50k", PAY, "not_a_number"),
    ("pagar 1.250,00", PAY, "not_a_number"),
    # Confirming and declining.
    ("YES", YES, None),
    ("yes", YES, None),
    ("Yes!", YES, None),
    ("y", YES, None),
    ("Y", YES, None),
    ("yep", YES, None),
    ("Yeah", YES, None),
    ("yesss", YES, None),
    ("OK", YES, None),
    ("okay", YES, None),
    ("ok.", YES, None),
    ("sí", YES, None),
    ("Si", YES, None),
    ("SÍ", YES, None),
    ("si.", YES, None),
    ("siii", YES, None),
    ("Sí, por favor", YES, None),
    ("CONFIRM", YES, None),
    ("confirmar", YES, None),
    ("yes please", YES, None),
    ("yes pay it", YES, None),
    # A YES naming an amount keeps it: the dialogue re-quotes rather than charge another sum.
    ("yes pay 100", YES, 10_000),
    ("Sí, pagar 100", YES, 10_000),
    ("yes but only $50", YES, 5_000),
    ("si quiero pagar", YES, None),
    ("👍 yes", YES, None),
    ("NO", NO, None),
    ("no", NO, None),
    ("No.", NO, None),
    ("nope", NO, None),
    ("no thanks", NO, None),
    ("No gracias", NO, None),
    ("no quiero pagar", NO, None),
    # Balance.
    ("BAL", BAL, None),
    ("bal", BAL, None),
    ("BALANCE", BAL, None),
    ("balance?", BAL, None),
    ("balence", BAL, None),
    ("blance", BAL, None),
    ("Saldo", BAL, None),
    ("saldo?", BAL, None),
    ("mi saldo", BAL, None),
    ("How much do I owe?", BAL, None),
    ("how much do i owe", BAL, None),
    ("What's my balance", BAL, None),
    ("whats my balance?", BAL, None),
    ("¿Cuánto debo?", BAL, None),
    ("cuanto debo", BAL, None),
    ("Cuanto le debo", BAL, None),
    ("send me my balance", BAL, None),
    ("how much do i need to pay", BAL, None),
    ("ok how much do I owe", BAL, None),
    ("when is my payment due", BAL, None),
    # History.
    ("HISTORY", HIST, None),
    ("history", HIST, None),
    ("histroy", HIST, None),
    ("Historial", HIST, None),
    ("pagos", HIST, None),
    ("mis pagos", HIST, None),
    ("last payments", HIST, None),
    ("When was my last payment?", HIST, None),
    ("did you get my payment", HIST, None),
    ("últimos pagos", HIST, None),
    # Appointments.
    ("APPT", APPT, None),
    ("appt", APPT, None),
    ("appointment", APPT, None),
    ("apointment", APPT, None),
    ("court date", APPT, None),
    ("When is my hearing?", APPT, None),
    ("when is my court date", APPT, None),
    ("CITA", APPT, None),
    ("citas", APPT, None),
    ("¿Cuándo es mi cita?", APPT, None),
    ("audiencia", APPT, None),
    # A link to add or replace the card on file.
    ("CARD", CARD, None),
    ("new card", CARD, None),
    ("Update my card.", CARD, None),
    ("change card please", CARD, None),
    ("TARJETA", CARD, None),
    ("tarjeta nueva", CARD, None),
    ("cambiar mi tarjeta", CARD, None),
    ("Actualizar tarjeta", CARD, None),
    ("pay with my card", PAY, None),
    ("my card expired", CARD, None),
    ("I need to add a new debit card", CARD, None),
    ("quiero cambiar la tarjeta", CARD, None),
    # A person.
    ("AGENT", AGENT, None),
    ("agente", AGENT, None),
    ("Representative", AGENT, None),
    ("representante", AGENT, None),
    ("person", AGENT, None),
    ("operator", AGENT, None),
    ("agnet", AGENT, None),
    ("talk to a person", AGENT, None),
    ("I need to speak with someone", AGENT, None),
    ("Can I talk to my caseworker", AGENT, None),
    ("hablar con alguien", AGENT, None),
    ("Quiero hablar con un agente", AGENT, None),
    ("no, I want to talk to a person", AGENT, None),
    # Help and menu.
    ("HELP", HELP, None),
    ("help", HELP, None),
    ("Help!", HELP, None),
    ("INFO", HELP, None),
    ("AYUDA", HELP, None),
    ("ayuda por favor", HELP, None),
    ("?", HELP, None),
    ("¿?", HELP, None),
    ("what is this", HELP, None),
    ("MENU", MENU, None),
    ("menú", MENU, None),
    ("Menu please", MENU, None),
    ("opciones", MENU, None),
    # Digits: menu choices and case numbers.
    ("1", DIGITS, "1"),
    ("2", DIGITS, "2"),
    (" 0 ", DIGITS, "0"),
    ("2.", DIGITS, "2"),
    ("#5", DIGITS, "5"),
    ("4821", DIGITS, "4821"),
    ("case 4821", DIGITS, "4821"),
    ("Caso 7730", DIGITS, "7730"),
    ("48-21", DIGITS, "4821"),
    ("50", DIGITS, "50"),
    # Language.
    ("ENGLISH", LANG, "en"),
    ("english please", LANG, "en"),
    ("Inglés", LANG, "en"),
    ("ingles", LANG, "en"),
    ("ESPAÑOL", LANG, "es"),
    ("espanol", LANG, "es"),
    ("Español por favor", LANG, "es"),
    ("spanish", LANG, "es"),
    ("en español", LANG, "es"),
    ("Do you speak Spanish?", LANG, "es"),
    ("no hablo ingles", LANG, "es"),
    ("I don't speak Spanish", LANG, "en"),
    # Opting out: keywords.
    ("STOP", STOP, None),
    ("stop", STOP, None),
    ("STOP.", STOP, None),
    ("Stop!!", STOP, None),
    ("stop please", STOP, None),
    ("Please stop", STOP, None),
    ("STOP STOP STOP", STOP, None),
    ("stoppp", STOP, None),
    ("ＳＴＯＰ", STOP, None),
    ("STOPALL", STOP, None),
    ("stop all", STOP, None),
    ("UNSUBSCRIBE", STOP, None),
    ("Cancel", STOP, None),
    ("CANCEL my payment", STOP, None),
    ("END", STOP, None),
    ("end.", STOP, None),
    ("QUIT", STOP, None),
    ("revoke", STOP, None),
    ("OPTOUT", STOP, None),
    ("opt out", STOP, None),
    ("Opt-out", STOP, None),
    ("ALTO", STOP, None),
    ("alto.", STOP, None),
    ("PARAR", STOP, None),
    ("Pare", STOP, None),
    ("basta", STOP, None),
    ("ya basta", STOP, None),
    ("CANCELAR", STOP, None),
    ("no mas", STOP, None),
    ("No más", STOP, None),
    ("NO MÁS!", STOP, None),
    ("detener", STOP, None),
    # Opting out: plain sentences (FCC 2025 revocation rule).
    ("please stop texting me", STOP, None),
    ("Stop sending me messages", STOP, None),
    ("opt me out", STOP, None),
    ("don't text me anymore", STOP, None),
    ("Do not text me again", STOP, None),
    ("remove me from this list", STOP, None),
    ("remove me", STOP, None),
    ("Please remove my number", STOP, None),
    ("remove me please", STOP, None),
    ("No más, por favor", STOP, None),
    ("no mas gracias", STOP, None),
    ("Take me off your list", STOP, None),
    ("I don't want these texts", STOP, None),
    ("no more texts", STOP, None),
    ("how do I unsubscribe?", STOP, None),
    ("wrong number", STOP, None),
    ("I already paid, stop", STOP, None),
    ("no, stop", STOP, None),
    ("no me manden mas mensajes", STOP, None),
    ("No me manden más mensajes por favor", STOP, None),
    ("ya no me envíen mensajes", STOP, None),
    ("dejen de escribirme", STOP, None),
    ("Dejen de mandarme mensajes", STOP, None),
    ("no quiero recibir mas mensajes", STOP, None),
    ("quiero darme de baja", STOP, None),
    ("número equivocado", STOP, None),
    # Not opting out, though a stop word is near.
    ("I can't stop by the office today", UNKNOWN, None),
    ("can't stop by", UNKNOWN, None),
    ("Will you stop by my house?", UNKNOWN, None),
    ("the bus stop is far from the office so I will call", UNKNOWN, None),
    ("el pago es muy alto", UNKNOWN, None),
    ("unstop", START, None),
    # Opting back in.
    ("START", START, None),
    ("start", START, None),
    ("UNSTOP", START, None),
    ("subscribe", START, None),
    ("COMENZAR", START, None),
    ("Inicio", START, None),
    ("reanudar", START, None),
    # Everything else.
    ("hi", UNKNOWN, None),
    ("Hola", UNKNOWN, None),
    ("thank you", THANKS, None),
    ("gracias!", THANKS, None),
    ("👍", UNKNOWN, None),
    ("😀😀😀", UNKNOWN, None),
    ("who are you people", UNKNOWN, None),
    ("asdfgh", UNKNOWN, None),
    # What payers really answer to a reminder or a quote (a reviewer's findings).
    ("Thanks!", THANKS, None),
    ("thank you so much", THANKS, None),
    ("ok thanks", THANKS, None),  # never a YES to a payment
    ("gracias", THANKS, None),
    ("Muchas gracias 🙏", THANKS, None),
    # An opt-out word first wins, whatever follows (the brief, and the FCC's list of words).
    ("cancel the payment", STOP, None),
    ("Cancelar el pago", STOP, None),
    ("stop payment", STOP, None),
    ("End of month I will pay", STOP, None),
    # Further in, "cancel the payment" is about the payment.
    ("I want to cancel the payment", NO, None),
    ("quiero cancelar el pago", NO, None),
    ("don't pay", NO, None),
    ("I don't want to pay", NO, None),
    ("no quiero pagar", NO, None),
    ("I can't pay right now", AGENT, None),
    ("cannot afford it this month", AGENT, None),
    ("No puedo pagar este mes", AGENT, None),
    ("no tengo dinero", AGENT, None),
    ("I already paid", HIST, None),
    ("did my payment go through?", HIST, None),
    ("ya pagué", HIST, None),
    ("pague 50", HIST, None),  # or "pagué 50", I paid 50: the history answers both safely
    ("Págalo", PAY, None),
    ("¿Cuándo vence mi pago?", BAL, None),
    ("cuando es mi proximo pago", BAL, None),
    ("cuándo tengo que pagar?", BAL, None),
    ("when do I have to pay", BAL, None),
    ("8204 pay 20", PAY, 2000),  # the amount after the word pay
    ("pay $40 on case 0311", PAY, 4000),  # the case is not the amount
    ("case 1500 pay", PAY, None),
    ("MA-2023-550311", DIGITS, "2023550311"),
    # A yes taken back is no yes, and a thank-you never confirms a payment (second review).
    ("ok, no thanks", UNKNOWN, None),
    ("ok wait", UNKNOWN, None),
    ("ok not now", UNKNOWN, None),
    ("si, todavia no", UNKNOWN, None),
    ("okay thank you", THANKS, None),
    ("ok ty", THANKS, None),
    ("ok got it thanks", THANKS, None),
    ("ok muchas gracias", THANKS, None),
    ("yes please", YES, None),
    ("si claro", YES, None),
    # An opt-out word after an acknowledgement opts out.
    ("ok alto", STOP, None),
    ("si, alto", STOP, None),
    ("ok basta", STOP, None),
    ("Gracias, ALTO", STOP, None),
    ("ok cancel", STOP, None),
    ("el pago es muy alto", UNKNOWN, None),  # "alto" is also "high"
    # "pagué" (I paid) loses its accent to "pague": the history answers it.
    ("Pagué ayer", HIST, None),
    ("pagado", HIST, None),
    # A thank-you first gives way to the request.
    ("thanks, how much do I owe?", BAL, None),
    ("gracias, ¿cuánto debo?", BAL, None),
    ("thanks can I talk to someone", AGENT, None),
    ("12 50", DIGITS, "1250"),  # never an amount: see the dialogue
    ("", EMPTY, None),
    ("   ", EMPTY, None),
    ("\n\t", EMPTY, None),
    ("\u200b", EMPTY, None),
]


def expected(intent: Intent, detail) -> dict:
    fields = {"intent": intent, "amount_cents": None, "amount_error": None, "digits": None}
    if intent in (PAY, YES) and isinstance(detail, int):
        fields["amount_cents"] = detail
    elif intent is PAY:
        fields["amount_error"] = detail
    elif intent is DIGITS:
        fields["digits"] = detail
    elif intent is LANG:
        fields["language"] = detail
    return fields


@pytest.mark.parametrize(
    ("body", "case_digits"),
    [
        ("pay $40 on case 0311", "0311"),
        ("case 1500 pay", "1500"),
        ("saldo del caso 4821", "4821"),
        ("BAL #4821", "4821"),
        ("history case ending in 118204", "118204"),
        ("pay 50 on case MA-2023-550311", "ma2023550311"),
        ("pay 50", None),
        ("pay $1,250", None),
    ],
)
def test_a_case_named_in_a_request_is_kept_apart_from_the_amount(body, case_digits):
    assert parse(body).case_digits == case_digits


@pytest.mark.parametrize(
    ("body", "full"),
    [
        ("pay all", True),
        ("pay my full balance", True),
        ("pay it all", True),
        ("pay in full", True),
        ("pagar todo el saldo", True),
        ("pay", False),
        ("pay all 50", False),  # an amount named wins
        ("pay the full amount due", False),  # the amount due, in full
        ("pay this month in full", False),
        ("pay the total due", False),
        ("pay now please, thats all", False),
    ],
)
def test_paying_the_whole_balance_is_understood(body, full):
    assert parse(body).full_balance is full


@pytest.mark.parametrize(
    ("body", "mentions_pay"),
    [("yes pay", True), ("ok pay it", True), ("yes, pay 250", True), ("yes", False), ("si", False)],
)
def test_a_yes_that_says_pay_is_marked(body, mentions_pay):
    command = parse(body)
    assert command.intent is YES and command.mentions_pay is mentions_pay


@pytest.mark.parametrize(
    ("body", "language"),
    [
        ("balance for LA county", None),
        ("Balance for Maria De La Cruz", None),
        ("balance - El Monte case", None),
        ("hola, cuanto debo", "es"),
    ],
)
def test_a_name_or_place_with_spanish_words_does_not_make_a_text_spanish(body, language):
    assert parse(body).language == language


def test_the_table_is_large_and_covers_every_intent():
    assert len(MESSAGES) >= 150
    assert {intent for _, intent, _ in MESSAGES} == set(Intent)


@pytest.mark.parametrize(("body", "intent", "detail"), MESSAGES)
def test_a_real_message_gives_the_right_command(body, intent, detail):
    command = parse(body)
    got = {name: getattr(command, name) for name in expected(intent, detail)}
    assert got == expected(intent, detail)


@pytest.mark.parametrize(
    ("body", "language"),
    [
        ("saldo", "es"),
        ("BAL", "en"),
        ("balance", None),  # the same word in both languages
        ("no", None),
        ("no gracias", "es"),
        ("hola", "es"),
        ("hi there", "en"),
        ("quiero pagar 50", "es"),
        ("please stop texting me", "en"),
        ("ALTO", "es"),
        ("basta", "es"),
        ("STOP", None),  # carriers' keyword, texted in either language
        ("dejen de escribirme", "es"),
        ("4821", None),
    ],
)
def test_the_language_a_message_is_written_in_is_given_when_obvious(body, language):
    assert parse(body).language == language


def test_the_text_is_folded_to_plain_lowercase_words():
    assert parse("  ¿Cuánto   DEBO?! ").text == "cuanto debo"
    assert parse("Pay $1,250.00 please").text == "pay 1,250.00 please"
    assert parse("don't text me").text == "dont text me"


def test_control_characters_and_lone_surrogates_are_ignored():
    assert parse("\x00S\x07TOP").intent is UNKNOWN  # 's top': not a keyword once split
    assert parse("\x00STOP\x1b").intent is STOP
    assert parse("bal\ud800").intent is BAL
    assert parse("\udc80\udcff").intent is EMPTY


def test_a_very_long_message_is_read_without_error():
    assert parse("stop " + "x" * 5000).intent is STOP
    assert parse("hello " * 300).intent is UNKNOWN


any_text = st.text(
    st.one_of(st.characters(exclude_categories=()), st.sampled_from("\ud800\udfff\x00\u200b"))
)


@given(any_text)
def test_parse_never_raises_and_always_returns_a_command(body):
    command = parse(body)
    assert isinstance(command, Command)
    assert isinstance(command.intent, Intent)
    assert command.amount_cents is None or command.amount_cents > 0


@given(
    prefix=st.sampled_from(["", " ", "  ", "\n", "¡", "*", "\u200b"]),
    keyword=st.sampled_from(STOP_WORDS).flatmap(
        lambda word: st.lists(st.booleans(), min_size=len(word), max_size=len(word)).map(
            lambda upper: "".join(c.upper() if u else c for c, u in zip(word, upper, strict=True))
        )
    ),
    separator=st.sampled_from(["", " ", ".", "!", ",", "\n", " - ", "?"]),
    rest=any_text,
)
def test_a_message_whose_first_word_is_an_opt_out_keyword_always_opts_out(
    prefix, keyword, separator, rest
):
    body = prefix + keyword + (separator + rest if separator else "")
    assert parse(body).intent is STOP


@pytest.mark.parametrize(
    ("body", "gives"),
    [
        ("YES", True),
        ("y", True),
        ("Sí", True),
        ("siii", True),
        ("yes please", True),
        ("START", True),
        ("unstop", True),
        ("ok", False),
        ("Ok thanks", False),
        ("Ok gracias", False),
        ("sure", False),
        ("claro", False),
        ("dale", False),
        ("yeah", False),
        ("BAL", False),
    ],
)
def test_only_a_plain_yes_or_start_gives_consent_again(body, gives):
    """After STOP, "ok" may only acknowledge the confirmation; it must not re-subscribe."""
    assert consents(parse(body)) is gives


@pytest.mark.parametrize("body", ["No, más tarde", "no más tarde", "remove the late fee"])
def test_a_no_with_more_words_is_not_an_opt_out(body):
    assert parse(body).intent is not STOP
