"""The application's clock: what "today" is in TIMEZONE, for due dates and follow-ups.

The same injectable clock as the scheduler's (core.schedules.Clock): tests install a fake one
with `use_clock` to move time instead of sleeping.
"""

from datetime import date, datetime
from zoneinfo import ZoneInfo

from core.config import settings
from core.schedules import Clock, SystemClock

_clock: Clock = SystemClock()


def use_clock(clock: Clock) -> Clock:
    """Install `clock` for the whole process; the one it replaces comes back."""
    global _clock
    previous, _clock = _clock, clock
    return previous


def now() -> datetime:
    return _clock.now()


def today() -> date:
    """Today's date in TIMEZONE (Europe/Paris): a task due today is due on this wall calendar."""
    return _clock.now().astimezone(ZoneInfo(settings.timezone)).date()
