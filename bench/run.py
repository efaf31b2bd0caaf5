"""`make bench`: the API against the bare reference, side by side, on a seeded database.

    .venv/bin/python -m bench.run [small] [large]

For each size: seed (or reuse) the bench database, serve the API as in production (uvicorn,
uvloop, httptools, no access log, one worker) and the bare reference with the same settings,
drive both with wrk (1 thread, 32 connections, 3 s warm-up then 10 s) on random existing ids,
measure the single-request latency of the heavier reads, run pgbench, and EXPLAIN (ANALYZE,
BUFFERS) every request path's SQL. On 2+ cores the API sits on core 0, PostgreSQL and wrk on
core 1. Results: bench/results/<size>.md, combined into bench/results/latest.md.
"""

import argparse
import asyncio
import contextlib
import http.client
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from bench.cluster import Cluster, cpu_count, start_cluster
from bench.explain import PlanCheck, explain_request_paths
from bench.seed import BENCH_EMAIL, BENCH_PASSWORD, SIZES, ensure_seeded
from core.config import PROJECT_ROOT
from core.embedded import pg_bin

BENCH_DIR = PROJECT_ROOT / "bench"
RESULTS_DIR = BENCH_DIR / "results"
LUA_SCRIPT = BENCH_DIR / "lua" / "random_id.lua"
UVICORN = [
    str(Path(sys.executable).parent / "uvicorn"),
    "--loop",
    "uvloop",
    "--http",
    "httptools",
    "--no-access-log",
    "--no-server-header",
    "--workers",
    "1",
    "--host",
    "127.0.0.1",
]
WRK_THREADS, WRK_CONNECTIONS, WARMUP_S, DURATION_S = 1, 32, 3, 10
SINGLE_REQUESTS = 20
SINGLE_BUDGET_MS = 20_000
BENCH_SECRET = "bench-secret-key-not-used-anywhere-else-0123456789"  # noqa: S105
# Rows written by the write benchmarks live outside the seeded calendar and are removed after.
WRITE_YEAR, WRITE_DATE = 2026, "2026-01-15"
PAGE_SIZE = 50
# Stands for the API's own next_cursor of the last page, fetched once the API is up.
DEEP_CURSOR = "{deep_cursor}"

WRK_MISSING = """wrk is not installed: the benchmark needs it as its load generator.
Install it with:   sudo apt-get update && sudo apt-get install -y wrk
(macOS: brew install wrk). Then run `make bench` again."""


@dataclass(frozen=True)
class Endpoint:
    key: str
    label: str
    # {id}: a random investor id; {kpi_id}: one with KPIs; {month}: 1-12 (all three drawn per
    # request by the Lua script); {deep_cursor}: fixed for the run, see with_deep_cursor.
    path: str
    method: str = "GET"
    body: str = ""
    reference: str | None = None  # key of the reference endpoint serving the same SQL
    single: bool = False  # also measured as single sequential requests

    @property
    def is_read(self) -> bool:
        return self.method == "GET"


