"""Who may do what: the one table of permissions, by role, for every /api/v1 operation.

Each operation is given one `Action` (the columns of the role table in docs/roles.md). A role
either may perform an action, may perform it only on records it owns, or may not. Refusals that
depend on the role alone are decided before any record is read; ownership needs the record, so
that check comes after the record is found (api/deps.py applies both, services never do).
"""

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from core.exceptions import PermissionDeniedError
from models.user import UserRole


class Action(StrEnum):
    """What an operation does, as the role table names it."""

    public = "public"  # no account needed (login, refresh, password reset)
    self_service = "self_service"  # one's own profile, password, 2FA, sessions
    read = "read"  # reads CRM data
    write = "write"  # writes CRM data
    log_interaction = "log_interaction"  # logs an exchange with any investor
    delete = "delete"  # deletes investors (and later suppliers)
    reassign = "reassign"  # sets an investor's owner to someone else
    operate = "operate"  # imports, exports, reports, jobs
    follow_jobs = "follow_jobs"  # reads the jobs one caused
    audit = "audit"  # reads the audit trail (who changed what)
    manage_users = "manage_users"  # user administration
    manage_trash = "manage_trash"  # lists and restores what is in the trash
    purge_trash = "purge_trash"  # destroys what is in the trash before its time
    gdpr = "gdpr"  # exports a person's data, anonymises a person
    configure = "configure"  # changes how the CRM works for everyone (follow-up rules)


class Grant(StrEnum):
    """How far a role may go with an action."""

    all = "all"
    owned = "owned"  # only records the caller owns (`Ownership`)
    none = "none"


_ALL, _OWNED, _NONE = Grant.all, Grant.owned, Grant.none

# The role table. docs/roles.md and the README are checked against it (tests/test_policy.py).
GRANTS: Mapping[UserRole, Mapping[Action, Grant]] = {
    UserRole.admin: dict.fromkeys(Action, _ALL),
    UserRole.manager: {
        **dict.fromkeys(Action, _ALL),
        Action.manage_users: _NONE,
        Action.purge_trash: _NONE,
        Action.gdpr: _NONE,
    },
    UserRole.user: {
        **dict.fromkeys(Action, _NONE),
        Action.public: _ALL,
        Action.self_service: _ALL,
        Action.read: _ALL,
        Action.write: _OWNED,
        Action.log_interaction: _ALL,
        Action.follow_jobs: _OWNED,
    },
    UserRole.viewer: {
        **dict.fromkeys(Action, _NONE),
        Action.public: _ALL,
        Action.self_service: _ALL,
        Action.read: _ALL,
    },
}

# Why a role is refused an action, in the words of the 403.
_ROLE_REFUSALS: Mapping[Action, str] = {
    Action.write: "read-only accounts may not change data",
    Action.log_interaction: "read-only accounts may not change data",
    Action.delete: "only a manager or an admin may delete it",
    Action.reassign: "only a manager or an admin may assign an investor to someone else",
    Action.operate: "only a manager or an admin may run imports, exports, reports and jobs",
    Action.follow_jobs: "read-only accounts have no jobs to follow",
    Action.audit: "only a manager or an admin may read the audit trail",
    Action.manage_users: "only an admin may manage users",
    Action.manage_trash: "only a manager or an admin may see and restore the trash",
    Action.purge_trash: "only an admin may destroy what is in the trash",
    Action.gdpr: "only an admin may export or anonymise a person's data",
    Action.configure: "only a manager or an admin may change the follow-up rules",
}


@dataclass(frozen=True, slots=True)
class Ownership:
    """Whose record a path parameter names: the services know how to find its owners
    (`BaseService.owner_columns`), this says which parameter and how to word a refusal."""

    path_param: str
    refusal: str


INVESTOR = Ownership(
    "investor_id", "only the investor's owner, a manager or an admin may change it"
)
CONTACT = Ownership(
    "contact_id", "only the owner of the contact's investor, a manager or an admin may change it"
)
INTERACTION = Ownership(
    "interaction_id",
    "only the interaction's author, the investor's owner, a manager or an admin may change it",
)
KPI = Ownership(
    "kpi_id", "only the owner of the KPI's investor, a manager or an admin may change it"
)
JOB = Ownership("job_id", "only the job's author, a manager or an admin may see it")
TASK = Ownership(
    "task_id", "only the task's assignee, its author, a manager or an admin may change it"
)


