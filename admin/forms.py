"""Admin forms (Flask-WTF): every one carries a CSRF token; values are checked before any write."""

from __future__ import annotations

import re
import secrets
from datetime import UTC, date, datetime

from flask import current_app
from flask_wtf import FlaskForm
from flask_wtf.file import FileField, FileRequired
from wtforms import (
    BooleanField,
    DateField,
    EmailField,
    HiddenField,
    PasswordField,
    SelectField,
    StringField,
    TextAreaField,
    TimeField,
)
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, InputRequired, Length, Optional, ValidationError

from admin.users import MIN_PASSWORD
from bot.messages import render
from bot.segments import Encoding, encoding, segments
from cases.importer import CASE_NUMBER, EARLIEST_DATE, LATEST_DATE, MAX_NAME
from models import AppointmentKind, Language, Role
from money import MAX_AMOUNT_CENTS, AmountError, format_cents, parse_dollars
from phones import NotTextableError, PhoneError, own_numbers, textable_phone

MAX_SMS_SEGMENTS = 2

# 'Wed, Sep 24 at 12:30 PM', '24 de sept. a las 12:30 p.m.': the longest a reminder shows a time.
_LONGEST_WHEN = datetime(2025, 9, 24, 12, 30, tzinfo=UTC)


def choices(pairs: list[tuple[str, str]]) -> list[SelectChoice]:
    """Select options from (value, label) pairs."""
    return [SelectChoice(value, label) for value, label in pairs]


LANGUAGE_CHOICES = choices(
    [(Language.EN.value, "English"), (Language.ES.value, "Spanish (español)")]
)
ROLE_CHOICES = choices([(Role.STAFF.value, "Staff"), (Role.ADMIN.value, "Admin")])
_UNSAFE_NAME = re.compile(r"[<>\x00-\x1f\x7f]")


def dollars(text: str, *, label: str, allow_zero: bool = True) -> int:
    """Cents from a typed dollar amount, or ValidationError with a message a person can act on."""
    try:
        cents = parse_dollars(text, allow_zero=allow_zero)
    except AmountError as exc:
        if exc.code == "negative":
            raise ValidationError(f"{label} cannot be negative.") from exc
        if exc.code == "too_many_decimals":
            raise ValidationError(f"{label} has more than two decimals.") from exc
        if exc.code == "zero":
            raise ValidationError(f"{label} must be more than $0.00.") from exc
        raise ValidationError(f"{label} must be a dollar amount like 125.00.") from exc
    if cents > MAX_AMOUNT_CENTS:
        raise ValidationError(f"{label} is larger than {format_cents(MAX_AMOUNT_CENTS)}.")
    return cents


def check_date(day: date | None, *, label: str, hint: str = "") -> None:
    """ValidationError for a date outside the years PayText plans for (9999-12-31, a typo)."""
    if day is not None and not EARLIEST_DATE <= day <= LATEST_DATE:
        raise ValidationError(
            f"{label} must be between {EARLIEST_DATE:%b %-d, %Y} and {LATEST_DATE:%b %-d, %Y}."
            + (f" {hint}" if hint else "")
        )


def clean_name(text: str) -> str:
    """A payer name with its spacing tidied; ValidationError for markup or control characters."""
    name = " ".join((text or "").split())
    if _UNSAFE_NAME.search(text or ""):
        raise ValidationError("Payer name cannot contain < or > or control characters.")
    if len(name) > MAX_NAME:
        raise ValidationError(f"Payer name is longer than {MAX_NAME} characters.")
    return name


class StaffForm(FlaskForm):
    """The base of every staff form: a NUL in any field is refused at that field.

    PostgreSQL stores no NUL (the write was a 500, a reply's text having gone out first).
    """

    def validate(self, extra_validators=None) -> bool:
        valid = super().validate(extra_validators)
        for field in self:
            if isinstance(field.data, str) and "\x00" in field.data:
                field.errors = [
                    *field.errors,
                    "This holds an invisible NUL character (from a paste, say); retype it.",
                ]
                valid = False
        return valid


class LoginForm(StaffForm):
    email = EmailField("Email", validators=[DataRequired(), Length(max=254)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=1024)])


class EnrollForm(StaffForm):
    """Put a phone number on an existing case, or on a new one described here."""

    case_number = StringField("Case number", validators=[DataRequired(), Length(max=32)])
    payer_name = StringField("Payer name", validators=[Optional()])
    amount_due = StringField("Amount due each cycle ($)", validators=[Optional()])
    balance = StringField("Balance ($)", validators=[Optional()])
    next_due_date = DateField("Next due date", validators=[Optional()])
    phone = StringField("Mobile phone", validators=[DataRequired(), Length(max=40)])
    language = SelectField("Language of the texts", choices=LANGUAGE_CHOICES)
    consent = BooleanField("The payer agreed to the consent wording above", validators=[])

    phone_e164: str | None = None
    amount_due_cents: int | None = None
    balance_cents: int | None = None

    def validate_case_number(self, field) -> None:
        field.data = (field.data or "").strip().upper()
        if not CASE_NUMBER.match(field.data):
            raise ValidationError("Case number must be 1-32 letters, digits or dashes.")

    def validate_payer_name(self, field) -> None:
        field.data = clean_name(field.data)

    def validate_amount_due(self, field) -> None:
        self.amount_due_cents = dollars(field.data, label="Amount due")

    def validate_balance(self, field) -> None:
        self.balance_cents = dollars(field.data, label="Balance")

    def validate_next_due_date(self, field) -> None:
        # 9999-12-31 means "no end date" in many exports; here an empty field says that.
        check_date(field.data, label="Next due date", hint="Leave it empty if there is none.")

    def validate_phone(self, field) -> None:
        try:
            self.phone_e164 = textable_phone(field.data, own=own_numbers(current_app.config))
        except NotTextableError as exc:
            raise ValidationError(
                f"{exc}. Enter the payer's mobile number, like (617) 555-0134."
            ) from exc
        except PhoneError as exc:
            raise ValidationError(
                "Enter a valid mobile number, like (617) 555-0134 or +1 617 555 0134."
            ) from exc

    def validate_consent(self, field) -> None:
        if not field.data:
            raise ValidationError("Tick the box only after the payer agreed to get texts.")

    def new_case_given(self) -> bool:
        """True when any new-case field was filled in."""
        return any(
            (self.payer_name.data, self.amount_due.data, self.balance.data, self.next_due_date.data)
        )