def endpoints(investors: int) -> list[Endpoint]:
    deep = max(investors - PAGE_SIZE, 0)
    page = f"limit={PAGE_SIZE}"
    interaction = json.dumps(
        {"type": "appel", "date": WRITE_DATE, "duration_minutes": 15, "subject": "Appel bench"}
    )
    kpi = (
        f'{{"year": {WRITE_YEAR}, "month": {{month}}, "rdv_count": 3, "pitchs": 1, '
        '"revenue": 1500.5, "commission_rate": 1.25}'
    )

    def search(term: str) -> str:
        return f"/api/v1/investors/search?q={quote(term)}"

    return [
        Endpoint("ref_get", "reference: GET one investor", "/investors/{id}"),
        Endpoint("ref_list", "reference: list page 1", f"/investors?{page}"),
        Endpoint("ref_deep", "reference: list deep page", f"/investors?{page}&skip={deep}"),
        Endpoint(
            "ref_deep_cursor",
            "reference: list deep page (cursor)",
            f"/investors?{page}&cursor={DEEP_CURSOR}",
        ),
        Endpoint(
            "get", "GET one investor", "/api/v1/investors/{id}", reference="ref_get", single=True
        ),
        Endpoint(
            "list", "list page 1", f"/api/v1/investors?{page}", reference="ref_list", single=True
        ),
        Endpoint(
            "deep",
            f"list deep page (skip={deep:,})",
            f"/api/v1/investors?{page}&skip={deep}",
            reference="ref_deep",
            single=True,
        ),
        # The same rows as the skip page above, reached with the keyset cursor instead.
        Endpoint(
            "deep_cursor",
            "list deep page (cursor)",
            f"/api/v1/investors?{page}&cursor={DEEP_CURSOR}",
            reference="ref_deep_cursor",
            single=True,
        ),
        Endpoint("search_rare", "search rare term", search("Quintavalle"), single=True),
        Endpoint("search_typo", "search typo (rare)", search("Quintavale"), single=True),
        Endpoint("search_common", "search common term", search("banque"), single=True),
        Endpoint("search_typo_common", "search typo (common)", search("Rotchild"), single=True),
        Endpoint("stats", "stats", "/api/v1/investors/stats", single=True),
        Endpoint(
            "unread_count",
            "notifications unread count",
            "/api/v1/notifications/unread-count",
            single=True,
        ),
        Endpoint("month", "month summary", "/api/v1/kpis/summary/month/2025/{month}", single=True),
        Endpoint(
            "annual", "annual summary", "/api/v1/kpis/summary/annual/{kpi_id}/2025", single=True
        ),
        # 1,000,000 tasks over 50 users at `large`: the bench user's day (docs/taches-relances.md).
        Endpoint(
            "tasks_today",
            "my tasks due today",
            "/api/v1/tasks?assignee_id=me&due=today",
            single=True,
        ),
        Endpoint(
            "post_interaction",
            "POST interaction",
            "/api/v1/interactions/investor/{id}",
            method="POST",
            body=interaction,
        ),
        Endpoint("kpi_upsert", "KPI upsert", "/api/v1/kpis/investor/{id}", "POST", kpi),
    ]


@dataclass
class LoadResult:
    requests: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    non2xx: int
    socket_errors: int


@dataclass
class Latency:
    median_ms: float
    p95_ms: float


@dataclass
class SizeReport:
    size: str
    investors: int
    load: dict[str, LoadResult | None] = field(default_factory=dict)
    single: dict[str, Latency | None] = field(default_factory=dict)
    pgbench: dict[str, float] = field(default_factory=dict)
    plans: list[PlanCheck] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# --- processes ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pinned(cmd: list[str], core: int | None) -> list[str]:
    return ["taskset", "-c", str(core), *cmd] if core is not None else cmd


@contextlib.contextmanager
def serve(app: str, env: dict[str, str], core: int | None, log_name: str) -> Iterator[int]:
    """Run `uvicorn app` as in production; yields its port once it answers."""
    port = free_port()
    log = (RESULTS_DIR / f"{log_name}.log.tmp").open("w")
    proc = subprocess.Popen(
        pinned([*UVICORN, "--port", str(port), app], core),
        cwd=PROJECT_ROOT,
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"{app} exited at start-up, see {log.name}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"{app} did not start within 60 s, see {log.name}")
            time.sleep(0.2)
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


class Client:
    """One keep-alive HTTP connection, for set-up calls and sequential latency samples."""

    def __init__(self, port: int, token: str | None = None) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def request(self, method: str, path: str, body: str = "") -> tuple[int, bytes]:
        headers = dict(self.headers)
        if body:
            headers["Content-Type"] = "application/json"
        try:
            self.conn.request(method, path, body=body or None, headers=headers)
            response = self.conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionError):
            # uvicorn closes idle keep-alive connections after 5 s: reconnect once.
            self.conn.close()
            self.conn.request(method, path, body=body or None, headers=headers)
            response = self.conn.getresponse()
        return response.status, response.read()

    def close(self) -> None:
        self.conn.close()


