"""Dockerfile, .dockerignore, docker-compose.yml and deploy/nginx/nginx.conf, read as text and
parsed (PyYAML, crossplane): no Docker engine nor nginx binary runs here."""

import ipaddress
import itertools
import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import crossplane  # type: ignore[import-untyped]
import pytest
import yaml
from sqlalchemy.engine import make_url

from core.config import SECRET_FILE_SUFFIX, Settings, is_secret_field
from core.exceptions import (
    AppError,
    PayloadTooLargeError,
    ServiceUnavailableError,
    TooManyAttemptsError,
)
from core.observability import _VALID_REQUEST_ID

ROOT = Path(__file__).resolve().parent.parent
NGINX_CONF = ROOT / "deploy" / "nginx" / "nginx.conf"
SECRET_VARIABLES = {
    name.upper() for name, field in Settings.model_fields.items() if is_secret_field(field)
}
# A Compose variable whose value is a secret, interpolated from .env or the shell.
SECRET_INTERPOLATION = re.compile(r"\$\{?\w*(PASSWORD|SECRET|TOKEN|KEY)", re.I)
# The services built from the Dockerfile; postgres and nginx are official images.
APP_SERVICES = ["migrate", "api", "worker"]
APP_ROLE_URL = r"postgresql\+asyncpg://crm_app@postgres:5432/\$\{POSTGRES_DB:-crm\}"
OWNER_ROLE_URL = r"postgresql\+asyncpg://crm_owner@postgres:5432/\$\{POSTGRES_DB:-crm\}"

# The connection budget of docs/operations.md, for its worked example (`--scale api=3`, one
# worker service, every pool at its default).
SCALED_API_REPLICAS = 3
LISTEN_CONNECTIONS = 1  # per API process (ADR 0002)
QUEUE_CONNECTIONS = 1  # PgQueuer's own in the worker: LISTEN, claims, heartbeats (ADR 0008)
MAINTENANCE_CONNECTIONS = 3  # migrate, a backup's pg_dump, an operator's psql
SUPERUSER_RESERVED_CONNECTIONS = 3  # PostgreSQL's default, out of reach of the app's roles

# nginx's own directives that crossplane 0.5.8 (2022) does not know yet.
NEWER_NGINX_DIRECTIVES = {"http2"}  # nginx 1.25.1

Directive = dict[str, Any]


# --- Dockerfile -----------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    instructions = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, arguments = line.partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def image_command() -> list[str]:
    """The CMD, which must be in exec form (a JSON list)."""
    (cmd,) = [args for kw, args in dockerfile_instructions() if kw == "CMD"]
    command: list[str] = json.loads(cmd)
    return command


def serve_command(command: list[str]) -> str:
    """An exec-form start command as one shell line (tests/test_hardening.py runs it)."""
    return shlex.join(command)


def uvicorn_processes() -> int:
    command = image_command()
    return int(command[command.index("--workers") + 1])


