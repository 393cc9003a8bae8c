"""Turn an SMS body into a Command: English and Spanish keywords, phrases and amounts.

The body is folded first (lowercase, accents, emoji and punctuation dropped, apostrophes
joined: "¿Cuánto DEBO?" -> "cuanto debo", "don't" -> "dont"). Then, in order:

1. Opt-out. It wins over everything else because honouring it is the legal duty:
   - the first word is an opt-out keyword (STOP, END, CANCEL, ALTO, ...), as carriers do;
   - the whole message is an opt-out phrase ("stop all", "opt out", "no mas");
   - the message plainly revokes consent ("please stop texting me", "remove me from this
     list", "no me manden mas mensajes", "dejen de escribirme", "wrong number");
   - "stop" is the last word or the message is short (4 words or fewer) and has "stop" in it,
     unless a negation comes right before it or a place word right after it, so "I can't
     stop by the office" and "stop by tomorrow" do not opt out.
2. The whole message is a keyword or short phrase ("BAL", "cuanto debo", "court date").
3. The message is only digits, maybe after "case"/"#" ("2", "4821", "case 4821"): DIGITS.
4. The first word is a keyword ("pay $50 please", "saldo?"); a lone word or a word before an
   amount may be misspelt by one letter ("balence", "pagr 50"). YES/NO ("ok", "no") as the
   first word give way to a question later in the message ("ok how much do I owe").
5. A phrase anywhere in the message ("quiero pagar 50", "when is my hearing").
6. The message is an amount ("$50", "1,250.00"): PAY with that amount.
7. Otherwise UNKNOWN; nothing readable at all (blank, media only) is EMPTY.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass
from enum import StrEnum

from bot.messages import Language
from money import AmountError, parse_dollars

MAX_BODY = 1600  # the longest body Twilio delivers; anything past it is not read


class Intent(StrEnum):
    """What a message asks for."""

    PAY = "pay"
    YES = "yes"
    NO = "no"
    BALANCE = "balance"
    HISTORY = "history"
    APPOINTMENT = "appointment"
    AGENT = "agent"
    HELP = "help"
    MENU = "menu"
    DIGITS = "digits"
    LANGUAGE = "language"
    STOP = "stop"
    START = "start"
    THANKS = "thanks"
    CARD = "card"  # a link to add or replace the card on file
    UNKNOWN = "unknown"
    EMPTY = "empty"


@dataclass(frozen=True)
class Command:
    """A parsed message. `language` is the target for LANGUAGE, else the language it is in."""

    intent: Intent
    amount_cents: int | None = None
    amount_error: str | None = None
    digits: str | None = None
    language: Language | None = None
    text: str = ""
    case_digits: str | None = None  # the case named, letters and digits: "case MA-0311" -> ma0311
    full_balance: bool = False  # "pay all", "pay my full balance", "pagar todo"
    mentions_pay: bool = False  # a YES that also says pay ("yes pay 250", "ok pay it")


EN, ES = Language.EN, Language.ES
_KEYWORDS: dict[str, tuple[Intent, Language | None]] = {}


def _add(intent: Intent, language: Language | None, *phrases: str) -> None:
    for phrase in phrases:
        _KEYWORDS[phrase] = (intent, language)


# Carrier opt-out keywords (CTIA) and their Spanish twins: as the first word they always opt out.
STOP_WORDS = (
    "stop", "stopall", "unsubscribe", "cancel", "end", "quit", "revoke", "optout",
    "alto", "parar", "pare", "basta", "cancelar", "detener",
)  # fmt: skip
_add(Intent.STOP, None, *STOP_WORDS, "stopp", "stpo", "sotp", "unsuscribe", "unsubcribe")
_add(Intent.STOP, EN, "stop all", "opt out", "opt me out", "no more", "no more texts")
_add(Intent.STOP, ES, "no mas", "no mas mensajes", "ya basta")
_add(Intent.START, None, "start", "unstop")
_add(Intent.START, EN, "subscribe", "resubscribe", "opt in", "optin", "start again")
_add(Intent.START, ES, "comenzar", "inicio", "reanudar", "suscribir", "suscribirme")
_add(Intent.PAY, EN, "pay", "payment", "pay now", "pay bill", "pay my bill", "make a payment")
_add(Intent.PAY, ES, "pagar", "pago", "pagar ahora", "hacer un pago", "quiero pagar", "abonar")
# "pague" is also "pagué" (I paid) with its accent dropped: the history answers both safely.
_add(Intent.PAY, ES, "paguen", "pagalo", "paguelo", "pagarlo")
_add(Intent.HISTORY, ES, "pague", "pagado", "ya pague", "ya pagado", "ya esta pagado")
_add(Intent.YES, EN, "yes", "y", "ye", "yea", "yeah", "yep", "yup", "yes please", "confirm")
_add(Intent.YES, EN, "sure")
_add(Intent.YES, ES, "si", "confirmar", "confirmo", "claro", "dale", "de acuerdo", "si por favor")
_add(Intent.YES, None, "ok", "okay")
_add(Intent.NO, None, "no")
_add(Intent.NO, EN, "n", "nope", "nah", "no thanks", "no thank you")
_add(Intent.NO, ES, "no gracias")
_add(Intent.BALANCE, None, "balance")
_add(Intent.BALANCE, EN, "bal", "my balance", "how much do i owe", "amount due", "owe")
_add(Intent.BALANCE, ES, "saldo", "mi saldo", "cuanto debo", "cuanto le debo", "adeudo")
_add(Intent.HISTORY, EN, "history", "hist", "payments", "my payments", "payment history")
_add(Intent.HISTORY, EN, "last payments", "recent payments")
_add(Intent.HISTORY, ES, "historial", "pagos", "mis pagos", "historial de pagos", "ultimos pagos")
_add(Intent.APPOINTMENT, EN, "appt", "appts", "appointment", "appointments", "my appointment")
_add(Intent.APPOINTMENT, EN, "court", "court date", "hearing")
_add(Intent.APPOINTMENT, ES, "cita", "citas", "mi cita", "audiencia", "corte", "fecha de corte")
_add(Intent.AGENT, EN, "agent", "representative", "rep", "person", "operator", "human")
_add(Intent.AGENT, EN, "live agent", "real person", "caseworker", "case worker", "someone")
_add(Intent.AGENT, ES, "agente", "representante", "persona", "operador", "operadora", "humano")
_add(Intent.AGENT, ES, "alguien")
_add(Intent.HELP, EN, "help", "info", "information", "what is this", "who is this")
_add(Intent.HELP, ES, "ayuda", "informacion", "que es esto", "quien es")
_add(Intent.MENU, None, "menu")
_add(Intent.CARD, EN, "card", "new card", "add card", "add a card", "update card", "change card")
_add(Intent.CARD, EN, "update my card", "change my card", "card link", "new card link")
_add(Intent.CARD, ES, "tarjeta", "nueva tarjeta", "agregar tarjeta", "agregar una tarjeta")
_add(Intent.CARD, ES, "cambiar tarjeta", "cambiar mi tarjeta", "actualizar tarjeta")
_add(Intent.CARD, ES, "actualizar mi tarjeta")
# Thanks, alone or after an ok: never a YES to a payment.
_add(Intent.THANKS, EN, "thanks", "thank you", "thx", "ty", "thanks so much", "thank you so much")
_add(Intent.THANKS, EN, "ok thanks", "ok thank you", "okay thanks", "ok thx", "great thanks")
_add(Intent.THANKS, ES, "gracias", "muchas gracias", "ok gracias", "mil gracias", "gracias senor")
_add(Intent.THANKS, ES, "gracias senora")
_add(Intent.MENU, EN, "options", "main menu")
_add(Intent.MENU, ES, "opciones")
# For LANGUAGE the language is the one asked for, not the one written in.
_add(Intent.LANGUAGE, EN, "english", "ingles", "in english", "en ingles", "english please")
_add(Intent.LANGUAGE, ES, "spanish", "espanol", "en espanol", "in spanish", "spanish please")
_add(Intent.LANGUAGE, ES, "espanol por favor", "castellano")


def _squeeze(word: str) -> str:
    """Collapse doubled letters, so 'yesss', 'siii' and 'stoppp' meet their keyword."""
    return re.sub(r"(.)\1+", r"\1", word)


_SQUEEZED = {_squeeze(k): v for k, v in _KEYWORDS.items() if " " not in k}
# Typos are forgiven only for keywords long enough that one slip cannot make another word;
# consent keywords (STOP, START, YES, NO) are never guessed.
_FUZZY_TARGETS = {
    k: v
    for k, v in _KEYWORDS.items()
    if " " not in k
    and len(k) >= 5
    and v[0] not in (Intent.STOP, Intent.START, Intent.YES, Intent.NO)
}

_REVOKE = re.compile(
    r"\b(?:"
    r"(?:stop|quit|cease)\s+(?:all\s+|the\s+|these\s+|those\s+|your\s+|sending\s+(?:me\s+)?)?"
    r"(?:text|texts|texting|txt|txts|txting|message|messages|messaging|msg|msgs|sms|"
    r"contacting|calling|sending|it|now|please|pls|plz)"
    r"|(?:dont|do not|never)\s+(?:ever\s+)?(?:text|txt|message|msg|contact|sms)\s+me"
    r"|no more\s+(?:text|texts|txt|txts|messages?|msgs?|sms)"
    r"|(?:dont|do not)\s+want\s+(?:any\s+|these\s+|your\s+|the\s+|to\s+(?:get|receive)\s+)?"
    r"(?:more\s+)?(?:text|texts|messages|msgs|sms)"
    r"|(?:remove|delete|take)\s+(?:me|my number|this number|my phone)\s+(?:from|off)"
    # "remove me", "please remove my number": the whole request, or with only a courtesy after.
    r"|(?:remove|delete)\s+(?:me|my number|this number|my phone(?:\s+number)?)"
    r"(?=\s+(?:please|pls|plz|now|thanks|thank you)\b|$)"
    r"|opt\s?me\s?out|opt\s?out|unsubscribe|stopall|stop all|leave me alone|wrong number"
    r"|no\s+me\s+(?:manden|mande|envien|envie|escriban|escriba|texteen|textee)"
    r"|ya no\s+(?:me\s+)?(?:manden|mande|envien|envie|escriban|escriba|texteen|textee)"
    r"|(?:ya no|no)\s+(?:quiero|deseo)\s+(?:recibir\s+)?(?:mas\s+)?(?:mensajes|textos|msjs?)"
    r"|dej(?:en|e|a)\s+de\s+(?:escribir|mandar|enviar|textear|molestar)(?:me)?"
    r"|no mas\s+(?:mensajes|textos|msjs?)"
    r"|^no mas\s+(?:por favor|porfavor|gracias)$"
    r"|(?:dar|darme|doy|me doy)\s+de\s+baja"
    r"|quitenme|quiteme|saquenme|borrenme|borreme|eliminenme|numero equivocado"
    r")\b"
)
_NEGATIONS = {"cant", "cannot", "couldnt", "wont", "dont", "didnt", "not", "never"}
# Opt-out words that revoke consent after an acknowledgement ("ok alto", "gracias, BASTA");
# END is left out ("ok the end"?), and STOP has a rule of its own.
_OPT_OUT_ANYWHERE = frozenset(STOP_WORDS) - {"stop", "end"}
_COURTESY = frozenset({
    "ok", "okay", "k", "yes", "y", "si", "thanks", "thank", "you", "ty", "gracias", "please",
    "pls", "por", "favor", "ya", "now", "ahora", "all", "todo", "me",
})  # fmt: skip
_PLACE_WORDS = {"by", "in", "at", "over", "to", "for", "there", "here", "on"}

_DONT_SPEAK = r"(?:dont|do not|cant|no)\s+(?:speak|read|understand|hablo|entiendo|leo)"
# Phrases searched anywhere, in this order: a specific ask before a general one
# ("how much do I need to pay" is a balance question, "I want to pay my balance" a payment).
_PHRASES: tuple[tuple[Intent, Language | None, re.Pattern[str]], ...] = tuple(
    (intent, language, re.compile(rf"\b(?:{pattern})\b"))
    for intent, language, pattern in (
        (Intent.LANGUAGE, ES, rf"{_DONT_SPEAK}\s+(?:english|ingles)"),
        (Intent.LANGUAGE, EN, rf"{_DONT_SPEAK}\s+(?:spanish|espanol)"),
        (Intent.LANGUAGE, ES, r"spanish|espanol|castellano"),
        (Intent.LANGUAGE, EN, r"english|ingles"),
        # Cannot pay: a person can help (a payment plan, a change of order), not a quote.
        (
            Intent.AGENT,
            EN,
            r"(?:cant|cannot|can not|couldnt|unable to|wont be able to|not able to)\s+"
            r"(?:afford|pay|make (?:a |the |my |this )?payments?)"
            r"|(?:dont|do not) have (?:the |any |enough )?money",
        ),
        (
            Intent.AGENT,
            ES,
            r"no (?:puedo|podre|voy a poder|alcanzo a) (?:pagar|hacer (?:el|un) pago)"
            r"|no tengo (?:el |suficiente )?(?:dinero|para pagar)",
        ),
        # Do not pay: a refusal, not a request to pay.
        (
            Intent.NO,
            EN,
            r"(?:dont|do not)\s+(?:want to\s+)?(?:pay|charge)|(?:cancel|stop) (?:the |my |this )?"
            r"(?:payment|charge)",
        ),
        (
            Intent.NO,
            ES,
            r"no (?:quiero )?(?:pagar|cobrar)|no (?:me )?(?:cobren|cobre)"
            r"|cancelar (?:el |mi |este )?(?:pago|cobro)",
        ),
        # A new card: a link to add it (the one on file expired, was lost or was declined).
        (
            Intent.CARD,
            EN,
            r"(?:new|update|change|replace|add|another|different)\s+(?:my |a |the )?"
            r"(?:debit |credit )?card|card (?:expired|is expired|was declined|declined|link)",
        ),
        (
            Intent.CARD,
            ES,
            r"(?:cambiar|actualizar|agregar|reemplazar|otra|nueva)\s+(?:mi |una |la )?tarjeta"
            r"|tarjeta (?:nueva|vencida|vencio)",
        ),
        # Paid already: the history shows whether it arrived.
        (
            Intent.HISTORY,
            EN,
            r"(?:already|just) (?:paid|made (?:a |the |my )?payment)"
            r"|did (?:my|the) payment (?:go through|post|clear)|payment (?:go|went) through",
        ),
        (Intent.HISTORY, ES, r"ya (?:pague|hice (?:el|un|mi) pago|pagu[eé])|recibieron mi pago"),
        (
            Intent.AGENT,
            EN,
            r"(?:talk|speak|chat)\s+(?:to|with)\s+(?:a|an|the|my|someone|somebody|anyone|person|"
            r"human|agent|rep|representative|caseworker|worker|staff|real)"
            r"|agent|representative|real person|human|caseworker|case worker|operator|call me",
        ),
        (
            Intent.AGENT,
            ES,
            r"(?:hablar|comunicarme)\s+con|agente|representante|operador|operadora|persona real"
            r"|llamenme|llameme",
        ),
        (
            Intent.BALANCE,
            EN,
            r"how much|whats my balance|what is my balance|whats due|when is (?:my )?payment due"
            r"|when (?:is|do i|should i|must i)\b.*\b(?:pay|payment|due)",
        ),
        (
            Intent.BALANCE,
            ES,
            r"cuanto|cuando (?:vence|se vence|toca pagar|tengo que pagar|debo pagar|hay que pagar)"
            r"|(?:proximo|siguiente) pago",
        ),
        (
            Intent.HISTORY,
            EN,
            r"history|last payments?|recent payments?|my payments|payments i made"
            r"|did (?:you|u) get my payment",
        ),
        (Intent.HISTORY, ES, r"historial|mis pagos|ultimos pagos|ultimo pago|pagos recientes"),
        (Intent.APPOINTMENT, EN, r"appt|appts|appointments?|court|hearings?|conference"),
        (Intent.APPOINTMENT, ES, r"cita|citas|audiencia|corte|tribunal|conferencia"),
        (Intent.PAY, EN, r"pay|make a payment"),
        (Intent.PAY, ES, r"pagar|abonar|hacer un pago"),
        (Intent.BALANCE, EN, r"balance|balence|bal|owe|owed|due"),
        (Intent.BALANCE, ES, r"saldo|debo|adeudo"),
        (Intent.HELP, EN, r"help|info"),
        (Intent.HELP, ES, r"ayuda|informacion"),
        (Intent.MENU, None, r"menu|options|opciones"),
    )
)

_WORD = re.compile(r"[a-z]+|[0-9]+(?:[.,][0-9]+)*")  # '1,250.00' stays one word
# "2", "4821", "case 4821", "#4821", or a whole case number with its letters ("MA-2023-550311").
_DIGITS = re.compile(r"(?:case|caso|#|\s)*(?:[a-z]{1,4}-)?([0-9][0-9 \-]*)[.!?\s]*")
# A case named inside a request ("pay 40 on case 0311", "saldo del caso 4821", "bal #4821").
_CASE_REF = re.compile(
    r"(?:\b(?:case|caso)\s*(?:number|numero|num|no|ending in|ending|que termina en|terminado en)?"
    r"\s*#?|#)\s*((?:[a-z]{1,4}-)?[0-9][0-9\-]{2,}[0-9])\b"
)
_PAY_WORD = re.compile(r"\b(?:pay|payment|pagar|pago|pague|abonar)\b")
# "pay all", "pay my full balance", "pagar todo el saldo": the words after PAY, and nothing
# else ("pay the full amount due" is the amount due).
_FULL_BALANCE = re.compile(
    r"\s*(?:it |them |off |for )?(?:all|everything|in full|it off"
    r"|(?:my |the |this )?(?:full|entire|whole|total) balance|(?:my |the )?balance in full"
    r"|todo|todo el saldo|el saldo completo|el total|el total del saldo|la deuda completa"
    r"|el saldo total|mi saldo completo|todo lo que debo)"
    r"(?:\s+(?:please|pls|now|ahora|por favor))?[\s.!]*"
)
_AMOUNT_FILLER = re.compile(r"\b(?:please|pls|por favor|dollars?|dolares|usd)\b|[!?]")
_AMOUNT_ONLY = re.compile(r"-?\$?\s*-?[0-9.,]*[0-9][0-9.,]*")
_AMOUNT_CHUNK = re.compile(r"[-$]*\.?[0-9][^\s]*")

# Words that give away the language of a message that is not a keyword.
_SPANISH = frozenset({
    "hola", "gracias", "quiero", "necesito", "cuanto", "cuando", "donde", "que", "por", "favor",
    "mi", "mis", "tengo", "puedo", "buenos", "buenas", "dias", "tardes", "usted", "estoy",
    "como", "hablar", "con", "alguien", "para", "el", "la", "los", "las", "de", "del", "es",
    "esta", "pagar", "pago", "saldo", "cita", "ayuda", "senor", "senora", "ya", "mas",
    "mensajes", "manden", "envien", "escriban", "nada", "hoy", "dinero",
    # The Spanish opt-out words: a stranger's ALTO is confirmed in Spanish.
    "alto", "parar", "pare", "basta", "cancelar", "detener",
    "dejen", "deje", "escribirme", "molesten", "llamen", "numero", "equivocado", "baja",
})  # fmt: skip
_ENGLISH = frozenset({
    "hello", "hi", "hey", "thanks", "thank", "you", "want", "need", "how", "much", "when",
    "where", "what", "please", "my", "i", "the", "is", "can", "to", "with", "someone", "talk",
    "pay", "payment", "appointment", "help", "am", "do", "does", "did", "texting",
    "text", "texts", "messages", "today", "money",
})  # fmt: skip


def parse(body: str) -> Command:
    """Parse a message body; never raises, whatever the text."""
    if not isinstance(body, str):
        return _parse("")
    # Most texts are a handful of words payers send again and again (BAL, PAY, YES, STOP):
    # parsing is pure, so the answers for short bodies are kept.
    return _parse_short(body) if len(body) <= _SHORT else _parse(body)


_SHORT = 40


def _parse(body: str) -> Command:
    folded = _fold(body)
    words = tuple(_WORD.findall(folded))
    text = " ".join(words)
    if not folded:
        return Command(Intent.EMPTY)
    if not words:
        return Command(Intent.HELP if "?" in folded else Intent.UNKNOWN)
    if _opts_out(words, text):
        return Command(Intent.STOP, language=_guess_language(words), text=text)
    if text in _KEYWORDS:
        return _command(*_KEYWORDS[text], words, text)
    if match := _DIGITS.fullmatch(folded):
        return Command(Intent.DIGITS, digits=re.sub(r"[ \-]", "", match[1]), text=text)
    alone = len(words) == 1 or (len(words) == 2 and words[1][0].isdigit())  # 'pagr 50'
    first = _keyword(words[0], fuzzy=alone)
    phrase = _phrase(text)
    if first is not None:
        if first[0] is Intent.THANKS and phrase:  # "thanks, how much do I owe?"
            return _command(*phrase, words, text, amount_from=folded)
        if first[0] in (Intent.YES, Intent.NO) and phrase and phrase[0] is not Intent.PAY:
            return _command(*phrase, words, text)
        if first[0] is Intent.YES and (hedge := _hedged_yes(words)):
            # "ok thank you", "ok wait", "ok no thanks": never a YES to a payment.
            return Command(hedge, language=_guess_language(words), text=text)
        return _command(*first, words, text, amount_from=folded)
    if phrase is not None:
        return _command(*phrase, words, text, amount_from=folded)
    rest = _AMOUNT_FILLER.sub("", folded).strip().rstrip(".")
    if _AMOUNT_ONLY.fullmatch(rest):
        return _command(Intent.PAY, None, words, text, amount_from=rest)
    spoken = _POLITE.sub("", folded).strip().rstrip(".")
    if _SPOKEN_AMOUNT.fullmatch(spoken):  # "50 cents", "1 dollar 50 cents"
        return _command(Intent.PAY, None, words, text, amount_from=spoken)
    return Command(Intent.UNKNOWN, language=_guess_language(words), text=text)


_parse_short = functools.lru_cache(maxsize=4096)(_parse)

_THANKS_WORDS = frozenset({"thanks", "thank", "thx", "ty", "tnx", "gracias"})
# Words that make a YES no plain yes: a refusal, a delay or a doubt ("ok no problem" is asked
# again too: one more text is a small price for never charging on a maybe).
_HEDGES = frozenset({
    "no", "not", "nope", "nah", "dont", "cant", "cannot", "never", "nunca", "wait", "later",
    "hold", "maybe", "espera", "espere", "esperen", "luego", "despues", "tal", "quizas",
    "todavia", "aun", "cancel", "cancelar",
})  # fmt: skip


def _hedged_yes(words: tuple[str, ...]) -> Intent | None:
    """What a message starting with a YES word is when the rest takes the yes back: UNKNOWN (the
    question is asked again) for a refusal or a delay, THANKS for a thank-you; None when it is a
    plain yes ("yes please", "yes pay 100", "si claro")."""
    rest = set(words[1:])
    if rest & _HEDGES:
        return Intent.UNKNOWN
    if rest & _THANKS_WORDS and not _PAY_WORD.search(" ".join(words)):
        return Intent.THANKS
    return None


def _fold(body: str) -> str:
    """Lowercase without accents, control or invisible characters; spaces collapsed."""
    chars = []
    for char in unicodedata.normalize("NFKD", body[:MAX_BODY]):
        category = unicodedata.category(char)
        if category == "Mn" or char in "'’‘`":
            continue
        # Controls, format marks, lone surrogates (bad UTF-8) and unassigned code points.
        chars.append(" " if category[0] in "CZ" else char)
    return " ".join("".join(chars).casefold().split())


def _opts_out(words: tuple[str, ...], text: str) -> bool:
    first = _keyword(words[0], fuzzy=False)
    if (first and first[0] is Intent.STOP) or _KEYWORDS.get(text, (None,))[0] is Intent.STOP:
        return True
    if _REVOKE.search(text):
        return True
    if len(words) <= 4 and any(_squeeze(w) in _OPT_OUT_ANYWHERE for w in words):
        # "ok alto", "gracias, BASTA", "yes cancel": an opt-out word with only courtesy around it
        # ("el pago es muy alto" is about a high payment).
        others = [w for w in words if _squeeze(w) not in _OPT_OUT_ANYWHERE]
        if all(w in _COURTESY for w in others):
            return True
    for i, word in enumerate(words):
        if _squeeze(word) != "stop" or (i != len(words) - 1 and len(words) > 4):
            continue
        before = words[i - 1] if i else ""
        after = words[i + 1] if i + 1 < len(words) else ""
        if before not in _NEGATIONS and after not in _PLACE_WORDS:
            return True
    return False


def _keyword(word: str, *, fuzzy: bool) -> tuple[Intent, Language | None] | None:
    found = _KEYWORDS.get(word) or _SQUEEZED.get(_squeeze(word))
    if found or not fuzzy or len(word) < 4:
        return found
    near = {v for k, v in _FUZZY_TARGETS.items() if _one_edit_apart(word, k)}
    return near.pop() if len(near) == 1 else None


def _one_edit_apart(a: str, b: str) -> bool:
    """True when one insertion, deletion, substitution or swap of neighbours turns a into b."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    start = 0
    while start < min(len(a), len(b)) and a[start] == b[start]:
        start += 1
    a, b = a[start:], b[start:]
    if len(a) == len(b):
        return a[1:] == b[1:] or (len(a) >= 2 and a[0] == b[1] and a[1] == b[0] and a[2:] == b[2:])
    return a[1:] == b if len(a) > len(b) else a == b[1:]


