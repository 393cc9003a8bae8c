"""The conversation: (state, command, case facts) -> (new state, replies, actions). Pure.

The web layer loads State (State.from_dict) and Facts for the sending phone, calls step(), saves
outcome.state.to_dict(), carries out outcome.actions in order, and renders outcome.replies with
bot.messages.render_reply(reply, outcome.language).

Contract for the card link: a Reply whose template uses `url` (messages.placeholders(key)) is
returned without it, always together with a SendCardLink action. The web layer creates the
link for SendCardLink.case_id and sends reply.with_params(url=link).

Rules worth knowing:
- STOP always wins: OptOut and one confirmation. A repeated STOP from a phone already opted out
  gets OptOut again (idempotent, so the latest revocation is recorded) but no reply: the
  payer has had their one confirmation (CTIA) and asked for no more texts.
- An opted-out phone gets no reply to anything but a plain START/YES/SI (OptIn and a
  confirmation; "ok" or "sure" may only acknowledge the opt-out) and HELP. That holds for a
  number that texted STOP while on no case too (phone_status: the number's own opt-out).
- A quote is valid for policy.quote_ttl. YES after that, or after the card changed, quotes
  again instead of charging; YES on an amount the balance or caps no longer allow gets the
  reply saying what is allowed; YES naming another amount ("yes, pay 100") quotes that amount.
  A language switch keeps the quote and asks again; any other request but YES/NO drops it; an
  unreadable reply (UNKNOWN, EMPTY, digits) only repeats the question.
- A phone active on one case and invited to another (Facts.invited: the invitation went out)
  accepts with YES, before any long-expired quote; START accepting an invitation also opts
  back in the phone's stopped or undeliverable cases.
- The chosen case and any half-finished request are forgotten after SESSION_IDLE of silence;
  a quote is kept, long expired, so a late YES quotes again.
- Cases in Facts are the phone's active cases; the web layer leaves closed ones out.
- BAL and PAY go by what the cycle due next still owes (CaseFacts.owed_cents, judged by
  billing.cycles as reminders judge it): payments that succeeded or are in flight count. Once
  it is covered, BAL says so and PAY asks how much to pay. A payment still in flight is named
  in the quote, BAL and the ask, so paying again is a choice; it stays allowed.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

from billing.cycles import over_balance, still_owed
from billing.gateway import MINIMUM_CHARGE_CENTS
from bot.messages import Language, Reply
from bot.parse import Command, Intent, consents, declines
from jobs.schedule import BusinessHours, is_open, next_opening, parse_business_hours
from models import EnrollmentStatus

SESSION_IDLE = timedelta(minutes=30)
DEFAULT_HOURS = parse_business_hours("Mon-Fri 08:30-16:30")
HISTORY_SIZE = 3
# HISTORY line for each payment status (models.PaymentStatus); failed and canceled are left out.
HISTORY_LINES = {
    "succeeded": "history.succeeded",
    "pending": "history.pending",
    "processing": "history.pending",
    "requires_action": "history.pending",
    "refunded": "history.refunded",
}
# Quote ids are uuid5 of the inbound message id: one message makes at most one quote.
_QUOTE_NAMESPACE = uuid.UUID("7a0e8f0c-5b1d-4c2e-9a57-2f6f3c1d9e44")


def case_digits(case_number: str) -> str:
    """The digits of a case number ('MA-2024-118204' -> '2024118204')."""
    return "".join(ch for ch in case_number if ch.isdigit())


def case_ending(case_number: str) -> str:
    """The last 4 digits of a case number: how every text names a case. A number with fewer
    digits ("SMITH", "CS-1") is named whole."""
    digits = case_digits(case_number)
    return digits[-4:] if len(digits) >= 4 else case_number.upper()


def case_key(text: str) -> str:
    """A case number as a payer may type it, letters and digits only: 'PA-1001' -> 'pa1001'."""
    return "".join(ch for ch in text.lower() if ch.isalnum())


class PhoneStatus(StrEnum):
    """Where a phone number stands with the program."""

    PENDING = "pending"  # invited, has not replied YES yet
    ACTIVE = "active"
    OPTED_OUT = "opted_out"
    UNENROLLED = "unenrolled"  # not on any case


def phone_status(enrollment_statuses: Iterable[str], *, opted_out: bool) -> PhoneStatus:
    """Where a phone stands, from its enrollments' statuses and whether the number itself has an
    opt-out on record (a STOP it texted, enrolled or not, that no START has undone).

    The number's opt-out wins: a STOP texted before the number was on any case counts as much
    as one texted on a case. Then active on any case, then pending, then opted out.
    """
    statuses = set(enrollment_statuses)
    if opted_out:
        return PhoneStatus.OPTED_OUT
    if EnrollmentStatus.ACTIVE in statuses:
        return PhoneStatus.ACTIVE
    if EnrollmentStatus.PENDING in statuses:
        return PhoneStatus.PENDING
    if statuses & {EnrollmentStatus.OPTED_OUT, EnrollmentStatus.UNDELIVERABLE}:
        return PhoneStatus.OPTED_OUT
    return PhoneStatus.UNENROLLED


# Facts: what the web layer knows from the database, read-only here.


@dataclass(frozen=True)
class CardFacts:
    """The card on file for a case."""

    brand: str
    last4: str


@dataclass(frozen=True)
class PaymentFacts:
    """One past payment."""

    created_at: datetime
    amount_cents: int
    status: str
    last4: str


@dataclass(frozen=True)
class AppointmentFacts:
    """The next appointment on a case."""

    starts_at: datetime
    kind: str
    location: str = ""
    video_link: str = ""


@dataclass(frozen=True)
class CaseFacts:
    """One active case the phone is enrolled on."""

    case_id: int
    case_number: str
    amount_due_cents: int
    balance_cents: int
    next_due_date: date | None
    timezone: str  # the payer's local zone, which their dates, times and hours are shown in
    card: CardFacts | None = None
    recent_payments: tuple[PaymentFacts, ...] = ()
    next_appointment: AppointmentFacts | None = None
    month_paid_cents: int = 0
    # What payments that succeeded or are in flight left toward the cycle due next_due_date
    # (billing.cycles.paid_toward_cycle), and the payments in flight, which billing has not
    # taken off balance_cents yet: their total and the newest of them.
    cycle_paid_cents: int = 0
    processing_cents: int = 0
    processing: PaymentFacts | None = None

    @property
    def owed_cents(self) -> int:
        """What the cycle due next still asks for: what PAY quotes and its reminders ask."""
        return still_owed(
            amount_due_cents=self.amount_due_cents,
            balance_cents=self.balance_cents - self.processing_cents,
            paid_toward_cycle_cents=self.cycle_paid_cents,
        )

    @property
    def number_digits(self) -> str:
        """The digits of the case number, which payers use to name the case."""
        return case_digits(self.case_number)

    @property
    def last4(self) -> str:
        """Last 4 digits of the case number."""
        return case_ending(self.case_number)


@dataclass(frozen=True)
class Policy:
    """Agency settings the conversation needs."""

    agency_name: str
    agency_phone: str
    hours: BusinessHours = DEFAULT_HOURS
    min_payment_cents: int = 100
    per_payment_cap_cents: int = 500_000
    monthly_cap_cents: int = 1_000_000
    quote_ttl: timedelta = timedelta(minutes=10)
    messages_per_month: int = 6


@dataclass(frozen=True)
class Facts:
    """Everything step() may know. nonce is unique per inbound message (the MessageSid)."""

    now: datetime
    language: Language
    phone_status: PhoneStatus
    policy: Policy
    nonce: str
    cases: tuple[CaseFacts, ...] = ()
    invited: bool = False  # an enrollment of the phone waits for its YES (double opt-in)
    enrolled: bool = True  # on any case, whatever its status: False for a number on none

    def __post_init__(self) -> None:
        if self.now.tzinfo is None:
            raise ValueError("Facts.now must be timezone-aware")
        if not self.nonce:
            raise ValueError("Facts.nonce must be unique per message: quote ids come from it")

    def case(self, case_id: int | None) -> CaseFacts | None:
        """The case with this id, if the phone is still on it."""
        return next((c for c in self.cases if c.case_id == case_id), None)


# Actions: what the web layer must do.


@dataclass(frozen=True)
class OptOut:
    """Record that the phone revoked consent; send nothing more but this turn's replies."""


