"""The permission matrix: every operation of the OpenAPI document, for each of the four roles,
on a record the caller owns and on one someone else owns, gets the outcome the role table of
issue 15 gives. The table and the category of each operation are written out here, apart from
core.policy, so that a change to the policy that breaks the table fails."""

import re
from pathlib import Path
from typing import Any

import pytest
from httpx import AsyncClient

from core.db import db
from core.policy import GRANTS, POLICY, Action, Grant
from models.user import UserRole
from services.password_reset import PasswordResetService
from tests.conftest import error_of
from tests.factories import USER_PASSWORD, bearer, create_user, execute, scalar

API = "/api/v1"
ROLES = ("admin", "manager", "user", "viewer")

# The columns of the role table; `own` = only what the caller owns.
YES, OWN, NO = "yes", "own", "no"
COLUMNS = (
    "read",
    "write",
    "log",
    "delete",
    "operate",
    "follow",
    "users",
    "trash",
    "purge",
    "audit",
    "gdpr",
    "configure",
)
TABLE: dict[str, dict[str, str]] = {
    role: dict(zip(COLUMNS, cells, strict=True))
    for role, cells in {
        "admin": (YES, YES, YES, YES, YES, YES, YES, YES, YES, YES, YES, YES),
        "manager": (YES, YES, YES, YES, YES, YES, NO, YES, NO, YES, NO, YES),
        "user": (YES, OWN, YES, NO, NO, OWN, NO, NO, NO, NO, NO, NO),
        "viewer": (YES, NO, NO, NO, NO, NO, NO, NO, NO, NO, NO, NO),
    }.items()
}
for row in TABLE.values():
    row |= {"self": YES, "public": YES}

# Every documented operation and its column. `write` on a path naming no record (a create) is
# allowed to `user` whatever it owns; `log` is logging an interaction with any investor.
OPERATIONS: dict[tuple[str, str], str] = {
    ("POST", "/auth/login"): "public",
    ("POST", "/auth/refresh"): "public",
    ("POST", "/auth/password-reset/request"): "public",
    ("POST", "/auth/password-reset/confirm"): "public",
    ("PUT", "/auth/me"): "self",
    ("GET", "/auth/me"): "self",
    ("PUT", "/auth/me/password"): "self",
    ("POST", "/auth/logout"): "self",
    ("POST", "/auth/logout-all"): "self",
    ("POST", "/auth/2fa/setup"): "self",
    ("POST", "/auth/2fa/enable"): "self",
    ("POST", "/auth/2fa/disable"): "self",
    ("GET", "/auth/me/preferences"): "self",
    ("PUT", "/auth/me/preferences"): "self",
    ("GET", "/notifications"): "self",
    ("GET", "/notifications/unread-count"): "self",
    ("POST", "/notifications/read-all"): "self",
    ("POST", "/notifications/{notification_id}/read"): "self",
    ("POST", "/notifications/stream-ticket"): "self",
    ("GET", "/notifications/stream"): "self",
    ("GET", "/investors"): "read",
    ("GET", "/investors/search"): "read",
    ("GET", "/investors/stats"): "read",
    ("GET", "/investors/{investor_id}"): "read",
    ("GET", "/investors/{investor_id}/stage-history"): "read",
    ("GET", "/investors/{investor_id}/history"): "read",
    ("POST", "/investors"): "write",
    ("PUT", "/investors/{investor_id}"): "write",
    ("PATCH", "/investors/{investor_id}"): "write",
    ("PUT", "/investors/{investor_id}/move-to-next-stage"): "write",
    ("DELETE", "/investors/{investor_id}"): "delete",
    ("GET", "/contacts/investor/{investor_id}"): "read",
    ("POST", "/contacts/investor/{investor_id}"): "write",
    ("GET", "/contacts/{contact_id}"): "read",
    ("PUT", "/contacts/{contact_id}"): "write",
    ("PATCH", "/contacts/{contact_id}"): "write",
    ("DELETE", "/contacts/{contact_id}"): "write",
    ("GET", "/interactions"): "read",
    ("GET", "/interactions/investor/{investor_id}"): "read",
    ("POST", "/interactions/investor/{investor_id}"): "log",
    ("GET", "/interactions/{interaction_id}"): "read",
    ("PUT", "/interactions/{interaction_id}"): "write",
    ("DELETE", "/interactions/{interaction_id}"): "write",
    ("GET", "/kpis"): "read",
    ("GET", "/kpis/summary/month/{year}/{month}"): "read",
    ("GET", "/kpis/summary/annual/{investor_id}/{year}"): "read",
    ("GET", "/kpis/investor/{investor_id}"): "read",
    ("POST", "/kpis/investor/{investor_id}"): "write",
    ("GET", "/kpis/{kpi_id}"): "read",
    ("PUT", "/kpis/{kpi_id}"): "write",
    ("DELETE", "/kpis/{kpi_id}"): "write",
    ("GET", "/jobs"): "follow",
    ("GET", "/jobs/{job_id}"): "follow",
    ("POST", "/jobs/{job_id}/retry"): "operate",
    ("POST", "/jobs/{job_id}/cancel"): "operate",
    ("GET", "/audit"): "audit",
    ("GET", "/users"): "users",
    ("POST", "/users"): "users",
    ("GET", "/users/{user_id}"): "users",
    ("PUT", "/users/{user_id}"): "users",
    ("DELETE", "/users/{user_id}"): "users",
    ("DELETE", "/users/{user_id}/2fa"): "users",
    ("GET", "/trash"): "trash",
    ("POST", "/trash/{entity}/{entity_id}/restore"): "trash",
    ("DELETE", "/trash/{entity}/{entity_id}"): "purge",
    ("GET", "/gdpr/export"): "gdpr",
    ("POST", "/gdpr/anonymize"): "gdpr",
    ("GET", "/tasks"): "read",
    ("GET", "/tasks/summary"): "read",
    ("GET", "/tasks/{task_id}"): "read",
    ("GET", "/investors/{investor_id}/tasks"): "read",
    ("POST", "/tasks"): "write",
    ("PUT", "/tasks/{task_id}"): "write",
    ("PATCH", "/tasks/{task_id}"): "write",
    ("DELETE", "/tasks/{task_id}"): "write",
    ("POST", "/tasks/{task_id}/complete"): "write",
    ("POST", "/tasks/{task_id}/snooze"): "write",
    ("GET", "/follow-up-rules"): "read",
    ("PUT", "/follow-up-rules/{key}"): "configure",
    ("GET", "/exports/investor.{file_format}"): "operate",
    ("GET", "/exports/contact.{file_format}"): "operate",
    ("GET", "/exports/interaction.{file_format}"): "operate",
    ("GET", "/exports/kpi.{file_format}"): "operate",
    ("GET", "/imports/templates/{entity}.xlsx"): "operate",
    ("POST", "/imports"): "operate",
    ("GET", "/imports"): "operate",
    ("GET", "/imports/{import_id}"): "operate",
    ("GET", "/imports/{import_id}/errors.csv"): "operate",
}

