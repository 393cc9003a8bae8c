"""Scheduling rules: send times, quiet hours, time zones, DST and business hours."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from zoneinfo import ZoneInfo, available_timezones

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobs.schedule import (
    DEFAULT_WINDOW,
    BusinessHours,
    QuietHours,
    ReminderKind,
    Window,
    appointment_send_time,
    due_cycle_send_times,
    is_allowed,
    is_allowed_everywhere,
    is_open,
    next_allowed,
    next_allowed_everywhere,
    next_opening,
    parse_business_hours,
    parse_clock,
    parse_offsets,
    parse_window,
    parse_windows,
    resolve_state,
    resolve_timezone,
    resolve_timezones,
    state_for_phone,
    zone_named,
    zone_names,
)

BOSTON = ZoneInfo("America/New_York")
CHICAGO = ZoneInfo("America/Chicago")
DENVER = ZoneInfo("America/Denver")
CENTRAL_ND = ZoneInfo("America/North_Dakota/Center")
LOS_ANGELES = ZoneInfo("America/Los_Angeles")
HONOLULU = ZoneInfo("Pacific/Honolulu")
PHOENIX = ZoneInfo("America/Phoenix")
MIAMI = ZoneInfo("America/New_York")
PUERTO_RICO = ZoneInfo("America/Puerto_Rico")

BOSTON_PHONE = "+16175551234"
MIAMI_PHONE = "+13055551234"
TULSA_PHONE = "+19185551234"
SAN_JUAN_PHONE = "+17875551234"
TOLL_FREE = "+18005551234"
SIOUX_FALLS_PHONE = "+16055551234"  # South Dakota's one area code spans Central and Mountain
JAMAICA_MOBILE = "+18765551234"  # phonenumbers maps it to every North American zone


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def local(tz: ZoneInfo, *args: int, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=tz, fold=fold).astimezone(UTC)


def w(text: str) -> Window:
    return parse_window(text)


# --- due-cycle send times ----------------------------------------------------------------------


def test_boston_reminders_go_out_at_ten_local_three_days_before_on_and_one_day_after():
    times = due_cycle_send_times(date(2026, 6, 15), tz=BOSTON, window=DEFAULT_WINDOW)
    assert times == {
        ReminderKind.DUE_SOON: utc(2026, 6, 12, 14, 0),
        ReminderKind.DUE_TODAY: utc(2026, 6, 15, 14, 0),
        ReminderKind.OVERDUE: utc(2026, 6, 16, 14, 0),
    }


def test_boston_winter_reminders_follow_standard_time():
    times = due_cycle_send_times(date(2026, 1, 15), tz=BOSTON, window=DEFAULT_WINDOW)
    assert times[ReminderKind.DUE_TODAY] == utc(2026, 1, 15, 15, 0)


def test_los_angeles_reminders_follow_pacific_time_through_the_spring_change():
    # DST starts on Sunday 2026-03-08; due_soon falls before it, due_today after.
    times = due_cycle_send_times(date(2026, 3, 10), tz=LOS_ANGELES, window=DEFAULT_WINDOW)
    assert times[ReminderKind.DUE_SOON] == utc(2026, 3, 7, 18, 0)
    assert times[ReminderKind.DUE_TODAY] == utc(2026, 3, 10, 17, 0)


@pytest.mark.parametrize("tz, hour_utc", [(HONOLULU, 20), (PHOENIX, 17), (PUERTO_RICO, 14)])
def test_zones_without_daylight_saving_send_at_the_same_utc_hour_all_year(tz, hour_utc):
    for due in (date(2026, 1, 15), date(2026, 3, 8), date(2026, 7, 15), date(2026, 11, 1)):
        sent = due_cycle_send_times(due, tz=tz, window=DEFAULT_WINDOW)[ReminderKind.DUE_TODAY]
        assert sent == datetime.combine(due, time(hour_utc), tzinfo=UTC)


def test_configured_offsets_and_send_time_replace_the_defaults():
    times = due_cycle_send_times(
        date(2026, 6, 15),
        tz=BOSTON,
        window=DEFAULT_WINDOW,
        offsets=parse_offsets("due_soon=-5, overdue=+2"),
        send_time=time(18, 30),
    )
    assert times == {
        ReminderKind.DUE_SOON: utc(2026, 6, 10, 22, 30),
        ReminderKind.OVERDUE: utc(2026, 6, 17, 22, 30),
    }


def test_send_time_before_the_window_waits_for_it_to_open_that_day():
    times = due_cycle_send_times(
        date(2026, 6, 15), tz=BOSTON, window=DEFAULT_WINDOW, send_time=time(6, 0)
    )
    assert times[ReminderKind.DUE_TODAY] == local(BOSTON, 2026, 6, 15, 8, 0)


def test_send_time_after_the_window_is_deferred_to_next_morning_not_moved_earlier():
    times = due_cycle_send_times(
        date(2026, 6, 15), tz=BOSTON, window=DEFAULT_WINDOW, send_time=time(21, 30)
    )
    assert times[ReminderKind.DUE_TODAY] == local(BOSTON, 2026, 6, 16, 8, 0)


# --- quiet hours -------------------------------------------------------------------------------


def test_a_moment_inside_the_window_is_sent_as_is():
    at = local(BOSTON, 2026, 6, 15, 14, 5, 30)
    assert is_allowed(at, tz=BOSTON, window=DEFAULT_WINDOW)
    assert next_allowed(at, tz=BOSTON, window=DEFAULT_WINDOW) == at


def test_early_morning_is_deferred_to_eight_the_same_day():
    at = local(BOSTON, 2026, 6, 15, 6, 45)
    assert not is_allowed(at, tz=BOSTON, window=DEFAULT_WINDOW)
    assert next_allowed(at, tz=BOSTON, window=DEFAULT_WINDOW) == local(BOSTON, 2026, 6, 15, 8)


def test_nine_pm_itself_is_quiet_and_defers_to_next_morning():
    last_second = local(BOSTON, 2026, 6, 15, 20, 59, 59)
    closing = local(BOSTON, 2026, 6, 15, 21, 0)
    assert is_allowed(last_second, tz=BOSTON, window=DEFAULT_WINDOW)
    assert not is_allowed(closing, tz=BOSTON, window=DEFAULT_WINDOW)
    assert next_allowed(closing, tz=BOSTON, window=DEFAULT_WINDOW) == local(BOSTON, 2026, 6, 16, 8)


def test_quiet_hours_are_judged_by_the_payers_clock_not_utc():
    at = utc(2026, 6, 15, 15, 0)  # 11:00 in Boston, 05:00 in Honolulu
    assert is_allowed(at, tz=BOSTON, window=DEFAULT_WINDOW)
    assert next_allowed(at, tz=HONOLULU, window=DEFAULT_WINDOW) == local(HONOLULU, 2026, 6, 15, 8)


def test_miami_payer_gets_the_florida_window_that_ends_at_eight_pm():
    policy = QuietHours()
    window = policy.window_for(resolve_state(case_state=None, phone=MIAMI_PHONE))
    evening = local(MIAMI, 2026, 6, 15, 20, 30)
    assert window == w("08:00-20:00")
    assert is_allowed(evening, tz=MIAMI, window=policy.window_for("MA"))
    assert next_allowed(evening, tz=MIAMI, window=window) == local(MIAMI, 2026, 6, 16, 8)


def test_oklahoma_also_ends_at_eight_and_other_states_at_nine_by_default():
    policy = QuietHours()
    assert policy.window_for(state_for_phone(TULSA_PHONE)).end == time(20, 0)
    assert policy.window_for("TX") == DEFAULT_WINDOW
    assert policy.window_for(None) == DEFAULT_WINDOW


def test_a_state_window_narrows_the_default_but_never_widens_it():
    policy = QuietHours(default=w("09:00-20:00"), by_state=parse_windows("FL=08:00-19:00"))
    assert policy.window_for("fl") == w("09:00-19:00")
    assert QuietHours(by_state={"TX": w("07:00-23:00")}).window_for("TX") == DEFAULT_WINDOW


def test_a_state_window_outside_the_default_is_rejected_up_front():
    with pytest.raises(ValueError, match="does not overlap"):
        QuietHours(by_state={"FL": w("21:30-23:00")})


def test_naive_datetimes_are_refused_rather_than_read_as_server_time():
    with pytest.raises(ValueError, match="timezone-aware"):
        next_allowed(datetime(2026, 6, 15, 12), tz=BOSTON, window=DEFAULT_WINDOW)


def test_an_aware_non_utc_input_comes_back_as_the_same_instant_in_utc():
    at = datetime(2026, 6, 15, 12, tzinfo=BOSTON)
    result = next_allowed(at, tz=BOSTON, window=DEFAULT_WINDOW)
    assert result == at
    assert result.tzinfo is UTC


# --- daylight saving changeovers ---------------------------------------------------------------


def test_send_time_in_the_spring_forward_gap_goes_out_when_the_clock_jumps():
    # On 2026-03-08 Boston clocks go from 01:59:59 EST straight to 03:00 EDT (07:00 UTC).
    times = due_cycle_send_times(
        date(2026, 3, 8),
        tz=BOSTON,
        window=w("00:00-23:00"),
        offsets={ReminderKind.DUE_TODAY: 0},
        send_time=time(2, 30),
    )
    assert times[ReminderKind.DUE_TODAY] == utc(2026, 3, 8, 7, 0)


def test_a_window_opening_in_the_spring_forward_gap_opens_when_the_clock_jumps():
    window = w("02:30-21:00")
    at = local(BOSTON, 2026, 3, 8, 1, 15)
    opened = next_allowed(at, tz=BOSTON, window=window)
    assert opened == utc(2026, 3, 8, 7, 0)
    assert opened.astimezone(BOSTON).time() == time(3, 0)


def test_send_time_in_the_fall_back_fold_uses_the_first_half_past_one():
    # On 2026-11-01 Boston reads 01:30 twice: 05:30 UTC (EDT) and 06:30 UTC (EST).
    times = due_cycle_send_times(
        date(2026, 11, 1),
        tz=BOSTON,
        window=w("00:00-23:00"),
        offsets={ReminderKind.DUE_TODAY: 0},
        send_time=time(1, 30),
    )
    assert times[ReminderKind.DUE_TODAY] == utc(2026, 11, 1, 5, 30)


def test_after_the_clock_falls_back_a_window_opening_at_half_past_one_opens_again():
    window = w("01:30-21:00")
    before_first = local(BOSTON, 2026, 11, 1, 1, 10)
    after_fall_back = local(BOSTON, 2026, 11, 1, 1, 10, fold=1)
    assert next_allowed(before_first, tz=BOSTON, window=window) == utc(2026, 11, 1, 5, 30)
    assert next_allowed(after_fall_back, tz=BOSTON, window=window) == utc(2026, 11, 1, 6, 30)


def test_a_window_closing_inside_the_fold_reopens_when_the_clock_falls_back():
    window = w("00:00-01:30")
    closed = local(BOSTON, 2026, 11, 1, 1, 45)  # EDT, past the window
    assert not is_allowed(closed, tz=BOSTON, window=window)
    assert next_allowed(closed, tz=BOSTON, window=window) == utc(2026, 11, 1, 6, 0)


# --- appointments ------------------------------------------------------------------------------


def test_appointment_reminder_goes_out_24_hours_before_when_that_is_allowed():
    starts = local(BOSTON, 2026, 6, 16, 9, 0)
    sent = appointment_send_time(starts, tz=BOSTON, window=DEFAULT_WINDOW)
    assert sent == starts - timedelta(hours=24)


def test_early_appointment_reminder_waits_for_the_window_the_day_before():
    starts = local(BOSTON, 2026, 6, 16, 7, 0)
    sent = appointment_send_time(starts, tz=BOSTON, window=DEFAULT_WINDOW)
    assert sent == local(BOSTON, 2026, 6, 15, 8, 0)


def test_appointment_lead_is_24_real_hours_even_across_spring_forward():
    starts = local(BOSTON, 2026, 3, 8, 10, 0)  # EDT, first day of daylight time
    sent = appointment_send_time(starts, tz=BOSTON, window=DEFAULT_WINDOW)
    assert sent == local(BOSTON, 2026, 3, 7, 9, 0)


def test_short_lead_deferred_to_the_appointment_moves_to_the_previous_evening_instead():
    starts = local(BOSTON, 2026, 6, 16, 8, 0)
    sent = appointment_send_time(starts, tz=BOSTON, window=DEFAULT_WINDOW, lead=timedelta(hours=2))
    assert sent == local(BOSTON, 2026, 6, 15, 20, 0)


def test_previous_evening_fallback_respects_the_florida_window():
    starts = local(MIAMI, 2026, 6, 16, 8, 0)
    window = QuietHours().window_for("FL")
    sent = appointment_send_time(starts, tz=MIAMI, window=window, lead=timedelta(hours=2))
    assert sent == local(MIAMI, 2026, 6, 15, 19, 0)


def test_late_evening_appointment_is_reminded_earlier_that_evening():
    starts = local(BOSTON, 2026, 6, 16, 21, 30)
    sent = appointment_send_time(
        starts, tz=BOSTON, window=DEFAULT_WINDOW, lead=timedelta(minutes=30)
    )
    assert sent == local(BOSTON, 2026, 6, 16, 20, 0)


def test_short_lead_that_still_lands_before_the_appointment_is_only_deferred():
    starts = local(BOSTON, 2026, 6, 16, 8, 30)
    sent = appointment_send_time(starts, tz=BOSTON, window=DEFAULT_WINDOW, lead=timedelta(hours=2))
    assert sent == local(BOSTON, 2026, 6, 16, 8, 0)


def test_appointment_lead_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        appointment_send_time(
            utc(2026, 6, 16, 13), tz=BOSTON, window=DEFAULT_WINDOW, lead=timedelta(0)
        )


# --- time zone and state resolution ------------------------------------------------------------


def test_case_time_zone_wins_over_the_phone_number():
    zone = resolve_timezone(case_tz="America/Chicago", phone=BOSTON_PHONE)
    assert zone == ZoneInfo("America/Chicago")


@pytest.mark.parametrize(
    "phone, zone",
    [
        (BOSTON_PHONE, "America/New_York"),
        ("+12135551234", "America/Los_Angeles"),
        ("+18085551234", "Pacific/Honolulu"),
        ("+16025551234", "America/Phoenix"),
        (SAN_JUAN_PHONE, "America/Puerto_Rico"),
        ("+19075551234", "America/Adak"),  # several zones: the first, as specified
    ],
)
def test_without_a_case_zone_the_phone_numbers_zone_is_used(phone, zone):
    assert resolve_timezone(case_tz=None, phone=phone, default="UTC") == ZoneInfo(zone)


@pytest.mark.parametrize(
    "case_tz",
    [
        *("Mars/Olympus", "", "   ", "utc", "../etc/passwd", "/etc/localtime", "x" * 5000),
        *("America", "Factory", "localtime", "posixrules", "EST"),
    ],
)
def test_an_unusable_case_zone_falls_back_to_the_phone_and_never_raises(case_tz):
    assert resolve_timezone(case_tz=case_tz, phone="+12135551234") == LOS_ANGELES
    assert resolve_timezone(case_tz=case_tz, phone=None, default="America/Chicago") == ZoneInfo(
        "America/Chicago"
    )


@pytest.mark.parametrize("phone", [TOLL_FREE, JAMAICA_MOBILE, "not a phone", "", None])
def test_numbers_without_a_known_place_fall_back_to_the_default_zone(phone):
    assert resolve_timezone(case_tz=None, phone=phone) == BOSTON


@pytest.mark.parametrize("name", ["America", "Factory", "localtime", "posixrules", "EST", "GB"])
def test_only_area_slash_place_zones_and_utc_are_zones(name):
    """ZoneInfo opens any file: a folder raises IsADirectoryError, EST never has summer time."""
    with pytest.raises(ValueError, match=f"{name!r} is not an IANA time zone"):
        zone_named(name)
    assert zone_named(" America/Chicago ") == CHICAGO and zone_named("UTC").key == "UTC"


def test_every_zone_phonenumbers_maps_a_number_to_is_a_zone():
    """Else a payer's zone from their number would be dropped as a typo."""
    from phonenumbers import timezone as phone_timezone

    mapped = {zone for zones in phone_timezone.TIMEZONE_DATA.values() for zone in zones}
    assert sorted(mapped - zone_names() - {phone_timezone.UNKNOWN_TIMEZONE}) == []


