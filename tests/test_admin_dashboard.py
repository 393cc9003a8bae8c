"""Dashboard figures per local day and the SVG charts drawn from them (pure)."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

from admin.charts import Series, axis, bar_chart
from admin.dashboard import (
    Dashboard,
    opt_outs_per_day,
    payments_per_day,
    replies_per_day,
    texts_per_day,
    window,
)

NY = "America/New_York"
NOW = datetime(2026, 3, 10, 15, 0, tzinfo=UTC)  # 11:00 AM in New York, after the DST change


def test_the_window_is_the_last_n_local_days_starting_at_local_midnight():
    days, start = window(NOW, 3, NY)
    assert days == [date(2026, 3, 8), date(2026, 3, 9), date(2026, 3, 10)]
    # March 8 began at 00:00 EST (UTC-5); the clocks went forward at 2 AM that day.
    assert start == datetime(2026, 3, 8, 5, 0, tzinfo=UTC)


def test_texts_are_counted_on_the_agencys_day_not_utcs():
    days, _ = window(NOW, 2, NY)
    late_evening = datetime(2026, 3, 10, 2, 30, tzinfo=UTC)  # 10:30 PM on March 9 in New York
    rows = [
        (late_evening, "delivered"),
        (NOW, "delivered"),
        (NOW, "failed"),
        (NOW, "undelivered"),
        (NOW, "sent"),
        (NOW, None),
    ]
    march9, march10 = texts_per_day(rows, days, NY)
    assert (march9.sent, march9.delivered, march9.failed) == (1, 1, 0)
    assert (march10.sent, march10.delivered, march10.failed) == (5, 1, 2)


def test_payments_are_counted_and_summed_per_day_with_empty_days_kept():
    days, _ = window(NOW, 3, NY)
    result = payments_per_day([(NOW, 25_000), (NOW, 1_050)], days, NY)
    assert [(d.count, d.cents) for d in result] == [(0, 0), (0, 0), (2, 26_050)]


def test_opt_outs_are_counted_per_day():
    days, _ = window(NOW, 2, NY)
    yesterday = NOW - timedelta(days=1)
    assert opt_outs_per_day([yesterday, NOW, NOW], days, NY) == [
        (date(2026, 3, 9), 1),
        (date(2026, 3, 10), 2),
    ]


def test_a_reminder_counts_as_answered_only_by_its_own_case_within_48_hours():
    days, _ = window(NOW, 1, NY)
    sent = NOW - timedelta(hours=2)
    reminders = [(1, sent), (2, sent), (3, sent), (4, sent)]
    inbound = [
        (1, sent + timedelta(minutes=5)),  # answered
        (2, sent - timedelta(minutes=5)),  # texted before the reminder: not an answer
        (3, sent + timedelta(hours=49)),  # too late
        (9, sent + timedelta(minutes=1)),  # another case
    ]
    (day,) = replies_per_day(reminders, inbound, days, NY)
    assert (day.reminders, day.replied, day.rate) == (4, 1, 0.25)


def test_a_day_without_reminders_has_no_reply_rate_rather_than_zero():
    days, _ = window(NOW, 1, NY)
    (day,) = replies_per_day([], [], days, NY)
    assert day.rate is None


def test_totals_add_up_the_window():
    days, _ = window(NOW, 2, NY)
    board = Dashboard(
        days=days,
        texts=texts_per_day([(NOW, "delivered"), (NOW, "failed")], days, NY),
        payments=payments_per_day([(NOW, 500)], days, NY),
        opt_outs=opt_outs_per_day([NOW], days, NY),
        replies=replies_per_day([(1, NOW), (2, NOW)], [(1, NOW + timedelta(hours=1))], days, NY),
    )
    assert board.totals == {
        "sent": 2,
        "delivered": 1,
        "failed": 1,
        "payments": 1,
        "payment_cents": 500,
        "opt_outs": 1,
        "reminders": 2,
        "replied": 1,
    }
    assert board.reply_rate == 0.5


def test_axes_have_round_steps_and_whole_ticks_for_counts():
    assert [axis(v) for v in (0, 1, 3, 7, 12, 180, 2600)] == [
        (1, 1),
        (1, 1),
        (3, 1),
        (8, 2),
        (15, 5),
        (200, 50),
        (3000, 1000),
    ]
    assert axis(1.2, integer=False) == (1.5, 0.5)


def heights(svg: str, css: str) -> list[float]:
    return [float(h) for h in re.findall(rf'class="bar {css}"[^>]*height="([\d.]+)"', svg)]


def test_bars_are_drawn_to_scale_with_a_title_on_each():
    svg = str(
        bar_chart(
            chart_id="t",
            title="Texts",
            labels=["Mar 9", "Mar 10"],
            series=[Series("Sent", [5, 10], 0), Series("Failed", [0, 1], 2)],
        )
    )
    sent = heights(svg, "s0")
    assert sent[1] == 2 * sent[0] > 0
    assert heights(svg, "s2")[0] == 0
    assert "<title>Mar 10: Sent 10</title>" in svg
    assert 'role="img"' in svg and 'aria-labelledby="t-title"' in svg
    assert "Sent</li>" in svg and "Failed</li>" in svg


def test_chart_labels_are_escaped():
    svg = str(
        bar_chart(
            chart_id="x",
            title="<script>t</script>",
            labels=["<b>day</b>"],
            series=[Series("<i>s</i>", [1])],
        )
    )
    assert "<script>" not in svg and "<b>" not in svg and "<i>" not in svg
    assert "&lt;script&gt;" in svg


def test_a_chart_of_nothing_still_draws_its_axes():
    svg = str(bar_chart(chart_id="e", title="Empty", labels=[], series=[Series("None", [])]))
    assert "<svg" in svg and 'class="axis"' in svg