# Operations on a list or a new record: nothing to own, so `own` means allowed.
NO_TARGET = {
    ("POST", "/investors"),
    ("POST", "/tasks"),
    ("GET", "/jobs"),
    ("GET", "/exports/investor.{file_format}"),
    ("GET", "/exports/contact.{file_format}"),
    ("GET", "/exports/interaction.{file_format}"),
    ("GET", "/exports/kpi.{file_format}"),
    ("GET", "/imports/templates/{entity}.xlsx"),
}

NEW_PASSWORD = "Tulipe-Horizon-Quartz-92"
BODIES: dict[tuple[str, str], Any] = {
    ("POST", "/auth/login"): {"email": "{email}", "password": USER_PASSWORD},
    ("POST", "/auth/refresh"): {"refresh_token": "{refresh_token}"},
    ("POST", "/auth/password-reset/request"): {"email": "{email}"},
    ("POST", "/auth/password-reset/confirm"): {
        "token": "{reset_token}",
        "new_password": NEW_PASSWORD,
    },
    ("PUT", "/auth/me"): {"full_name": "Renamed Caller"},
    ("PUT", "/auth/me/preferences"): {"daily_digest": False},
    ("PUT", "/auth/me/password"): {
        "current_password": USER_PASSWORD,
        "new_password": NEW_PASSWORD,
    },
    ("POST", "/investors"): {"name": "Nouvel investisseur"},
    ("PUT", "/investors/{investor_id}"): {"name": "Renamed"},
    ("PATCH", "/investors/{investor_id}"): {"notes": "Updated"},
    ("POST", "/contacts/investor/{investor_id}"): {"name": "Jeanne Martin"},
    ("PUT", "/contacts/{contact_id}"): {"name": "Paul Durand"},
    ("PATCH", "/contacts/{contact_id}"): {"phone": "01 23 45 67 89"},
    ("POST", "/interactions/investor/{investor_id}"): {"type": "appel", "date": "2026-11-02"},
    ("PUT", "/interactions/{interaction_id}"): {"notes": "Called back"},
    ("POST", "/kpis/investor/{investor_id}"): {"year": 2026, "month": 10, "rdv_count": 1},
    ("PUT", "/kpis/{kpi_id}"): {"rdv_count": 5},
    ("POST", "/users"): {
        "email": "new.hire@crm.test",
        "full_name": "New Hire",
        "password": NEW_PASSWORD,
    },
    ("PUT", "/users/{user_id}"): {"full_name": "Someone Else"},
    ("POST", "/auth/2fa/enable"): {"code": "123456"},
    ("POST", "/auth/2fa/disable"): {"password": USER_PASSWORD, "code": "123456"},
    ("POST", "/gdpr/anonymize"): {"entity": "contact", "id": "{contact_id}"},
    ("POST", "/tasks"): {"title": "Rappeler Jeanne", "due_date": "2026-11-30"},
    ("PUT", "/tasks/{task_id}"): {"title": "Rappeler Paul"},
    ("PATCH", "/tasks/{task_id}"): {"priority": "haute"},
    ("POST", "/tasks/{task_id}/snooze"): {"days": 2},
    ("PUT", "/follow-up-rules/{key}"): {"delay_days": 4},
}
# Allowed operations whose answer depends on a state the arrangement does not set up (no 2FA
# set up yet): past the policy, but not a success.
ALLOWED_STATUS = {
    # A JSON body where a multipart form is expected: past the policy, refused by validation.
    ("POST", "/imports"): 422,
    ("POST", "/auth/2fa/enable"): 409,
    ("POST", "/auth/2fa/disable"): 409,
}
QUERIES: dict[tuple[str, str], dict[str, str]] = {
    ("GET", "/investors/search"): {"q": "acme"},
    ("GET", "/gdpr/export"): {"email": "jeanne@acme.test"},
}


