"""Send pacing through Redis: one rate for every worker."""

from __future__ import annotations

import threading
import time
from itertools import pairwise

import pytest
import redis

from jobs.ratelimit import Pacer


@pytest.fixture
def connection(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def test_reservations_are_spaced_at_the_configured_rate(connection):
    pacer = Pacer(connection, rate_per_second=50)
    calls = []
    for _ in range(5):
        before = time.monotonic()
        wait = pacer.reserve()
        calls.append((before, wait, time.monotonic()))
    assert calls[0][1] == 0
    # Each slot is 20 ms after the one before. A slot starts `wait` after the moment Redis ran
    # the call, somewhere between `before` and `after`: that bounds the gap however busy the
    # machine is (a fixed window on the waits alone failed on a loaded machine).
    for (before0, wait0, after0), (before1, wait1, after1) in pairwise(calls):
        shortest = (before1 + wait1) - (after0 + wait0)
        longest = (after1 + wait1) - (before0 + wait0)
        assert shortest - 0.001 <= 0.020 <= longest + 0.001


def test_workers_sharing_redis_share_one_rate(connection, redis_url):
    sent: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        own = Pacer(redis.Redis.from_url(redis_url), rate_per_second=100)
        for _ in range(20):
            own.wait()
            with lock:
                sent.append(time.monotonic())

    threads = [threading.Thread(target=worker) for _ in range(3)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    # 60 sends at 100 a second cannot take less than 59 intervals, whatever the worker count.
    assert len(sent) == 60
    assert elapsed >= 0.58
    assert elapsed < 1.5


def test_a_burst_lets_that_many_through_at_once_after_a_quiet_spell(connection):
    pacer = Pacer(connection, rate_per_second=10, burst=3)
    assert [pacer.reserve() for _ in range(3)] == [0, 0, 0]
    assert pacer.reserve() > 0.05


def test_pause_pushes_back_every_workers_next_slot(connection):
    first = Pacer(connection, rate_per_second=1000)
    second = Pacer(connection, rate_per_second=1000)
    first.reserve()
    second.pause(0.5)
    assert 0.45 <= first.reserve() <= 0.51


def test_the_rate_must_be_positive(connection):
    with pytest.raises(ValueError, match="positive"):
        Pacer(connection, rate_per_second=0)


def test_at_high_rates_a_worker_reserves_a_few_slots_per_round_trip(connection):
    calls = []
    pacer = Pacer(connection, rate_per_second=400)
    original = pacer.reserve

    def counting(count: int = 1) -> float:
        calls.append(count)
        return original(count)

    pacer.reserve = counting
    started = time.monotonic()
    for _ in range(40):
        pacer.wait()
    assert calls == [20, 20]
    assert time.monotonic() - started >= 39 / 400