def test_a_misconfigured_default_zone_fails_loudly():
    with pytest.raises(ValueError, match="'Eastern' is not an IANA time zone"):
        resolve_timezone(case_tz=None, phone=None, default="Eastern")


def test_a_number_whose_area_code_spans_zones_may_be_in_any_of_them():
    assert resolve_timezones(case_tz=None, phone=SIOUX_FALLS_PHONE) == (DENVER, CENTRAL_ND)
    assert resolve_timezones(case_tz="America/Chicago", phone=SIOUX_FALLS_PHONE) == (CHICAGO,)
    assert resolve_timezones(case_tz=None, phone=BOSTON_PHONE) == (BOSTON,)
    assert resolve_timezones(case_tz=None, phone=TOLL_FREE) == (BOSTON,)


# --- quiet hours in several zones at once ------------------------------------------------------


def test_a_payer_who_may_be_in_either_zone_is_texted_only_while_both_windows_are_open():
    zones = (DENVER, CENTRAL_ND)
    half_past_eight_mountain = datetime(2030, 6, 14, 20, 30, tzinfo=DENVER)  # 21:30 Central
    assert not is_allowed_everywhere(half_past_eight_mountain, zones=zones, window=DEFAULT_WINDOW)
    later = next_allowed_everywhere(half_past_eight_mountain, zones=zones, window=DEFAULT_WINDOW)
    assert later == datetime(2030, 6, 15, 8, tzinfo=DENVER)  # 09:00 Central
    assert is_allowed_everywhere(later, zones=zones, window=DEFAULT_WINDOW)
    eight_central = datetime(2030, 6, 15, 8, tzinfo=CHICAGO)  # 07:00 Mountain: too early there
    assert next_allowed_everywhere(eight_central, zones=zones, window=DEFAULT_WINDOW) == later


