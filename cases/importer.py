"""Reading the cases CSV: every row checked before anything is written (pure, no database)."""

from __future__ import annotations

import csv
import re
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from datetime import date

from jobs.schedule import zone_named
from money import MAX_AMOUNT_CENTS, AmountError, format_cents, parse_dollars
from phones import NotTextableError, PhoneError, textable_phone

COLUMNS = (
    "case_number",
    "payer_name",
    "phone",
    "language",
    "amount_due",
    "balance",
    "next_due_date",
    "timezone",
)
REQUIRED = ("case_number", "payer_name", "amount_due", "balance")
LANGUAGES = {"en": "en", "english": "en", "es": "es", "spanish": "es", "espanol": "es"}
CASE_NUMBER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,31}$")
MAX_NAME = 120
CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")
"""Left in a payer name once its spacing is tidied, a bell or a NUL (PostgreSQL stores none)."""
EARLIEST_DATE = date(2000, 1, 1)
LATEST_DATE = date(2099, 12, 31)
"""Due dates and appointments outside these are placeholders ("9999-12-31" for no end date in
agency exports) or typos, and dates near year 9999 overflow the reminder planner's arithmetic."""
ISO_SHAPED = re.compile(r"^\d{4}-\d{2}-\d{2}$")
SPREADSHEET_DATE = re.compile(r"^\d{1,4}[/.-]\d{1,2}[/.-]\d{1,4}(\s+\d{1,2}:\d{2}.*)?$")
"""12/31/2026, 1/5/27, 31.12.2026, 2026/12/31 (a time may follow): how a spreadsheet shows a
date cell in the computer's regional format, and saves it so in a CSV."""
SERIAL_DAY = re.compile(r"^\d{5}(\.\d+)?$")
"""46387: a date cell formatted as a number (Excel counts days from 1900: 5 digits, 1927-2173)."""
EXCEL_DATE_HINT = "in Excel, format the column as yyyy-mm-dd before saving as CSV"


@dataclass(frozen=True)
class CaseRow:
    """One valid row of the file."""

    line: int
    case_number: str
    payer_name: str
    phone: str | None
    language: str | None
    """None when the cell is empty: en for a new case, the stored language for an update."""
    amount_due_cents: int
    balance_cents: int
    next_due_date: date | None
    timezone: str | None
    """None when the cell is empty: none for a new case, the stored zone for an update."""


@dataclass(frozen=True)
class LineError:
    """Why a line of the file was refused; line 1 is the header."""

    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass(frozen=True)
class ImportPlan:
    """The outcome of reading a file: rows to write, or errors and nothing to write."""

    rows: list[CaseRow]
    errors: list[LineError]

    @property
    def ok(self) -> bool:
        return not self.errors


def not_utf8(data: bytes, error: UnicodeDecodeError) -> str:
    """Where a file stops being UTF-8 and how to save it so, for the person who uploaded it.

    Excel's plain "CSV" is Windows-1252: Peña's ñ is one byte UTF-8 cannot read.
    """
    line = data.count(b"\n", 0, error.start) + 1
    return (
        f"not UTF-8 text (line {line} has a character saved in another encoding); "
        'in Excel, save it as "CSV UTF-8 (Comma delimited)"'
    )


def read_cases(lines: Iterable[str], *, own: Collection[str] = ()) -> ImportPlan:
    """Check every row of a cases CSV and return the rows or every error with its line.

    `own` holds the agency's own numbers (E.164), which no row may enroll.
    """
    reader = csv.reader(lines)
    try:
        header = next(reader)
    except StopIteration:
        return ImportPlan([], [LineError(1, "the file is empty; expected a header row")])
    except csv.Error as exc:
        return ImportPlan([], [LineError(1, f"not a CSV file ({exc})")])
    names = [name.strip().lower().lstrip("\ufeff") for name in header]
    missing = [column for column in COLUMNS if column not in names]
    if missing:
        return ImportPlan([], [LineError(1, f"header is missing column(s): {', '.join(missing)}")])
    index = {column: names.index(column) for column in COLUMNS}

    rows: list[CaseRow] = []
    errors: list[LineError] = []
    seen: dict[str, int] = {}
    line = 1
    try:
        for line, record in _numbered(reader):
            if not any(cell.strip() for cell in record):
                continue  # blank lines are not rows
            extra = [cell for cell in record[len(header) :] if cell.strip()]
            if extra:
                # An unquoted comma (1,250.00; Rivera, Ana) splits a value in two and moves the
                # rest along: read as it falls, a balance could be taken as $1.00 without a word.
                errors.append(LineError(line, _too_many_values(len(record), len(header))))
                continue
            fields = {c: (record[i].strip() if i < len(record) else "") for c, i in index.items()}
            row, reasons = _check(line, fields, own)
            if row is not None:
                first = seen.get(row.case_number.upper())
                if first is not None:
                    reasons.append(f"case number {row.case_number} already appears on line {first}")
                else:
                    seen[row.case_number.upper()] = line
            if reasons:
                errors.append(LineError(line, "; ".join(reasons)))
            elif row is not None:
                rows.append(row)
    except (csv.Error, UnicodeDecodeError) as exc:
        errors.append(LineError(line + 1, f"unreadable ({exc})"))
    return ImportPlan(rows if not errors else [], errors)


