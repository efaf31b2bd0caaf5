"""Every model, imported here so Alembic's metadata sees all tables."""

from models.aggregates import InvestorCount, KpiMonthTotal
from models.audit import ActorKind, AuditAction, AuditEntry
from models.base import Base
from models.contact import Contact
from models.data_import import DataImport, ImportRowError
from models.gdpr import Anonymization, GdprEntity
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
from models.notification import DigestDelivery, Notification, NotificationKind, StreamTicket
from models.password_reset import PasswordResetRequest, PasswordResetToken
from models.session import AuthSession, RefreshToken
from models.task import FollowUpRule, Task, TaskPriority, TaskStatus
from models.trash import TrashEntity, TrashEntry
from models.two_factor import RecoveryCode
from models.user import LoginFailure, User, UserRole

__all__ = [
    "FINISHED_STATUSES",
    "PIPELINE_ORDER",
    "ActorKind",
    "Anonymization",
    "AuditAction",
    "AuditEntry",
    "AuthSession",
    "Base",
    "ClientType",
    "Contact",
    "DataImport",
    "DigestDelivery",
    "FollowUpRule",
    "GdprEntity",
    "ImportRowError",
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
    "Notification",
    "NotificationKind",
    "PasswordResetRequest",
    "PasswordResetToken",
    "PipelineStage",
    "RecoveryCode",
    "RefreshToken",
    "ScheduleRun",
    "StreamTicket",
    "Task",
    "TaskPriority",
    "TaskStatus",
    "TrashEntity",
    "TrashEntry",
    "User",
    "UserRole",
]