def test_one_zone_gives_the_same_answers_as_the_single_zone_rules():
    for hour in range(24):
        at = utc(2030, 3, 10, hour)
        assert is_allowed_everywhere(at, zones=(DENVER,), window=DEFAULT_WINDOW) == is_allowed(
            at, tz=DENVER, window=DEFAULT_WINDOW
        )
        assert next_allowed_everywhere(at, zones=(DENVER,), window=DEFAULT_WINDOW) == next_allowed(
            at, tz=DENVER, window=DEFAULT_WINDOW
        )


def test_zones_that_change_clocks_differently_narrow_the_window_only_in_summer():
    zones = (DENVER, PHOENIX)  # Arizona keeps standard time all year
    july_evening = datetime(2030, 7, 1, 20, 30, tzinfo=PHOENIX)  # 21:30 in Denver
    january_evening = datetime(2030, 1, 7, 20, 30, tzinfo=PHOENIX)  # 20:30 in Denver too
    assert not is_allowed_everywhere(july_evening, zones=zones, window=DEFAULT_WINDOW)
    assert is_allowed_everywhere(january_evening, zones=zones, window=DEFAULT_WINDOW)
    july_morning = datetime(2030, 7, 2, 7, 30, tzinfo=PHOENIX)  # 08:30 in Denver
    assert next_allowed_everywhere(july_morning, zones=zones, window=DEFAULT_WINDOW) == datetime(
        2030, 7, 2, 8, tzinfo=PHOENIX
    )