def _documented_operations() -> list[tuple[str, str]]:
    from main import app

    paths: dict[str, dict[str, Any]] = app.openapi()["paths"]
    return sorted(
        (method.upper(), path.removeprefix(API))
        for path, item in paths.items()
        if path.startswith(API)
        for method in item
    )


def expected(role: str, operation: tuple[str, str], owned: bool) -> bool:
    """Whether the table lets `role` perform `operation` on a record owned by it or not."""
    grant = TABLE[role][OPERATIONS[operation]]
    return grant == YES or (grant == OWN and (owned or operation in NO_TARGET))


async def _arrange(role: str, owned: bool) -> tuple[dict[str, str], dict[str, Any]]:
    """A caller of `role`, one record of each kind owned by it (or by someone else), and the
    path parameters naming them."""
    caller = await create_user(f"{role}.caller@crm.test", role=role)
    other = await create_user("someone.else@crm.test", role="user")
    owner = caller if owned else other
    investor = await scalar(
        "INSERT INTO investors (name, owner_id) VALUES ('Acme Capital', :o) RETURNING id", o=owner
    )
    contact = await scalar(
        "INSERT INTO contacts (investor_id, name) VALUES (:i, 'Jeanne') RETURNING id", i=investor
    )
    # Written by someone else on the caller's investor, or on another's: the caller may change
    # it as the investor's owner only.
    interaction = await scalar(
        "INSERT INTO interactions (investor_id, type, date, created_by) "
        "VALUES (:i, 'appel', '2026-11-01', :by) RETURNING id",
        i=investor,
        by=other,
    )
    kpi = await scalar(
        "INSERT INTO kpis (investor_id, year, month) VALUES (:i, 2026, 1) RETURNING id", i=investor
    )
    # Given to the caller by someone else (or by someone else to someone else): the caller
    # may change it as its assignee only.
    task = await scalar(
        "INSERT INTO tasks (title, due_date, assignee_id, created_by) "
        "VALUES ('Rappeler', '2026-11-30', :to, :by) RETURNING id",
        to=owner,
        by=other,
    )
    # One's own notification: every role reads it (another's is simply not found).
    notification = await scalar(
        "INSERT INTO notifications (user_id, kind, title) "
        "VALUES (:u, 'investor_assigned', 'Bonjour') RETURNING id",
        u=caller,
    )
    job = await scalar(
        "INSERT INTO jobs (type, status, payload, max_attempts, created_by) "
        "VALUES ('jobs.purge', 'failed', '{}', 3, :by) RETURNING id",
        by=owner,
    )
    imported = await scalar(
        "INSERT INTO imports (entity, mode, on_duplicate, file_format, filename, outcome, "
        "created_by) VALUES ('investor', 'dry_run', 'error', 'csv', 'a.csv', 'succeeded', :by) "
        "RETURNING id",
        by=owner,
    )
    # An investor in the trash, to restore or destroy.
    trashed = await scalar(
        "INSERT INTO investors (name, owner_id) VALUES ('Deleted Capital', :o) RETURNING id",
        o=owner,
    )
    await execute(
        "WITH entry AS (INSERT INTO trash_entries (entity, entity_id, deleted_by, purge_after) "
        "VALUES ('investor', :i, :by, now() + interval '30 days') RETURNING id, deleted_at) "
        "UPDATE investors SET deleted_at = entry.deleted_at, deleted_by = :by, "
        "trash_entry_id = entry.id FROM entry WHERE investors.id = :i",
        i=trashed,
        by=other,
    )
    params = {
        "investor_id": investor,
        "contact_id": contact,
        "interaction_id": interaction,
        "kpi_id": kpi,
        "task_id": task,
        "key": "stage_client",
        "job_id": job,
        "notification_id": notification,
        "import_id": imported,
        "user_id": other,
        "year": 2026,
        "month": 1,
        "email": f"{role}.caller@crm.test",
        "caller_id": caller,
        "entity": "investor",
        "entity_id": trashed,
        "file_format": "xlsx",
    }
    return await bearer(caller), params


