import pytest

from phones import (
    NotTextableError,
    PhoneError,
    format_phone,
    normalize_phone,
    own_numbers,
    textable_phone,
    timezones_for_phone,
)

AGENCY = own_numbers({"AGENCY_PHONE": "800-555-0134", "TWILIO_FROM_NUMBER": "+16175550100"})


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


@pytest.mark.parametrize(
    "text",
    [
        "(617) 555-0134",  # US numbers are FIXED_LINE_OR_MOBILE: landline and mobile ranges overlap
        "+1 604 555 0134",  # Canada
        "+1 787 555 0134",  # Puerto Rico
        "+1 876 555 0134",  # Jamaica, a mobile range
    ],
)
def test_north_american_numbers_that_can_take_texts_may_be_enrolled(text):
    assert textable_phone(text, own=AGENCY) == normalize_phone(text)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("+44 20 7946 0958", "(+1)"),  # a London landline
        ("+52 55 1234 5678", "(+1)"),  # Mexico City
        ("888-555-0134", "toll-free"),
        ("+1 900 555 0134", "premium-rate"),
        ("+1 500 555 0134", "personal"),
        ("800-555-0134", "agency's own number"),  # AGENCY_PHONE, toll-free besides
        ("(617) 555-0100", "agency's own number"),  # the number texts are sent from
    ],
)
def test_numbers_that_cannot_take_these_texts_are_refused_saying_why(text, why):
    with pytest.raises(NotTextableError) as refused:
        textable_phone(text, own=AGENCY)
    assert why in str(refused.value)
    assert normalize_phone(text)  # still a valid number: a text from it is answered


def test_unparseable_text_is_refused_as_before():
    with pytest.raises(PhoneError) as refused:
        textable_phone("555-01", own=AGENCY)
    assert not isinstance(refused.value, NotTextableError)


def test_own_numbers_skips_settings_that_are_empty_or_not_numbers():
    assert own_numbers({"AGENCY_PHONE": "call us", "TWILIO_FROM_NUMBER": None}) == frozenset()
