"""`python -m worker`: run background jobs and schedules until SIGTERM or SIGINT.

On SIGTERM no new job is taken; running jobs get WORKER_SHUTDOWN_GRACE_SECONDS to finish, then
go back to the queue for another worker. The worker does not migrate: run `alembic upgrade head`
(the Compose `migrate` service) first.
"""

import asyncio
import signal

from core.config import settings
from core.db import db
from core.observability import configure_logging
from worker.runtime import run_worker


async def main() -> None:
    configure_logging(settings.log_format)
    if settings.database_url is None:
        raise SystemExit("Set DATABASE_URL: the worker needs the API's database")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    db.configure(settings)
    try:
        await run_worker(db, settings, stop)
    finally:
        await db.dispose()


if __name__ == "__main__":
    asyncio.run(main())
