"""Pure scheduling rules: when a text may go out, by whose clock, and when staff are in.

Every instant in and out is a timezone-aware datetime (returned in UTC); dates and times of day
are local wall-clock values in the zone passed alongside. Windows are half-open, [start, end).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from itertools import pairwise
from types import MappingProxyType
from zoneinfo import ZoneInfo, available_timezones

import phonenumbers
from phonenumbers import geocoder
from phonenumbers import timezone as phone_timezone

DEFAULT_TIMEZONE = "America/New_York"
"""Zone used when neither the case nor the phone number says where the payer is."""

DEFAULT_SEND_TIME = time(10, 0)
"""Local time of day a due-cycle reminder is meant to arrive."""

DEFAULT_APPOINTMENT_LEAD = timedelta(days=1)
"""How long before an appointment its reminder is meant to arrive."""


class ReminderKind(StrEnum):
    """Which reminder a send time is for."""

    DUE_SOON = "due_soon"
    DUE_TODAY = "due_today"
    OVERDUE = "overdue"
    APPOINTMENT = "appointment"


DUE_CYCLE_KINDS = (ReminderKind.DUE_SOON, ReminderKind.DUE_TODAY, ReminderKind.OVERDUE)

DEFAULT_OFFSETS: Mapping[ReminderKind, int] = MappingProxyType(
    {ReminderKind.DUE_SOON: -3, ReminderKind.DUE_TODAY: 0, ReminderKind.OVERDUE: 1}
)
"""Days from the due date on which each due-cycle reminder is sent."""


@dataclass(frozen=True, order=True)
class Window:
    """Local times of day from start (included) to end (excluded); never spans midnight."""

    start: time
    end: time

    def __post_init__(self) -> None:
        if self.start.tzinfo or self.end.tzinfo:
            raise ValueError("window times are local wall-clock times and take no tzinfo")
        if not self.start < self.end:
            raise ValueError(f"a window must start before it ends, got {self}")

    def __contains__(self, moment: time) -> bool:
        return self.start <= moment < self.end

    def __str__(self) -> str:
        return f"{self.start.isoformat('minutes')}-{self.end.isoformat('minutes')}"


DEFAULT_WINDOW = Window(time(8, 0), time(21, 0))
"""No text before 8:00 or from 21:00 on, payer's local time."""

DEFAULT_STATE_WINDOWS: Mapping[str, Window] = MappingProxyType(
    {"FL": Window(time(8, 0), time(20, 0)), "OK": Window(time(8, 0), time(20, 0))}
)
"""States whose telemarketing laws end the texting day earlier."""


@dataclass(frozen=True)
class QuietHours:
    """Texting policy: one window for everyone, narrowed further in some states."""

    default: Window = DEFAULT_WINDOW
    by_state: Mapping[str, Window] = field(default_factory=lambda: dict(DEFAULT_STATE_WINDOWS))

    def __post_init__(self) -> None:
        for state in self.by_state:
            self.window_for(state)

    def window_for(self, state: str | None) -> Window:
        """The window for a payer in `state` (two-letter); a state can narrow it, never widen."""
        narrower = self.by_state.get((state or "").strip().upper())
        if narrower is None:
            return self.default
        start, end = max(self.default.start, narrower.start), min(self.default.end, narrower.end)
        if not start < end:
            raise ValueError(f"{state} window {narrower} does not overlap {self.default}")
        return Window(start, end)


# --- settings ----------------------------------------------------------------------------------

_RANGE = re.compile(r"^(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})$")
_CLOCK = re.compile(r"^(\d{1,2}):(\d{2})$")


def parse_clock(text: str) -> time:
    """Parse a 24-hour local time of day, '10:00'."""
    match = _CLOCK.match((text or "").strip())
    if not match or int(match[1]) > 23 or int(match[2]) > 59:
        raise ValueError(f"{text!r} is not a 24-hour time like 10:00")
    return time(int(match[1]), int(match[2]))


def parse_window(text: str) -> Window:
    """Parse '08:00-21:00' (24-hour, end excluded) into a Window."""
    match = _RANGE.match((text or "").strip())
    if not match:
        raise ValueError(f"{text!r} is not a time range like 08:00-21:00")
    h1, m1, h2, m2 = (int(part) for part in match.groups())
    if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59:
        raise ValueError(f"{text!r} has a time outside 00:00-23:59")
    if (h1, m1) >= (h2, m2):
        raise ValueError(f"{text!r} must start before it ends (windows cannot span midnight)")
    return Window(time(h1, m1), time(h2, m2))


