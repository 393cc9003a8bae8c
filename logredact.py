"""Log records without the row values PostgreSQL quotes in its errors' DETAIL lines.

A unique or foreign key violation names the values that clashed ("Key (phone)=(+16175550100)
already exists."), a NOT NULL or CHECK violation the whole row ("Failing row contains (2, CS-1,
Ana Rivera, ...)."): payers' phones and names, in every logged traceback of such an error. The
engines already hide statements' parameters (db.make_engine); this hides the same values where
PostgreSQL repeats them, and keeps the columns, so the log still says what clashed.
"""

from __future__ import annotations

import logging
import re

VALUES_MARKER = "…"

# "Key (case_id, phone)=(1, +16175550100) already exists." and the foreign key and exclusion
# forms; a column may be an expression, lower(email), and a value may hold parentheses.
_KEY_VALUES = re.compile(
    r"(\b[Kk]ey \((?:[^()]|\([^()]*\))*\))=\(.*?\)"
    r"(?=\s+(?:already exists|is not present|is still referenced|conflicts with)|\.?$)",
    re.MULTILINE | re.DOTALL,
)
_FAILING_ROW = re.compile(r"(\bFailing row contains )\(.*?\)(?=\.?$)", re.MULTILINE | re.DOTALL)


def database_values_removed(text: str) -> str:
    """The text with the values of PostgreSQL's DETAIL lines replaced by VALUES_MARKER."""
    if "=(" not in text and "Failing row" not in text:
        return text  # most log lines
    text = _KEY_VALUES.sub(rf"\1=({VALUES_MARKER})", text)
    return _FAILING_ROW.sub(rf"\1({VALUES_MARKER})", text)


def _redact(record: logging.LogRecord) -> None:
    if record.exc_info and record.exc_info[1] is not None:
        # Formatted once here, as the handlers' Formatter would; they use exc_text when set.
        formatted = logging.Formatter().formatException(record.exc_info)
        cleaned = database_values_removed(formatted)
        if cleaned != formatted:
            record.exc_text = cleaned
    try:
        message = record.getMessage()
    except Exception:  # a handler formats it again and reports the error itself
        return
    cleaned = database_values_removed(message)
    if cleaned != message:
        # RQ logs a failed job's traceback as an argument of its message, already formatted.
        record.msg, record.args = cleaned, None


def install() -> None:
    """Redact every log record this process makes, whichever handler writes it.

    A record factory rather than a handler's filter: gunicorn's error log, RQ's worker log and
    Flask's own handler each have their handlers, some set up after the app is built.
    """
    previous = logging.getLogRecordFactory()
    if getattr(previous, "removes_database_values", False):
        return

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        _redact(record)
        return record

    factory.removes_database_values = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
