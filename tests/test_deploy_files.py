"""Dockerfile, .dockerignore and docker-compose.yml, read as text (no Docker engine here)."""

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

from core.config import SECRET_FILE_SUFFIX, Settings, is_secret_field

ROOT = Path(__file__).resolve().parent.parent
SECRET_VARIABLES = {
    name.upper() for name, field in Settings.model_fields.items() if is_secret_field(field)
}
# A Compose variable whose value is a secret, interpolated from .env or the shell.
SECRET_INTERPOLATION = re.compile(r"\$\{?\w*(PASSWORD|SECRET|TOKEN|KEY)", re.I)


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


@pytest.fixture(scope="module")
def compose() -> Any:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def serve_command(command: list[str]) -> str:
    """The shell line of an exec-form ["sh", "-c", "..."] start command."""
    assert command[:2] == ["sh", "-c"]
    return command[2]


def assert_migrates_then_serves(line: str) -> None:
    migrate = line.index("alembic upgrade head")
    serve = line.index("uvicorn main:app")
    assert migrate < serve
    assert "&&" in line[migrate:serve]  # a failed migration stops the start
    assert "exec uvicorn" in line  # uvicorn becomes PID 1 and gets SIGTERM
    workers = re.search(r"--workers (\d+)", line)
    assert workers is not None and int(workers.group(1)) >= 2
    assert "--proxy-headers" in line
    # uvicorn reads FORWARDED_ALLOW_IPS from the environment; "*" would trust any client.
    assert "--forwarded-allow-ips" not in line
    assert "--host 0.0.0.0" in line
    assert "--no-server-header" in line


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

    def test_cmd_is_exec_form_and_migrates_before_serving(self) -> None:
        (cmd,) = [args for kw, args in dockerfile_instructions() if kw == "CMD"]
        assert_migrates_then_serves(serve_command(json.loads(cmd)))

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

    def test_postgres_is_not_published_on_a_public_interface(self, compose: Any) -> None:
        for mapping in compose["services"]["postgres"].get("ports", []):
            assert str(mapping).startswith("127.0.0.1:")

    def test_api_service(self, compose: Any) -> None:
        api = compose["services"]["api"]
        assert api["build"] == "."
        assert api["restart"] == "unless-stopped"
        assert api["depends_on"] == {"postgres": {"condition": "service_healthy"}}
        assert api["env_file"] in (".env", [".env"])
        assert "healthcheck" in api
        assert_migrates_then_serves(serve_command(api["command"]))

    def test_api_reaches_the_postgres_service_with_secrets_from_files(self, compose: Any) -> None:
        environment = compose["services"]["api"]["environment"]
        # Served as the application role, migrated as the owner role; no password in a URL.
        for variable, role in [
            ("DATABASE_URL", "crm_app"),
            ("MIGRATION_DATABASE_URL", "crm_owner"),
        ]:
            assert re.fullmatch(
                rf"postgresql\+asyncpg://{role}@postgres:5432/\$\{{POSTGRES_DB:-crm\}}",
                environment[variable],
            )
        assert environment["DATABASE_PASSWORD_FILE"] == "/run/secrets/crm_app_password"
        assert environment["MIGRATION_DATABASE_PASSWORD_FILE"] == "/run/secrets/crm_owner_password"
        assert environment["SECRET_KEY_FILE"] == "/run/secrets/secret_key"
        # Known in advance: no password is generated, so none is printed into the container log.
        assert environment["FIRST_ADMIN_PASSWORD_FILE"] == "/run/secrets/first_admin_password"

    @pytest.mark.parametrize("service", ["api", "postgres"])
    def test_no_secret_value_in_a_containers_environment(self, compose: Any, service: str) -> None:
        # `docker inspect` and every child process see the environment; secrets are files.
        environment = compose["services"][service]["environment"]
        for name, value in environment.items():
            assert name not in SECRET_VARIABLES | {"POSTGRES_PASSWORD"}, name
            assert not SECRET_INTERPOLATION.search(str(value)), (name, value)
            if name in ("DATABASE_URL", "MIGRATION_DATABASE_URL"):
                with_defaults = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)
                assert make_url(with_defaults).password is None

    @pytest.mark.parametrize("service", ["api", "postgres"])
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

    def test_api_port_is_bound_to_loopback_only(self, compose: Any) -> None:
        assert compose["services"]["api"]["ports"] == ["127.0.0.1:8000:8000"]