def _phrase(text: str) -> tuple[Intent, Language | None] | None:
    for intent, language, pattern in _PHRASES:
        if pattern.search(text):
            return intent, language
    return None


def _command(
    intent: Intent,
    language: Language | None,
    words: tuple[str, ...],
    text: str,
    *,
    amount_from: str = "",
) -> Command:
    if intent is Intent.LANGUAGE:
        return Command(intent, language=language, text=text)
    language = language or _guess_language(words)
    mentions_pay = intent is Intent.YES and bool(_PAY_WORD.search(amount_from))
    case_digits = None
    if intent in _NAMES_A_CASE and (ref := _CASE_REF.search(amount_from)):
        case_digits = ref[1].replace("-", "")
        amount_from = amount_from[: ref.start()] + " " + amount_from[ref.end() :]
    # A YES that names an amount ("yes pay 100", "sí, 50") keeps it: the dialogue must not
    # charge a quote for another sum.
    if intent is not Intent.PAY and not (intent is Intent.YES and _HAS_DIGIT.search(amount_from)):
        return Command(
            intent, language=language, text=text, case_digits=case_digits, mentions_pay=mentions_pay
        )
    # The amount is the one after the word pay when there is one: "8204 pay 20" pays $20.
    if (pay := _PAY_WORD.search(amount_from)) and _AMOUNT_CHUNK.search(amount_from, pay.end()):
        amount_from = amount_from[pay.end() :]
    cents, error = _amount(amount_from)
    return Command(
        intent,
        amount_cents=cents,
        amount_error=error,
        language=language,
        text=text,
        case_digits=case_digits,
        full_balance=intent is Intent.PAY
        and cents is None
        and error is None
        and _pays_whole_balance(amount_from),
        mentions_pay=mentions_pay,
    )