class AppointmentForm(StaffForm):
    kind = SelectField(
        "Kind",
        choices=choices(
            [
                (AppointmentKind.CASE_CONFERENCE.value, "Case conference"),
                (AppointmentKind.COURT_HEARING.value, "Court hearing"),
                (AppointmentKind.VIRTUAL_COUNTER.value, "Virtual counter"),
            ]
        ),
    )
    day = DateField("Date", validators=[InputRequired(message="Enter the date.")])
    time = TimeField("Time", validators=[InputRequired(message="Enter the time.")])
    location = StringField("Location", validators=[Optional(), Length(max=200)])
    video_link = StringField("Video link (https://...)", validators=[Optional(), Length(max=300)])

    agency: str = ""

    def validate_day(self, field) -> None:
        check_date(field.data, label="Date")

    def validate_location(self, field) -> None:
        field.data = " ".join((field.data or "").split()) or None
        self._check_reminder_fits("appt_reminder", location=field.data)

    def validate_video_link(self, field) -> None:
        link = (field.data or "").strip()
        if link and (not link.startswith("https://") or re.search(r"\s", link)):
            raise ValidationError("The video link must be a https:// address without spaces.")
        field.data = link or None
        if field.data and self.location.data and not self.location.errors:
            # Both given: the payer is sent both, the place and the link.
            self._check_reminder_fits(
                "appt_reminder_both", location=self.location.data, video_link=field.data
            )
        else:
            self._check_reminder_fits("appt_reminder_video", video_link=field.data)

    def _check_reminder_fits(self, key: str, **values: str | None) -> None:
        """The payer's reminder must fit in two texts in either language, at its longest time."""
        if not all(values.values()):
            return
        params = {"agency": self.agency, "kind": self.kind.data, "when": _LONGEST_WHEN, **values}
        texts = [render(key, params, language) for language in Language]
        needed = max(segments(text) for text in texts)
        if needed > MAX_SMS_SEGMENTS:
            accents = any(encoding(text) is Encoding.UCS2 for text in texts)
            hint = " Letters like á, í, ó and ú make a text hold less than half." if accents else ""
            raise ValidationError(
                f"The reminder would be too long for {MAX_SMS_SEGMENTS} text messages "
                f"({needed} needed); shorten it.{hint}"
            )


class MoveAppointmentForm(StaffForm):
    day = DateField("New date", validators=[InputRequired(message="Enter the date.")])
    time = TimeField("New time", validators=[InputRequired(message="Enter the time.")])

    def validate_day(self, field) -> None:
        check_date(field.data, label="New date")


class ButtonForm(StaffForm):
    """A form that is only a button: the CSRF token is its whole content."""


class SendOnceForm(StaffForm):
    """A form that texts the payer: its nonce lets a double-click (or a resend from the
    browser's history) send the text once."""

    nonce = HiddenField(default=lambda: secrets.token_urlsafe(16))


class PhoneChoiceForm(SendOnceForm):
    phone = SelectField("Send to", choices=[])


class ReplyForm(SendOnceForm):
    phone = SelectField("Send to", choices=[])
    text = TextAreaField("Reply", validators=[DataRequired(message="Write a reply first.")])

    agency: str = ""

    def validate_text(self, field) -> None:
        field.data = (field.data or "").strip()
        body = render("staff_reply", {"agency": self.agency, "text": field.data})
        if segments(body) > MAX_SMS_SEGMENTS:
            raise ValidationError(
                f"The reply is too long for {MAX_SMS_SEGMENTS} text messages "
                f"({segments(body)} needed); shorten it."
            )


class RefundForm(StaffForm):
    amount = StringField("Amount to refund ($, empty for all)", validators=[Optional()])
    nonce = HiddenField(default=lambda: secrets.token_urlsafe(16))

    amount_cents: int | None = None

    def validate_amount(self, field) -> None:
        self.amount_cents = dollars(field.data, label="Refund amount", allow_zero=False)


class ImportForm(StaffForm):
    file = FileField("Cases CSV file", validators=[FileRequired(message="Choose a CSV file.")])


class ImportConfirmForm(StaffForm):
    token = HiddenField(validators=[DataRequired()])
    invite = BooleanField(
        "Text each new number its opt-in invitation (in the payer's texting hours)",
        default=True,
    )


class UserForm(StaffForm):
    email = EmailField("Email", validators=[DataRequired(), Length(max=254)])
    password = PasswordField(
        f"Password (at least {MIN_PASSWORD} characters)",
        validators=[DataRequired(), Length(min=MIN_PASSWORD, max=1024)],
    )
    role = SelectField("Role", choices=ROLE_CHOICES)


class RoleForm(StaffForm):
    role = SelectField("Role", choices=ROLE_CHOICES)
