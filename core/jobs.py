"""Job types: a handler registered under a name, with its payload schema and retry policy.

A feature declares its background work here and enqueues it with `core.queue.enqueue`, in the
transaction of the request that causes it; the worker (`python -m worker`) runs the handlers.
Handlers are idempotent: a job may run again after a worker died (at-least-once), though never
to completion twice (docs/adr/0008-file-de-taches.md).
"""

import random
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from core.db import AsyncWriteSession

PayloadT = TypeVar("PayloadT", bound=BaseModel)

MAX_JOB_TYPE_LENGTH = 100


class PermanentJobError(Exception):
    """Raised by a handler when another attempt cannot help: the job fails at once."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Attempts and the wait between them: exponential, jittered, capped."""

    max_attempts: int = 5
    first_delay_s: float = 10.0
    max_delay_s: float = 3600.0

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= 100:
            raise ValueError("max_attempts must be between 1 and 100")
        if not 0 < self.first_delay_s <= self.max_delay_s:
            raise ValueError("delays must satisfy 0 < first_delay_s <= max_delay_s")

    def delay(self, failed_attempt: int) -> timedelta:
        """The wait after attempt number `failed_attempt` (1 for the first) failed.

        Half the exponential step plus a random share of the other half: retries of jobs that
        failed together (an SMTP server down) spread out instead of arriving together.
        """
        step = min(self.max_delay_s, self.first_delay_s * 2 ** max(0, failed_attempt - 1))
        return timedelta(seconds=step / 2 + random.uniform(0, step / 2))  # noqa: S311


class JobContext:
    """What a running handler gets besides its payload.

    `session` is the handler's transaction: the job is marked succeeded in it, so its writes
    and that mark commit together or not at all.
    """

    def __init__(
        self,
        *,
        job_id: int,
        attempt: int,
        created_by: int | None,
        session: AsyncWriteSession,
        report_progress: Callable[[int], Awaitable[None]],
    ) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.created_by = created_by
        self.session = session
        self._report_progress = report_progress

    async def set_progress(self, percent: int) -> None:
        """Show 0-100 in the Jobs API now (committed apart from the handler's transaction)."""
        await self._report_progress(min(100, max(0, int(percent))))


Handler = Callable[[PayloadT, JobContext], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class JobType(Generic[PayloadT]):
    name: str
    handler: Handler[PayloadT]
    payload_model: type[PayloadT]
    retry: RetryPolicy


class UnknownJobTypeError(LookupError):
    """No job type is registered under this name."""


class JobRegistry:
    """The job types this process knows, by name."""

    def __init__(self) -> None:
        self._types: dict[str, JobType[Any]] = {}

    def register(
        self,
        name: str,
        payload_model: type[PayloadT],
        *,
        retry: RetryPolicy | None = None,
    ) -> Callable[[Handler[PayloadT]], Handler[PayloadT]]:
        """Decorator: register the handler under `name` (unique, at most 100 characters)."""
        if not name or len(name) > MAX_JOB_TYPE_LENGTH:
            raise ValueError(f"a job type name has 1 to {MAX_JOB_TYPE_LENGTH} characters")
        if name in self._types:
            raise ValueError(f"job type {name!r} is already registered")

        def decorator(handler: Handler[PayloadT]) -> Handler[PayloadT]:
            self._types[name] = JobType(name, handler, payload_model, retry or RetryPolicy())
            return handler

        return decorator

    def get(self, name: str) -> JobType[Any]:
        try:
            return self._types[name]
        except KeyError:
            raise UnknownJobTypeError(name) from None

    def __iter__(self) -> Iterator[JobType[Any]]:
        return iter(list(self._types.values()))

    def __contains__(self, name: object) -> bool:
        return name in self._types


# Every job type of the application registers here, at import of the module that owns it
# (worker/tasks.py imports them all).
job_types = JobRegistry()