class TestDockerfile:
    def test_base_image_is_python_311_slim(self) -> None:
        assert dockerfile_instructions()[0] == ("FROM", "python:3.11-slim")

    def test_dependencies_are_installed_before_the_code_is_copied(self) -> None:
        instructions = dockerfile_instructions()
        copies = [i for i, (kw, _) in enumerate(instructions) if kw == "COPY"]
        installs = [
            i for i, (kw, args) in enumerate(instructions) if kw == "RUN" and "pip install" in args
        ]
        assert instructions[copies[0]] == ("COPY", "requirements.txt .")
        assert len(installs) == 1
        assert copies[0] < installs[0] < copies[1]
        assert "--no-cache-dir" in instructions[installs[0]][1]

    def test_runs_as_a_non_root_user(self) -> None:
        instructions = dockerfile_instructions()
        users = [args for kw, args in instructions if kw == "USER"]
        assert users, "no USER instruction"
        assert users[-1].split(":")[0] not in {"root", "0"}
        last_user = max(i for i, (kw, _) in enumerate(instructions) if kw == "USER")
        cmd = max(i for i, (kw, _) in enumerate(instructions) if kw == "CMD")
        assert last_user < cmd

    def test_cmd_serves_the_api_without_migrating(self) -> None:
        # Exec form, no shell: uvicorn is PID 1 and gets SIGTERM.
        command = image_command()
        assert command[:2] == ["uvicorn", "main:app"]
        # The one-shot migrate service migrates; replicas starting together must not race.
        line = serve_command(command)
        assert "alembic" not in line
        assert uvicorn_processes() >= 2
        assert "--proxy-headers" in line
        # uvicorn reads FORWARDED_ALLOW_IPS from the environment; "*" would trust any client.
        assert "--forwarded-allow-ips" not in line
        assert "--host 0.0.0.0" in line
        assert "--no-server-header" in line

    def test_healthcheck_probes_health_in_exec_form(self) -> None:
        (check,) = [args for kw, args in dockerfile_instructions() if kw == "HEALTHCHECK"]
        command = json.loads(check[check.index("CMD ") + 4 :])
        assert "http://127.0.0.1:8000/health" in " ".join(command)

    def test_no_secret_is_baked_in(self) -> None:
        for keyword, arguments in dockerfile_instructions():
            if keyword in {"ENV", "ARG", "LABEL"}:
                assert not re.search(r"SECRET|PASSWORD|TOKEN|DATABASE_URL", arguments, re.I)
            if keyword in {"COPY", "ADD"}:
                sources = arguments.split()[:-1]
                # Explicit sources: `COPY . .` would also take whatever sits in the checkout.
                assert not {".", ".env"} & set(sources), arguments

    def test_dockerignore_keeps_secrets_and_local_state_out(self) -> None:
        ignored = set((ROOT / ".dockerignore").read_text().split())
        assert {".env", ".git", ".venv", "data", "backups"} <= ignored

    def test_the_modules_compose_runs_are_in_the_image(self, compose: Any) -> None:
        copied = {args.split()[0] for kw, args in dockerfile_instructions() if kw == "COPY"}
        for name in APP_SERVICES:
            command = compose["services"][name].get("command", [])
            if command[:2] == ["python", "-m"]:
                assert command[2].split(".")[0] in copied, name


# --- docker-compose.yml ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> Any:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def compose_seconds(duration: str) -> float:
    """A Compose duration ("45s", "1m30s") in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(int(number) * units[unit] for number, unit in parts)


def postgres_setting(compose: Any, name: str) -> str:
    """A server setting given on the postgres service's command line (`-c name=value`)."""
    command: list[str] = compose["services"]["postgres"]["command"]
    assert command[0] == "postgres"
    values = [value for flag, value in itertools.pairwise(command) if flag == "-c"]
    (setting,) = [value for value in values if value.startswith(f"{name}=")]
    return setting.partition("=")[2]


