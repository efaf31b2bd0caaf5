"""Alembic: every migration applies to an empty database, matches the models, and reverts."""

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import make_url, pool, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from core.migrations import alembic_config
from models import Base
from models.base import is_mapped_name


@pytest.fixture
async def empty_database_url(superuser_database_url: str) -> AsyncIterator[str]:
    """A brand-new database on the test server, dropped afterwards."""
    url = make_url(superuser_database_url)
    name = f"crm_migrations_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(
        url.set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=pool.NullPool
    )
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


def config_for(url: str) -> Config:
    config = alembic_config(url)
    # env.py would otherwise reconfigure logging on every command.
    config.attributes["configure_logger"] = False
    return config


def revisions(config: Config) -> list[str]:
    """Revision ids from the first to the head."""
    script = ScriptDirectory.from_config(config)
    return [rev.revision for rev in reversed(list(script.walk_revisions()))]


async def run(fn: Any, *args: Any) -> Any:
    # env.py calls asyncio.run(): Alembic commands must run outside the test's event loop.
    return await asyncio.to_thread(fn, *args)


async def schema_objects(url: str) -> list[str]:
    """Tables, indexes, views, sequences and types of the public schema, except Alembic's."""
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT c.relkind::text || ':' || c.relname FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'v', 'm', 'S', 'p', 'i') "
                    "AND c.relname NOT IN ('alembic_version', 'alembic_version_pkc') "
                    "UNION ALL "
                    "SELECT 'type:' || t.typname FROM pg_type t "
                    "JOIN pg_namespace n ON n.oid = t.typnamespace "
                    "WHERE n.nspname = 'public' AND t.typtype IN ('e', 'd') "
                    "ORDER BY 1"
                )
            )
            return list(rows.scalars())
    finally:
        await engine.dispose()


async def differences_with_models(url: str) -> list[Any]:
    """What autogenerate would write: must be nothing."""

    def compare(conn: Connection) -> list[Any]:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "include_name": is_mapped_name}
        )
        return list(compare_metadata(context, Base.metadata))

    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(compare)
    finally:
        await engine.dispose()


async def current_revision(url: str) -> str | None:
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(
                lambda sync: MigrationContext.configure(sync).get_current_revision()
            )
    finally:
        await engine.dispose()


# --- the revision files ---------------------------------------------------------------------


def test_one_linear_history_with_numbered_revisions() -> None:
    config = config_for("postgresql+asyncpg://unused@/unused")
    script = ScriptDirectory.from_config(config)
    assert len(script.get_heads()) == 1, "two migrations claim the same parent: renumber one"
    ids = revisions(config)
    assert ids == [f"{n:04d}" for n in range(1, len(ids) + 1)]
    versions = Path(script.versions)
    for rev in script.walk_revisions():
        assert rev.path is not None
        assert re.fullmatch(rf"{rev.revision}_[a-z0-9_]+\.py", Path(rev.path).name), rev.path
        assert Path(rev.path).parent == versions


# --- applying them --------------------------------------------------------------------------


async def test_upgrade_from_empty_matches_the_models_and_downgrade_reverts(
    empty_database_url: str,
) -> None:
    url = empty_database_url
    config = config_for(url)
    assert await schema_objects(url) == []

    await run(command.upgrade, config, "head")
    assert await current_revision(url) == revisions(config)[-1]
    assert {name.split(":")[1] for name in await schema_objects(url)} >= {
        table.name for table in Base.metadata.sorted_tables
    }
    assert await differences_with_models(url) == []
    await run(command.check, config)  # `alembic check`: raises if autogenerate finds changes

    await run(command.downgrade, config, "base")
    assert await schema_objects(url) == []
    assert await current_revision(url) is None

    await run(command.upgrade, config, "head")
    assert await differences_with_models(url) == []


async def test_each_migration_reverts_and_reapplies(empty_database_url: str) -> None:
    """The stairway: every step's downgrade undoes exactly its upgrade."""
    url = empty_database_url
    config = config_for(url)
    for revision in revisions(config):
        await run(command.upgrade, config, revision)
        after_upgrade = await schema_objects(url)
        await run(command.downgrade, config, "-1")
        await run(command.upgrade, config, revision)
        assert await schema_objects(url) == after_upgrade, revision
        assert await current_revision(url) == revision
    assert await differences_with_models(url) == []


async def test_the_difference_check_can_fail(empty_database_url: str) -> None:
    """With only the first migration applied, later models differ: the check is not vacuous."""
    config = config_for(empty_database_url)
    await run(command.upgrade, config, "0001")
    if len(revisions(config)) > 1:
        assert await differences_with_models(empty_database_url) != []
    await run(command.downgrade, config, "base")
    assert await differences_with_models(empty_database_url) != []