@dataclass(frozen=True, slots=True)
class Rule:
    action: Action
    # What a role granted `owned` must own; None when the operation names no record (a create,
    # a list filtered to the caller's own rows).
    ownership: Ownership | None = None
    # Reachable by an admin who has not turned two-factor login on while REQUIRE_2FA_FOR_ADMINS
    # is set: its own profile, the routes that turn 2FA on, and logout.
    without_two_factor: bool = False


def _rules(
    action: Action,
    *operations: tuple[str, str],
    ownership: Ownership | None = None,
    without_two_factor: bool = False,
) -> dict[tuple[str, str], Rule]:
    return dict.fromkeys(operations, Rule(action, ownership, without_two_factor))


# Every /api/v1 operation, by method and path below the prefix (as in the OpenAPI document).
# An operation missing here is refused (and makes app start-up and tests/test_policy.py fail).
POLICY: Mapping[tuple[str, str], Rule] = {
    # Their proof is in the body (a password, a refresh or reset token), not a bearer token.
    **_rules(
        Action.public,
        ("POST", "/auth/login"),
        ("POST", "/auth/refresh"),
        ("POST", "/auth/password-reset/request"),
        ("POST", "/auth/password-reset/confirm"),
    ),
    **_rules(Action.self_service, ("PUT", "/auth/me/password")),
    **_rules(
        Action.self_service,
        ("GET", "/auth/me"),
        ("PUT", "/auth/me"),
        ("POST", "/auth/logout"),
        ("POST", "/auth/logout-all"),
        ("POST", "/auth/2fa/setup"),
        ("POST", "/auth/2fa/enable"),
        ("POST", "/auth/2fa/disable"),
        without_two_factor=True,
    ),
    # One's own preferences and notifications: every query is scoped to the caller.
    **_rules(
        Action.self_service,
        ("GET", "/auth/me/preferences"),
        ("PUT", "/auth/me/preferences"),
        ("GET", "/notifications"),
        ("GET", "/notifications/unread-count"),
        ("POST", "/notifications/read-all"),
        ("POST", "/notifications/{notification_id}/read"),
        ("POST", "/notifications/stream-ticket"),
        ("GET", "/notifications/stream"),
    ),
    **_rules(
        Action.read,
        ("GET", "/investors"),
        ("GET", "/investors/search"),
        ("GET", "/investors/stats"),
        ("GET", "/investors/{investor_id}"),
        ("GET", "/investors/{investor_id}/stage-history"),
        ("GET", "/investors/{investor_id}/history"),
        ("GET", "/contacts/investor/{investor_id}"),
        ("GET", "/contacts/{contact_id}"),
        ("GET", "/interactions"),
        ("GET", "/interactions/investor/{investor_id}"),
        ("GET", "/interactions/{interaction_id}"),
        ("GET", "/kpis"),
        ("GET", "/kpis/summary/month/{year}/{month}"),
        ("GET", "/kpis/summary/annual/{investor_id}/{year}"),
        ("GET", "/kpis/investor/{investor_id}"),
        ("GET", "/kpis/{kpi_id}"),
        ("GET", "/tasks"),
        ("GET", "/tasks/summary"),
        ("GET", "/tasks/{task_id}"),
        ("GET", "/investors/{investor_id}/tasks"),
        ("GET", "/follow-up-rules"),
    ),
    # Creating an investor: its owner is the creator (a `user` may not give it away).
    **_rules(Action.write, ("POST", "/investors")),
    # A task may be given to anyone (a `user` too may assign one to a colleague).
    **_rules(Action.write, ("POST", "/tasks")),
    **_rules(
        Action.write,
        ("PUT", "/tasks/{task_id}"),
        ("PATCH", "/tasks/{task_id}"),
        ("DELETE", "/tasks/{task_id}"),
        ("POST", "/tasks/{task_id}/complete"),
        ("POST", "/tasks/{task_id}/snooze"),
        ownership=TASK,
    ),
    **_rules(Action.configure, ("PUT", "/follow-up-rules/{key}")),
    **_rules(
        Action.write,
        ("PUT", "/investors/{investor_id}"),
        ("PATCH", "/investors/{investor_id}"),
        ("PUT", "/investors/{investor_id}/move-to-next-stage"),
        ("POST", "/contacts/investor/{investor_id}"),
        ("POST", "/kpis/investor/{investor_id}"),
        ownership=INVESTOR,
    ),
    **_rules(
        Action.write,
        ("PUT", "/contacts/{contact_id}"),
        ("PATCH", "/contacts/{contact_id}"),
        ("DELETE", "/contacts/{contact_id}"),
        ownership=CONTACT,
    ),
    **_rules(Action.log_interaction, ("POST", "/interactions/investor/{investor_id}")),
    **_rules(
        Action.write,
        ("PUT", "/interactions/{interaction_id}"),
        ("DELETE", "/interactions/{interaction_id}"),
        ownership=INTERACTION,
    ),
    **_rules(Action.write, ("PUT", "/kpis/{kpi_id}"), ("DELETE", "/kpis/{kpi_id}"), ownership=KPI),
    **_rules(Action.delete, ("DELETE", "/investors/{investor_id}")),
    # A `user` lists only the jobs it caused (services.jobs) and reads one only if it caused it.
    **_rules(Action.follow_jobs, ("GET", "/jobs")),
    **_rules(Action.follow_jobs, ("GET", "/jobs/{job_id}"), ownership=JOB),
    **_rules(Action.operate, ("POST", "/jobs/{job_id}/retry"), ("POST", "/jobs/{job_id}/cancel")),
    **_rules(
        Action.operate,
        ("POST", "/imports"),
        ("GET", "/imports"),
        ("GET", "/imports/{import_id}"),
        ("GET", "/imports/{import_id}/errors.csv"),
    ),
    **_rules(Action.audit, ("GET", "/audit")),
    **_rules(
        Action.manage_users,
        ("GET", "/users"),
        ("POST", "/users"),
        ("GET", "/users/{user_id}"),
        ("PUT", "/users/{user_id}"),
        ("DELETE", "/users/{user_id}"),
        ("DELETE", "/users/{user_id}/2fa"),
    ),
    **_rules(
        Action.manage_trash, ("GET", "/trash"), ("POST", "/trash/{entity}/{entity_id}/restore")
    ),
    **_rules(Action.purge_trash, ("DELETE", "/trash/{entity}/{entity_id}")),
    **_rules(Action.gdpr, ("GET", "/gdpr/export"), ("POST", "/gdpr/anonymize")),
    **_rules(
        Action.operate,
        ("GET", "/exports/investor.{file_format}"),
        ("GET", "/exports/contact.{file_format}"),
        ("GET", "/exports/interaction.{file_format}"),
        ("GET", "/exports/kpi.{file_format}"),
        ("GET", "/imports/templates/{entity}.xlsx"),
    ),
}