class TestCompose:
    def test_postgres_service(self, compose: Any) -> None:
        postgres = compose["services"]["postgres"]
        assert postgres["image"] == "postgres:16"
        assert postgres["restart"] == "unless-stopped"
        volume, _, target = postgres["volumes"][0].partition(":")
        assert volume in compose["volumes"]  # a named volume, not a bind mount
        assert target == "/var/lib/postgresql/data"
        assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
        assert "POSTGRES_PASSWORD" not in postgres["environment"]
        assert postgres["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"
        assert "postgres_password" in postgres["secrets"]

    def test_postgres_connection_budget_fits_three_api_replicas(self, compose: Any) -> None:
        # docs/operations.md's worked example: every process's pool at its default, plus one
        # LISTEN connection per API process and the queue's own connection in the worker.
        defaults = Settings.model_fields
        pool = defaults["database_pool_size"].default + defaults["database_max_overflow"].default
        api = SCALED_API_REPLICAS * uvicorn_processes() * (pool + LISTEN_CONNECTIONS)
        worker = pool + QUEUE_CONNECTIONS
        needed = api + worker + MAINTENANCE_CONNECTIONS + SUPERUSER_RESERVED_CONNECTIONS
        assert needed <= int(postgres_setting(compose, "max_connections"))

    def test_only_nginx_publishes_ports(self, compose: Any) -> None:
        # `--scale api=3` needs an api without a fixed host port; postgres stays internal.
        published = {name for name, service in compose["services"].items() if "ports" in service}
        assert published == {"nginx"}

    @pytest.mark.parametrize("service", ["api", "worker"])
    def test_scaled_services_have_no_container_name(self, compose: Any, service: str) -> None:
        # A fixed name would make a second replica a conflict.
        assert "container_name" not in compose["services"][service]

    @pytest.mark.parametrize("service", APP_SERVICES)
    def test_one_image_for_migrate_api_and_worker(self, compose: Any, service: str) -> None:
        definition = compose["services"][service]
        assert definition["build"] == "."
        assert definition["image"] == compose["services"]["api"]["image"]
        assert definition["depends_on"]["postgres"] == {"condition": "service_healthy"}

    def test_migrate_is_a_one_shot_owner_service(self, compose: Any) -> None:
        migrate = compose["services"]["migrate"]
        assert migrate["command"] == ["alembic", "upgrade", "head"]
        assert migrate["restart"] == "no"
        environment = migrate["environment"]
        assert re.fullmatch(OWNER_ROLE_URL, environment["MIGRATION_DATABASE_URL"])
        assert environment["MIGRATION_DATABASE_PASSWORD_FILE"] == "/run/secrets/crm_owner_password"
        # The role the migrations grant the API's rights to (alembic/env.py reads its name).
        assert re.fullmatch(APP_ROLE_URL, environment["DATABASE_URL"])
        # The image's check probes the API's port, which a migration never opens.
        assert migrate["healthcheck"] == {"disable": True}

    @pytest.mark.parametrize("service", ["api", "worker"])
    def test_waits_for_the_migrations(self, compose: Any, service: str) -> None:
        depends_on = compose["services"][service]["depends_on"]
        assert depends_on["migrate"] == {"condition": "service_completed_successfully"}

    def test_api_service(self, compose: Any) -> None:
        api = compose["services"]["api"]
        assert api["restart"] == "unless-stopped"
        assert api["env_file"] in (".env", [".env"])
        assert "healthcheck" in api
        # The image's CMD (uvicorn, checked above): no migration at start-up.
        assert "command" not in api

    def test_api_runs_no_worker(self, compose: Any) -> None:
        assert compose["services"]["api"]["environment"]["RUN_WORKER"] == "false"

    def test_worker_service(self, compose: Any) -> None:
        worker = compose["services"]["worker"]
        assert worker["command"] == ["python", "-m", "worker"]
        assert worker["restart"] == "unless-stopped"
        assert worker["env_file"] in (".env", [".env"])
        # No HTTP server in it: the image's check would call it unhealthy.
        assert worker["healthcheck"] == {"disable": True}

    def test_worker_is_stopped_after_its_shutdown_grace(self, compose: Any) -> None:
        # SIGKILL comes at stop_grace_period: running jobs must have had their grace by then.
        worker = compose["services"]["worker"]
        grace = int(worker["environment"]["WORKER_SHUTDOWN_GRACE_SECONDS"])
        assert compose_seconds(worker["stop_grace_period"]) > grace

    @pytest.mark.parametrize("service", ["api", "worker"])
    def test_serves_as_the_application_role(self, compose: Any, service: str) -> None:
        environment = compose["services"][service]["environment"]
        assert re.fullmatch(APP_ROLE_URL, environment["DATABASE_URL"])
        assert environment["DATABASE_PASSWORD_FILE"] == "/run/secrets/crm_app_password"
        # Neither migrates: the owner's URL and password stay with the migrate service.
        assert not {name for name in environment if name.startswith("MIGRATION_")}
        assert "crm_owner_password" not in compose["services"][service]["secrets"]

    def test_api_secrets(self, compose: Any) -> None:
        environment = compose["services"]["api"]["environment"]
        assert environment["SECRET_KEY_FILE"] == "/run/secrets/secret_key"
        # Known in advance: no password is generated, so none is printed into the container log.
        assert environment["FIRST_ADMIN_PASSWORD_FILE"] == "/run/secrets/first_admin_password"

    def test_worker_gets_no_secret_it_does_not_use(self, compose: Any) -> None:
        # It signs no token and creates no admin: the key and that password stay with the API.
        worker = compose["services"]["worker"]
        assert {"secret_key", "first_admin_password"}.isdisjoint(worker["secrets"])
        assert {"SECRET_KEY_FILE", "FIRST_ADMIN_PASSWORD_FILE"}.isdisjoint(worker["environment"])

    @pytest.mark.parametrize("service", ["api", "worker"])
    def test_mail_goes_through_a_required_smtp_host(self, compose: Any, service: str) -> None:
        # A file outbox inside a container would lose the mail with the container.
        environment = compose["services"][service]["environment"]
        assert environment["EMAIL_BACKEND"] == "smtp"
        # `${VAR:?message}`: Compose refuses to start while SMTP_HOST is unset or empty.
        assert re.fullmatch(r"\$\{SMTP_HOST:\?[^}]+\}", environment["SMTP_HOST"])
        assert environment["SMTP_PASSWORD_FILE"] == "/run/secrets/smtp_password"

    def test_api_trusts_forwarded_headers_from_its_network_only(self, compose: Any) -> None:
        (network,) = compose["networks"]["default"]["ipam"]["config"]
        trusted = compose["services"]["api"]["environment"]["FORWARDED_ALLOW_IPS"]
        assert ipaddress.ip_network(trusted) == ipaddress.ip_network(network["subnet"])
        # What the API itself accepts ('*' and /0 are refused at start-up).
        accepted = Settings(_env_file=None, forwarded_allow_ips=[trusted]).forwarded_allow_ips
        assert accepted == [network["subnet"]]

    @pytest.mark.parametrize("service", [*APP_SERVICES, "postgres"])
    def test_no_secret_value_in_a_containers_environment(self, compose: Any, service: str) -> None:
        # `docker inspect` and every child process see the environment; secrets are files.
        environment = compose["services"][service]["environment"]
        for name, value in environment.items():
            assert name not in SECRET_VARIABLES | {"POSTGRES_PASSWORD", "SMTP_PASSWORD"}, name
            assert not SECRET_INTERPOLATION.search(str(value)), (name, value)
            if name in ("DATABASE_URL", "MIGRATION_DATABASE_URL"):
                with_defaults = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)
                assert make_url(with_defaults).password is None

    @pytest.mark.parametrize("service", [*APP_SERVICES, "postgres"])
    def test_each_secret_file_is_a_mounted_compose_secret(self, compose: Any, service: str) -> None:
        definition = compose["services"][service]
        files = {
            name: value
            for name, value in definition["environment"].items()
            if name.endswith(SECRET_FILE_SUFFIX)
        }
        assert files
        for name, path in files.items():
            secret = path.removeprefix("/run/secrets/")
            assert path == f"/run/secrets/{secret}", name
            assert secret in definition["secrets"], name
            # A file of the operator's, under secrets/ (ignored by git and by the image).
            assert compose["secrets"][secret] == {"file": f"./secrets/{secret}"}

    def test_secret_files_stay_out_of_git_and_of_the_image(self) -> None:
        assert "secrets/" in (ROOT / ".gitignore").read_text().split()
        assert "secrets" in (ROOT / ".dockerignore").read_text().split()

    def test_nginx_service(self, compose: Any) -> None:
        nginx = compose["services"]["nginx"]
        # The official image, on a pinned stable branch that has the upstream `resolve`
        # parameter (open source since 1.27.3): never `latest`, which changes under a restart.
        version = re.fullmatch(r"nginx:(\d+)\.(\d+)(-alpine)?", nginx["image"])
        assert version is not None, nginx["image"]
        assert (int(version[1]), int(version[2])) >= (1, 28)
        assert nginx["restart"] == "unless-stopped"
        assert "./deploy/nginx/nginx.conf:/etc/nginx/nginx.conf:ro" in nginx["volumes"]
        assert "api" in nginx["depends_on"]