def _pays_whole_balance(text: str) -> bool:
    pay = _PAY_WORD.search(text)
    return pay is not None and _FULL_BALANCE.fullmatch(text, pay.end()) is not None


_NAMES_A_CASE = frozenset(
    {Intent.PAY, Intent.YES, Intent.BALANCE, Intent.HISTORY, Intent.APPOINTMENT, Intent.CARD}
)


_HAS_DIGIT = re.compile(r"[0-9]")

# Consent given again after STOP must be a plain yes: "ok" or "sure" may only acknowledge the
# opt-out confirmation. YES, Y and SI, as CTIA's opt-in keywords go, or START/UNSTOP.
_CONSENT_WORDS = frozenset({"yes", "y", "si", "confirm", "confirmar", "confirmo"})


_DECLINE_WORDS = frozenset({"no", "n", "nope", "nah"})


def declines(command: Command) -> bool:
    """Whether the message is a plain no ("no", "no thanks", "nope"), as an invitation must be
    declined: "please cancel my payment" is a NO to a payment, not to the texts."""
    return command.intent is Intent.NO and _first_word_in(command, _DECLINE_WORDS)


def consents(command: Command) -> bool:
    """Whether the message plainly gives consent to texts (START, UNSTOP, YES, SI)."""
    if command.intent is Intent.START:
        return True
    return command.intent is Intent.YES and _first_word_in(command, _CONSENT_WORDS)


