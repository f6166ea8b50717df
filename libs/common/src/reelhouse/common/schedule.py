"""Schedule maths: when a scheduled job's windows open and close (pure functions, no I/O).

A :class:`~reelhouse.common.contracts.media.Schedule` is a one-off window (``start_at`` /
``stop_at``, either end open) or weekly windows (days, local start and stop times, an IANA
zone) bounded by ``start_at``/``stop_at``. Everything here takes and returns aware datetimes;
results are UTC.

Local times are turned into instants with :mod:`zoneinfo`, so daylight-saving changes are
honoured: a window at 09:00 Europe/Berlin is 08:00 UTC in winter and 07:00 UTC in summer, and a
window that spans the change is an hour shorter (March) or longer (October). A local time that
does not exist (02:30 on the spring-forward day) is read with the offset before the change
(02:30 CET = 03:30 CEST, i.e. the gap's length later); one that exists twice (02:30 on the
fall-back day) is the first of the two (``fold=0``).

Overlapping or touching windows count as one (a Monday 22:00-02:00 and a Tuesday 00:00-06:00
window make one window from Monday 22:00 to Tuesday 06:00).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from reelhouse.common.contracts.media import WEEKDAYS, Schedule, WeeklyWindow

__all__ = ["Window", "inside", "next_window", "window_fields", "windows_between"]

Window = tuple[datetime, datetime | None]
"""(start, stop) in UTC; ``stop`` None: the window never closes."""

_HORIZON = timedelta(days=15)
"""How far ahead weekly windows are looked for: every weekly window occurs within a week, and
merged windows are followed this far (a window that is still open then reads as closing there;
when that moment comes it is computed again and goes on)."""


def _clock(text: str) -> time:
    parts = [int(p) for p in text.split(":")]
    return time(*parts)


def _instant(day: date, at: time, zone: ZoneInfo) -> datetime:
    """The UTC instant of local ``at`` on ``day`` (a nonexistent time moves on by the gap)."""
    local = datetime.combine(day, at, tzinfo=zone)
    return local.astimezone(UTC)


def _weekly_instances(
    window: WeeklyWindow, zone: ZoneInfo, since: date, until: date
) -> list[Window]:
    start_t, stop_t = _clock(window.start), _clock(window.stop)
    days = {WEEKDAYS.index(d) for d in window.days}
    found: list[Window] = []
    day = since
    while day <= until:
        if day.weekday() in days:
            stop_day = day if stop_t > start_t else day + timedelta(days=1)
            found.append((_instant(day, start_t, zone), _instant(stop_day, stop_t, zone)))
        day += timedelta(days=1)
    return found


def _merged(windows: list[Window]) -> list[Window]:
    out: list[Window] = []
    for start, stop in sorted(windows, key=lambda w: w[0]):
        if out:
            prev_start, prev_stop = out[-1]
            if prev_stop is None or start <= prev_stop:
                if prev_stop is not None and (stop is None or stop > prev_stop):
                    out[-1] = (prev_start, stop)
                continue
        out.append((start, stop))
    return out


def windows_between(schedule: Schedule, since: datetime, until: datetime) -> list[Window]:
    """The schedule's windows (merged, in order) that end after ``since`` and start before
    ``until``; clipped to ``start_at``/``stop_at``."""
    since, until = since.astimezone(UTC), until.astimezone(UTC)
    lower = schedule.start_at.astimezone(UTC) if schedule.start_at else None
    upper = schedule.stop_at.astimezone(UTC) if schedule.stop_at else None
    if not schedule.weekly:
        raw: list[Window] = [(lower or since, upper)]  # no start_at: open since always
    else:
        zone = ZoneInfo(schedule.timezone)
        # One day of margin each side: a window that began yesterday (local) may still be open.
        first = since.astimezone(zone).date() - timedelta(days=2)
        last = until.astimezone(zone).date() + timedelta(days=1)
        raw = []
        for window in schedule.weekly:
            raw += _weekly_instances(window, zone, first, last)
        clipped: list[Window] = []
        for start, stop in raw:
            if lower is not None and start < lower:
                start = lower
            if upper is not None and (stop is None or stop > upper):
                stop = upper
            if stop is None or stop > start:
                clipped.append((start, stop))
        raw = clipped
    return [
        (start, stop)
        for start, stop in _merged(raw)
        if (stop is None or stop > since) and start < until
    ]


def next_window(schedule: Schedule, now: datetime) -> Window | None:
    """The window that is open at ``now``, else the next one to open; None if none ever will."""
    for window in windows_between(schedule, now, now + _HORIZON):
        return window
    return None


def inside(schedule: Schedule, now: datetime) -> bool:
    """Whether ``now`` is inside one of the schedule's windows (start inclusive, stop not)."""
    window = next_window(schedule, now)
    if window is None:
        return False
    start, stop = window
    return start <= now and (stop is None or now < stop)


def window_fields(schedule: dict[str, Any] | Schedule | None, now: datetime) -> dict[str, Any]:
    """The precomputed window fields of a job document with this ``schedule`` (its stored form
    or the model): ``scheduled``, ``schedule_next_start``/``schedule_next_stop`` (the window
    open at ``now`` or the next one; both None when none is left) and ``schedule_skipped``
    (reset for the new window). See :mod:`reelhouse.common.jobs.windows`."""
    if not schedule:
        return {"scheduled": False, "schedule_next_start": None, "schedule_next_stop": None,
                "schedule_skipped": False}  # fmt: skip
    model = schedule if isinstance(schedule, Schedule) else Schedule.model_validate(schedule)
    window = next_window(model, now)
    start, stop = window if window is not None else (None, None)
    return {"scheduled": True, "schedule_next_start": start, "schedule_next_stop": stop,
            "schedule_skipped": False}  # fmt: skip