# --- deploy/nginx/nginx.conf ----------------------------------------------------------------


@pytest.fixture(scope="module")
def nginx_payload() -> Any:
    """crossplane's reading of the file. `single`: the image's own includes (mime.types) are
    not here to read."""
    return crossplane.parse(str(NGINX_CONF), single=True)


@pytest.fixture(scope="module")
def nginx(nginx_payload: Any) -> list[Directive]:
    """The parsed configuration's top level."""
    (config,) = nginx_payload["config"]
    parsed: list[Directive] = config["parsed"]
    return parsed


def children(block: list[Directive], name: str) -> list[Directive]:
    return [directive for directive in block if directive["directive"] == name]


def only(block: list[Directive], name: str) -> Directive:
    (directive,) = children(block, name)
    return directive


def walk(block: list[Directive]) -> Iterator[Directive]:
    for directive in block:
        yield directive
        yield from walk(directive.get("block", []))


def http_block(nginx: list[Directive]) -> list[Directive]:
    block: list[Directive] = only(nginx, "http")["block"]
    return block


def proxied_locations(http: list[Directive]) -> Iterator[tuple[Directive, Directive]]:
    """(server, location) for every location that proxies to the API."""
    for server in children(http, "server"):
        for location in children(server["block"], "location"):
            if children(location["block"], "proxy_pass"):
                yield server, location


