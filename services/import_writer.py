"""A committed import's rows written: new rows inserted in slices of multi-row statements (not
as ORM objects), updates through the entity's ORM rows, each row audited as `import` through
its entity service, investors' stage history recorded."""

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table, insert
from sqlalchemy.ext.asyncio import AsyncSession

from core.audit import Actor
from models.audit import AuditAction
from models.investor import Investor, InvestorStageChange, StageChangeSource
from services.base import BaseService
from services.contacts import ContactService
from services.import_checks import ImportPlan, changes_of
from services.import_rows import MODELS, ParsedRow, ParsedSheet
from services.interactions import InteractionService
from services.investors import InvestorService
from services.kpis import KpiService
from services.spreadsheet_columns import SpreadsheetEntity

_WRITE_SLICE = 5_000
_STAGE_CHANGES: Table = InvestorStageChange.__table__  # type: ignore[assignment]

_SERVICES: dict[SpreadsheetEntity, type[BaseService[Any, Any, Any]]] = {
    SpreadsheetEntity.investor: InvestorService,
    SpreadsheetEntity.contact: ContactService,
    SpreadsheetEntity.interaction: InteractionService,
    SpreadsheetEntity.kpi: KpiService,
}


class ImportWriter:
    """The planned rows written in slices, each audited as `import` through its entity service."""

    def __init__(
        self,
        session: AsyncSession,
        entity: SpreadsheetEntity,
        sheet: ParsedSheet,
        created_by: int | None,
        actor: Actor,
    ) -> None:
        self.session = session
        self.entity = entity
        self.sheet = sheet
        self.created_by = created_by
        self.actor = actor
        self.service = _SERVICES[entity](session)

    async def write(self, plan: ImportPlan) -> None:
        audited = self.service.audited_fields()
        # In slices: what a slice's statements bind is freed before the next one's is built,
        # so the job's memory does not grow with the file.
        for start in range(0, len(plan.creates), _WRITE_SLICE):
            created = await self._insert(plan.creates[start : start + _WRITE_SLICE])
            if self.entity is SpreadsheetEntity.investor:
                await self._record_stages(created, [], {})
            await self.service.audit_many(
                AuditAction.import_,
                [(row, {name: row[name] for name in audited}) for row in created],
                actor=self.actor,
            )
        previous_stages: dict[int, Any] = {}
        changed: list[tuple[Any, dict[str, Any]]] = []
        for row, obj in plan.updates:
            if isinstance(obj, Investor):
                previous_stages[obj.id] = obj.pipeline_stage
            for name, value in changes_of(row, self.sheet).items():
                setattr(obj, name, value)
            changed.append((obj, self.service.pending_changes(obj)))
        await self.session.flush()
        if self.entity is SpreadsheetEntity.investor:
            await self._record_stages([], changed, previous_stages)
        await self.service.audit_many(AuditAction.import_, changed, actor=self.actor)

    async def _insert(self, rows: Sequence[ParsedRow]) -> list[Any]:
        """The new rows, inserted in batches of one statement each (not as ORM objects: 50,000
        of them cost more than the import's whole SQL), as mappings of their columns."""
        table: Table = MODELS[self.entity].__table__  # type: ignore[assignment]
        extra: dict[str, Any] = {}
        if self.entity is SpreadsheetEntity.interaction:
            extra["created_by"] = self.created_by
        # One statement binds the same columns for every row: rows leaving out a NOT NULL
        # column (its default applies) go in a group of their own.
        groups: dict[frozenset[str], list[dict[str, Any]]] = {}
        for row in rows:
            values = {**row.values, **extra}
            groups.setdefault(frozenset(values), []).append(values)
        # What the audit entries and the stage history need, not the generated search texts.
        returned = [table.c[name] for name in {"id", *self.service.audited_fields()}]
        inserted: list[Any] = []
        for group in groups.values():
            result = await self.session.execute(
                insert(table).returning(*returned, sort_by_parameter_order=True), group
            )
            inserted += result.mappings().all()
        return inserted

    async def _record_stages(
        self,
        created: Sequence[Any],
        changed: Sequence[tuple[Any, dict[str, Any]]],
        previous: dict[int, Any],
    ) -> None:
        moves = [self._stage_change(row["id"], None, row["pipeline_stage"]) for row in created]
        moves += [
            self._stage_change(obj.id, previous[obj.id], obj.pipeline_stage)
            for obj, changes in changed
            if "pipeline_stage" in changes
        ]
        if moves:
            # RETURNING: multi-row INSERTs (see services.audit_recorder.record_many).
            await self.session.execute(insert(_STAGE_CHANGES).returning(_STAGE_CHANGES.c.id), moves)

    def _stage_change(self, investor_id: int, from_stage: Any, to_stage: Any) -> dict[str, Any]:
        return {
            "investor_id": investor_id,
            "from_stage": from_stage,
            "to_stage": to_stage,
            "changed_by": self.created_by,
            "source": StageChangeSource.import_,
        }