def _fill(value: Any, params: dict[str, Any]) -> Any:
    if isinstance(value, dict):
        return {key: _fill(item, params) for key, item in value.items()}
    # A placeholder alone stands for the value itself: an id stays a JSON number.
    if isinstance(value, str) and value.startswith("{") and value[1:-1] in params:
        return params[value[1:-1]]
    return value.format(**params) if isinstance(value, str) else value


def test_every_documented_operation_is_in_the_table_and_in_the_policy() -> None:
    documented = _documented_operations()
    assert set(documented) == set(OPERATIONS), "operations missing from (or stale in) the test"
    assert set(documented) == set(POLICY), "operations missing from (or stale in) core.policy"


@pytest.mark.parametrize("owned", [True, False], ids=["own record", "another's record"])
@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(
    "operation", sorted(OPERATIONS), ids=lambda op: f"{op[0]} {op[1]}" if op[0] else str(op)
)
async def test_permission_matrix(
    client: AsyncClient, role: str, owned: bool, operation: tuple[str, str]
) -> None:
    headers, params = await _arrange(role, owned)
    method, path = operation
    if method == "POST" and path == "/jobs/{job_id}/cancel":
        await scalar(
            "UPDATE jobs SET status = 'queued' WHERE id = :id RETURNING id", id=params["job_id"]
        )
    if operation == ("POST", "/auth/refresh"):
        login = {"email": params["email"], "password": USER_PASSWORD}
        logged_in = await client.post(f"{API}/auth/login", json=login)
        params["refresh_token"] = logged_in.json()["refresh_token"]
    if operation == ("POST", "/auth/password-reset/confirm"):
        async with db.sessionmaker() as session, session.begin():
            params["reset_token"] = await PasswordResetService(session).mint_token(
                params["caller_id"]
            )
    body = BODIES.get(operation)
    response = await client.request(
        method,
        API + path.format(**params),
        params=QUERIES.get(operation),
        json=None if body is None else _fill(body, params),
        headers=headers,
    )
    if expected(role, operation, owned):
        if operation in ALLOWED_STATUS:
            assert response.status_code == ALLOWED_STATUS[operation], (role, response.text)
        else:
            assert response.status_code in (200, 201, 202, 204), (role, response.text)
    else:
        assert response.status_code == 403, (role, response.text)
        body = error_of(response)
        assert body["code"] == "forbidden"
        assert body["detail"].startswith("Not allowed"), body


