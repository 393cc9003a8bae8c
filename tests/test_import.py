import io
from datetime import date

import pytest
from sqlmodel import select

from cases.importer import read_cases
from models import Case, Enrollment, EnrollmentSource, EnrollmentStatus

HEADER = "case_number,payer_name,phone,language,amount_due,balance,next_due_date,timezone\n"
GOOD = (
    HEADER
    + "CS-100001,Ana Rivera,(617) 555-0134,es,125.00,1250.00,2026-12-01,America/New_York\n"
    + 'CS-100002,"Smith, John",617.555.0199,en,$80,80.00,2026-12-15,\n'
    + "cs-100003,Lee Park,,EN,0,0,,\n"
)


def read(text):
    return read_cases(io.StringIO(text, newline=""))


def test_a_good_file_reads_into_rows_in_cents_and_e164():
    plan = read(GOOD)
    assert plan.ok
    first, second, third = plan.rows
    assert (first.case_number, first.phone, first.language) == ("CS-100001", "+16175550134", "es")
    assert (first.amount_due_cents, first.balance_cents) == (12_500, 125_000)
    assert first.next_due_date == date(2026, 12, 1)
    assert first.timezone == "America/New_York"
    assert second.payer_name == "Smith, John"
    assert second.amount_due_cents == 8_000 and second.timezone is None
    assert third.phone is None and third.next_due_date is None and third.language == "en"


def test_every_bad_row_is_reported_with_its_line_and_nothing_is_kept():
    text = (
        HEADER
        + "CS-1,Ana,555-01,en,10.00,10.00,2026-12-01,\n"  # 2 bad phone
        + "CS-2,Bo,6175550134,en,-5.00,10.00,2026-12-01,\n"  # 3 negative
        + "CS-3,Cy,6175550134,en,5.00,10.00,2026-13-01,\n"  # 4 bad date
        + "CS-4,Di,6175550134,fr,5.00,10.00,2026-12-01,\n"  # 5 unknown language
        + "CS-5,Ed,6175550134,en,5.00,10.00,2026-12-01,\n"  # 6 fine
        + "CS-5,Ed,6175550134,en,5.00,10.00,2026-12-01,\n"  # 7 duplicate
        + "CS-6,Fa,6175550134,en,5.001,10.00,2026-12-01,Mars/Base\n"  # 8 two problems
        + ",,,,,,,\n"  # blank row: skipped, not an error
        + "CS-7,,6175550134,en,5.00,,2026-12-01,\n"  # 10 missing name and balance
    )
    plan = read(text)
    assert plan.rows == []
    lines = {error.line: error.reason for error in plan.errors}
    assert sorted(lines) == [2, 3, 4, 5, 7, 8, 10]
    assert "phone" in lines[2]
    assert "negative" in lines[3]
    assert "next_due_date" in lines[4]
    assert "language 'fr'" in lines[5]
    assert "already appears on line 6" in lines[7]
    assert "two decimals" in lines[8] and "Mars/Base" in lines[8]
    assert "payer_name is empty" in lines[10] and "balance is empty" in lines[10]
    assert str(plan.errors[0]).startswith("line 2: ")


NOT_ZONES = ["America", "America/NewYork", "Factory", "localtime", "posixrules", "EST", "utc"]


@pytest.mark.parametrize("zone", NOT_ZONES)
def test_a_timezone_that_is_not_an_iana_zone_is_refused_with_its_line(zone):
    """'America' is a folder of zone files; EST, Factory and localtime load but are no place."""
    plan = read(HEADER + f"CS-1,Ana,,en,1,1,,{zone}\n")
    assert plan.rows == []
    assert [str(error) for error in plan.errors] == [
        f"line 2: timezone {zone!r} is not an IANA time zone like America/New_York"
    ]


@pytest.mark.parametrize(
    "zone", ["America/Chicago", "America/Indiana/Indianapolis", "Pacific/Honolulu", "UTC"]
)
def test_real_time_zones_are_accepted(zone):
    assert read(HEADER + f"CS-1,Ana,,en,1,1,,{zone}\n").rows[0].timezone == zone


def test_the_import_command_refuses_a_folder_of_zones_without_a_traceback(
    runner, session, tmp_path
):
    result = runner.invoke(
        args=["cases", "import", write(tmp_path, GOOD + "CS-4,Bo,,en,1,1,,America\n")]
    )
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit)
    assert "line 5: timezone 'America' is not an IANA time zone" in result.output
    assert session.exec(select(Case)).all() == []


def test_a_due_date_outside_2000_to_2099_is_refused_with_its_line():
    plan = read(
        HEADER
        + "CS-1,Ana,,en,1,1,9999-12-31,\n"  # a common "no end date" in agency exports
        + "CS-2,Bo,,en,1,1,1900-01-01,\n"
        + "CS-3,Cy,,en,1,1,2099-12-31,\n"
    )
    assert [error.line for error in plan.errors] == [2, 3]
    assert "next_due_date '9999-12-31' is not between 2000-01-01 and 2099-12-31" in str(
        plan.errors[0]
    )
    assert "leave it empty" in plan.errors[0].reason