@pytest.mark.parametrize(
    ("at", "opens"),
    [
        # The evening before spring forward (21:00 CST) waits for 08:00 MDT, 09:00 CDT.
        (utc(2030, 3, 10, 3), utc(2030, 3, 10, 14)),
        # The evening before fall back (21:00 CDT) waits for 08:00 MST, 09:00 CST.
        (utc(2030, 11, 3, 2), utc(2030, 11, 3, 15)),
    ],
)
def test_two_zones_over_a_clock_change_open_when_the_later_one_does(at, opens):
    zones = (CENTRAL_ND, DENVER)
    assert next_allowed_everywhere(at, zones=zones, window=DEFAULT_WINDOW) == opens


def test_zones_whose_windows_never_meet_fail_loudly():
    hour = Window(time(8), time(9))
    with pytest.raises(ValueError, match="never open"):
        next_allowed_everywhere(utc(2030, 6, 1), zones=(BOSTON, HONOLULU), window=hour)


@pytest.mark.parametrize(
    "phone, state",
    [
        (MIAMI_PHONE, "FL"),  # geocoder says 'Florida'
        ("+12135551234", "CA"),  # geocoder says 'Los Angeles, CA'
        ("+12065551234", "WA"),  # 'Washington State'
        ("+12025551234", "DC"),  # 'Washington D.C.'
        (TULSA_PHONE, "OK"),
        (SAN_JUAN_PHONE, "PR"),
        ("+16715551234", "GU"),
        ("+14165551234", None),  # Toronto
        ("+442071234567", None),
        (TOLL_FREE, None),
        ("garbage", None),
        (None, None),
    ],
)
def test_state_for_phone_reads_the_area_code(phone, state):
    assert state_for_phone(phone) == state


