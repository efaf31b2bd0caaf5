"""The spreadsheet exports' figures (issue 17), on the bench cluster in a database of its own.

    .venv/bin/python -m bench.exports                    (also run by `make bench`)
    .venv/bin/python -m bench.exports --investors 200000   (a quick check)

The database holds `--investors` investors (1,000,000 by default; one in ten inactive, so
`is_active=false` selects a tenth of them: 100,000 by default), written by one INSERT ...
SELECT generate_series. The API is served as in production (bench.run.serve: uvicorn, one
worker) and measured from outside:

- export of 100,000 investors (`is_active=false`): CSV and XLSX, time to the first byte and to
  the last; targets: CSV <= 3 s, XLSX <= 20 s;
- export of every investor as CSV, with the API process's resident memory (VmRSS, sampled
  every 50 ms) before and at its highest meanwhile; target: growth < 100 MB.
"""

import argparse
import asyncio
import http.client
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from bench.cluster import Cluster, start_cluster
from bench.run import BENCH_SECRET, login, serve, write_latest
from bench.seed import BENCH_EMAIL, BENCH_PASSWORD
from core.config import PROJECT_ROOT
from core.migrations import upgrade_to_head
from core.security import hash_password

DATABASE = "bench_exports"
RESULTS = PROJECT_ROOT / "bench" / "results" / "exports.md"
EXPORTS = "/api/v1/exports/investor"
RSS_SAMPLE_S = 0.05

# Text that a spreadsheet would take for a formula (`=`, `+`, `-`) on some rows, accents and
# separators on others: the neutralising and quoting paths are part of what is timed.
_FILL = """
INSERT INTO investors (name, email, phone, website, company, industry, notes, pipeline_stage,
                       client_type, is_active, owner_id)
SELECT 'Investisseur ' || n || CASE WHEN n % 7 = 0 THEN ' & Associés' ELSE '' END,
       'contact' || n || '@exemple-' || n % 1000 || '.fr',
       '+33 1 ' || lpad((n % 100)::text, 2, '0') || ' 45 67 ' || lpad((n % 89)::text, 2, '0'),
       'https://exemple-' || n % 1000 || '.fr',
       CASE WHEN n % 5 = 0 THEN '=Société ' || n ELSE 'Société ' || n || ', SA' END,
       (ARRAY['Banque', 'Assurance', 'Gestion de patrimoine', 'Family office'])[1 + n % 4],
       CASE WHEN n % 3 = 0 THEN 'Rencontré au salon; à relancer' END,
       (ARRAY['prospect_froid', 'prospect_tiede', 'prospect_chaud', 'en_negociation',
              'client', 'perdu'])[1 + n % 6],
       (ARRAY['cgpi', 'wholesale', 'institutionnel', 'autre'])[1 + n % 4],
       n % 10 <> 0,
       1
FROM generate_series(1, :count) AS n
"""


@dataclass(frozen=True)
class Download:
    first_byte_s: float
    total_s: float
    size_bytes: int


async def fill(url: str, investors: int) -> None:
    """The bench user and `investors` investors, once (reused while the count matches)."""
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            count = await conn.scalar(text("SELECT count(*) FROM investors"))
            if count == investors:
                return
            await conn.execute(text("TRUNCATE investors, users RESTART IDENTITY CASCADE"))
            await conn.execute(
                text(
                    "INSERT INTO users (email, full_name, hashed_password, role) "
                    "VALUES (:email, 'Bench', :hash, 'admin')"
                ),
                {"email": BENCH_EMAIL, "hash": hash_password(BENCH_PASSWORD)},
            )
            await conn.execute(text(_FILL), {"count": investors})
        async with engine.connect() as conn:
            autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await autocommit.execute(text("VACUUM ANALYZE investors"))
    finally:
        await engine.dispose()