def grant(role: UserRole, action: Action) -> Grant:
    return GRANTS[role][action]


class Forbidden(PermissionDeniedError):
    """403 `forbidden`, with the rule that refused in the message."""


def check_role(role: UserRole, rule: Rule | None) -> Grant:
    """How far `role` may go with the operation; 403 when not at all (or when the operation is
    in no rule: refused rather than let through)."""
    if rule is None:
        raise Forbidden("This operation is not in the permission policy")
    granted = GRANTS[role][rule.action]
    if granted is Grant.none:
        raise Forbidden(f"Not allowed for the {role.value} role: {_ROLE_REFUSALS[rule.action]}")
    return granted


class TwoFactorRequired(PermissionDeniedError):
    code = "2fa_required"
    message = "Turn on two-factor login first: administrators need it (POST /api/v1/auth/2fa/setup)"


def check_two_factor(role: UserRole, two_factor_enabled: bool, rule: Rule | None) -> None:
    """403 2fa_required for an admin without two-factor login, outside the operations it needs
    to turn it on (checked only while REQUIRE_2FA_FOR_ADMINS is set)."""
    if role is UserRole.admin and not two_factor_enabled and not (rule and rule.without_two_factor):
        raise TwoFactorRequired()


def check_ownership(caller_id: int, owners: tuple[int | None, ...], ownership: Ownership) -> None:
    """403 unless the caller is one of the record's owners (a caller granted `owned` only)."""
    if caller_id not in owners:
        raise Forbidden(f"Not allowed: {ownership.refusal}")


def check_owner_assignment(
    role: UserRole, caller_id: int, owner_id: int | None, *, current: int | None
) -> None:
    """403 when the caller may not make `owner_id` the owner of an investor whose owner is
    `current` (the creator, for a new one): keeping it or taking it oneself is no
    reassignment."""
    if owner_id in (current, caller_id):
        return
    check_role(role, Rule(Action.reassign))


def may(role: UserRole, action: Action) -> bool:
    """Whether `role` may perform `action` on every record (not only its own)."""
    return GRANTS[role][action] is Grant.all