@dataclass(frozen=True)
class DeclineInvitation:
    """A phone active on one case said NO to the invitation for another: that one only ends."""


@dataclass(frozen=True)
class OptIn:
    """Record that the phone consented again (START or YES while opted out)."""


@dataclass(frozen=True)
class Activate:
    """Pending -> active: the payer confirmed the double opt-in."""


@dataclass(frozen=True)
class SetLanguage:
    """Store the payer's language."""

    language: Language


@dataclass(frozen=True)
class ChargeQuote:
    """Charge the confirmed quote; quote_id is the idempotency key."""

    case_id: int
    amount_cents: int
    quote_id: str
    card_last4: str


@dataclass(frozen=True)
class SendCardLink:
    """Create a card-entry link for the case and put it in the reply as `url`."""

    case_id: int


@dataclass(frozen=True)
class Handoff:
    """Put the conversation in front of staff."""

    case_id: int
    reason_text: str


Action = OptOut | OptIn | Activate | SetLanguage | ChargeQuote | SendCardLink | Handoff


# State: saved per phone between messages.


class Stage(StrEnum):
    """What the conversation is waiting for."""

    IDLE = "idle"
    AWAITING_CONFIRMATION = "awaiting_confirmation"
    CHOOSING_CASE = "choosing_case"


