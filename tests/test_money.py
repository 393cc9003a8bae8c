import pytest

from money import AmountError, format_cents, parse_dollars


@pytest.mark.parametrize(
    ("text", "cents"),
    [
        ("125.00", 12_500),
        ("125", 12_500),
        ("$125", 12_500),
        ("$ 1,250.00", 125_000),
        ("1,250", 125_000),
        ("40.5", 4_050),
        (".99", 99),
        ("0.01", 1),
        ("12,345,678.90", 1_234_567_890),
        ("0", 0),
        (" 7.10 ", 710),
    ],
)
def test_dollar_amounts_parse_to_exact_cents(text, cents):
    assert parse_dollars(text) == cents


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("", "not_a_number"),
        ("abc", "not_a_number"),
        ("12.345", "too_many_decimals"),
        ("-5.00", "negative"),
        ("1,25.00", "not_a_number"),
        ("1.2.3", "not_a_number"),
        ("$", "not_a_number"),
        ("1e3", "not_a_number"),
        ("NaN", "not_a_number"),
    ],
)
def test_bad_amounts_are_refused_with_a_reason(text, code):
    with pytest.raises(AmountError) as error:
        parse_dollars(text)
    assert error.value.code == code


def test_zero_can_be_refused():
    with pytest.raises(AmountError) as error:
        parse_dollars("0.00", allow_zero=False)
    assert error.value.code == "zero"


@pytest.mark.parametrize(
    ("cents", "text"),
    [(0, "$0.00"), (5, "$0.05"), (12_500, "$125.00"), (123_456, "$1,234.56"), (-4_050, "-$40.50")],
)
def test_cents_format_as_us_dollars(cents, text):
    assert format_cents(cents) == text


def test_format_and_parse_round_trip():
    for cents in (1, 99, 100, 101, 99_999, 1_000_000_07):
        assert parse_dollars(format_cents(cents)) == cents
