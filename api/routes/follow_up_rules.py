"""Follow-up rules (relances): which task the pipeline's events create, and when it is due."""

from typing import Annotated

from fastapi import APIRouter, Path

from api.deps import CurrentUser, FollowUpRuleReader, FollowUpRuleWriter
from api.responses import AUTHENTICATED, errors
from schemas.task import FollowUpRuleRead, FollowUpRuleUpdate, RuleKey

router = APIRouter(prefix="/follow-up-rules", tags=["follow-up rules"])


@router.get("", response_model=list[FollowUpRuleRead], responses=errors(*AUTHENTICATED))
async def list_follow_up_rules(_: CurrentUser, rules: FollowUpRuleReader) -> list[FollowUpRuleRead]:
    """Every follow-up rule (six, created with the database)."""
    return [FollowUpRuleRead.model_validate(rule) for rule in await rules.list_rules()]


@router.put("/{key}", response_model=FollowUpRuleRead, responses=errors(*AUTHENTICATED, 404))
async def update_follow_up_rule(
    key: Annotated[RuleKey, Path()],
    body: FollowUpRuleUpdate,
    _: CurrentUser,
    rules: FollowUpRuleWriter,
) -> FollowUpRuleRead:
    """Change a rule: `enabled`, `delay_days` (0-90), `title` (`{investor}` is replaced by
    the investor's name), `priority`."""
    return FollowUpRuleRead.model_validate(await rules.update_rule(key, body))