def _first_word_in(command: Command, words: frozenset[str]) -> bool:
    return _squeeze(command.text.split(" ", 1)[0]) in words


def _amount(text: str) -> tuple[int | None, str | None]:
    """The first number-like chunk as cents or an AmountError code; (None, None) if none."""
    if split := _DOLLARS_AND_CENTS.search(text):
        # "1 dollar 50 cents", "$1 and 50 cents", "1 dólar con 50 centavos": $1.50, not $1.00.
        if split["bad"] or len(split["cents"]) > 2:
            return None, "not_a_number"
        try:
            dollars = parse_dollars(split["dollars"], allow_zero=True)
        except AmountError as error:
            return None, error.code
        cents = dollars + int(split["cents"])
        return (cents, None) if cents else (None, "zero")
    match = _AMOUNT_CHUNK.search(text)
    if match is None:
        return None, None
    chunk = match[0].rstrip(".,!?;:)]$")
    if "-" in chunk:  # '$-50' and '-$50' are both negative
        chunk = "-" + chunk.replace("-", "")
    if chunk.endswith("¢") or _CENTS_AFTER.match(text, match.end()):
        # "50 cents" is 50 cents, not $50.00; "1.50 cents" or "$50 cents" means nothing sure.
        chunk = chunk.removesuffix("¢")
        if not chunk.isdigit():
            return None, "not_a_number"
        return (int(chunk), None) if int(chunk) else (None, "zero")
    try:
        return parse_dollars(chunk, allow_zero=False), None
    except AmountError as error:
        return None, error.code