@pytest.mark.parametrize(
    ("role", "method", "path"),
    [
        ("viewer", "PUT", "/investors/{id}"),
        ("viewer", "DELETE", "/contacts/{id}"),
        ("viewer", "POST", "/interactions/investor/{id}"),
        ("user", "DELETE", "/investors/{id}"),
        ("user", "POST", "/jobs/{id}/retry"),
        ("manager", "DELETE", "/users/{id}"),
        ("manager", "DELETE", "/trash/investor/{id}"),
        ("user", "POST", "/trash/investor/{id}/restore"),
        ("viewer", "GET", "/trash"),
    ],
)
async def test_a_refusal_by_role_alone_comes_before_the_record_is_looked_up(
    client: AsyncClient, role: str, method: str, path: str
) -> None:
    headers = await bearer(await create_user(f"{role}.caller@crm.test", role=role))
    response = await client.request(
        method, API + path.format(id=2_000_000_000), json={"name": "x"}, headers=headers
    )
    assert response.status_code == 403, response.text
    assert error_of(response)["code"] == "forbidden"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/investors/{id}"),
        ("PUT", "/contacts/{id}"),
        ("PUT", "/interactions/{id}"),
        ("DELETE", "/kpis/{id}"),
        ("GET", "/jobs/{id}"),
    ],
)
async def test_a_refusal_by_ownership_needs_the_record_a_missing_one_is_404(
    client: AsyncClient, method: str, path: str
) -> None:
    headers = await bearer(await create_user("user@crm.test", role="user"))
    response = await client.request(
        method, API + path.format(id=2_000_000_000), json={"name": "x"}, headers=headers
    )
    assert response.status_code == 404, response.text


async def test_a_user_refused_on_another_s_record_hears_the_rule(client: AsyncClient) -> None:
    headers, params = await _arrange("user", owned=False)
    response = await client.patch(
        f"{API}/investors/{params['investor_id']}", json={"notes": "x"}, headers=headers
    )
    assert response.status_code == 403
    assert error_of(response) == {
        "detail": "Not allowed: only the investor's owner, a manager or an admin may change it",
        "code": "forbidden",
    }
    untouched = await scalar("SELECT notes FROM investors WHERE id = :id", id=params["investor_id"])
    assert untouched is None


async def test_a_user_may_change_an_interaction_it_wrote_on_another_s_investor(
    client: AsyncClient,
) -> None:
    headers, params = await _arrange("user", owned=False)
    created = await client.post(
        f"{API}/interactions/investor/{params['investor_id']}",
        json={"type": "reunion", "date": "2026-11-03"},
        headers=headers,
    )
    assert created.status_code == 201, created.text
    mine = created.json()["id"]
    changed = await client.put(
        f"{API}/interactions/{mine}", json={"notes": "Compte rendu"}, headers=headers
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["notes"] == "Compte rendu"
    deleted = await client.delete(f"{API}/interactions/{mine}", headers=headers)
    assert deleted.status_code == 204
    # The one someone else wrote on the same investor stays out of reach.
    theirs = await client.delete(f"{API}/interactions/{params['interaction_id']}", headers=headers)
    assert theirs.status_code == 403


def test_the_policy_grants_what_the_table_says() -> None:
    columns = {
        "read": Action.read,
        "write": Action.write,
        "log": Action.log_interaction,
        "delete": Action.delete,
        "operate": Action.operate,
        "follow": Action.follow_jobs,
        "users": Action.manage_users,
        "trash": Action.manage_trash,
        "purge": Action.purge_trash,
        "audit": Action.audit,
        "gdpr": Action.gdpr,
        "configure": Action.configure,
        "self": Action.self_service,
        "public": Action.public,
    }
    as_grant = {YES: Grant.all, OWN: Grant.owned, NO: Grant.none}
    for role, row in TABLE.items():
        for column, value in row.items():
            assert GRANTS[UserRole(role)][columns[column]] is as_grant[value], (role, column)
    reassign = {role: GRANTS[role][Action.reassign] for role in UserRole}
    assert reassign == {
        UserRole.admin: Grant.all,
        UserRole.manager: Grant.all,
        UserRole.user: Grant.none,
        UserRole.viewer: Grant.none,
    }


# The README's role table (French), cell by cell: what each grant reads as.
README_CELLS = {Grant.all: "oui", Grant.owned: "ce qu'il possède", Grant.none: "non (403)"}
README_COLUMNS = (
    Action.read,
    Action.write,
    Action.delete,
    Action.reassign,
    Action.operate,
    Action.manage_users,
)


def test_the_readme_role_table_is_the_policy() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    rows = {}
    for line in readme.splitlines():
        match = re.match(r"^\| `(admin|manager|user|viewer)` \|(.*)\|$", line)
        if match:
            rows[match[1]] = [cell.strip() for cell in match[2].split("|")]
    assert set(rows) == set(ROLES)
    for role, cells in rows.items():
        grants = GRANTS[UserRole(role)]
        wanted = [README_CELLS[grants[action]] for action in README_COLUMNS]
        # A `user` follows its own jobs: the cell says so after the grant of `operate`.
        if grants[Action.follow_jobs] is Grant.owned:
            wanted[4] += ", sauf suivre ses propres tâches de fond"
        assert cells == wanted, role
