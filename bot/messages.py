"""Render payer texts from the per-language catalogues, formatting typed placeholder values.

Every placeholder has one kind (PLACEHOLDERS), so callers pass plain typed values and never
format money or dates themselves: int cents for MONEY, a date (or tz-aware datetime) for DATE,
a tz-aware datetime for WHEN. Datetimes are shown in the IANA zone of the reserved `tz` param
when it is given, else in their own zone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from string import Formatter
from types import ModuleType
from typing import Any
from zoneinfo import ZoneInfo

from bot.catalog import en, es
from money import format_cents
from phones import format_phone


class Language(StrEnum):
    """Languages payers can choose."""

    EN = "en"
    ES = "es"


class Kind(StrEnum):
    """How a placeholder value is turned into text."""

    TEXT = "text"  # str, as is
    PHONE = "phone"  # E.164 str, shown as (800) 332-2733
    MONEY = "money"  # int cents, shown as $1,234.56
    COUNT = "count"  # int
    DATE = "date"  # date, or tz-aware datetime shown as its local date
    WHEN = "when"  # tz-aware datetime, weekday, date and time
    LIST = "list"  # sequence of str, joined with 'or'
    LINES = "lines"  # sequence of Reply (fragments), one per line
    CHOICE = "choice"  # a code; renders fragment '<name>.<code>', else '<name>.other'
    NOTE = "note"  # a Reply (fragment) shown after a space, or None for nothing


PLACEHOLDERS: dict[str, Kind] = {
    "agency": Kind.TEXT,
    "agency_phone": Kind.PHONE,
    "amount": Kind.MONEY,
    "amount_due": Kind.MONEY,
    "available": Kind.MONEY,
    "balance": Kind.MONEY,
    "brand": Kind.TEXT,
    "cap": Kind.MONEY,
    "case_last4": Kind.TEXT,
    "cases": Kind.LIST,
    "code": Kind.TEXT,
    "date": Kind.DATE,
    "digits": Kind.TEXT,
    "due_date": Kind.DATE,
    "kind": Kind.CHOICE,
    "last4": Kind.TEXT,
    "location": Kind.TEXT,
    "minimum": Kind.MONEY,
    "minutes": Kind.COUNT,
    "opens_at": Kind.WHEN,
    "payments": Kind.LINES,
    "per_month": Kind.COUNT,
    "processing": Kind.NOTE,
    "reason": Kind.CHOICE,
    "remaining": Kind.MONEY,
    "text": Kind.TEXT,
    "url": Kind.TEXT,
    "video_link": Kind.TEXT,
    "when": Kind.WHEN,
}

CATALOGUES: dict[Language, ModuleType] = {Language.EN: en, Language.ES: es}
KEYS: frozenset[str] = frozenset(en.MESSAGES)
# Keys with a dot are fragments (history lines, decline reasons, appointment kinds, 'or').
MESSAGE_KEYS: tuple[str, ...] = tuple(sorted(key for key in KEYS if "." not in key))


@dataclass(frozen=True)
class Reply:
    """A message to send: a catalogue key and its typed params, rendered late in a language."""

    key: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def with_params(self, **params: Any) -> Reply:
        """The same reply with more params, e.g. the card link `url` the web layer creates."""
        return Reply(self.key, {**self.params, **params})


def placeholders(key: str, language: str = Language.EN) -> frozenset[str]:
    """Names of the placeholders a key's template uses."""
    template = CATALOGUES[Language(language)].MESSAGES[key]
    return frozenset(name for _, name, _, _ in Formatter().parse(template) if name is not None)


def render(key: str, params: Mapping[str, Any] | None = None, language: str = Language.EN) -> str:
    """Render a catalogue key in a language; raise KeyError when a placeholder has no value."""
    catalogue = CATALOGUES[Language(language)]
    params = params or {}
    parts: list[str] = []
    for literal, name, _, _ in Formatter().parse(catalogue.MESSAGES[key]):
        # '1 de dic.' or 'Acme Inc.' at the end of a sentence must not print '..'.
        if literal.startswith(".") and parts and parts[-1].endswith("."):
            literal = literal[1:]
        parts.append(literal)
        if name is not None:
            if name not in params:
                raise KeyError(f"message {key!r} needs a value for {name!r}")
            parts.append(_format(name, params[name], params, Language(language)))
    return "".join(parts)


def render_reply(reply: Reply, language: str) -> str:
    """Render a Reply in a language."""
    return render(reply.key, reply.params, language)


BRANDS = {
    "visa": "Visa",
    "mastercard": "Mastercard",
    "amex": "American Express",
    "discover": "Discover",
    "diners": "Diners Club",
    "jcb": "JCB",
    "unionpay": "UnionPay",
}
"""Processors name card brands in lower case ('visa'); payers read them as printed on the card."""


def _format(name: str, value: Any, params: Mapping[str, Any], language: Language) -> str:
    catalogue = CATALOGUES[language]
    kind = PLACEHOLDERS[name]
    if kind is Kind.PHONE:
        return format_phone(str(value))
    if kind is Kind.MONEY:
        if name == "balance" and value < 0:
            # '-$250.00' reads as owed, or as nothing: say it is the payer's credit.
            return render("balance.credit", {"amount": -value}, language)
        return format_cents(value)
    if kind is Kind.DATE:
        day = _local(value, params).date() if isinstance(value, datetime) else value
        return catalogue.format_date(day)
    if kind is Kind.WHEN:
        return catalogue.format_when(_local(value, params))
    if kind is Kind.LIST:
        return _join_or([str(item) for item in value], language)
    if kind is Kind.LINES:
        return "\n".join(render_reply(line, language) for line in value)
    if kind is Kind.NOTE:
        return "" if value is None else " " + render_reply(value, language)
    if name == "brand":
        return BRANDS.get(str(value).lower(), str(value))
    if kind is Kind.CHOICE:
        fragment = f"{name}.{value}"
        return render(fragment if fragment in KEYS else f"{name}.other", {}, language)
    return str(value)


def _local(moment: datetime, params: Mapping[str, Any]) -> datetime:
    if not isinstance(moment, datetime) or moment.tzinfo is None:
        raise ValueError(f"expected a timezone-aware datetime, got {moment!r}")
    zone = params.get("tz")
    return moment.astimezone(ZoneInfo(zone)) if zone else moment


def _join_or(items: Sequence[str], language: Language) -> str:
    if len(items) < 2:
        return "".join(items)
    return f"{', '.join(items[:-1])} {render('word.or', {}, language)} {items[-1]}"
