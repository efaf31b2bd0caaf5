"""Every model, imported here so Alembic's metadata sees all tables."""

from models.aggregates import InvestorCount, KpiMonthTotal
from models.audit import ActorKind, AuditAction, AuditEntry
from models.base import Base
from models.contact import Contact
from models.interaction import Interaction, InteractionType
from models.investor import (
    PIPELINE_ORDER,
    ClientType,
    Investor,
    InvestorStageChange,
    PipelineStage,
)
from models.job import FINISHED_STATUSES, Job, JobStatus, ScheduleRun
from models.kpi import Kpi
from models.user import LoginFailure, User, UserRole

__all__ = [
    "FINISHED_STATUSES",
    "PIPELINE_ORDER",
    "ActorKind",
    "AuditAction",
    "AuditEntry",
    "Base",
    "ClientType",
    "Contact",
    "Interaction",
    "InteractionType",
    "Investor",
    "InvestorCount",
    "InvestorStageChange",
    "Job",
    "JobStatus",
    "Kpi",
    "KpiMonthTotal",
    "LoginFailure",
    "PipelineStage",
    "ScheduleRun",
    "User",
    "UserRole",
]
