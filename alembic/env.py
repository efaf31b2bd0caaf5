"""Async Alembic environment: the URL comes from the config, else MIGRATION_DATABASE_URL (the
owner role), else DATABASE_URL."""

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from core.config import settings
from core.migrations import app_role_of
from models import Base
from models.base import is_mapped_name

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def database_url() -> str:
    url = (
        config.get_main_option("sqlalchemy.url")
        or settings.migration_database_url
        or settings.database_url
    )
    if not url:
        raise RuntimeError("Set DATABASE_URL (or run through `python main.py`) to migrate")
    if "app_role" not in config.attributes:
        # `alembic upgrade head` from a shell: the API's role is DATABASE_URL's.
        config.attributes["app_role"] = app_role_of(settings.database_url, url)
    return url


def run_migrations_offline() -> None:
    context.configure(
        url=database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        compare_type=True,
        include_name=is_mapped_name,
    )
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        include_name=is_mapped_name,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    engine = create_async_engine(database_url(), poolclass=pool.NullPool)
    async with engine.connect() as connection:
        await connection.run_sync(do_run_migrations)
    await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_async_migrations())
