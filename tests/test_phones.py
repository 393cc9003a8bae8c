import pytest

from phones import PhoneError, format_phone, normalize_phone, timezones_for_phone


@pytest.mark.parametrize(
    "text",
    [
        "(617) 555-0134",
        "617-555-0134",
        "617.555.0134",
        "617 555 0134",
        "6175550134",
        "1-617-555-0134",
        "+1 617 555 0134",
        "+1 (617) 555-0134",
        "1 (617) 555 0134",
        "+16175550134",
        " 617-555-0134 ",
        "617–555–0134",  # en dashes from a word processor
    ],
)
def test_us_formats_normalise_to_e164(text):
    assert normalize_phone(text) == "+16175550134"


@pytest.mark.parametrize(
    ("text", "e164"),
    [
        ("+52 55 1234 5678", "+525512345678"),
        ("+44 20 7946 0018", "+442079460018"),
        ("+1 787 555 0134", "+17875550134"),  # Puerto Rico
        ("(212) 555-0199 ext. 12", "+12125550199"),
    ],
)
def test_international_and_territory_numbers_keep_their_country(text, e164):
    assert normalize_phone(text) == e164


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "hello",
        "555-0134",
        "123",
        "617-555-013",
        "(000) 555-0134",
        "+1 999 555 0134",
        "617555013412345",
        "x" * 200,
        "☎️",
    ],
)
def test_garbage_and_impossible_numbers_are_refused(text):
    with pytest.raises(PhoneError):
        normalize_phone(text)


def test_us_numbers_are_shown_in_national_format():
    assert format_phone("+16175550134") == "(617) 555-0134"
    assert format_phone("+442079460018") == "+44 20 7946 0018"


def test_area_code_gives_a_time_zone():
    assert timezones_for_phone("+16175550134") == ("America/New_York",)
    assert timezones_for_phone("+13105550134") == ("America/Los_Angeles",)