def parse_windows(setting: str) -> dict[str, Window]:
    """Parse per-state windows, 'FL=08:00-20:00, OK=08:00-20:00'; empty means none."""
    windows: dict[str, Window] = {}
    for entry in filter(None, (part.strip() for part in (setting or "").split(","))):
        state, sep, text = entry.partition("=")
        state = state.strip().upper()
        if not sep or not re.fullmatch(r"[A-Z]{2}", state):
            raise ValueError(f"{entry!r} should look like FL=08:00-20:00")
        if state not in _STATE_CODES | _TERRITORIES:
            # A typo (FA for FL) would otherwise leave that state on the wider default window.
            raise ValueError(f"{state} in {entry!r} is not a US state or territory code")
        if state in windows:
            raise ValueError(f"{state} appears more than once in {setting!r}")
        windows[state] = parse_window(text)
    return windows


def parse_offsets(setting: str) -> dict[ReminderKind, int]:
    """Parse 'due_soon=-3,due_today=0,overdue=1' (days from the due date); omitted kinds are off."""
    offsets: dict[ReminderKind, int] = {}
    for entry in filter(None, (part.strip() for part in (setting or "").split(","))):
        name, sep, days = (part.strip() for part in entry.partition("="))
        if not sep or name not in DUE_CYCLE_KINDS:
            kinds = ", ".join(DUE_CYCLE_KINDS)
            raise ValueError(f"{entry!r} should be KIND=DAYS with KIND one of {kinds}")
        if not re.fullmatch(r"[+-]?\d{1,3}", days):
            raise ValueError(f"{entry!r} needs a whole number of days, like overdue=1")
        if name in offsets:
            raise ValueError(f"{name} appears more than once in {setting!r}")
        offsets[ReminderKind(name)] = int(days)
    if not offsets:
        raise ValueError("the reminder offsets setting is empty")
    return offsets


# --- where the payer is ------------------------------------------------------------------------

_STATES = {
    "Alabama": "AL", "Alaska": "AK", "Arizona": "AZ", "Arkansas": "AR", "California": "CA",
    "Colorado": "CO", "Connecticut": "CT", "Delaware": "DE", "Florida": "FL", "Georgia": "GA",
    "Hawaii": "HI", "Idaho": "ID", "Illinois": "IL", "Indiana": "IN", "Iowa": "IA",
    "Kansas": "KS", "Kentucky": "KY", "Louisiana": "LA", "Maine": "ME", "Maryland": "MD",
    "Massachusetts": "MA", "Michigan": "MI", "Minnesota": "MN", "Mississippi": "MS",
    "Missouri": "MO", "Montana": "MT", "Nebraska": "NE", "Nevada": "NV", "New Hampshire": "NH",
    "New Jersey": "NJ", "New Mexico": "NM", "New York": "NY", "North Carolina": "NC",
    "North Dakota": "ND", "Ohio": "OH", "Oklahoma": "OK", "Oregon": "OR", "Pennsylvania": "PA",
    "Rhode Island": "RI", "South Carolina": "SC", "South Dakota": "SD", "Tennessee": "TN",
    "Texas": "TX", "Utah": "UT", "Vermont": "VT", "Virginia": "VA", "Washington": "WA",
    "Washington State": "WA", "West Virginia": "WV", "Wisconsin": "WI", "Wyoming": "WY",
    "District of Columbia": "DC", "Washington D.C.": "DC",
}  # fmt: skip
_STATE_CODES = frozenset(_STATES.values())
# Territories have their own phonenumbers region, which is also their postal code.
_TERRITORIES = frozenset({"PR", "VI", "GU", "MP", "AS"})


def _parse(e164: str | None) -> phonenumbers.PhoneNumber | None:
    try:
        return phonenumbers.parse(e164 or "", None)
    except phonenumbers.NumberParseException:
        return None


def state_for_phone(e164: str | None) -> str | None:
    """Two-letter US state or territory the number's area code belongs to, if phonenumbers knows."""
    number = _parse(e164)
    if number is None:
        return None
    region = phonenumbers.region_code_for_number(number)
    if region in _TERRITORIES:
        return region
    if region != "US":
        return None
    # The geocoder says either 'Florida' or 'Miami, FL'.
    description = geocoder.description_for_number(number, "en")
    tail = description.rpartition(", ")[2]
    return tail if tail in _STATE_CODES else _STATES.get(description)


