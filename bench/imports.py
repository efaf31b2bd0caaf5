"""The spreadsheet import's figures (issue 17), measured on the bench cluster in a database of
its own.

    .venv/bin/python -m bench.imports                 (also run by `make bench`)
    .venv/bin/python -m bench.imports --rows 5000     (a quick check)

A 50,000-row investors xlsx (every column of the template filled) is imported twice, each time
in a fresh process that does what the API and the worker do: the pre-scan of the upload (as
POST /imports runs it before its 202), then the job's processing, in dry run, then in commit
mode. Each reports its times and its own peak RSS; targets: dry run <= 10 s, commit <= 20 s,
peak <= 300 MB.
"""

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import text

from bench.cluster import Cluster, start_cluster
from bench.run import write_latest
from core.config import PROJECT_ROOT, settings
from core.migrations import upgrade_to_head

DATABASE = "bench_imports"
ROWS = 50_000
RESULTS = PROJECT_ROOT / "bench" / "results" / "imports.md"
WORKBOOK = PROJECT_ROOT / "bench" / "results" / "imports.xlsx.tmp"
HEADER = [
    "Nom",
    "E-mail",
    "Téléphone",
    "Site web",
    "Société",
    "Secteur",
    "Étape",
    "Type de client",
    "Actif",
    "Notes",
]
STAGES = ["Prospect froid", "Prospect tiède", "Prospect chaud", "En négociation", "Client"]


def write_workbook(path: Path, rows: int) -> None:
    """The investors' template headers and `rows` rows of generated values."""
    import xlsxwriter  # type: ignore[import-untyped]  # ships no type information

    workbook = xlsxwriter.Workbook(str(path), {"constant_memory": True})
    sheet = workbook.add_worksheet("Investisseurs")
    sheet.write_row(0, 0, HEADER)
    for n in range(1, rows + 1):
        sheet.write_row(
            n,
            0,
            [
                f"Investisseur {n}",
                f"investisseur{n}@exemple.fr",
                "+33 1 23 45 67 89",
                f"https://investisseur{n}.fr",
                f"Société {n % 997}",
                "Gestion de patrimoine",
                STAGES[n % len(STAGES)],
                "CGPI",
                "Oui",
                "Rencontré au salon Patrimonia, à rappeler en janvier.",
            ],
        )
    workbook.close()


async def run_one(mode: str, filename: str, content: bytes) -> dict[str, Any]:
    """In this process: accept the file (pre-scan included) as the API does, then process it
    as the worker does; the times and this process's peak RSS."""
    from core.db import Database
    from models.data_import import ImportMode, OnDuplicate
    from services.import_job import ImportRunner
    from services.imports import ImportService
    from services.spreadsheet_columns import SpreadsheetEntity

    async def no_progress(_: int) -> None:
        return None

    database = Database()
    database.configure(settings)
    try:
        admin = 1
        started = time.perf_counter()
        async with database.sessionmaker() as session, session.begin():
            accepted = await ImportService(session).accept(
                content,
                filename=filename,
                entity=SpreadsheetEntity.investor,
                mode=ImportMode(mode),
                on_duplicate=OnDuplicate.error,
                sheet=None,
                created_by=admin,
            )
        accepted_at = time.perf_counter()
        async with database.sessionmaker() as session, session.begin():
            await ImportRunner(session, no_progress).run(accepted.id)
        finished_at = time.perf_counter()
        async with database.sessionmaker() as session:
            result = await ImportService(session).read(accepted.id)
    finally:
        await database.dispose()
    return {
        "mode": mode,
        "accept_s": accepted_at - started,
        "process_s": finished_at - accepted_at,
        "total_s": finished_at - started,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "status": result.status.value,
        "created": result.created,
        "errors": result.error_count,
    }


def child(cluster: Cluster, mode: str, path: Path) -> dict[str, Any]:
    env = {**os.environ, "DATABASE_URL": cluster.url(DATABASE), "LOG_FORMAT": "text"}
    done = subprocess.run(
        [sys.executable, "-m", "bench.imports", "--child", mode, str(path)],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"the {mode} import failed:\n{done.stderr}")
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


async def reset(cluster: Cluster) -> None:
    from core.db import Database

    settings.database_url = cluster.url(DATABASE)
    database = Database()
    database.configure(settings)
    try:
        async with database.sessionmaker() as session, session.begin():
            await session.execute(
                text(
                    "TRUNCATE investors, investor_stage_changes, imports, import_errors, jobs, "
                    "pgqueuer RESTART IDENTITY CASCADE"
                )
            )
            # The import's author: the first user, as the API's first admin.
            await session.execute(
                text(
                    "INSERT INTO users (id, email, full_name, hashed_password, role) "
                    "VALUES (1, 'bench@crm.test', 'Bench', 'x', 'admin') "
                    "ON CONFLICT (id) DO NOTHING"
                )
            )
    finally:
        await database.dispose()


def render(rows: int, size: int, runs: list[dict[str, Any]]) -> str:
    targets = {"dry_run": "<= 10 s", "commit": "<= 20 s"}
    lines = [
        "## Import (xlsx)",
        "",
        f"{rows:,} investors, one xlsx of {size / 1024 / 1024:.1f} MiB; each mode in a fresh "
        "process: the pre-scan POST /imports runs before its 202, then the job's processing.",
        "",
        "| Mode | Pre-scan | Processing | Total | Target | Peak RSS (target <= 300 MB) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        lines.append(
            f"| {run['mode']} ({run['status']}, {run['created']:,} created) "
            f"| {run['accept_s']:.2f} s | {run['process_s']:.2f} s | {run['total_s']:.2f} s "
            f"| {targets[run['mode']]} | {run['peak_rss_mb']:.0f} MB |"
        )
    return "\n".join([*lines, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, path = args.child
        content = Path(path).read_bytes()
        print(json.dumps(asyncio.run(run_one(mode, Path(path).name, content))))
        return
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_workbook(WORKBOOK, args.rows)
    cluster = start_cluster()
    try:
        cluster.ensure_database(DATABASE)
        upgrade_to_head(cluster.url(DATABASE))
        asyncio.run(reset(cluster))
        runs = [child(cluster, mode, WORKBOOK) for mode in ("dry_run", "commit")]
    finally:
        cluster.stop()
    report = render(args.rows, WORKBOOK.stat().st_size, runs)
    WORKBOOK.unlink(missing_ok=True)
    RESULTS.write_text(report)
    print(report)
    write_latest()


if __name__ == "__main__":
    main()