def test_a_case_state_overrides_the_phone_unless_it_is_not_a_state():
    assert resolve_state(case_state=" ok ", phone=MIAMI_PHONE) == "OK"
    assert resolve_state(case_state="Florida", phone=TULSA_PHONE) == "OK"
    assert resolve_state(case_state=None, phone=None) is None


# --- settings ----------------------------------------------------------------------------------


def test_state_windows_setting_parses_into_a_mapping():
    assert parse_windows("FL=08:00-20:00, ok = 8:00 - 20:00") == {
        "FL": w("08:00-20:00"),
        "OK": w("08:00-20:00"),
    }
    assert parse_windows("") == {}


@pytest.mark.parametrize(
    "setting, message",
    [
        ("FL:08:00-20:00", "should look like FL=08:00-20:00"),
        ("Florida=08:00-20:00", "should look like FL=08:00-20:00"),
        ("FA=08:00-20:00", "FA in 'FA=08:00-20:00' is not a US state or territory code"),
        ("FL=8am-8pm", "not a time range"),
        ("FL=20:00-08:00", "must start before it ends"),
        ("FL=08:00-24:00", "outside 00:00-23:59"),
        ("FL=08:00-20:00,FL=09:00-20:00", "FL appears more than once"),
    ],
)
def test_bad_state_windows_are_rejected_with_a_reason(setting, message):
    with pytest.raises(ValueError, match=message):
        parse_windows(setting)


