"""`python main.py` stops its embedded PostgreSQL whatever stops the API: SIGTERM (`kill`,
systemd, `timeout`), SIGINT (Ctrl+C), SIGHUP (a closed terminal), or a start-up that fails once
the cluster runs. Each test runs the real command in a subprocess on its own data directory."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from core.config import PROJECT_ROOT
from core.embedded import pg_bin, process_exists
from tests.uvicorn_process import free_port

# Generous: a cold start runs initdb and every migration on a shared, busy machine.
START_TIMEOUT_S = 180.0
# What the issue allows between the signal and a fully stopped API and cluster.
STOP_TIMEOUT_S = 15.0


@pytest.fixture(scope="module")
def pgdata(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data directory for the module: initialised by the first start, reused by the next."""
    return tmp_path_factory.mktemp("shutdown") / "pgdata"


def _is_running(pid: int) -> bool:
    """True while `pid` runs; a zombie (dead, not yet reaped) counts as stopped."""
    if not process_exists(pid):
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs: the signal check above is all there is
    # The state follows the command name, which is in parentheses and may contain spaces.
    return stat.rpartition(")")[2].split()[0] != "Z"


def postmasters_of(pgdata: Path) -> list[int]:
    """Pids of the running processes whose command line names `pgdata` (a postmaster keeps its
    `-D`; its children rename themselves)."""
    needle = os.fsencode(str(pgdata.resolve()))
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        is_postgres = Path(os.fsdecode(cmdline[0])).name == "postgres"
        if is_postgres and any(needle in arg for arg in cmdline) and _is_running(int(proc.name)):
            pids.append(int(proc.name))
    return pids


@dataclass
class MainProcess:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"main.py exited early:\n{self.output()}"
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        pytest.fail(f"/health never answered 200:\n{self.output()}")

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"main.py still runs {timeout:.0f} s later:\n{self.output()}")


@pytest.fixture
def start_main(pgdata: Path, tmp_path: Path) -> Iterator[Callable[[int], MainProcess]]:
    """Starts `python main.py` on `pgdata` and a port; whatever the outcome, kills what is left."""
    started: list[MainProcess] = []

    def start(port: int) -> MainProcess:
        log = tmp_path / f"main-{len(started)}.log"
        env = {
            **os.environ,
            "DATABASE_URL": "",  # empty means unset, whatever a .env says: the embedded server
            "EMBEDDED_PGDATA": str(pgdata),
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "PYTHONUNBUFFERED": "1",
        }
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, str(PROJECT_ROOT / "main.py")],
                cwd=tmp_path,  # no .env of the developer's is read
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a signal we send reaches main.py alone
            )
        started.append(MainProcess(process, port, log))
        return started[-1]

    try:
        yield start
    finally:
        for main in started:
            if main.process.poll() is None:
                main.process.kill()
                main.process.wait()
        _kill_leftover_cluster(pgdata)


def _kill_leftover_cluster(pgdata: Path) -> None:
    if (pgdata / "postmaster.pid").exists():
        subprocess.run(
            [str(pg_bin("pg_ctl")), "-D", str(pgdata), "-m", "immediate", "-w", "stop"],
            capture_output=True,
            check=False,
            timeout=60,
        )
    for pid in postmasters_of(pgdata):
        os.kill(pid, signal.SIGKILL)


def _postmaster_pid(pgdata: Path) -> int:
    return int((pgdata / "postmaster.pid").read_text().splitlines()[0])


def assert_cluster_stopped(pgdata: Path, postmaster: int | None) -> None:
    assert not (pgdata / "postmaster.pid").exists()
    if postmaster is not None:
        assert not _is_running(postmaster)
    assert postmasters_of(pgdata) == []


@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name
)
def test_a_stop_signal_stops_the_api_and_its_embedded_postgres(
    start_main: Callable[[int], MainProcess], pgdata: Path, signum: signal.Signals
) -> None:
    main = start_main(free_port())
    main.wait_healthy()
    postmaster = _postmaster_pid(pgdata)
    assert _is_running(postmaster)

    main.process.send_signal(signum)

    assert main.wait_exit(STOP_TIMEOUT_S) == 0, main.output()
    assert_cluster_stopped(pgdata, postmaster)


def test_a_failed_start_up_stops_the_embedded_postgres(
    start_main: Callable[[int], MainProcess], pgdata: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        main = start_main(taken.getsockname()[1])
        status = main.wait_exit(START_TIMEOUT_S)

    output = main.output()
    assert status != 0, output
    # The cluster did start (and the app with it) before the port turned out to be taken.
    assert "Starting embedded PostgreSQL" in output
    assert "address already in use" in output.lower(), output
    assert_cluster_stopped(pgdata, None)