EXCEL_HINT = "in Excel, format the column as yyyy-mm-dd before saving as CSV"


@pytest.mark.parametrize("written", ["12/31/2026", "1/5/27", "2026/12/31", "31.12.2026"])
def test_a_spreadsheets_date_is_refused_saying_the_form_and_how_to_save_it(written):
    """1/5/27 is January 5 or May 1: no such date is guessed, the message says how to fix it."""
    plan = read(HEADER + f"CS-1,Ana,,en,1,1,{written},\n")
    assert plan.rows == []
    assert [str(error) for error in plan.errors] == [
        f"line 2: next_due_date {written!r} is not a date in YYYY-MM-DD form like 2026-12-31; "
        + EXCEL_HINT
    ]


def test_an_excel_date_serial_number_is_refused_as_one():
    plan = read(HEADER + "CS-1,Ana,,en,1,1,46387,\n")
    assert [str(error) for error in plan.errors] == [
        "line 2: next_due_date '46387' is a spreadsheet's date serial number, not a date in "
        "YYYY-MM-DD form like 2026-12-31; " + EXCEL_HINT
    ]


def test_a_date_that_is_not_on_the_calendar_or_not_a_date_gets_no_excel_hint():
    plan = read(HEADER + "CS-1,Ana,,en,1,1,2026-02-30,\n" + "CS-2,Bo,,en,1,1,soon,\n")
    assert [error.reason for error in plan.errors] == [
        "next_due_date '2026-02-30' is not a date on the calendar",
        "next_due_date 'soon' is not a date in YYYY-MM-DD form like 2026-12-31",
    ]


def test_amounts_above_ten_million_dollars_are_refused_like_the_form_refuses_them():
    plan = read(
        HEADER
        + "CS-1,Ana,,en,99999999999999999999.00,1.00,,\n"
        + 'CS-2,Bo,,en,1.00,"10,000,000.01",,\n'
        + "CS-3,Cy,,en,10000000.00,10000000.00,,\n"
    )
    assert [error.line for error in plan.errors] == [2, 3]
    assert "amount_due '99999999999999999999.00' is larger than $10,000,000.00" in str(
        plan.errors[0]
    )
    assert "balance '10,000,000.01' is larger than $10,000,000.00" in str(plan.errors[1])


def test_a_payer_name_with_a_control_character_is_refused():
    # PostgreSQL cannot store a NUL: the preview passed and the confirm was a 500.
    plan = read(
        HEADER
        + "CS-1,Ana\x00 Rivera,,en,1,1,,\n"
        + "CS-2,Bo\x07,,en,1,1,,\n"
        + 'CS-3,"Cy\tLee\nPark",,en,1,1,,\n'  # tabs and line breaks are only spacing
    )
    assert [error.line for error in plan.errors] == [2, 3]
    assert "payer name cannot contain control characters" in str(plan.errors[0])


def test_a_row_split_by_an_unquoted_comma_is_refused_not_read_shifted():
    """'1,250.00' unquoted is two values: read as they fell, the balance would be $1.00."""
    text = (
        "case_number,payer_name,phone,language,next_due_date,timezone,amount_due,balance\n"
        + "CS-1,Ana Rivera,,en,,,250.00,1,250.00\n"
        + "CS-2,Rivera, Ana,6175550134,en,,,250.00,1000.00\n"
        + "CS-3,Bo Lee,,en,,,250.00,1000.00,,\n"  # empty trailing cells, as Excel leaves them
    )
    plan = read(text)
    assert plan.rows == []
    lines = {error.line: error.reason for error in plan.errors}
    assert sorted(lines) == [2, 3]
    assert (
        lines[2]
        == lines[3]
        == (
            '9 values for the header\'s 8 columns; a value holding a comma, like "1,250.00" or '
            '"Rivera, Ana", must be in double quotes'
        )
    )
    assert read(text.replace("1,250.00", '"1,250.00"').replace("Rivera, Ana", '"Rivera, Ana"')).ok


def test_a_missing_column_is_reported_on_the_header_line():
    plan = read("case_number,payer_name\nCS-1,Ana\n")
    assert [e.line for e in plan.errors] == [1]
    assert "phone" in plan.errors[0].reason


def test_an_empty_file_is_an_error():
    assert [e.line for e in read("").errors] == [1]


def test_quoted_newlines_keep_physical_line_numbers():
    text = HEADER + '"CS-1","Ana\nRivera",6175550134,en,1,1,2026-12-01,\nCS-2,Bo,bad,en,1,1,,\n'
    plan = read(text)
    assert [e.line for e in plan.errors] == [4]