def test_offsets_setting_parses_kinds_and_signed_days():
    assert parse_offsets("due_soon=-3,due_today=0,overdue=1") == {
        ReminderKind.DUE_SOON: -3,
        ReminderKind.DUE_TODAY: 0,
        ReminderKind.OVERDUE: 1,
    }


@pytest.mark.parametrize(
    "setting, message",
    [
        ("", "empty"),
        ("due_later=2", "KIND=DAYS"),
        ("appointment=-1", "KIND=DAYS"),
        ("overdue", "KIND=DAYS"),
        ("overdue=one", "whole number"),
        ("overdue=1.5", "whole number"),
        ("overdue=1,overdue=2", "more than once"),
    ],
)
def test_bad_offsets_are_rejected_with_a_reason(setting, message):
    with pytest.raises(ValueError, match=message):
        parse_offsets(setting)


def test_send_time_setting_is_a_24_hour_clock_time():
    assert parse_clock(" 9:05 ") == time(9, 5)
    for bad in ("10", "10am", "24:00", "10:60", ""):
        with pytest.raises(ValueError, match="24-hour time"):
            parse_clock(bad)


def test_a_window_cannot_span_midnight_or_be_empty():
    with pytest.raises(ValueError, match="start before it ends"):
        Window(time(21), time(8))
    with pytest.raises(ValueError, match="start before it ends"):
        Window(time(8), time(8))


# --- business hours ----------------------------------------------------------------------------


def test_weekday_office_hours_parse_into_five_open_days():
    hours = parse_business_hours("Mon-Fri 08:30-16:30")
    assert hours.days == (*[(w("08:30-16:30"),)] * 5, (), ())


def test_several_rules_day_names_lists_and_split_days_are_understood():
    hours = parse_business_hours(
        "monday, Wednesday-THU 09:00-12:00, 13:00-16:00; Fri 08:00-12:00; Sat-Sun 10:00-11:00"
    )
    split_day = (w("09:00-12:00"), w("13:00-16:00"))
    assert hours.days == (
        split_day,
        (),
        split_day,
        split_day,
        (w("08:00-12:00"),),
        (w("10:00-11:00"),),
        (w("10:00-11:00"),),
    )


def test_a_day_span_may_wrap_around_the_week():
    hours = parse_business_hours("Sat-Mon 10:00-14:00")
    assert [bool(day) for day in hours.days] == [True, False, False, False, False, True, True]


@pytest.mark.parametrize(
    "setting, message",
    [
        ("", "empty"),
        (" ; ", "empty"),
        ("Mon-Fri", "should look like 'Mon-Fri 08:30-16:30'"),
        ("08:30-16:30", "should look like 'Mon-Fri 08:30-16:30'"),
        ("Fry 08:00-12:00", "unknown day 'Fry'"),
        ("Mon-Fri 8-5", "not a time range"),
        ("Mon 17:00-08:00", "must start before it ends"),
        ("Mon 25:00-26:00", "outside 00:00-23:59"),
        ("Mon-Fri 08:00-12:00; Fri 13:00-15:00", "Fri appears more than once"),
        ("Mon 08:00-12:00,11:00-13:00", "overlap"),
    ],
)
def test_bad_business_hours_are_rejected_with_a_reason(setting, message):
    with pytest.raises(ValueError, match=message):
        parse_business_hours(setting)


OFFICE = parse_business_hours("Mon-Thu 08:00-17:00; Fri 08:00-12:00")


def test_office_is_open_until_but_not_at_closing_time():
    assert is_open(OFFICE, local(BOSTON, 2026, 6, 19, 11, 59), BOSTON)
    assert not is_open(OFFICE, local(BOSTON, 2026, 6, 19, 12, 0), BOSTON)
    assert not is_open(OFFICE, local(BOSTON, 2026, 6, 20, 10, 0), BOSTON)


def test_next_opening_is_now_while_open():
    at = local(BOSTON, 2026, 6, 17, 9, 15)
    assert next_opening(OFFICE, at, BOSTON) == at


def test_after_friday_closing_the_office_next_opens_monday_morning():
    friday_afternoon = local(BOSTON, 2026, 6, 19, 12, 30)
    assert next_opening(OFFICE, friday_afternoon, BOSTON) == local(BOSTON, 2026, 6, 22, 8, 0)


def test_next_opening_over_the_spring_forward_weekend_is_in_daylight_time():
    friday_evening = local(BOSTON, 2026, 3, 6, 18, 0)  # EST
    assert next_opening(OFFICE, friday_evening, BOSTON) == utc(2026, 3, 9, 12, 0)