def server_pid(port: int) -> int:
    """The uvicorn process serving `port` (bench.run.serve starts it with `--port <port>`)."""
    wanted = f"--port\0{port}\0".encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if wanted in (entry / "cmdline").read_bytes():
                    return int(entry.name)
            except OSError:
                continue
    raise SystemExit(f"no process serves port {port}")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise SystemExit(f"no VmRSS for process {pid}")


def download(port: int, token: str, path: str) -> Download:
    """GET `path` to the end, reading as it comes: the time to the first and last byte."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    started = time.perf_counter()
    conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
    response = conn.getresponse()
    if response.status != 200:
        raise SystemExit(f"{path}: HTTP {response.status} {response.read()[:200]!r}")
    first = response.read(1)
    first_byte = time.perf_counter() - started
    size = len(first)
    while chunk := response.read(256 * 1024):
        size += len(chunk)
    total = time.perf_counter() - started
    conn.close()
    return Download(first_byte, total, size)


def peak_rss_during(pid: int, work: threading.Thread) -> int:
    """The highest VmRSS of `pid` while `work` runs (started here)."""
    peak = rss_bytes(pid)
    work.start()
    while work.is_alive():
        peak = max(peak, rss_bytes(pid))
        time.sleep(RSS_SAMPLE_S)
    return max(peak, rss_bytes(pid))


def measure(cluster: Cluster, investors: int) -> str:
    env = {
        "DATABASE_URL": cluster.url(DATABASE),
        "SECRET_KEY": BENCH_SECRET,
        "DEBUG": "false",
        "RUN_WORKER": "false",
    }
    tenth = investors // 10
    with serve("main:app", env, None, "api-exports") as port:
        token = login(port)
        pid = server_pid(port)
        # A first small export warms the process (imports, pool, plans) before anything is timed.
        download(port, token, f"{EXPORTS}.csv?q=Investisseur")
        csv_part = download(port, token, f"{EXPORTS}.csv?is_active=false")
        xlsx_part = download(port, token, f"{EXPORTS}.xlsx?is_active=false")
        before = rss_bytes(pid)
        result: list[Download] = []
        work = threading.Thread(
            target=lambda: result.append(download(port, token, f"{EXPORTS}.csv"))
        )
        peak = peak_rss_during(pid, work)
        work.join()
    everything = result[0]
    growth_mb = (peak - before) / 1e6
    return "\n".join(
        [
            "## Exports",
            "",
            f"API served by uvicorn (one worker) on {investors:,} investors; `is_active=false` "
            f"selects {tenth:,} of them. Times from outside, to the last byte received.",
            "",
            "| Measure | Value | Target |",
            "|---|---:|---:|",
            f"| CSV, {tenth:,} investors | {csv_part.total_s:.2f} s "
            f"(first byte {csv_part.first_byte_s * 1000:.0f} ms, "
            f"{csv_part.size_bytes / 1e6:.1f} MB) | <= 3 s |",
            f"| XLSX, {tenth:,} investors | {xlsx_part.total_s:.2f} s "
            f"({xlsx_part.size_bytes / 1e6:.1f} MB) | <= 20 s |",
            f"| CSV, {investors:,} investors | {everything.total_s:.1f} s "
            f"(first byte {everything.first_byte_s * 1000:.0f} ms, "
            f"{everything.size_bytes / 1e6:.0f} MB) | |",
            f"| API RSS growth during it | {growth_mb:.0f} MB "
            f"({before / 1e6:.0f} -> {peak / 1e6:.0f} MB) | < 100 MB |",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--investors", type=int, default=1_000_000, help="investors to export")
    args = parser.parse_args()
    os.environ.setdefault("SECRET_KEY", BENCH_SECRET)
    cluster = start_cluster()
    try:
        cluster.ensure_database(DATABASE)
        url = cluster.url(DATABASE)
        upgrade_to_head(url)
        asyncio.run(fill(url, args.investors))
        report = measure(cluster, args.investors)
    finally:
        cluster.stop()
    RESULTS.write_text(report)
    print(report)
    write_latest()


if __name__ == "__main__":
    main()