def _too_many_values(values: int, columns: int) -> str:
    return (
        f"{values} values for the header's {columns} columns; a value holding a comma, "
        'like "1,250.00" or "Rivera, Ana", must be in double quotes'
    )


def _numbered(reader: Iterator[list[str]]) -> Iterator[tuple[int, list[str]]]:
    # reader.line_num counts physical lines, so quoted newlines keep the numbers a person sees.
    for record in reader:
        yield reader.line_num, record


def _check(
    line: int, fields: dict[str, str], own: Collection[str]
) -> tuple[CaseRow | None, list[str]]:
    reasons: list[str] = []
    for column in REQUIRED:
        if not fields[column]:
            reasons.append(f"{column} is empty")
    case_number = fields["case_number"]
    if case_number and not CASE_NUMBER.match(case_number):
        reasons.append(f"case number {case_number!r} must be 1-32 letters, digits or dashes")
    name = " ".join(fields["payer_name"].split())
    if len(name) > MAX_NAME:
        reasons.append(f"payer name is longer than {MAX_NAME} characters")
    if CONTROL_CHARACTER.search(name):
        reasons.append("payer name cannot contain control characters")

    phone = None
    if fields["phone"]:
        try:
            phone = textable_phone(fields["phone"], own=own)
        except NotTextableError as exc:
            reasons.append(f"phone {exc}")
        except PhoneError:
            reasons.append(f"phone {fields['phone']!r} is not a valid phone number")

    language = None
    if fields["language"]:
        language = LANGUAGES.get(fields["language"].lower())
        if language is None:
            reasons.append(f"language {fields['language']!r} is not en or es")

    amounts = {}
    for column in ("amount_due", "balance"):
        if not fields[column]:
            continue
        try:
            amounts[column] = parse_dollars(fields[column])
        except AmountError as exc:
            reasons.append(_amount_reason(column, fields[column], exc))
            continue
        if amounts[column] > MAX_AMOUNT_CENTS:
            reasons.append(
                f"{column} {fields[column]!r} is larger than {format_cents(MAX_AMOUNT_CENTS)}"
            )

    due = None
    if fields["next_due_date"]:
        try:
            due = date.fromisoformat(fields["next_due_date"])
            if len(fields["next_due_date"]) != 10:
                raise ValueError
        except ValueError:
            reasons.append(_date_reason("next_due_date", fields["next_due_date"]))
        else:
            if not EARLIEST_DATE <= due <= LATEST_DATE:
                reasons.append(
                    f"next_due_date {fields['next_due_date']!r} is not between {EARLIEST_DATE} "
                    f"and {LATEST_DATE} (leave it empty when there is no due date)"
                )

    zone = fields["timezone"] or None
    if zone is not None:
        try:
            zone_named(zone)
        except ValueError:
            reasons.append(f"timezone {zone!r} is not an IANA time zone like America/New_York")

    if reasons:
        return None, reasons
    return (
        CaseRow(
            line=line,
            case_number=case_number,
            payer_name=name,
            phone=phone,
            language=language,
            amount_due_cents=amounts["amount_due"],
            balance_cents=amounts["balance"],
            next_due_date=due,
            timezone=zone,
        ),
        [],
    )


def _amount_reason(column: str, text: str, exc: AmountError) -> str:
    if exc.code == "negative":
        return f"{column} {text!r} is negative"
    if exc.code == "too_many_decimals":
        return f"{column} {text!r} has more than two decimals"
    return f"{column} {text!r} is not a dollar amount like 125.00"


def _date_reason(column: str, text: str) -> str:
    """Why a date cell was refused, and for a spreadsheet's date how to save it right.

    12/31/2026 could be read, but 1/5/27 cannot (January 5 or May 1): no such form is guessed.
    """
    if ISO_SHAPED.match(text):
        return f"{column} {text!r} is not a date on the calendar"
    if SERIAL_DAY.match(text):
        return (
            f"{column} {text!r} is a spreadsheet's date serial number, not a date in "
            f"YYYY-MM-DD form like 2026-12-31; {EXCEL_DATE_HINT}"
        )
    reason = f"{column} {text!r} is not a date in YYYY-MM-DD form like 2026-12-31"
    if SPREADSHEET_DATE.match(text):
        reason += f"; {EXCEL_DATE_HINT}"
    return reason
