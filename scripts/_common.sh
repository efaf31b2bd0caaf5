# shellcheck shell=bash
# Shared by backup.sh and restore.sh (sourced, not run): target selection and PostgreSQL tools.
#
# Three targets, like the API:
#   --compose          the `postgres` service of docker-compose.yml, through `docker compose exec`,
#                      as the owner role its init script creates (deploy/postgres-init/)
#   DATABASE_URL set   that database (environment or .env), client tools of the embedded package
#   otherwise          the embedded server of `make run` in data/postgres
# The last two run the whole script under scripts/dbenv.py, which sets the PG* variables (and
# starts the embedded server for the duration of the script when it is not running).

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BACKUP_DIR="${BACKUP_DIR:-$ROOT/backups}"
END_MARKER="-- PostgreSQL database dump complete"
PYTHON="$ROOT/.venv/bin/python"
COMPOSE=0
# The owner role deploy/postgres-init/ creates in the Compose database (core/embedded.py's name).
COMPOSE_OWNER_ROLE=crm_owner

die() {
    echo "$(basename "$0"): $*" >&2
    exit 1
}

# Re-run this script under dbenv.py unless it already runs there or targets Compose.
enter_target() {
    if [[ $COMPOSE -eq 1 || -n "${CRM_DBENV:-}" ]]; then
        return
    fi
    require_python
    exec "$PYTHON" "$ROOT/scripts/dbenv.py" "$BASH" "$0" "$@"
}

require_python() {
    [[ -x $PYTHON ]] || die "$PYTHON not found: run \`make venv\` first"
}

# backup_tool COMMAND ARG...: signing, encryption and the restore's SQL check (backup_tool.py).
backup_tool() {
    "$PYTHON" "$ROOT/scripts/backup_tool.py" "$@"
}

target_description() {
    if [[ $COMPOSE -eq 1 ]]; then
        echo "the postgres service of $ROOT/docker-compose.yml"
    else
        echo "$CRM_DB_TARGET"
    fi
}

# pg TOOL ARG...: run pg_dump or psql against the target. In the container, as the owner role
# over the service's local socket, on its POSTGRES_DB.
pg() {
    local tool="$1"
    shift
    if [[ $COMPOSE -eq 1 ]]; then
        # shellcheck disable=SC2016  # expanded by the container's shell, not here
        docker compose -f "$ROOT/docker-compose.yml" exec -T postgres \
            sh -c 'role="$1"; shift; exec "$0" -U "$role" -d "$POSTGRES_DB" "$@"' \
            "$tool" "$COMPOSE_OWNER_ROLE" "$@"
    else
        "$PG_BIN/$tool" "$@"
    fi
}

# Succeeds when the SQL on stdin ends with pg_dump's end-of-dump marker (PostgreSQL 17.6+ writes
# a `\unrestrict` line after it, hence the last few lines and not only the last one).
has_end_marker() {
    local tail_lines
    tail_lines="$(tail -n 5)"
    [[ $tail_lines == *"$END_MARKER"* ]]
}

checksum_of() {
    local sum
    if command -v sha256sum >/dev/null; then
        sum="$(sha256sum <"$1")"
    else
        sum="$(shasum -a 256 <"$1")" # macOS
    fi
    echo "${sum%% *}"
}

# dump_ledger: the target's GDPR anonymisation ledger on stdout, as JSON Lines (see
# services/gdpr_ledger.py); nothing for a database older than the ledger (migration 0018).
dump_ledger() {
    local present
    present="$(pg psql -X -w -At -v ON_ERROR_STOP=1 \
        -c "SELECT to_regclass('public.anonymizations') IS NOT NULL" </dev/null)" || return 1
    [[ $present == "t" ]] || return 0
    pg psql -X -w -At -v ON_ERROR_STOP=1 -c "SELECT json_build_object('entity', entity, \
'entity_id', entity_id, 'anonymized_at', anonymized_at) FROM anonymizations ORDER BY id" </dev/null
}

# ledger_of BACKUP: the ledger backup.sh wrote beside that backup.
ledger_of() {
    echo "${1%%.sql.gz*}.ledger.jsonl"
}
