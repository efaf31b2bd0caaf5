"""Automatic follow-ups (relances): the rules, and the tasks they create when an investor enters
a stage or an interaction is logged, in the transaction of that change."""

from datetime import date, timedelta

from pydantic import BaseModel
from sqlalchemy import Select, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from core import clock
from core.exceptions import NotFoundError
from models.audit import AuditAction
from models.interaction import Interaction
from models.investor import Investor, PipelineStage
from models.task import (
    MANUAL_SOURCE,
    OPEN_SQL,
    OPEN_STATUSES,
    RULE_SOURCE_PREFIX,
    FollowUpRule,
    Task,
    TaskStatus,
)
from models.trash import LIVE_ENTRY
from schemas.task import FollowUpRuleUpdate
from services.base import BaseService
from services.tasks import TaskService

# Interactions older than this create no follow-up: logging last quarter's meetings is
# catching up on history, not something to act on.
INTERACTION_WINDOW_DAYS = 30
INVESTOR_PLACEHOLDER = "{investor}"
TITLE_MAX_LENGTH = 200

# The rules migration 0019 creates: (key, trigger, delay in days, title).
DEFAULT_RULES = (
    ("stage_prospect_chaud", "stage:prospect_chaud", 3, "Relancer {investor}"),
    ("stage_en_negociation", "stage:en_negociation", 7, "Point négociation avec {investor}"),
    ("stage_client", "stage:client", 1, "Appel d'accueil {investor}"),
    ("interaction_reunion", "interaction:reunion", 1, "Envoyer le compte rendu à {investor}"),
    ("interaction_appel", "interaction:appel", 3, "Rappeler {investor}"),
    ("interaction_email", "interaction:email", 5, "Relancer {investor} (email)"),
)

# The predicate of uq_tasks_open_rule_investor, which ON CONFLICT names to infer the index.
_OPEN_RULE_TASK = text(f"source <> '{MANUAL_SOURCE}' AND {OPEN_SQL} AND {LIVE_ENTRY}")
# Built once (see services.investors._STATS): each trigger only binds its values.
_INSERT_RULE_TASK = (
    insert(Task)
    .on_conflict_do_nothing(
        index_elements=[Task.investor_id, Task.source], index_where=_OPEN_RULE_TASK
    )
    # The new row itself (server defaults included): audited and announced without a re-read.
    .returning(Task)
)


class UnknownRule(NotFoundError):
    message = "No follow-up rule has this key"


class FollowUpRuleService(BaseService[FollowUpRule, BaseModel, FollowUpRuleUpdate]):
    model = FollowUpRule
    not_found_message = UnknownRule.message
    audit_entity = "follow_up_rule"

    async def list_rules(self) -> list[FollowUpRule]:
        """Every rule, in the order the migration created them."""
        stmt = select(FollowUpRule).order_by(FollowUpRule.id)
        return list((await self.session.execute(stmt)).scalars().all())

    async def update_rule(self, key: str, data: FollowUpRuleUpdate) -> FollowUpRule:
        """Change a rule (only the fields sent); 404 for a key no rule has."""
        stmt = select(FollowUpRule).where(FollowUpRule.key == key).with_for_update()
        rule = (await self.session.execute(stmt)).scalar_one_or_none()
        if rule is None:
            raise UnknownRule()
        return await self.update(rule, data)