def resolve_state(*, case_state: str | None, phone: str | None) -> str | None:
    """The case's own state when it names a real one, else the phone number's."""
    state = (case_state or "").strip().upper()
    if state in _STATE_CODES or state in _TERRITORIES:
        return state
    return state_for_phone(phone)


@functools.cache
def zone_names() -> frozenset[str]:
    """The IANA zone names a case or a setting may name: Area/Location ones, and UTC.

    ZoneInfo alone is no check: it opens whatever file the name points at, so 'America' (a
    directory) raises IsADirectoryError, and the tz database's special files load as zones:
    EST and MST (fixed offsets that never change to daylight time), Factory, and localtime or
    posixrules (whatever this machine is set to). Cached: listing the zones walks their files.
    """
    return frozenset(name for name in available_timezones() if "/" in name or name == "UTC")


def zone_named(name: str | None) -> ZoneInfo:
    """The IANA zone called `name`, like 'America/New_York'; ValueError if there is none."""
    key = (name or "").strip()
    if key not in zone_names():
        raise ValueError(f"{name!r} is not an IANA time zone like America/New_York")
    return ZoneInfo(key)


def _zone(name: str | None) -> ZoneInfo | None:
    try:
        return zone_named(name) if name and name.strip() else None
    except ValueError:
        # A mistyped zone on a case must not stop its reminders; the next source decides.
        return None


def _zone_names_for_phone(phone: str | None) -> tuple[str, ...]:
    number = _parse(phone)
    # Toll-free and other non-geographic numbers map to every zone in North America.
    if number is None or not phonenumbers.is_number_geographical(number):
        return ()
    zones = phone_timezone.time_zones_for_number(number)
    return tuple(zone for zone in zones if zone != phone_timezone.UNKNOWN_TIMEZONE)


def resolve_timezones(
    *, case_tz: str | None, phone: str | None, default: str = DEFAULT_TIMEZONE
) -> tuple[ZoneInfo, ...]:
    """Every zone the payer may be in: the case's if valid, else all the number's, else `default`.

    An area code can span zones (605: Sioux Falls is Central, Rapid City Mountain), and the
    number alone cannot say which side the payer lives on; quiet hours then hold in all of them.
    """
    zone = _zone(case_tz)
    if zone is not None:
        return (zone,)
    zones = tuple(found for name in _zone_names_for_phone(phone) if (found := _zone(name)))
    return zones or (zone_named(default),)


def resolve_timezone(
    *, case_tz: str | None, phone: str | None, default: str = DEFAULT_TIMEZONE
) -> ZoneInfo:
    """The case's zone if valid, else the phone number's first zone, else `default`."""
    return resolve_timezones(case_tz=case_tz, phone=phone, default=default)[0]


def case_zone(case_tz: str | None, default: str = DEFAULT_TIMEZONE) -> ZoneInfo:
    """The zone of a case's own calendar (its cap's month, its page): its own, else `default`."""
    return _zone(case_tz) or zone_named(default)


# --- instants and wall clocks ------------------------------------------------------------------


def local_midnight(day: date, zone: ZoneInfo) -> datetime:
    """The instant `day` begins in `zone`, in UTC."""
    return datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)


def _aware_utc(at: datetime) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"expected a timezone-aware datetime, got naive {at!r}")
    return at.astimezone(UTC)


def _offset_changes(lo: datetime, hi: datetime, tz: ZoneInfo) -> list[datetime]:
    """Instants in (lo, hi] at which tz's UTC offset changes, so its wall clock jumps."""

    def offset(ts: int) -> timedelta | None:
        return datetime.fromtimestamp(ts, tz).utcoffset()

    changes = []
    step_start, last = math.floor(lo.timestamp()), math.ceil(hi.timestamp())
    while step_start < last:
        step_end = min(step_start + 3600, last)
        # tzdata changes offsets on whole seconds and never twice within an hour.
        if offset(step_start) != offset(step_end):
            before, after = step_start, step_end
            while after - before > 1:
                middle = (before + after) // 2
                if offset(middle) == offset(before):
                    before = middle
                else:
                    after = middle
            changes.append(datetime.fromtimestamp(after, UTC))
        step_start = step_end
    return [change for change in changes if lo < change <= hi]