def effective(name: str, *levels: list[Directive]) -> dict[str, str]:
    """The headers a location really sends (proxy_set_header, add_header), innermost level
    first: nginx takes them from the innermost level that sets any, none from further out."""
    for block in levels:
        found = children(block, name)
        if found:
            return {d["args"][0].lower(): " ".join(d["args"][1:]) for d in found}
    return {}


def nginx_bytes(size: str) -> int:
    """An nginx size ("1m", "64k", "1048576") in bytes."""
    units = {"": 1, "k": 1024, "m": 1024 * 1024, "g": 1024 * 1024 * 1024}
    parsed = re.fullmatch(r"(\d+)([kKmMgG]?)", size)
    assert parsed is not None, size
    return int(parsed[1]) * units[parsed[2].lower()]


def nginx_seconds(time: str) -> float:
    """An nginx time ("15s", "1m", "30", "1d") in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    parsed = re.fullmatch(r"(\d+)(ms|s|m|h|d)?", time)
    assert parsed is not None, time
    return int(parsed[1]) * units[parsed[2] or "s"]


class TestNginx:
    def test_every_directive_is_known_in_its_context(
        self, nginx_payload: Any, nginx: list[Directive]
    ) -> None:
        # crossplane refuses a known directive in a wrong context or with a wrong number of
        # arguments; a misspelt one it lets through, so it is looked up here. A map's entries
        # are values, not directives.
        assert nginx_payload["errors"] == []
        maps = [d for d in walk(nginx) if d["directive"] == "map"]
        entries = {id(entry) for m in maps for entry in m["block"]}
        for directive in walk(nginx):
            if id(directive) not in entries:
                name = directive["directive"]
                known = name in crossplane.analyzer.DIRECTIVES
                assert known or name in NEWER_NGINX_DIRECTIVES, (name, directive["line"])

    def test_the_api_is_reached_through_dockers_dns(self, nginx: list[Directive]) -> None:
        http = http_block(nginx)
        resolver = only(http, "resolver")["args"]
        assert resolver[0] == "127.0.0.11"  # Docker's embedded DNS
        # Docker's TTL is minutes long: valid= makes new replicas show up within seconds.
        (valid,) = [arg for arg in resolver if arg.startswith("valid=")]
        assert 0 < nginx_seconds(valid.removeprefix("valid=")) <= 30
        upstreams = {u["args"][0]: u["block"] for u in children(http, "upstream")}
        targets = {
            only(location["block"], "proxy_pass")["args"][0]
            for _, location in proxied_locations(http)
        }
        assert targets == {"http://crm_api"}
        upstream = upstreams["crm_api"]
        # Re-resolved while running, which needs the group in shared memory.
        assert [s["args"] for s in children(upstream, "server")] == [["api:8000", "resolve"]]
        assert children(upstream, "zone")

    def test_request_id_is_passed_on_or_generated(self, nginx: list[Directive]) -> None:
        http = http_block(nginx)
        (request_id_map,) = [m for m in children(http, "map") if m["args"][1] == "$crm_request_id"]
        assert request_id_map["args"][0] == "$http_x_request_id"
        entries = {e["directive"]: e["args"][0] for e in request_id_map["block"]}
        assert entries.pop("default") == "$request_id"
        # The caller's id is kept exactly when the API would keep it: one id everywhere, and
        # nothing that could break the JSON bodies nginx writes with it.
        assert entries == {f"~^{_VALID_REQUEST_ID.pattern.decode()}$": "$http_x_request_id"}
        for server, location in proxied_locations(http):
            headers = effective("proxy_set_header", location["block"], server["block"], http)
            assert headers["x-request-id"] == "$crm_request_id", location["args"]

    def test_forwarded_headers_are_set(self, nginx: list[Directive]) -> None:
        http = http_block(nginx)
        for server, location in proxied_locations(http):
            headers = effective("proxy_set_header", location["block"], server["block"], http)
            # Replaced, never appended to ($proxy_add_x_forwarded_for): the client writes that.
            assert headers["x-forwarded-for"] == "$remote_addr", location["args"]
            assert headers["x-forwarded-proto"] == "$scheme", location["args"]
            assert headers["x-forwarded-host"] == "$host", location["args"]
            assert headers["host"] == "$host", location["args"]

    def test_body_size_limit_is_the_apis(self, nginx: list[Directive]) -> None:
        limit = Settings.model_fields["max_body_bytes"].default
        http = http_block(nginx)
        (general,) = children(http, "client_max_body_size")
        assert nginx_bytes(general["args"][0]) == limit
        # The imports' location only: IMPORT_MAX_BYTES.
        imports = [
            location
            for _, location in proxied_locations(http)
            if location["args"] == ["=", "/api/v1/imports"]
        ]
        (upload,) = [d for d in walk(imports) if d["directive"] == "client_max_body_size"]
        assert nginx_bytes(upload["args"][0]) == Settings.model_fields["import_max_bytes"].default
        sizes = [d for d in walk(nginx) if d["directive"] == "client_max_body_size"]
        assert len(sizes) == 2

    def test_timeouts_are_bounded(self, nginx: list[Directive]) -> None:
        http = http_block(nginx)
        for name in [
            "client_header_timeout",
            "client_body_timeout",
            "send_timeout",
            "keepalive_timeout",
            "proxy_connect_timeout",
            "proxy_send_timeout",
            "proxy_read_timeout",
        ]:
            assert 0 < nginx_seconds(only(http, name)["args"][0]) <= 60, name
        # Longer than the API's own cap on a statement: the API answers its 503 first.
        statement_ms = Settings.model_fields["database_statement_timeout_ms"].default
        assert nginx_seconds(only(http, "proxy_read_timeout")["args"][0]) * 1000 > statement_ms

    def test_server_tokens_off(self, nginx: list[Directive]) -> None:
        assert only(http_block(nginx), "server_tokens")["args"] == ["off"]
        assert not [d for d in walk(nginx) if d["directive"] == "server_tokens"][1:]

    def test_access_log_leaves_the_query_string_out(self, nginx: list[Directive]) -> None:
        # The query string carries search terms (docs/securite.md).
        http = http_block(nginx)
        name, *parts = only(http, "log_format")["args"]
        assert not re.search(r"\$(request|request_uri|args|query_string|arg_\w+)\b", "".join(parts))
        assert only(http, "access_log")["args"][1] == name

    def test_nginxs_own_errors_carry_the_apis_body(self, nginx: list[Directive]) -> None:
        http = http_block(nginx)
        expected: dict[int, type[AppError]] = {
            413: PayloadTooLargeError,
            429: TooManyAttemptsError,
            503: ServiceUnavailableError,
        }
        for server in children(http, "server"):
            named = {
                loc["args"][0]: loc["block"]
                for loc in children(server["block"], "location")
                if loc["args"][0].startswith("@")
            }
            answered = set()
            for page in children(server["block"], "error_page"):
                *codes, target = page["args"]
                overwrite = [int(c[1:]) for c in codes if c.startswith("=")]
                status = overwrite[0] if overwrite else int(codes[0])
                error = expected[status]
                returned = only(named[target], "return")["args"]
                body = json.loads(returned[1].replace("$crm_request_id", "an-id"))
                assert (int(returned[0]), body["code"]) == (error.status_code, error.code)
                assert body["request_id"] == "an-id"
                if error is PayloadTooLargeError:
                    assert body["detail"] == error.message
                answered |= {int(c) for c in codes if not c.startswith("=")}
            if children(server["block"], "location"):
                assert {413, 429, 502, 504} <= answered

    def test_logins_are_rate_limited(self, nginx: list[Directive]) -> None:
        http = http_block(nginx)
        zone = only(http, "limit_req_zone")["args"]
        assert zone[0] == "$binary_remote_addr"
        logins = [
            location
            for _, location in proxied_locations(http)
            if location["args"] == ["=", "/api/v1/auth/login"]
        ]
        (login,) = logins
        assert only(login["block"], "limit_req")["args"][0] == zone[1].partition(":")[0]

    def test_https_only(self, nginx: list[Directive], compose: Any) -> None:
        http = http_block(nginx)
        listening: dict[int, list[Directive]] = {}
        for server in children(http, "server"):
            for listen in children(server["block"], "listen"):
                listening[int(listen["args"][0])] = server["block"]
        # Every port nginx listens on is published, and nothing else.
        published = {int(p.split(":")[-1]) for p in compose["services"]["nginx"]["ports"]}
        assert set(listening) == published == {80, 443}
        assert only(listening[80], "return")["args"] == ["301", "https://$host$request_uri"]
        assert "ssl" in only(listening[443], "listen")["args"]
        for server, location in proxied_locations(http):
            headers = effective("add_header", location["block"], server["block"], http)
            assert headers["strict-transport-security"].startswith("max-age="), location["args"]
