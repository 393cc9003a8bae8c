"""Send pacing shared by every worker: a GCRA schedule of send slots kept in one Redis key.

Each send takes the next free slot and sleeps until it comes, so however many workers run, the
sender sees at most `rate` messages a second and Twilio's queue never fills. The schedule lives
in Redis and is read with Redis's own clock, so workers on different hosts agree. At high rates a
worker takes a few slots per round trip (at most SLOTS_AHEAD seconds' worth).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from flask import current_app
from redis import Redis

PACE_KEY = "paytext:sms:pace"
"""Redis key holding the theoretical arrival time (microseconds) of the next free send slot."""

SLOTS_AHEAD = 0.05
"""Seconds of send capacity one worker may reserve in a single Redis round trip."""

MAX_SLOTS = 25
"""Most slots reserved in one round trip."""

# GCRA with reservation: the next slot is max(stored, now); taking `count` slots moves the
# schedule that many intervals on. `burst` lets that many sends through back to back after an
# idle spell. KEYS[1]: schedule key. ARGV: interval_us, burst, count, pause_us.
_RESERVE = """
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local count = tonumber(ARGV[3])
local pause = tonumber(ARGV[4])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - now - (burst - 1) * interval
if wait < 0 then wait = 0 end
local next_tat = tat + count * interval + pause
redis.call('SET', KEYS[1], string.format('%d', next_tat), 'PX',
    math.ceil((next_tat - now) / 1000) + 1000)
return wait
"""


class Pacer:
    """Hands out send slots at `rate_per_second`, shared through Redis by every worker."""

    def __init__(
        self,
        redis: Redis,
        *,
        rate_per_second: float,
        burst: int = 1,
        key: str = PACE_KEY,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if rate_per_second <= 0:
            raise ValueError(f"the send rate must be positive, got {rate_per_second}")
        if burst < 1:
            raise ValueError(f"the burst must be at least 1, got {burst}")
        self.rate = rate_per_second
        self._interval_us = max(1, round(1_000_000 / rate_per_second))
        self._burst = burst
        self._key = key
        self._script = redis.register_script(_RESERVE)
        self._sleep = sleep
        self._ahead = max(1, min(MAX_SLOTS, int(rate_per_second * SLOTS_AHEAD)))
        self._slots: deque[float] = deque()

    def reserve(self, count: int = 1) -> float:
        """Take the next `count` send slots; return the seconds until the first one starts."""
        wait_us = self._script(keys=[self._key], args=[self._interval_us, self._burst, count, 0])
        return int(wait_us) / 1_000_000

    def wait(self) -> float:
        """Sleep until this worker's next send slot; return the seconds slept."""
        if not self._slots:
            first = time.monotonic() + self.reserve(self._ahead)
            step = self._interval_us / 1_000_000
            self._slots.extend(first + n * step for n in range(self._ahead))
        delay = self._slots.popleft() - time.monotonic()
        if delay > 0:
            self._sleep(delay)
            return delay
        return 0.0

    def time_to_next(self) -> float | None:
        """Seconds until this worker's next reserved slot; None when it holds none."""
        if not self._slots:
            return None
        return max(0.0, self._slots[0] - time.monotonic())

    def pause(self, seconds: float) -> None:
        """Push every worker's next slot back, e.g. when Twilio answers 20429 Too Many Requests."""
        self._slots.clear()
        self._script(
            keys=[self._key], args=[self._interval_us, self._burst, 0, round(seconds * 1e6)]
        )


def send_pacer(*, sleep: Callable[[float], None] = time.sleep) -> Pacer:
    """A pacer at the app's SMS_RATE_PER_SECOND on the one schedule (PACE_KEY) the reminder
    lanes pace by too, so held and pending invitations share their rate."""
    return Pacer(
        current_app.extensions["redis"],
        rate_per_second=current_app.config["SMS_RATE_PER_SECOND"],
        sleep=sleep,
    )
