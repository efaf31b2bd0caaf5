"""Where a forgotten person's values linger outside their own rows: the search words, job
payloads, import errors and uploads, and the mail outbox. The GDPR anonymisation
(services/gdpr.py) clears them."""

import asyncio
import email
import email.policy
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Text, bindparam, cast, func, or_, select, text, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession

from models.data_import import DataImport, ImportRowError
from models.job import Job, JobStatus
from services.jobs import JobService

SCRUBBED = "anonymized"

# Migration 0007 never removes a word (a word without a holder finds nothing), but the words
# of a forgotten person must go: those of their former texts that no investor or contact text
# still holds, split as 0007 splits them. The LIKE finds candidate holders through the
# trigram indexes; the split then checks the word is a whole word of that text.
_FORGET_WORDS = text(
    """
    DELETE FROM search_words AS w
    WHERE w.word IN (
        SELECT DISTINCT word
        FROM unnest(:texts) AS former(text),
             regexp_split_to_table(former.text, '[^[:alnum:]]+') AS word
    )
      AND NOT EXISTS (
        SELECT 1 FROM investors AS i
        WHERE i.fuzzy_text LIKE crm_like_containing(w.word)
          AND w.word = ANY (regexp_split_to_array(i.fuzzy_text, '[^[:alnum:]]+')))
      AND NOT EXISTS (
        SELECT 1 FROM contacts AS c
        WHERE c.search_text LIKE crm_like_containing(w.word)
          AND w.word = ANY (regexp_split_to_array(c.search_text, '[^[:alnum:]]+')))
    """
).bindparams(bindparam("texts", type_=ARRAY(Text)))


async def forget_search_words(session: AsyncSession, former_texts: Sequence[str]) -> None:
    """Delete the search words of these former texts that no row holds any more."""
    if former_texts:
        await session.execute(_FORGET_WORDS, {"texts": list(former_texts)})


def _holds(value: str, needles: Sequence[str]) -> bool:
    lowered = value.lower()
    return any(needle in lowered for needle in needles)


def _scrubbed(value: Any) -> Any:
    """`value` with every string replaced, at any depth: a payload holding the person's email
    or name is about them, and its other texts (a message's "Bonjour Aurèle") may name them
    in ways no search for their values finds."""
    if isinstance(value, str):
        return SCRUBBED
    if isinstance(value, list):
        return [_scrubbed(item) for item in value]
    if isinstance(value, dict):
        return {key: _scrubbed(item) for key, item in value.items()}
    return value


async def scrub_jobs(session: AsyncSession, values: Iterable[str]) -> int:
    """Replace the texts of the jobs whose payload or error holds one of the person's values;
    a queued one (a message to them, say) is cancelled first. How many jobs changed."""
    needles = sorted({value.lower() for value in values if value})
    if not needles:
        return 0
    holding = [
        func.lower(cast(Job.payload, Text)).contains(needle, autoescape=True) for needle in needles
    ] + [func.lower(Job.last_error).contains(needle, autoescape=True) for needle in needles]
    stmt = select(Job.id, Job.status, Job.payload, Job.last_error).where(or_(*holding))
    jobs = (await session.execute(stmt.order_by(Job.id).with_for_update())).all()
    for job in jobs:
        if job.status is JobStatus.queued:
            await JobService(session).cancel(job.id)
        last_error = None if job.last_error is None else SCRUBBED
        await session.execute(
            update(Job)
            .where(Job.id == job.id)
            .values(payload=_scrubbed(job.payload), last_error=last_error)
            .execution_options(synchronize_session=False)
        )
    return len(jobs)


async def scrub_imports(session: AsyncSession, values: Iterable[str]) -> None:
    """Clear the import errors whose value holds one of the person's values, and every upload
    still stored: an xlsx is compressed, so no search can tell whether it names them (a queued
    import then fails, its file gone)."""
    needles = sorted({value.lower() for value in values if value})
    if needles:
        holding = [
            func.lower(ImportRowError.value).contains(needle, autoescape=True) for needle in needles
        ]
        await session.execute(
            update(ImportRowError)
            .where(or_(*holding))
            .values(value=None)
            .execution_options(synchronize_session=False)
        )
    await session.execute(
        update(DataImport)
        .where(DataImport.upload.is_not(None))
        .values(upload=None)
        .execution_options(synchronize_session=False)
    )


def _message_holds(raw: bytes, needles: Sequence[str]) -> bool:
    if _holds(raw.decode("utf-8", "replace"), needles):
        return True
    # A body may be base64 or quoted-printable: look at it decoded too.
    message = email.message_from_bytes(raw, policy=email.policy.default)
    for part in message.walk():
        if part.get_content_maintype() == "text":
            try:
                content = part.get_content()
            except (LookupError, ValueError):
                continue
            if isinstance(content, str) and _holds(content, needles):
                return True
    return False


def _delete_messages(directory: Path, needles: Sequence[str]) -> int:
    if not directory.is_dir():
        return 0
    deleted = 0
    for path in sorted(directory.glob("*.eml")):
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            continue
        if _message_holds(raw, needles):
            path.unlink(missing_ok=True)
            deleted += 1
    return deleted


async def delete_outbox_messages(directory: Path, values: Iterable[str]) -> int:
    """Delete the outbox's messages to, from or mentioning these values (addresses, names);
    how many went."""
    needles = sorted({value.lower() for value in values if value})
    if not needles:
        return 0
    return await asyncio.to_thread(_delete_messages, directory, needles)