def test_next_opening_before_hours_is_the_same_morning():
    at = local(BOSTON, 2026, 6, 17, 6, 0)
    assert next_opening(OFFICE, at, BOSTON) == local(BOSTON, 2026, 6, 17, 8, 0)


def test_business_hours_must_cover_all_seven_days_and_open_sometime():
    with pytest.raises(ValueError, match="7 weekdays"):
        BusinessHours(((w("08:00-17:00"),),) * 5)
    with pytest.raises(ValueError, match="open at some time"):
        BusinessHours(((),) * 7)


# --- properties --------------------------------------------------------------------------------

ZONES = [
    *sorted(name for name in available_timezones() if name.startswith("US/")),
    "America/Puerto_Rico",
    "America/Phoenix",
    "America/Adak",
    "America/St_Johns",  # half-hour offset
    "America/Santiago",  # changes clocks at midnight
    "America/Havana",  # changes clocks at midnight
    "America/Mexico_City",
    "Europe/London",
    "Europe/Madrid",
    "Asia/Kolkata",
    "Australia/Lord_Howe",  # half-hour DST
    "Pacific/Chatham",  # 45-minute offset
    "Pacific/Apia",  # skipped 2011-12-30 entirely
]
FIRST_DAY, LAST_DAY = date(2000, 1, 1), date(2040, 12, 31)


@cache
def changeover_days(name: str) -> tuple[date, ...]:
    """Local days on which the zone's offset differs from the day before (at noon)."""
    tz = ZoneInfo(name)

    def offset(day: date) -> timedelta | None:
        return datetime.combine(day, time(12), tzinfo=tz).utcoffset()

    days = []
    week_start = FIRST_DAY
    while week_start < LAST_DAY:
        week_end = week_start + timedelta(days=7)
        if offset(week_start) != offset(week_end):
            days += [
                week_start + timedelta(days=n)
                for n in range(1, 8)
                if offset(week_start + timedelta(days=n))
                != offset(week_start + timedelta(days=n - 1))
            ]
        week_start = week_end
    return tuple(days)


zones = st.sampled_from(ZONES).map(ZoneInfo)


@st.composite
def days_in(draw, tz: ZoneInfo) -> date:
    changeovers = changeover_days(tz.key)
    if changeovers and draw(st.booleans()):
        return draw(st.sampled_from(changeovers))
    return draw(st.dates(FIRST_DAY, LAST_DAY))


@st.composite
def instants_in(draw, tz: ZoneInfo) -> datetime:
    midnight = datetime.combine(draw(days_in(tz)), time(0), tzinfo=tz).astimezone(UTC)
    # Most changeovers happen in the small hours, so those get extra attention.
    seconds = draw(st.one_of(st.integers(-86_400, 2 * 86_400), st.integers(0, 5 * 3600)))
    micros = draw(st.sampled_from([0, 1, 500_000, 999_999]))
    return midnight + timedelta(seconds=seconds, microseconds=micros)


clock_times = st.one_of(
    st.sampled_from([time(h, m) for h in (0, 1, 2, 3, 23) for m in (0, 30, 59)]),
    st.builds(time, st.integers(0, 23), st.integers(0, 59)),
)


def minutes(moment: time) -> int:
    return moment.hour * 60 + moment.minute


# At least an hour long, so no daylight-saving gap in these zones can swallow a whole window.
windows = (
    st.tuples(clock_times, clock_times)
    .map(sorted)
    .filter(lambda pair: minutes(pair[1]) - minutes(pair[0]) > 60)
    .map(lambda pair: Window(*pair))
)


def length(window: Window) -> timedelta:
    return timedelta(minutes=minutes(window.end) - minutes(window.start))


@settings(max_examples=300, deadline=None)
@given(data=st.data(), tz=zones, window=windows, fraction=st.floats(0, 1, exclude_max=True))
def test_next_allowed_is_the_first_allowed_moment_at_or_after_the_input(data, tz, window, fraction):
    at = data.draw(instants_in(tz))
    sent = next_allowed(at, tz=tz, window=window)
    assert sent >= at
    assert is_allowed(sent, tz=tz, window=window)
    assert next_allowed(sent, tz=tz, window=window) == sent
    # Nothing is lost: at most one quiet stretch, plus an hour when the clock falls back.
    assert sent - at <= timedelta(days=1) - length(window) + timedelta(hours=1)
    if sent > at:
        # timedelta rounds to microseconds, so keep the probe strictly before the result.
        probe = min(at + (sent - at) * fraction, sent - timedelta(microseconds=1))
        assert not is_allowed(max(at, probe), tz=tz, window=window)
        assert not is_allowed(max(at, sent - timedelta(seconds=1)), tz=tz, window=window)