def _wall_instants(day: date, clock: time, tz: ZoneInfo) -> list[datetime]:
    """Instants at which tz's clock reads `day clock`: none in a gap, two in a fold."""
    instants: list[datetime] = []
    for fold in (0, 1):
        wall = datetime.combine(day, clock.replace(fold=fold))
        instant = wall.replace(tzinfo=tz).astimezone(UTC)
        if instant.astimezone(tz).replace(tzinfo=None) == wall and instant not in instants:
            instants.append(instant)
    return instants


def _local_instant(day: date, clock: time, tz: ZoneInfo) -> datetime:
    """The first instant at which tz's clock reads `day clock` or has just jumped past it."""
    instants = _wall_instants(day, clock, tz)
    if instants:
        return instants[0]
    # Inside a spring-forward gap: the two folds bracket the jump, which is the answer.
    wall = datetime.combine(day, clock)
    bounds = sorted(wall.replace(tzinfo=tz, fold=fold).astimezone(UTC) for fold in (0, 1))
    return _offset_changes(bounds[0], bounds[1], tz)[0]


def _next_inside(
    at: datetime, tz: ZoneInfo, windows_on: Callable[[date], Sequence[Window]]
) -> datetime:
    """The first instant from `at` on whose local time falls in one of that day's windows."""

    def inside(instant: datetime) -> bool:
        local = instant.astimezone(tz)
        return any(local.time() in window for window in windows_on(local.date()))

    at = _aware_utc(at)
    if inside(at):
        return at
    # The clock enters a window either by reaching its start or by jumping into it when the
    # offset changes; a fall-back can move it back a day, hence starting one day early.
    today = at.astimezone(tz).date()
    days = [today + timedelta(days=n) for n in range(-1, 15)]
    starts = [
        instant
        for day in days
        for window in windows_on(day)
        for instant in _wall_instants(day, window.start, tz)
        if instant > at
    ]
    if not starts:
        raise ValueError("no window opens within the next two weeks")
    first_start = min(starts)
    jumps = [change for change in _offset_changes(at, first_start, tz) if inside(change)]
    return min([first_start, *jumps])


# --- quiet hours -------------------------------------------------------------------------------


def is_allowed(at: datetime, *, tz: ZoneInfo, window: Window) -> bool:
    """Whether a text may go out at `at`, judged by the payer's local clock."""
    return _aware_utc(at).astimezone(tz).time() in window


def next_allowed(at: datetime, *, tz: ZoneInfo, window: Window) -> datetime:
    """`at` itself if a text may go out then, else the next moment one may."""
    return _next_inside(at, tz, lambda _day: (window,))


def is_allowed_everywhere(at: datetime, *, zones: Sequence[ZoneInfo], window: Window) -> bool:
    """Whether a text may go out at `at` by the clock of every zone the payer may be in."""
    return all(is_allowed(at, tz=zone, window=window) for zone in zones)


def next_allowed_everywhere(at: datetime, *, zones: Sequence[ZoneInfo], window: Window) -> datetime:
    """`at` itself if every zone's window is open then, else the next moment all of them are."""
    moment = _aware_utc(at)
    horizon = moment + timedelta(days=14)
    while moment < horizon:
        # Each step waits for the zone whose window opens last; one open in all ends it.
        later = max(next_allowed(moment, tz=zone, window=window) for zone in zones)
        if later == moment:
            return moment
        moment = later
    raise ValueError(f"the window {window} is never open in all of {zones} at once")


def due_cycle_send_times(
    due_date: date,
    *,
    tz: ZoneInfo,
    window: Window,
    offsets: Mapping[ReminderKind, int] = DEFAULT_OFFSETS,
    send_time: time = DEFAULT_SEND_TIME,
) -> dict[ReminderKind, datetime]:
    """When each due-cycle reminder goes out: `send_time` on its day, out of quiet hours."""
    return {
        ReminderKind(kind): next_allowed(
            _local_instant(due_date + timedelta(days=days), send_time, tz), tz=tz, window=window
        )
        for kind, days in offsets.items()
    }


