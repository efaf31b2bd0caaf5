"""The morning digest's email: a user's overdue tasks and today's, in French, plain text and
HTML (services/digest.py decides who gets one, and when)."""

import html
from dataclasses import dataclass, field
from datetime import date, time

from core.email import OutgoingEmail
from services.task_reminders import french_date
from services.tasks import task_link

WEEKDAYS = ("lundi", "mardi", "mercredi", "jeudi", "vendredi", "samedi", "dimanche")
MONTHS = (
    "janvier",
    "février",
    "mars",
    "avril",
    "mai",
    "juin",
    "juillet",
    "août",
    "septembre",
    "octobre",
    "novembre",
    "décembre",
)
FULL_LISTS = "/api/v1/tasks?assignee_id=me&due=overdue et /api/v1/tasks?assignee_id=me&due=today"
SWITCH_OFF = (
    'Pour ne plus recevoir ce courriel : PUT /api/v1/auth/me/preferences avec {"daily_digest": '
    "false}."
)


@dataclass(frozen=True, slots=True)
class DigestTask:
    id: int
    title: str
    due_date: date
    due_time: time | None
    priority: str
    investor: str | None


@dataclass(slots=True)
class Digest:
    """What one user is told on the morning of `day`."""

    user_id: int
    email: str
    full_name: str
    day: date
    overdue: list[DigestTask] = field(default_factory=list)
    today: list[DigestTask] = field(default_factory=list)
    # Tasks left out of a long list (older overdue ones, or less urgent ones of today's).
    truncated: bool = False


def long_date(day: date) -> str:
    """`lundi 13 juillet 2026` (and `1er` for the first of a month)."""
    number = "1er" if day.day == 1 else str(day.day)
    return f"{WEEKDAYS[day.weekday()]} {number} {MONTHS[day.month - 1]} {day.year}"


def _details(task: DigestTask, *, overdue: bool) -> list[str]:
    details = [] if task.investor is None else [task.investor]
    if overdue:
        details.append(f"échéance le {french_date(task.due_date)}")
    elif task.due_time is not None:
        details.append(f"à {task.due_time:%H:%M}")
    if task.priority in ("haute", "urgente"):
        details.append(f"priorité {task.priority}")
    return details


def _text_section(heading: str, tasks: list[DigestTask], *, overdue: bool) -> list[str]:
    lines = [f"{heading} ({len(tasks)}) :"]
    for task in tasks:
        details = "".join(f" · {detail}" for detail in _details(task, overdue=overdue))
        lines.append(f"- {task.title}{details}\n  {task_link(task.id)}")
    return [*lines, ""]


def _html_section(heading: str, tasks: list[DigestTask], *, overdue: bool) -> str:
    items = "".join(
        f'<li><a href="{html.escape(task_link(task.id))}">{html.escape(task.title)}</a>'
        + "".join(f" · {html.escape(detail)}" for detail in _details(task, overdue=overdue))
        + "</li>\n"
        for task in tasks
    )
    return f"<h2>{html.escape(heading)} ({len(tasks)})</h2>\n<ul>\n{items}</ul>\n"


def digest_email(digest: Digest) -> OutgoingEmail:
    """The digest as a message to its user (ValueError for an address no message can take)."""
    subject = (
        f"Vos tâches du {long_date(digest.day)} : {len(digest.overdue)} en retard, "
        f"{len(digest.today)} aujourd'hui"
    )
    greeting = f"Bonjour {digest.full_name},"
    listed = len(digest.overdue) + len(digest.today)
    more = f"La liste s'arrête à {listed} tâches ; la suite : {FULL_LISTS}"
    sections = [("En retard", digest.overdue, True), ("Aujourd'hui", digest.today, False)]
    text_lines = [greeting, ""]
    html_parts = [f"<p>{html.escape(greeting)}</p>\n"]
    for heading, tasks, overdue in sections:
        if tasks:
            text_lines += _text_section(heading, tasks, overdue=overdue)
            html_parts.append(_html_section(heading, tasks, overdue=overdue))
    if digest.truncated:
        text_lines += [more, ""]
        html_parts.append(f"<p>{html.escape(more)}</p>\n")
    text_lines.append(SWITCH_OFF)
    html_parts.append(f"<p>{html.escape(SWITCH_OFF)}</p>\n")
    page = (
        '<!DOCTYPE html>\n<html lang="fr">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(subject)}</title>\n</head>\n<body>\n"
        + "".join(html_parts)
        + "</body>\n</html>\n"
    )
    return OutgoingEmail(to=[digest.email], subject=subject, text="\n".join(text_lines), html=page)