@dataclass(frozen=True)
class Quote:
    """A payment offered and waiting for YES."""

    quote_id: str
    case_id: int
    amount_cents: int
    last4: str
    expires_at: datetime


@dataclass(frozen=True)
class State:
    """Conversation memory for one phone; JSON-safe through to_dict()/from_dict()."""

    case_id: int | None = None
    quote: Quote | None = None
    pending: Command | None = None  # the request waiting for a case choice
    updated_at: datetime | None = None

    @property
    def stage(self) -> Stage:
        """Derived from what is stored."""
        if self.quote is not None:
            return Stage.AWAITING_CONFIRMATION
        if self.pending is not None:
            return Stage.CHOOSING_CASE
        return Stage.IDLE

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only."""
        quote = self.quote
        pending = self.pending
        return {
            "case_id": self.case_id,
            "quote": None
            if quote is None
            else {
                "quote_id": quote.quote_id,
                "case_id": quote.case_id,
                "amount_cents": quote.amount_cents,
                "last4": quote.last4,
                "expires_at": quote.expires_at.isoformat(),
            },
            "pending": None
            if pending is None
            else {
                "intent": str(pending.intent),
                "amount_cents": pending.amount_cents,
                "amount_error": pending.amount_error,
                "digits": pending.digits,
                "language": pending.language and str(pending.language),
                "text": pending.text,
                "full_balance": pending.full_balance,
            },
            "updated_at": self.updated_at and self.updated_at.isoformat(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> State:
        """Inverse of to_dict(); None or {} is a fresh state."""
        data = data or {}
        quote, pending, updated = data.get("quote"), data.get("pending"), data.get("updated_at")
        return cls(
            case_id=data.get("case_id"),
            quote=None
            if quote is None
            else Quote(
                quote_id=quote["quote_id"],
                case_id=quote["case_id"],
                amount_cents=quote["amount_cents"],
                last4=quote["last4"],
                expires_at=datetime.fromisoformat(quote["expires_at"]),
            ),
            pending=None
            if pending is None
            else Command(
                intent=Intent(pending["intent"]),
                amount_cents=pending.get("amount_cents"),
                amount_error=pending.get("amount_error"),
                digits=pending.get("digits"),
                language=pending.get("language") and Language(pending["language"]),
                text=pending.get("text", ""),
                full_balance=pending.get("full_balance", False),
            ),
            updated_at=datetime.fromisoformat(updated) if updated else None,
        )


@dataclass(frozen=True)
class Outcome:
    """The result of one step; replies are rendered in `language`."""

    state: State
    replies: tuple[Reply, ...] = ()
    actions: tuple[Action, ...] = ()
    language: Language = Language.EN


# The conversation.


# Requests answered from the case alone, never from its payments, when nothing is half done.
_WITHOUT_PAYMENTS = frozenset(
    {
        Intent.STOP,
        Intent.START,
        Intent.HELP,
        Intent.LANGUAGE,
        Intent.APPOINTMENT,
        Intent.AGENT,
        Intent.MENU,
        Intent.UNKNOWN,
        Intent.EMPTY,
        Intent.YES,
        Intent.NO,
        Intent.THANKS,
        Intent.CARD,
    }
)


def needs_payments(state: State, command: Command) -> bool:
    """Whether step() may read the cases' payments (HISTORY, the monthly cap, what this cycle
    still owes and what is in flight, for BAL and PAY) for this command.

    When it says no, the web layer may leave the CaseFacts fields drawn from payments at their
    defaults: APPT, STOP, HELP and the like then cost one query less. A quote or a request
    waiting for a case choice may lead anywhere, so they always load them.
    """
    return (
        state.quote is not None
        or state.pending is not None
        or command.intent not in _WITHOUT_PAYMENTS
        or _pays(command)
    )


def _pays(command: Command) -> bool:
    """A YES that asks for a payment itself ("yes pay 250", "ok pay it"): with no quote waiting
    it is a PAY."""
    return command.intent is Intent.YES and command.mentions_pay


def step(state: State, command: Command, facts: Facts) -> Outcome:
    """Answer one inbound message."""
    if state.updated_at is not None and facts.now - state.updated_at > SESSION_IDLE:
        # The quote stays (long expired) so a late YES quotes again rather than finding nothing.
        state = State(quote=state.quote)
    outcome = _route(state, command, facts)
    if _written_in_spanish_to_english(command, facts) and outcome.language == facts.language:
        # "hola, ¿cuánto debo?" from a payer enrolled in English is answered in Spanish. Only
        # this way round: payers texting in Spanish often use YES, PAY and STOP as the
        # reminders spell them. The language kept for reminders changes only with ESPAÑOL.
        outcome = _evolve(outcome, language=Language.ES)
    return _evolve(outcome, state=_evolve(outcome.state, updated_at=facts.now))


def _written_in_spanish_to_english(command: Command, facts: Facts) -> bool:
    return (
        command.intent is not Intent.LANGUAGE
        and command.language == Language.ES
        and facts.language == Language.EN
    )


def _route(state: State, command: Command, facts: Facts) -> Outcome:
    intent, status = command.intent, facts.phone_status
    if intent is Intent.STOP:
        if status == PhoneStatus.OPTED_OUT:
            return _out(facts, State(), actions=(OptOut(),))
        # A stranger has no language on record: confirm in the one the STOP was written in.
        language = command.language if status == PhoneStatus.UNENROLLED else None
        reply = _say(facts, "opted_out")
        return _out(facts, State(), reply, actions=(OptOut(),), language=language)
    if status == PhoneStatus.OPTED_OUT:
        # A number on no case that opted out is told so again, not promised case texts.
        about = "opted_in" if facts.enrolled else "unknown_number"
        if consents(command):
            return _out(facts, State(), _say(facts, about), actions=(OptIn(),))
        if intent is Intent.HELP:  # no MENU, nor STOP to opt out: it is opted out already
            help_key = "help_opted_out" if facts.enrolled else "help_opted_out_no_case"
            return _out(facts, state, _say(facts, help_key))
        return _out(facts, state)
    if status == PhoneStatus.PENDING:
        return _pending(state, command, facts)
    if status == PhoneStatus.UNENROLLED or not facts.cases:
        # Learn nothing about any case; answer in the language the stranger wrote in.
        return _out(facts, State(), _say(facts, "unknown_number"), language=command.language)
    return _active(state, command, facts)


def _pending(state: State, command: Command, facts: Facts) -> Outcome:
    intent = command.intent
    if intent in (Intent.YES, Intent.START):
        return _out(facts, State(), _say(facts, "welcome"), actions=_accept(command))
    if declines(command):
        return _out(facts, State(), _say(facts, "enroll_declined"), actions=(OptOut(),))
    if intent is Intent.HELP:
        return _out(facts, state, _say(facts, "help"))
    if intent is Intent.LANGUAGE:
        return _switch_language(state, command, facts, "confirm_enrollment")
    return _out(facts, state, _say(facts, "confirm_enrollment"))


def _active(state: State, command: Command, facts: Facts) -> Outcome:
    intent = command.intent
    expired = state.quote is not None and facts.now >= state.quote.expires_at
    if expired and (intent is not Intent.YES or facts.invited):
        # A YES after an invitation answers it, not a payment offer long gone.
        state = _evolve(state, quote=None)
    if intent is Intent.UNKNOWN and _named_case(None, facts, command.text) is not None:
        # A case number texted as written ("PA 1001", "SMITH") is a case choice, as digits are.
        command = replace(command, intent=Intent.DIGITS, digits=case_digits(command.text))
        intent = command.intent
    if intent is Intent.DIGITS and state.pending is not None:
        return _choose_case(state, command, facts)
    if intent is Intent.LANGUAGE and (state.quote is not None or state.pending is not None):
        return _switch_mid_request(state, command, facts)
    unreadable = intent in (Intent.UNKNOWN, Intent.EMPTY, Intent.DIGITS, Intent.THANKS)
    if state.quote is not None and (unreadable or intent in (Intent.YES, Intent.NO)):
        return _answer_quote(state, command, facts)
    if state.pending is not None and intent is Intent.NO:
        # "no", "never mind": the request waiting for a case is dropped, nothing done.
        return _out(facts, _evolve(state, pending=None), _say(facts, "request_dropped"))
    if state.pending is not None and (unreadable or intent is Intent.YES):
        return _ask_case(state, facts)
    state = _evolve(state, quote=None, pending=None)

    if intent is Intent.DIGITS:
        digits = command.digits or ""
        if (case := _named_case(digits, facts, command.text)) is not None:
            reply = _say(facts, "case_selected", case_last4=case.last4)
            return _out(facts, _evolve(state, case_id=case.case_id), reply)
        if len(facts.cases) > 1 and len(digits) >= 4:  # a case ending mistyped, not an amount
            reply = _say(facts, "case_not_found", digits=digits, cases=_case_endings(facts))
            return _out(facts, state, reply)
        command = _menu_choice(command)
        intent = command.intent
    if facts.invited and (intent is Intent.START or (intent is Intent.YES and consents(command))):
        # Already texting about one case, invited for another: this YES answers the invitation.
        return _out(facts, state, _say(facts, "welcome"), actions=_accept(command))
    if facts.invited and declines(command):
        # Already texting about one case, invited for another: this NO declines that one only.
        reply = _say(facts, "invite_declined")
        return _out(facts, state, reply, actions=(DeclineInvitation(),))
    if _pays(command):  # "yes, pay 250" with no quote waiting: a request to pay
        command = replace(command, intent=Intent.PAY)
        intent = command.intent
    if intent in (Intent.YES, Intent.NO):
        return _out(facts, state, _say(facts, "nothing_to_confirm"))
    if intent is Intent.THANKS:
        return _out(facts, state, _say(facts, "thanks"))
    if intent is Intent.HELP:
        return _out(facts, state, _say(facts, "help"))
    if intent is Intent.START:
        return _out(facts, state, _say(facts, "opted_in"), actions=(OptIn(),))
    if intent is Intent.LANGUAGE:
        return _switch_language(state, command, facts, "language_set")
    if intent in _CASE_HANDLERS:
        return _for_case(state, command, facts)
    return _out(facts, state, _say(facts, "menu"))


_MENU = {
    "1": Intent.PAY,
    "2": Intent.BALANCE,
    "3": Intent.HISTORY,
    "4": Intent.APPOINTMENT,
    "5": Intent.AGENT,
    "6": Intent.LANGUAGE,
    "0": Intent.HELP,
}


def _accept(command: Command) -> tuple[Action, ...]:
    """Accepting an invitation; START also opts back in a case the phone had stopped or that
    the carrier had found undeliverable, so nothing stays blocked."""
    return (Activate(), OptIn()) if command.intent is Intent.START else (Activate(),)


def _menu_choice(command: Command) -> Command:
    """Menu digits as the command they stand for; 6 (LANGUAGE, none named) swaps languages.

    A longer number that names no case is an amount, as "$250" is: the reminder said "Reply PAY
    to pay $250.00" and the payer answered "250". One with a leading zero stays a menu request.
    """
    digits = command.digits or ""
    if len(digits) > 1 and not digits.startswith("0") and command.text == digits:
        return Command(Intent.PAY, amount_cents=int(digits) * 100, text=command.text)
    return Command(_MENU.get(digits, Intent.MENU), text=command.text)


def _switch_language(state: State, command: Command, facts: Facts, key: str) -> Outcome:
    """Store the language asked for (the other one if none was named) and answer in it."""
    other = Language.ES if facts.language == Language.EN else Language.EN
    language = Language(command.language or other)
    return _out(facts, state, _say(facts, key), actions=(SetLanguage(language),), language=language)


def _switch_mid_request(state: State, command: Command, facts: Facts) -> Outcome:
    """A language switch while a quote or a case choice waits: keep it, ask again in the new
    language (a quote's 10 minutes still run)."""
    switched = _switch_language(state, command, facts, "language_set")
    quote = state.quote
    if quote is not None:
        again = _say(facts, "confirm_prompt", amount=quote.amount_cents, last4=quote.last4)
    else:
        again = _say(facts, "choose_case", cases=_case_endings(facts))
    return _evolve(switched, replies=(*switched.replies, again))


# Case-specific requests: the case is chosen first when the phone is on several.


def _for_case(state: State, command: Command, facts: Facts) -> Outcome:
    if command.case_digits is not None:
        # "pay 40 on case 0311": that case, whichever was chosen before.
        ref = command.case_digits
        case = _named_case(case_digits(ref), facts, ref)
        if case is None:
            digits, cases = case_digits(ref), _case_endings(facts)
            return _out(facts, state, _say(facts, "case_not_found", digits=digits, cases=cases))
    else:
        case = facts.cases[0] if len(facts.cases) == 1 else facts.case(state.case_id)
    if case is None:
        return _ask_case(_evolve(state, pending=command), facts)
    state = _evolve(state, case_id=case.case_id, pending=None)
    if command.full_balance:  # "pay all": the whole balance, less what is in flight; caps apply
        rest = case.balance_cents - case.processing_cents
        command = replace(command, amount_cents=rest if rest > 0 else None, full_balance=False)
    return _CASE_HANDLERS[command.intent](state, command, case, facts)


def _ask_case(state: State, facts: Facts) -> Outcome:
    return _out(facts, state, _say(facts, "choose_case", cases=_case_endings(facts)))


def _choose_case(state: State, command: Command, facts: Facts) -> Outcome:
    case = _named_case(command.digits, facts, command.text)
    if case is None:
        reply = _say(facts, "case_not_found", digits=command.digits, cases=_case_endings(facts))
        return _out(facts, state, reply)
    pending = state.pending
    assert pending is not None
    return _for_case(_evolve(state, case_id=case.case_id), pending, facts)


def _named_case(digits: str | None, facts: Facts, text: str = "") -> CaseFacts | None:
    """The one case the payer named: by its whole number as written ("PA-1001", when two cases
    share their digits), by all its digits, or by its ending (at least 4 digits, so menu
    digits never match)."""
    key = case_key(text)
    if key and len(whole := [c for c in facts.cases if case_key(c.case_number) == key]) == 1:
        return whole[0]
    if digits is None or len(digits) < 4:
        return None
    for same in (lambda c: c.number_digits == digits, lambda c: c.number_digits.endswith(digits)):
        if len(matches := [c for c in facts.cases if same(c)]) == 1:
            return matches[0]
    return None


def _case_endings(facts: Facts) -> tuple[str, ...]:
    """How the payer can name each case: its last 4 digits, or as many more as it takes to tell
    apart two cases that end alike (MA-2024-118204 and MA-2023-558204: 118204 and 558204)."""
    numbers = [c.number_digits for c in facts.cases]
    if len(set(numbers)) < len(numbers) or min(map(len, numbers), default=4) < 4:
        # Digits cannot tell them apart (CS-1001 and PA-1001), or there are too few: the whole
        # case numbers, which the payer can text back as written.
        return tuple(c.case_number.upper() for c in facts.cases)
    longest = max((len(n) for n in numbers), default=4)
    width = 4
    while width < longest and len({n[-width:] for n in numbers}) < len(numbers):
        width += 1
    return tuple(n[-width:] for n in numbers)


def _pay(state: State, command: Command, case: CaseFacts, facts: Facts) -> Outcome:
    if case.balance_cents <= 0:
        return _out(facts, state, _say(facts, "nothing_owed", case_last4=case.last4))
    if case.card is None:
        return _out(facts, state, _say(facts, "card_link"), actions=(SendCardLink(case.case_id),))
    if command.amount_error in ("zero", "negative"):
        reply = _say(facts, "amount_too_small", minimum=facts.policy.min_payment_cents)
        return _out(facts, state, reply)
    if command.amount_error is not None:
        return _out(facts, state, _say(facts, "amount_format"))
    amount = command.amount_cents
    processing = _processing(case)
    if amount is None:
        owed = case.owed_cents
        if owed <= 0:
            # Nothing is asked this cycle (covered, or no installment): the payer says how much.
            covered = case.amount_due_cents > 0 and case.next_due_date is not None
            reply = _say(
                facts,
                "pay_covered" if covered else "pay_ask_amount",
                case_last4=case.last4,
                balance=case.balance_cents,
                amount_due=case.amount_due_cents,
                due_date=case.next_due_date,
                processing=processing,
            )
            return _out(facts, state, reply)
        amount = owed
    if problem := _amount_problem(amount, case, facts):
        return _out(facts, state, problem)
    quote = Quote(
        quote_id=str(uuid.uuid5(_QUOTE_NAMESPACE, facts.nonce)),
        case_id=case.case_id,
        amount_cents=amount,
        last4=case.card.last4,
        expires_at=facts.now + facts.policy.quote_ttl,
    )
    reply = _say(
        facts,
        "pay_quote" if case.next_due_date else "pay_quote_no_due",
        amount=amount,
        case_last4=case.last4,
        brand=case.card.brand,
        last4=case.card.last4,
        due_date=case.next_due_date,
        minutes=int(facts.policy.quote_ttl.total_seconds() // 60),
        processing=processing,
    )
    return _out(facts, _evolve(state, quote=quote), reply)


def _processing(case: CaseFacts) -> Reply | None:
    """The note that a payment on the case has not gone through yet, if one has not."""
    payment = case.processing
    if payment is None:
        return None
    params = {"amount": payment.amount_cents, "date": payment.created_at, "tz": case.timezone}
    return Reply("processing.payment", params)


def _amount_problem(amount: int, case: CaseFacts, facts: Facts) -> Reply | None:
    """Why this amount cannot be charged now, as the reply that says what is allowed."""
    policy = facts.policy
    if case.balance_cents <= 0:
        # Paid off since the quote (a payment reported failed went through after all, say).
        return _say(facts, "nothing_owed", case_last4=case.last4)
    if case.balance_cents < MINIMUM_CHARGE_CENTS:
        # Not even paying it off: the processor refuses so small a charge, so YES never could.
        return _say(
            facts,
            "balance_too_small",
            case_last4=case.last4,
            balance=case.balance_cents,
            minimum=MINIMUM_CHARGE_CENTS,
        )
    # What is left once payments in flight go through, as billing counts it before charging.
    available = case.balance_cents - case.processing_cents
    # Below the minimum is fine when it pays the balance off: nobody is stuck owing 50 cents.
    if amount < policy.min_payment_cents and amount != available:
        return _say(facts, "amount_too_small", minimum=policy.min_payment_cents)
    if amount > available:
        key, params = over_balance(case.balance_cents, case.processing_cents)
        return _say(facts, key, **params)
    if amount > policy.per_payment_cap_cents:
        return _say(facts, "amount_over_cap", cap=policy.per_payment_cap_cents)
    remaining = policy.monthly_cap_cents - case.month_paid_cents
    if amount > remaining:
        if remaining < min(policy.min_payment_cents, case.balance_cents):
            return _say(facts, "monthly_limit_reached", cap=policy.monthly_cap_cents)
        return _say(facts, "amount_over_monthly", cap=policy.monthly_cap_cents, remaining=remaining)
    return None


def _answer_quote(state: State, command: Command, facts: Facts) -> Outcome:
    quote = state.quote
    assert quote is not None
    if command.intent is Intent.NO:
        return _out(facts, _evolve(state, quote=None), _say(facts, "pay_cancelled"))
    if command.intent is not Intent.YES:
        reply = _say(facts, "confirm_prompt", amount=quote.amount_cents, last4=quote.last4)
        return _out(facts, state, reply)
    state = _evolve(state, quote=None)
    if command.case_digits is not None:
        named_case = _named_case(case_digits(command.case_digits), facts, command.case_digits)
        if named_case is None or named_case.case_id != quote.case_id:
            # "yes case 7730" on a quote for 4821: a request about that case, never this charge.
            asked = replace(command, intent=Intent.PAY, amount_error=command.amount_error)
            return _for_case(state, asked, facts)
    case = facts.case(quote.case_id)
    if case is None:
        return _out(facts, state, _say(facts, "nothing_to_confirm"))
    named = command.amount_cents
    if command.amount_error is not None or (named is not None and named != quote.amount_cents):
        # "yes, pay 100" on a $250 quote asks for $100: quote that, never charge the $250.
        asked = Command(Intent.PAY, amount_cents=named, amount_error=command.amount_error)
        return _pay(state, asked, case, facts)
    card_changed = case.card is None or case.card.last4 != quote.last4
    if facts.now >= quote.expires_at or card_changed:
        again = _pay(state, Command(Intent.PAY, amount_cents=quote.amount_cents), case, facts)
        return _evolve(again, replies=(_say(facts, "quote_expired"), *again.replies))
    if problem := _amount_problem(quote.amount_cents, case, facts):
        return _out(facts, state, problem)
    charge = ChargeQuote(case.case_id, quote.amount_cents, quote.quote_id, quote.last4)
    reply = _say(facts, "pay_processing", amount=quote.amount_cents)
    return _out(facts, state, reply, actions=(charge,))


def _balance(state: State, command: Command, case: CaseFacts, facts: Facts) -> Outcome:
    if case.balance_cents <= 0:
        return _out(facts, state, _say(facts, "nothing_owed", case_last4=case.last4))
    params = {
        "case_last4": case.last4,
        "balance": case.balance_cents,
        "processing": _processing(case),
    }
    if case.amount_due_cents <= 0 or case.next_due_date is None:
        return _out(facts, state, _say(facts, "balance_no_due", **params))
    owed = case.owed_cents
    reply = _say(
        facts,
        "balance" if owed > 0 else "balance_covered",
        amount_due=owed or case.amount_due_cents,
        due_date=case.next_due_date,
        **params,
    )
    return _out(facts, state, reply)


def _history(state: State, command: Command, case: CaseFacts, facts: Facts) -> Outcome:
    shown = [p for p in case.recent_payments if p.status in HISTORY_LINES]
    latest = sorted(shown, key=lambda p: p.created_at, reverse=True)[:HISTORY_SIZE]
    if not latest:
        return _out(facts, state, _say(facts, "history_none", case_last4=case.last4))
    lines = tuple(
        Reply(
            HISTORY_LINES[p.status],
            {"date": p.created_at, "amount": p.amount_cents, "last4": p.last4, "tz": case.timezone},
        )
        for p in latest
    )
    return _out(facts, state, _say(facts, "history", case_last4=case.last4, payments=lines))


def _appointment(state: State, command: Command, case: CaseFacts, facts: Facts) -> Outcome:
    appt = case.next_appointment
    if appt is None or appt.starts_at <= facts.now:
        return _out(facts, state, _say(facts, "appt_none", case_last4=case.last4))
    params = {"kind": appt.kind, "when": appt.starts_at, "tz": case.timezone}
    if appt.video_link and appt.location:  # in person or by video: the payer gets both
        reply = _say(
            facts, "appt_next_both", location=appt.location, video_link=appt.video_link, **params
        )
    elif appt.video_link:
        reply = _say(facts, "appt_next_video", video_link=appt.video_link, **params)
    elif appt.location:
        reply = _say(facts, "appt_next", location=appt.location, **params)
    else:
        reply = _say(facts, "appt_next_no_place", **params)
    return _out(facts, state, reply)


def _agent(state: State, command: Command, case: CaseFacts, facts: Facts) -> Outcome:
    hours, zone = facts.policy.hours, ZoneInfo(case.timezone)
    if is_open(hours, facts.now, zone):
        reply = _say(facts, "agent_open")
    else:
        opens_at = next_opening(hours, facts.now, zone)
        reply = _say(facts, "agent_closed", opens_at=opens_at, tz=case.timezone)
    handoff = Handoff(case.case_id, command.text)
    return _out(facts, state, reply, actions=(handoff,))


def _card(state: State, command: Command, case: CaseFacts, facts: Facts) -> Outcome:
    """A link to add a card, or to replace the one on file (expired, lost, declined)."""
    if case.card is None:
        reply = _say(facts, "card_link")
    else:
        reply = _say(facts, "card_replace", last4=case.card.last4)
    return _out(facts, state, reply, actions=(SendCardLink(case.case_id),))


_CASE_HANDLERS: dict[Intent, Callable[[State, Command, CaseFacts, Facts], Outcome]] = {
    Intent.PAY: _pay,
    Intent.CARD: _card,
    Intent.BALANCE: _balance,
    Intent.HISTORY: _history,
    Intent.APPOINTMENT: _appointment,
    Intent.AGENT: _agent,
}


# Small helpers.


def _evolve(obj: State | Outcome, **changes: Any) -> Any:
    """dataclasses.replace() for State and Outcome, all of whose fields are init arguments.

    The general function looks the fields up on every call; every text makes two or three.
    """
    return type(obj)(**{**obj.__dict__, **changes})


def _say(facts: Facts, key: str, **params: Any) -> Reply:
    """A reply with the agency params every template may use."""
    policy = facts.policy
    base = {
        "agency": policy.agency_name,
        "agency_phone": policy.agency_phone,
        "per_month": policy.messages_per_month,
    }
    return Reply(key, {**base, **params})


def _out(
    facts: Facts,
    state: State,
    *replies: Reply,
    actions: tuple[Action, ...] = (),
    language: Language | None = None,
) -> Outcome:
    return Outcome(state, replies, actions, Language(language or facts.language))