def appointment_send_time(
    starts_at: datetime,
    *,
    tz: ZoneInfo,
    window: Window,
    lead: timedelta = DEFAULT_APPOINTMENT_LEAD,
) -> datetime:
    """When to remind of an appointment: `lead` before it, deferred out of quiet hours.

    If deferring would reach the appointment itself, the reminder moves earlier instead, to an
    hour before the close of the last window before the nominal time (the evening before).
    """
    if lead <= timedelta(0):
        raise ValueError(f"the appointment reminder lead must be positive, got {lead}")
    starts_at = _aware_utc(starts_at)
    nominal = starts_at - lead
    deferred = next_allowed(nominal, tz=tz, window=window)
    if deferred < starts_at:
        return deferred
    # A reminder after the fact is useless; one the evening before still does its job.
    anchor = date(2000, 1, 2)
    evening = max(
        datetime.combine(anchor, window.start),
        datetime.combine(anchor, window.end) - timedelta(hours=1),
    ).time()
    nominal_day = nominal.astimezone(tz).date()
    for days_back in range(3):
        day = nominal_day - timedelta(days=days_back)
        earlier = next_allowed(_local_instant(day, evening, tz), tz=tz, window=window)
        if earlier < nominal:
            return earlier
    return deferred  # only if clock changes swallowed three evenings in a row


# --- business hours ----------------------------------------------------------------------------

_DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_ALIASES = {"tues": 1, "weds": 2, "thur": 3, "thurs": 3}
_FULL_DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


@dataclass(frozen=True)
class BusinessHours:
    """Opening windows for each weekday, Monday first; a closed day has none."""

    days: tuple[tuple[Window, ...], ...]

    def __post_init__(self) -> None:
        if len(self.days) != 7:
            raise ValueError(f"business hours need 7 weekdays, got {len(self.days)}")
        if not any(self.days):
            raise ValueError("business hours must be open at some time in the week")

    def windows_on(self, day: date) -> tuple[Window, ...]:
        """The opening windows on a local calendar day."""
        return self.days[day.weekday()]


def _weekday(name: str, rule: str) -> int:
    key = name.strip().lower()
    for names in (_DAY_NAMES, _FULL_DAY_NAMES):
        if key in names:
            return names.index(key)
    if key in _DAY_ALIASES:
        return _DAY_ALIASES[key]
    raise ValueError(f"unknown day {name.strip()!r} in {rule!r}; use Mon..Sun or Monday..Sunday")


def parse_business_hours(setting: str) -> BusinessHours:
    """Parse opening hours such as 'Mon-Thu 08:00-17:00; Fri 08:00-12:00'.

    Grammar: rules separated by ';'. A rule is days then time ranges, both comma-separated:
    'Mon,Wed-Fri 08:00-12:00,13:00-16:30'. A day is Mon..Sun or Monday..Sunday (any case); a
    span like Sat-Mon may wrap the week. Ranges are 24-hour, end excluded, within one day and
    not overlapping. A day may appear in one rule only; days in no rule are closed.
    """
    days: list[tuple[Window, ...]] = [()] * 7
    listed: set[int] = set()
    for rule in filter(None, (part.strip() for part in (setting or "").split(";"))):
        match = re.fullmatch(r"([^\d]+?)\s*(\d.*)", rule)
        if not match:
            raise ValueError(f"{rule!r} should look like 'Mon-Fri 08:30-16:30'")
        day_part, time_part = match.groups()
        weekdays: list[int] = []
        for span in day_part.split(","):
            first, dash, last = span.partition("-")
            start = _weekday(first, rule)
            end = _weekday(last, rule) if dash else start
            weekdays += [(start + n) % 7 for n in range((end - start) % 7 + 1)]
        windows = sorted(parse_window(text) for text in time_part.split(","))
        for earlier, later in pairwise(windows):
            if later.start < earlier.end:
                raise ValueError(f"{earlier} and {later} overlap in {rule!r}")
        for weekday in weekdays:
            if weekday in listed:
                name = _DAY_NAMES[weekday].title()
                raise ValueError(f"{name} appears more than once in {setting!r}")
            listed.add(weekday)
            days[weekday] = tuple(windows)
    if not listed:
        raise ValueError("the business hours setting is empty")
    return BusinessHours(tuple(days))


def is_open(bh: BusinessHours, at: datetime, tz: ZoneInfo) -> bool:
    """Whether staff are in at `at`, by the office's local clock."""
    local = _aware_utc(at).astimezone(tz)
    return any(local.time() in window for window in bh.windows_on(local.date()))


def next_opening(bh: BusinessHours, at: datetime, tz: ZoneInfo) -> datetime:
    """`at` itself if staff are in, else the moment they next are (UTC)."""
    return _next_inside(at, tz, bh.windows_on)