def concrete(path: str, investors: int) -> str:
    """The template with fixed ids: for set-up checks and sequential samples."""
    kpi_id = max(investors // 3 // 2 * 3, 3)
    return (
        path.replace("{kpi_id}", str(kpi_id))
        .replace("{id}", str(investors // 2 or 1))
        .replace("{month}", "6")
    )


# --- measurements ---------------------------------------------------------------------------

RESULT_LINE = re.compile(r"BENCH_RESULT (.*)")


def run_wrk(
    port: int, endpoint: Endpoint, token: str, investors: int, duration: int, core: int | None
) -> LoadResult:
    env = {
        **os.environ,
        "BENCH_METHOD": endpoint.method,
        "BENCH_PATH": endpoint.path,
        "BENCH_BODY": endpoint.body,
        "BENCH_TOKEN": token,
        "BENCH_MAX_ID": str(investors),
    }
    cmd = [
        "wrk",
        f"-t{WRK_THREADS}",
        f"-c{WRK_CONNECTIONS}",
        f"-d{duration}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA_SCRIPT),
        f"http://127.0.0.1:{port}",
    ]
    out = subprocess.run(pinned(cmd, core), env=env, capture_output=True, text=True, check=True)
    match = RESULT_LINE.search(out.stdout)
    if match is None:
        raise RuntimeError(f"wrk gave no result line:\n{out.stdout}\n{out.stderr}")
    values = {k: int(v) for k, v in (item.split("=") for item in match.group(1).split())}
    return LoadResult(
        requests=values["requests"],
        rps=values["requests"] / (values["duration_us"] / 1e6),
        p50_ms=values["p50_us"] / 1000,
        p95_ms=values["p95_us"] / 1000,
        p99_ms=values["p99_us"] / 1000,
        non2xx=values["non2xx"],
        socket_errors=values["socket_errors"],
    )


def single_latency(client: Client, endpoint: Endpoint, investors: int) -> Latency:
    """Median and 95th percentile of sequential requests on one connection (no concurrency)."""
    path, body = concrete(endpoint.path, investors), concrete(endpoint.body, investors)
    samples = []
    for _ in range(SINGLE_REQUESTS):
        started = time.perf_counter()
        client.request(endpoint.method, path, body)
        samples.append((time.perf_counter() - started) * 1000)
        if sum(samples) > SINGLE_BUDGET_MS:  # a multi-second endpoint: a few samples tell enough
            break
    return Latency(statistics.median(samples), nearest_rank(samples, 0.95))


def nearest_rank(samples: list[float], share: float) -> float:
    """The `share` percentile by nearest rank: of 20 samples, the 95th is the 19th."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def pgbench(cluster: Cluster, database: str, investors: int, core: int | None) -> dict[str, float]:
    """Select throughput of the cluster itself: the standard -S run and a select-by-id script."""
    cluster.ensure_database("pgbench")
    base = [str(pg_bin("pgbench")), "-h", cluster.socket_dir, "-U", "postgres"]
    has_tables = cluster.psql("pgbench", "SELECT to_regclass('pgbench_accounts') IS NOT NULL")
    if has_tables != "t":
        subprocess.run([*base, "-i", "-q", "-s", "10", "pgbench"], check=True, capture_output=True)
    script = RESULTS_DIR / "pgbench_investor.sql.tmp"
    script.write_text(f"\\set id random(1, {investors})\nSELECT * FROM investors WHERE id = :id;\n")
    runs = {
        "pgbench -S (standard select-only, scale 10)": [*base, "-S", "pgbench"],
        f"pgbench: SELECT * FROM investors WHERE id = random ({database})": [
            *base,
            "-f",
            str(script),
            database,
        ],
    }
    results = {}
    for label, cmd in runs.items():
        full = [*cmd[:-1], "-n", "-M", "prepared", "-c", "8", "-j", "1", "-T", "10", cmd[-1]]
        out = subprocess.run(pinned(full, core), capture_output=True, text=True, check=True)
        match = re.search(r"tps = ([0-9.]+)", out.stdout)
        results[label] = float(match.group(1)) if match else float("nan")
    return results


def wait_until_idle(cluster: Cluster, database: str, limit_s: float = 120) -> None:
    """Let the previous load's queued requests finish, so they do not weigh on the next one."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        busy = cluster.psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
            f"AND datname = '{database}' AND pid <> pg_backend_pid()",
        )
        if busy == "0":
            return
        time.sleep(0.5)


def cleanup_writes(cluster: Cluster, database: str) -> None:
    cluster.psql(
        database,
        f"DELETE FROM interactions WHERE date = '{WRITE_DATE}';"
        f"DELETE FROM kpis WHERE year = {WRITE_YEAR};",
    )


def login(port: int) -> str:
    client = Client(port)
    body = json.dumps({"email": BENCH_EMAIL, "password": BENCH_PASSWORD})
    status, payload = client.request("POST", "/api/v1/auth/login", body)
    client.close()
    if status != 200:
        raise SystemExit(f"Bench login failed ({status}): {payload[:300]!r}")
    token: str = json.loads(payload)["access_token"]
    return token


def fetch_deep_cursor(api: Client, investors: int) -> str | None:
    """The API's next_cursor of the page just before the last: it resumes at the last page
    (the rows of the skip-based deep page), encoded exactly as clients get it."""
    skip = max(investors - 2 * PAGE_SIZE, 0)
    status, body = api.request("GET", f"/api/v1/investors?limit={PAGE_SIZE}&skip={skip}")
    cursor = json.loads(body).get("next_cursor") if status == 200 else None
    return cursor if isinstance(cursor, str) else None


def with_deep_cursor(endpoint: Endpoint, cursor: str) -> Endpoint:
    return replace(endpoint, path=endpoint.path.replace(DEEP_CURSOR, quote(cursor, safe="")))


def compare_reference(
    api: Client, ref: Client, investors: int, deep_cursor: str | None, report: SizeReport
) -> None:
    """The reference must return the API's JSON, or the ratio means nothing."""
    by_key = {e.key: e for e in endpoints(investors)}
    for endpoint in by_key.values():
        reference = by_key.get(endpoint.reference or "")
        if reference is None:
            continue
        if DEEP_CURSOR in endpoint.path:
            if deep_cursor is None:
                continue
            endpoint = with_deep_cursor(endpoint, deep_cursor)
            reference = with_deep_cursor(reference, deep_cursor)
        api_path = concrete(endpoint.path, investors)
        ref_path = concrete(reference.path, investors)
        api_status, api_body = api.request("GET", api_path)
        ref_status, ref_body = ref.request("GET", ref_path)
        if api_status != 200:
            continue  # reported as n/a with the load figures
        if ref_status != 200 or json.loads(api_body) != json.loads(ref_body):
            report.notes.append(
                f"WARNING: the reference body differs from the API's for {api_path}"
            )


def measure_size(
    cluster: Cluster,
    size: str,
    database: str,
    cores: tuple[int | None, int | None],
    only: set[str] | None = None,
) -> SizeReport:
    """Load, single-request latency, pgbench and plans of one size (`only`: a quick subset)."""
    core_api, core_db = cores
    investors = SIZES[size]
    report = SizeReport(size, investors)
    cleanup_writes(cluster, database)
    api_env = {
        "DATABASE_URL": cluster.url(database),
        "SECRET_KEY": BENCH_SECRET,
        "DEBUG": "false",
        # As in production: jobs run in their own worker, not in the API measured here.
        "RUN_WORKER": "false",
    }
    ref_env = {"BENCH_DSN": cluster.dsn(database)}
    with (
        serve("main:app", api_env, core_api, f"api-{size}") as api_port,
        serve("bench.reference_app:app", ref_env, core_api, f"reference-{size}") as ref_port,
    ):
        token = login(api_port)
        api, ref = Client(api_port, token), Client(ref_port)
        deep_cursor = fetch_deep_cursor(api, investors)
        all_endpoints = []
        for endpoint in endpoints(investors):
            if only is not None and endpoint.key not in only:
                continue
            if DEEP_CURSOR not in endpoint.path:
                all_endpoints.append(endpoint)
            elif deep_cursor is not None:
                all_endpoints.append(with_deep_cursor(endpoint, deep_cursor))
            else:
                print(f"  {endpoint.label:<34} n/a (the API gave no next_cursor)", flush=True)
                report.load[endpoint.key] = None
        if deep_cursor is None:
            report.notes.append("cursor deep pages: n/a, the API gave no next_cursor to resume at")
        compare_reference(api, ref, investors, deep_cursor, report)
        for endpoint in all_endpoints:
            is_ref = endpoint.key.startswith("ref_")
            port, client = (ref_port, ref) if is_ref else (api_port, api)
            wait_until_idle(cluster, database)
            status, body = client.request(
                endpoint.method,
                concrete(endpoint.path, investors),
                concrete(endpoint.body, investors),
            )
            if status >= 400:
                print(f"  {endpoint.label:<34} n/a (HTTP {status}: {body[:120]!r})", flush=True)
                report.notes.append(f"{endpoint.label}: n/a, HTTP {status} {body[:100]!r}")
                report.load[endpoint.key] = None
                continue
            run_wrk(port, endpoint, token, investors, WARMUP_S, core_db)
            result = run_wrk(port, endpoint, token, investors, DURATION_S, core_db)
            report.load[endpoint.key] = result
            if result.requests == 0:
                print(f"  {endpoint.label:<34} no response within {DURATION_S} s", flush=True)
                continue
            print(
                f"  {endpoint.label:<34} {result.rps:8.0f} req/s  p50 {result.p50_ms:7.1f} ms"
                f"  p99 {result.p99_ms:7.1f} ms  errors {result.non2xx + result.socket_errors}",
                flush=True,
            )
        wait_until_idle(cluster, database)
        for endpoint in all_endpoints:
            if endpoint.single:
                ok = report.load.get(endpoint.key) is not None
                report.single[endpoint.key] = (
                    single_latency(api, endpoint, investors) if ok else None
                )
        api.close()
        ref.close()
    cleanup_writes(cluster, database)
    if only is not None:
        return report
    report.pgbench = pgbench(cluster, database, investors, core_db)
    report.plans = asyncio.run(explain_request_paths(cluster.url(database), investors))
    return report


# --- report ---------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def render_size(report: SizeReport, labels: dict[str, Endpoint], header: str) -> str:
    lines = [
        f"## {report.size} — {report.investors:,} investors",
        "",
        header,
        "",
        "| Endpoint | req/s | p50 ms | p95 ms | p99 ms | p99/p50 | x reference | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, endpoint in labels.items():
        result = report.load.get(key)
        if result is None:
            lines.append(f"| {endpoint.label} | n/a | | | | | | |")
            continue
        if result.rps == 0:
            lines.append(
                f"| {endpoint.label} | 0 (none answered within {DURATION_S} s) | | | | | | |"
            )
            continue
        ref = report.load.get(endpoint.reference) if endpoint.reference else None
        ratio = f"{result.rps / ref.rps:.2f}" if ref and ref.rps else ""
        spread = f"{result.p99_ms / result.p50_ms:.1f}" if result.p50_ms else ""
        lines.append(
            f"| {endpoint.label} | {result.rps:,.0f} | {result.p50_ms:.1f} | "
            f"{result.p95_ms:.1f} | {result.p99_ms:.1f} | {spread} | {ratio} | "
            f"{result.non2xx + result.socket_errors} |"
        )
    lines += [
        "",
        f"Single-request latency ({SINGLE_REQUESTS} sequential requests, one connection, no "
        "other load; fewer samples past 20 s; p95 by nearest rank):",
        "",
        "| Endpoint | median ms | p95 ms |",
        "|---|---:|---:|",
    ]
    lines += [
        f"| {labels[key].label} | {fmt(ms.median_ms)} | {fmt(ms.p95_ms)} |"
        if ms is not None
        else f"| {labels[key].label} | n/a | n/a |"
        for key, ms in report.single.items()
    ]
    lines += ["", "PostgreSQL alone (8 clients, 10 s, same cluster and core):", ""]
    lines += [f"- {label}: {tps:,.0f} tps" for label, tps in report.pgbench.items()]
    lines += [
        "",
        "EXPLAIN (ANALYZE, BUFFERS) of every statement on each request path "
        "(full plans in `bench/results/plans-" + report.size + ".md`):",
        "",
        "| Request path | statements | slowest ms | buffers (hit+read) | seq scans on big tables |",
        "|---|---:|---:|---:|---|",
    ]
    for check in report.plans:
        scans = ", ".join(check.seq_scans) or "none"
        if check.error:
            scans = f"not checked ({check.error})"
        lines.append(
            f"| {check.path} | {check.statements} | {check.slowest_ms:.1f} | "
            f"{check.buffers:,} | {scans} |"
        )
    lines += ["", *[f"- {note}" for note in report.notes]]
    return "\n".join(lines).rstrip() + "\n"


def machine_header(pinning: str, cores: int) -> str:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True
    ).stdout.strip()
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"Run {now}, commit {commit}, {cpu}, {cores} cores ({pinning}). "
        f"wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{DURATION_S}s after a {WARMUP_S} s "
        "warm-up, random existing id per request."
    )


def write_latest() -> str:
    parts = [
        "# Benchmark results",
        "",
        "Produced by `make bench` (both sizes) or `make bench SIZE=small`. The reference is a "
        "bare ASGI app (`bench/reference_app.py`) running the API's SQL through an asyncpg pool "
        "and returning the same JSON; `x reference` is the API's throughput divided by it.",
        "",
    ]
    # Each size's section, then the job queue's (bench/jobs.py), the audit trail's
    # (bench/audit.py), the exports' (bench/exports.py), the import's (bench/imports.py) and
    # the tasks' and notifications' (bench/notifications.py).
    for name in [*SIZES, "jobs", "audit", "exports", "imports", "notifications"]:
        section = RESULTS_DIR / f"{name}.md"
        if section.exists():
            parts.append(section.read_text())
    text = "\n".join(parts)
    (RESULTS_DIR / "latest.md").write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # Checked below: with `choices`, argparse (3.11) refuses an empty list for nargs="*".
    parser.add_argument("sizes", nargs="*", help=f"{' and/or '.join(SIZES)} (default: all)")
    parser.add_argument(
        "--only",
        metavar="KEYS",
        help="comma-separated endpoint keys (e.g. get,ref_get): load only, results not saved; "
        f"keys: {', '.join(e.key for e in endpoints(1))}",
    )
    args = parser.parse_args()
    unknown = sorted(set(args.sizes) - set(SIZES))
    if unknown:
        parser.error(f"unknown size {', '.join(unknown)} (choose from {', '.join(SIZES)})")
    only = set(args.only.split(",")) if args.only else None
    if shutil.which("wrk") is None:
        print(WRK_MISSING, file=sys.stderr)
        raise SystemExit(2)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    cores = cpu_count()
    two_cores = cores >= 2
    pinned_cores = (0, 1) if two_cores else (None, None)
    pinning = (
        "API on core 0, PostgreSQL + wrk on core 1" if two_cores else "single core, not pinned"
    )
    sizes = sorted(args.sizes or SIZES, key=list(SIZES).index)
    cluster = start_cluster()
    try:
        # Seed on every core first; only then pin the server, and this driver beside it.
        databases = {size: asyncio.run(ensure_seeded(cluster, size)) for size in sizes}
        if two_cores:
            cluster.pin({1})
            os.sched_setaffinity(0, {1})
        for size in sizes:
            print(f"== {size} ==", flush=True)
            report = measure_size(cluster, size, databases[size], pinned_cores, only)
            if only is not None:
                continue
            labels = {e.key: e for e in endpoints(report.investors)}
            (RESULTS_DIR / f"{size}.md").write_text(
                render_size(report, labels, machine_header(pinning, cores))
            )
            write_plans(report)
            # The raw figures, to compare runs or re-render the table without re-measuring.
            raw = asdict(report)
            for check in raw["plans"]:
                check.pop("plans")
            (RESULTS_DIR / f"{size}.json").write_text(json.dumps(raw, indent=1) + "\n")
    finally:
        cluster.stop()
    if only is None:
        print(write_latest())


def write_plans(report: SizeReport) -> None:
    text = [f"# Query plans — {report.size} ({report.investors:,} investors)", ""]
    for check in report.plans:
        text += [f"## {check.path}", ""]
        for sql, plan in check.plans:
            text += ["```sql", sql.strip(), "```", "", "```", plan.rstrip(), "```", ""]
    (RESULTS_DIR / f"plans-{report.size}.md").write_text("\n".join(text))


if __name__ == "__main__":
    main()