_CENTS_WORD = r"(?:¢|(?:cents?|centavos?|centimos?)\b)"
_DOLLARS_AND_CENTS = re.compile(
    # A decimal dollar part ('1.50 dollars and 20 cents') is caught, and means nothing sure.
    r"(?<![0-9.,])\$?(?P<dollars>[0-9][0-9,]*)(?P<bad>[.][0-9]+)?\s*"
    r"(?:(?:dollars?|dolar(?:es)?|bucks)\s*(?:and|y|con|&|,)?|(?:and|y|con|&|,))\s*"
    r"(?P<cents>[0-9]+)\s*" + _CENTS_WORD
)
_CENTS_AFTER = re.compile(r"\s+" + _CENTS_WORD)
_SPOKEN_AMOUNT = re.compile(rf"{_DOLLARS_AND_CENTS.pattern}|[0-9]+\s*{_CENTS_WORD}")
_POLITE = re.compile(r"\b(?:please|pls|por favor)\b|[!?]")


# Spanish words that also turn up in English texts ("LA county", "Maria De La Cruz", "El
# Monte"): they count only beside a word that is plainly Spanish.
_WEAK_SPANISH = frozenset({"el", "la", "los", "las", "de", "del", "es", "mi", "mis", "que", "con"})


def _guess_language(words: tuple[str, ...]) -> Language | None:
    spanish = sum(w in _SPANISH for w in words)
    english = sum(w in _ENGLISH for w in words)
    plainly_spanish = any(w in _SPANISH and w not in _WEAK_SPANISH for w in words)
    if spanish > english and plainly_spanish:
        return ES
    if english > spanish:
        return EN
    return None