neighbouring_zones = st.lists(
    st.sampled_from(
        [
            "America/St_Johns",
            "America/New_York",
            "America/Chicago",
            "America/Denver",
            "America/Phoenix",
            "America/Los_Angeles",
            "America/Anchorage",
            "America/Adak",
        ]
    ).map(ZoneInfo),
    min_size=1,
    max_size=3,
    unique=True,
)
# Long enough to overlap across the five hours between Newfoundland and the Aleutians.
long_windows = windows.filter(lambda window: length(window) >= timedelta(hours=8))


@settings(max_examples=300, deadline=None)
@given(data=st.data(), zones=neighbouring_zones, window=long_windows, fraction=st.floats(0, 1))
def test_next_allowed_everywhere_is_the_first_moment_every_zone_allows(
    data, zones, window, fraction
):
    at = data.draw(instants_in(zones[0]))
    sent = next_allowed_everywhere(at, zones=zones, window=window)
    assert sent >= at
    assert all(is_allowed(sent, tz=zone, window=window) for zone in zones)
    assert sent - at <= timedelta(days=1, hours=1)
    if sent > at:
        probe = min(at + (sent - at) * fraction, sent - timedelta(microseconds=1))
        assert not is_allowed_everywhere(max(at, probe), zones=zones, window=window)
        assert not is_allowed_everywhere(
            max(at, sent - timedelta(seconds=1)), zones=zones, window=window
        )


offsets_settings = st.dictionaries(
    st.sampled_from([ReminderKind.DUE_SOON, ReminderKind.DUE_TODAY, ReminderKind.OVERDUE]),
    st.integers(-10, 10),
    min_size=1,
)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), tz=zones, window=windows, send_time=clock_times, offsets=offsets_settings)
def test_every_due_cycle_send_time_is_inside_the_window_on_its_day_when_possible(
    data, tz, window, send_time, offsets
):
    due = data.draw(days_in(tz))
    times = due_cycle_send_times(due, tz=tz, window=window, offsets=offsets, send_time=send_time)
    assert set(times) == set(offsets)
    for kind, sent in times.items():
        assert is_allowed(sent, tz=tz, window=window)
        day = due + timedelta(days=offsets[kind])
        wall = datetime.combine(day, send_time)
        exists = wall.replace(tzinfo=tz).astimezone(UTC).astimezone(tz).replace(tzinfo=None) == wall
        if send_time in window and exists:
            assert sent.astimezone(tz).replace(tzinfo=None) == wall


@settings(max_examples=200, deadline=None)
@given(
    data=st.data(),
    tz=zones,
    window=windows,
    lead=st.integers(1, 72 * 60).map(lambda m: timedelta(minutes=m)),
)
def test_appointment_reminders_are_allowed_and_arrive_before_the_appointment(
    data, tz, window, lead
):
    starts = data.draw(instants_in(tz))
    sent = appointment_send_time(starts, tz=tz, window=window, lead=lead)
    assert is_allowed(sent, tz=tz, window=window)
    assert sent < starts
    deferred = next_allowed(starts - lead, tz=tz, window=window)
    if deferred < starts:
        assert sent == deferred
    else:
        assert sent < starts - lead


@st.composite
def weekly_hours(draw) -> BusinessHours:
    days = []
    for _ in range(7):
        edges = sorted(draw(st.lists(clock_times, max_size=4, unique=True)))
        days.append(tuple(Window(a, b) for a, b in zip(edges[::2], edges[1::2], strict=False)))
    if not any(days):
        days[draw(st.integers(0, 6))] = (draw(windows),)
    return BusinessHours(tuple(days))


def setting_for(hours: BusinessHours) -> str:
    names = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
    return "; ".join(
        f"{name} {','.join(map(str, day))}"
        for name, day in zip(names, hours.days, strict=True)
        if day
    )


@settings(max_examples=300, deadline=None)
@given(data=st.data(), tz=zones, hours=weekly_hours(), fraction=st.floats(0, 1, exclude_max=True))
def test_next_opening_is_open_and_no_earlier_opening_is_skipped(data, tz, hours, fraction):
    at = data.draw(instants_in(tz))
    opens = next_opening(hours, at, tz)
    assert opens >= at
    assert is_open(hours, opens, tz)
    assert next_opening(hours, opens, tz) == opens
    if opens > at:
        probe = min(at + (opens - at) * fraction, opens - timedelta(microseconds=1))
        assert not is_open(hours, max(at, probe), tz)
        assert not is_open(hours, max(at, opens - timedelta(seconds=1)), tz)


@given(hours=weekly_hours())
def test_business_hours_written_as_a_setting_parse_back_to_the_same_value(hours):
    assert parse_business_hours(setting_for(hours)) == hours
