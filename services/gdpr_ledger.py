"""The GDPR ledger re-applied after a restore: a backup taken before an anonymisation must not
bring the person back (docs/audit-corbeille-rgpd.md#rgpd).

    python -m services.gdpr_ledger replay FILE...     (FILE `-`: standard input)

Each FILE is a ledger as scripts/backup.sh and scripts/restore.sh write it: JSON Lines, one
`{"entity", "entity_id", "anonymized_at"}` object per anonymised record, so ledgers concatenate.
The scripts check their signatures before handing them over. Run by scripts/restore.sh, from the
project's root (or the image's /app), as the owner role: under scripts/dbenv.py the libpq
variables it sets, otherwise MIGRATION_DATABASE_URL (else DATABASE_URL).
"""

import asyncio
import os
import sys
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from core.config import settings
from models.gdpr import GdprEntity
from services.gdpr import GdprService


class LedgerLine(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    entity: GdprEntity
    entity_id: int


class LedgerError(Exception):
    """A ledger that cannot be read: nothing is re-applied."""


def read_ledgers(lines: Iterable[str]) -> set[tuple[GdprEntity, int]]:
    """The records the ledgers list, once each; any malformed line refuses them all."""
    entries = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = LedgerLine.model_validate_json(line)
        except ValidationError:
            raise LedgerError(f"line {number} is not a ledger entry") from None
        entries.add((entry.entity, entry.entity_id))
    return entries


def database_url() -> str:
    if os.environ.get("CRM_DBENV"):
        # scripts/dbenv.py set PGHOST, PGUSER, PGPASSWORD...: asyncpg reads them itself.
        return "postgresql+asyncpg://"
    url = settings.migration_database_url or settings.database_url
    if url is None:
        raise LedgerError("no database: set MIGRATION_DATABASE_URL, or run under dbenv.py")
    return url


async def replay(entries: set[tuple[GdprEntity, int]]) -> int:
    """Re-apply the ledger in one transaction: all of it, or nothing."""
    if not entries:
        # Nothing to do, whatever the database (even one older than the ledger's table).
        return 0
    engine = create_async_engine(database_url())
    try:
        async with AsyncSession(engine, expire_on_commit=False) as session, session.begin():
            return await GdprService(session).replay(entries)
    finally:
        await engine.dispose()


def _lines(paths: list[str]) -> Iterable[str]:
    for path in paths:
        if path == "-":
            yield from sys.stdin
        else:
            with open(path, encoding="utf-8") as fh:
                yield from fh


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "replay":
        sys.stderr.write(__doc__ or "")
        return 2
    try:
        entries = read_ledgers(_lines(argv[1:]))
        count = asyncio.run(replay(entries))
    except (LedgerError, OSError, UnicodeDecodeError) as exc:
        sys.stderr.write(f"gdpr_ledger: {exc}\n")
        return 1
    sys.stdout.write(f"GDPR ledger: {len(entries)} record(s) listed, {count} anonymised again\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