class FollowUpService:
    """Creates, moves and cancels the tasks the rules make, in the caller's transaction."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.tasks = TaskService(session)

    async def stage_entered(self, investor: Investor, actor_id: int | None) -> None:
        """An investor entered its current stage: that stage's rule fires; `perdu` cancels the
        investor's open rule-made tasks instead."""
        stage = investor.pipeline_stage
        if stage is PipelineStage.perdu:
            await self._cancel_rule_tasks(investor.id)
            return
        await self._fire(
            f"stage_{stage.value}",
            investor_id=investor.id,
            investor_name=investor.name,
            assignee_id=investor.owner_id or actor_id,
            actor_id=actor_id,
            start=clock.today(),
        )

    async def interaction_logged(self, interaction: Interaction, actor_id: int | None) -> None:
        """An interaction was logged through the API: its type's rule fires when it is dated
        within the last INTERACTION_WINDOW_DAYS days (today included)."""
        today = clock.today()
        if not today - timedelta(days=INTERACTION_WINDOW_DAYS) <= interaction.date <= today:
            return
        stmt = select(Investor.name, Investor.owner_id).where(
            Investor.id == interaction.investor_id
        )
        name, owner_id = (await self.session.execute(stmt)).one()
        await self._fire(
            f"interaction_{interaction.type.value}",
            investor_id=interaction.investor_id,
            investor_name=name,
            assignee_id=owner_id or actor_id,
            actor_id=actor_id,
            start=interaction.date,
            interaction_id=interaction.id,
        )

    async def _fire(
        self,
        key: str,
        *,
        investor_id: int,
        investor_name: str,
        assignee_id: int | None,
        actor_id: int | None,
        start: date,
        interaction_id: int | None = None,
    ) -> None:
        """Create the rule's task, due `delay_days` after `start` (today at the earliest), or
        move the due date of the open task the rule already made for this investor."""
        stmt = select(FollowUpRule).where(FollowUpRule.key == key)
        rule = (await self.session.execute(stmt)).scalar_one_or_none()
        if rule is None or not rule.enabled:
            return
        due = max(start + timedelta(days=rule.delay_days), clock.today())
        source = f"{RULE_SOURCE_PREFIX}{key}"
        values = {
            "title": _title(rule.title, investor_name),
            "due_date": due,
            "priority": rule.priority,
            "assignee_id": assignee_id,
            "investor_id": investor_id,
            "interaction_id": interaction_id,
            "source": source,
            "created_by": actor_id,
        }
        # Concurrent triggers: the unique index lets one insert through; the others wait for
        # it to commit, insert nothing, and move the task it made. Should that task be
        # finished in between, the second round creates a new one.
        for _ in range(2):
            created = await self.session.execute(_INSERT_RULE_TASK.values(values))
            task = created.scalar_one_or_none()
            if task is not None:
                await self.tasks.audit(AuditAction.create, task, self.tasks.audit_values(task))
                await self.tasks.announce_assignment(task, actor_id)
                return
            if await self._move_open_task(investor_id, source, due, interaction_id):
                return

    async def _move_open_task(
        self, investor_id: int, source: str, due: date, interaction_id: int | None
    ) -> bool:
        """Move the rule's open task for the investor; False when there is none any more."""
        found = await self.session.execute(_open_rule_tasks(investor_id, source))
        task = found.scalar_one_or_none()
        if task is None:
            return False
        task.due_date = due
        if interaction_id is not None:
            task.interaction_id = interaction_id
        await self.tasks.save(task)
        return True

    async def _cancel_rule_tasks(self, investor_id: int) -> None:
        tasks = (await self.session.execute(_open_rule_tasks(investor_id))).scalars().all()
        for task in tasks:
            task.status = TaskStatus.annulee
            await self.tasks.save(task)


def _open_rule_tasks(investor_id: int, source: str | None = None) -> Select[tuple[Task]]:
    """The investor's open rule-made tasks (of one rule), locked, as they are now."""
    stmt = select(Task).where(
        Task.investor_id == investor_id,
        Task.source != MANUAL_SOURCE,
        Task.status.in_(OPEN_STATUSES),
        Task.deleted_at.is_(None),
    )
    if source is not None:
        stmt = stmt.where(Task.source == source)
    return stmt.order_by(Task.id).with_for_update().execution_options(populate_existing=True)


def _title(template: str, investor_name: str) -> str:
    # A plain replacement, not str.format: a title holding other braces stays as written.
    return template.replace(INVESTOR_PLACEHOLDER, investor_name)[:TITLE_MAX_LENGTH]