def write(tmp_path, text, name="cases.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_import_command_creates_cases_and_pending_enrollments(runner, session, tmp_path):
    result = runner.invoke(args=["cases", "import", write(tmp_path, GOOD)])
    assert result.exit_code == 0, result.output
    assert "3 new, 0 updated, 2 pending enrollment(s)" in result.output
    cases = session.exec(select(Case).order_by(Case.case_number)).all()
    assert [c.case_number for c in cases] == ["CS-100001", "CS-100002", "CS-100003"]
    enrollments = session.exec(select(Enrollment)).all()
    assert {e.phone for e in enrollments} == {"+16175550134", "+16175550199"}
    assert all(e.status == EnrollmentStatus.PENDING for e in enrollments)
    assert all(e.source == EnrollmentSource.IMPORT for e in enrollments)


def test_reimporting_updates_cases_instead_of_duplicating_them(runner, session, tmp_path):
    assert runner.invoke(args=["cases", "import", write(tmp_path, GOOD)]).exit_code == 0
    changed = GOOD.replace(
        "CS-100001,Ana Rivera,(617) 555-0134,es,125.00,1250.00",
        "CS-100001,Ana Rivera,(617) 555-0134,es,150.00,1100.00",
    )
    result = runner.invoke(args=["cases", "import", write(tmp_path, changed, "again.csv")])
    assert result.exit_code == 0, result.output
    assert "0 new, 3 updated, 0 pending enrollment(s)" in result.output
    case = session.exec(select(Case).where(Case.case_number == "CS-100001")).one()
    assert (case.amount_due_cents, case.balance_cents) == (15_000, 110_000)
    assert len(session.exec(select(Case)).all()) == 3
    assert len(session.exec(select(Enrollment)).all()) == 2


def test_blank_language_and_timezone_in_a_reimport_keep_the_stored_values(
    runner, session, tmp_path
):
    assert runner.invoke(args=["cases", "import", write(tmp_path, GOOD)]).exit_code == 0
    again = (
        HEADER
        + "CS-100001,Ana Rivera,(617) 555-0177,,150.00,1100.00,2026-12-01,\n"
        + "CS-100004,New Payer,,,10.00,10.00,,\n"
    )
    result = runner.invoke(args=["cases", "import", write(tmp_path, again, "again.csv")])
    assert result.exit_code == 0, result.output
    session.expire_all()
    case = session.exec(select(Case).where(Case.case_number == "CS-100001")).one()
    assert (case.language, case.timezone) == ("es", "America/New_York")
    assert (case.amount_due_cents, case.balance_cents) == (15_000, 110_000)
    added = session.exec(select(Enrollment).where(Enrollment.phone == "+16175550177")).one()
    assert added.language == "es"  # the case's language, not a default
    new = session.exec(select(Case).where(Case.case_number == "CS-100004")).one()
    assert (new.language, new.timezone) == ("en", None)


def test_a_reimport_with_a_language_or_timezone_changes_them(runner, session, tmp_path):
    assert runner.invoke(args=["cases", "import", write(tmp_path, GOOD)]).exit_code == 0
    changed = GOOD.replace(
        ",es,125.00,1250.00,2026-12-01,America/New_York",
        ",en,125.00,1250.00,2026-12-01,America/Chicago",
    )
    result = runner.invoke(args=["cases", "import", write(tmp_path, changed, "again.csv")])
    assert result.exit_code == 0, result.output
    session.expire_all()
    case = session.exec(select(Case).where(Case.case_number == "CS-100001")).one()
    assert (case.language, case.timezone) == ("en", "America/Chicago")


def test_a_file_with_bad_rows_changes_nothing_and_exits_non_zero(runner, session, tmp_path):
    bad = GOOD + "CS-100004,Bad Phone,12,en,1.00,1.00,2026-12-01,\n"
    result = runner.invoke(args=["cases", "import", write(tmp_path, bad)])
    assert result.exit_code != 0
    assert "line 5: phone '12' is not a valid phone number" in result.output
    assert "nothing was imported" in result.output
    assert session.exec(select(Case)).all() == []


def test_a_file_that_is_not_utf8_is_refused(runner, session, tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes((HEADER + "CS-1,Nuñez,6175550134,es,1,1,,\n").encode("latin-1"))
    result = runner.invoke(args=["cases", "import", str(path)])
    assert result.exit_code != 0
    assert "not UTF-8" in result.output
    assert "line 2" in result.output and "CSV UTF-8 (Comma delimited)" in result.output
    assert session.exec(select(Case)).all() == []


def test_numbers_that_cannot_take_texts_are_refused_by_the_import_saying_why():
    text = (
        HEADER
        + "CS-1,Ana,+44 20 7946 0958,en,10.00,10.00,,\n"
        + "CS-2,Bo,+52 55 1234 5678,en,10.00,10.00,,\n"
        + "CS-3,Cy,800-555-0134,en,10.00,10.00,,\n"
        + "CS-4,Di,(617) 555-0100,en,10.00,10.00,,\n"
        + "CS-5,Ed,(617) 555-0134,en,10.00,10.00,,\n"
    )
    plan = read_cases(io.StringIO(text, newline=""), own={"+16175550100"})
    assert plan.rows == []
    lines = {error.line: error.reason for error in plan.errors}
    assert sorted(lines) == [2, 3, 4, 5]
    assert "not a North American (+1) number" in lines[2] and "(+1)" in lines[3]
    assert "toll-free number, which cannot receive these texts" in lines[4]
    assert lines[5] == "phone (617) 555-0100 is the agency's own number"
