#!/usr/bin/env bash
# Restore a backup made by scripts/backup.sh, all or nothing.
#
#   scripts/restore.sh [--yes] [--compose] [--identity AGE_KEY_FILE] [--allow-unsigned]
#                      [--ledger LEDGER]... FILE
#   scripts/restore.sh [--compose] [--allow-unsigned] --ledger-only --ledger LEDGER...
#
# Checks the file first: its HMAC tag (FILE.sig, with BACKUP_SIGNING_KEY or the key in
# data/backup_signing_key; a file without one is refused unless --allow-unsigned), its checksum
# when FILE.sha256 exists, then (decrypted with --identity when it ends in .age) gzip integrity,
# the end-of-dump marker and the absence of any psql meta-command of its own. Asks for
# confirmation unless --yes, then replays it in ONE transaction that starts by emptying the
# public schema and ends by granting the application role its privileges again and telling
# every API process to empty its caller cache: either the database ends up exactly as in the
# backup, or it is left as it was. It connects as the owner role (MIGRATION_DATABASE_URL), never
# as a superuser, so that even a crafted file cannot run programs. ANALYZE runs afterwards.
# Restart the API afterwards (its connections cache query plans).
#
# GDPR: an anonymisation made after the backup must not be undone by it. Before replacing the
# database, the script reads its anonymisation ledger; once the backup is in, it anonymises again
# every record that ledger lists, with those of the newest signed ledger beside FILE (backup.sh
# writes one with each backup: what an off-site restore, with no live database, relies on) and of
# each --ledger given (signed like backups). Should that step fail, the ledgers are kept, signed,
# in BACKUP_DIR and the message says how to re-apply them with --ledger-only.
set -euo pipefail
# shellcheck source=scripts/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

usage() {
    echo "usage: $0 [--yes] [--compose] [--identity AGE_KEY_FILE] [--allow-unsigned]" \
        "[--ledger LEDGER]... FILE" >&2
    echo "       $0 [--compose] [--allow-unsigned] --ledger-only --ledger LEDGER..." >&2
    exit 2
}

ORIGINAL_ARGS=("$@")
ASSUME_YES=0
ALLOW_UNSIGNED=0
IDENTITY=""
FILE=""
LEDGER_ONLY=0
LEDGERS=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --yes | -y) ASSUME_YES=1 ;;
        --compose) COMPOSE=1 ;;
        --allow-unsigned) ALLOW_UNSIGNED=1 ;;
        --ledger-only) LEDGER_ONLY=1 ;;
        --ledger)
            [[ $# -ge 2 ]] || usage
            LEDGERS+=("$2")
            shift
            ;;
        --identity)
            [[ $# -ge 2 ]] || usage
            IDENTITY="$2"
            shift
            ;;
        -h | --help) usage ;;
        -*) usage ;;
        *)
            [[ -z $FILE ]] || usage
            FILE="$1"
            ;;
    esac
    shift
done
if [[ $LEDGER_ONLY -eq 1 ]]; then
    [[ -z $FILE && ${#LEDGERS[@]} -gt 0 ]] || usage
else
    [[ -n $FILE ]] || usage
    [[ -f $FILE ]] || die "$FILE: no such file"
    # The newest ledger a backup left in FILE's directory (names sort chronologically).
    newest_ledger="$(find "$(dirname -- "$FILE")" -maxdepth 1 -type f \
        -name 'crm_*.ledger.jsonl' | sort | tail -n 1)"
    [[ -z $newest_ledger ]] || LEDGERS+=("$newest_ledger")
fi
for ledger in ${LEDGERS[@]+"${LEDGERS[@]}"}; do
    [[ -f $ledger ]] || die "$ledger: no such file"
done
# The application role deploy/postgres-init/ creates; otherwise dbenv.py tells it.
[[ $COMPOSE -eq 0 ]] || CRM_APP_ROLE=crm_app
ENCRYPTED=0
if [[ $FILE == *.age ]]; then
    ENCRYPTED=1
    [[ -n $IDENTITY ]] || die "$FILE is encrypted: give the age private key with --identity FILE"
fi
[[ -z $IDENTITY || -f $IDENTITY ]] || die "$IDENTITY: no such file"
require_python

# check_signature FILE SIG [quiet]: refuse FILE unless SIG is its tag (or --allow-unsigned and
# no SIG at all: a SIG that does not verify is refused whatever the options).
check_signature() {
    local status=0
    backup_tool verify "$1" "$2" || status=$?
    if [[ $status -eq 3 && $ALLOW_UNSIGNED -eq 1 ]]; then
        [[ -n ${3:-} ]] || {
            echo "WARNING: --allow-unsigned: restoring $FILE, which NOTHING authenticates."
            echo "WARNING: whoever could write this file decides every row restored:"
            echo "WARNING: accounts, roles and password hashes included."
        } >&2
    elif [[ $status -eq 3 ]]; then
        die "$FILE has no signature ($FILE.sig): refused, the database was not touched." \
            "Restore an unsigned file only if you made it yourself: --allow-unsigned"
    elif [[ $status -ne 0 ]]; then
        die "$FILE: refused, the database was not touched"
    elif [[ -z ${3:-} ]]; then
        echo "Signature OK"
    fi
}

# check_ledger LEDGER SIG: refuse a ledger that is not signed, unless --allow-unsigned (a GDPR
# ledger only ever anonymises more, but a forged one could wipe any contact's personal fields).
check_ledger() {
    local status=0
    backup_tool verify "$1" "$2" || status=$?
    if [[ $status -eq 3 && $ALLOW_UNSIGNED -eq 1 ]]; then
        echo "WARNING: --allow-unsigned: re-applying $1, which NOTHING authenticates." >&2
    elif [[ $status -ne 0 ]]; then
        die "$1: this GDPR ledger is not signed with the backup signing key: refused," \
            "the database was not touched"
    fi
}

# Check the files before touching (or even starting) any database. When the script re-runs
# under dbenv.py (CRM_DBENV set), the first run already did it.
if [[ -z ${CRM_DBENV:-} ]]; then
    for ledger in ${LEDGERS[@]+"${LEDGERS[@]}"}; do
        check_ledger "$ledger" "$ledger.sig"
    done
fi
if [[ -z ${CRM_DBENV:-} && $LEDGER_ONLY -eq 0 ]]; then
    check_signature "$FILE" "$FILE.sig"
    if [[ -f "$FILE.sha256" ]]; then
        read -r expected _ <"$FILE.sha256" || true
        [[ "$(checksum_of "$FILE")" == "${expected:-}" ]] ||
            die "$FILE does not match $FILE.sha256: refused, the database was not touched"
        echo "Checksum OK"
    fi
    if [[ $ENCRYPTED -eq 0 ]]; then
        gzip -t -- "$FILE" 2>/dev/null || die "$FILE is not a valid gzip file (truncated?): refused"
    fi
fi

enter_target ${ORIGINAL_ARGS[@]+"${ORIGINAL_ARGS[@]}"}

umask 077
work="$(mktemp -d)"
trap 'rm -rf -- "$work"' EXIT
# The ledgers re-applied are the ledgers verified: private copies, checked again.
mkdir -- "$work/ledgers"
n=0
for ledger in ${LEDGERS[@]+"${LEDGERS[@]}"}; do
    n=$((n + 1))
    cp -- "$ledger" "$work/ledgers/$n.jsonl"
    [[ ! -f "$ledger.sig" ]] || cp -- "$ledger.sig" "$work/ledgers/$n.jsonl.sig"
    check_ledger "$work/ledgers/$n.jsonl" "$work/ledgers/$n.jsonl.sig"
done

# replay_ledgers: anonymise again every record the ledgers in $work/ledgers list and the target
# does not hold as anonymised (services/gdpr_ledger.py), in one transaction.
replay_ledgers() {
    local all="$work/ledger.jsonl"
    cat -- "$work"/ledgers/*.jsonl >"$all" 2>/dev/null || true
    if [[ $COMPOSE -eq 1 ]]; then
        docker compose -f "$ROOT/docker-compose.yml" run --rm -T --no-deps migrate \
            python -m services.gdpr_ledger replay - <"$all"
    else
        (cd -- "$ROOT" && "$PYTHON" -m services.gdpr_ledger replay "$all")
    fi
}

if [[ $LEDGER_ONLY -eq 1 ]]; then
    echo "Re-applying the GDPR ledger to $(target_description)"
    replay_ledgers || die "re-applying the GDPR ledger failed: nothing was anonymised"
    exit 0
fi
sql="$work/restore.sql"
dump="$work/backup.sql.gz"

# The bytes replayed are the bytes verified: a private copy, checked again, since the file could
# have been replaced since the first check.
cp -- "$FILE" "$work/backup"
[[ ! -f "$FILE.sig" ]] || cp -- "$FILE.sig" "$work/backup.sig"
check_signature "$work/backup" "$work/backup.sig" quiet
if [[ $ENCRYPTED -eq 1 ]]; then
    backup_tool decrypt "$work/backup" "$dump" "$IDENTITY" || die "$FILE: refused"
    rm -f -- "$work/backup"
else
    mv -- "$work/backup" "$dump"
fi
gzip -t -- "$dump" 2>/dev/null || die "$FILE is not a valid gzip file (truncated?): refused"

target="$(target_description)"
# One query: the server version, and whether this role could run programs or write server
# files (a superuser, pg_execute_server_program, pg_write_server_files).
probe_sql="SELECT current_setting('server_version_num'), rolsuper"
for power in pg_execute_server_program pg_write_server_files; do
    probe_sql+=" OR pg_has_role(current_user, '$power', 'USAGE')"
done
probe_sql+=" FROM pg_roles WHERE rolname = current_user"
probe="$(pg psql -X -w -At -F ' ' -v ON_ERROR_STOP=1 -c "$probe_sql" </dev/null)" ||
    die "cannot connect to $target: nothing was restored"
read -r server_version powerful <<<"$probe"
[[ $server_version =~ ^[0-9]+$ ]] || die "unexpected server version '$server_version'"
[[ $powerful == "f" ]] ||
    die "refused: $target is reached as a superuser (or a role that may run programs or write" \
        "server files), which a crafted backup could use to run commands. Restore as the" \
        "database owner role: set MIGRATION_DATABASE_URL (docs/operations.md)"
# What was anonymised in the database about to be replaced, re-applied after the restore.
dump_ledger >"$work/ledgers/live.jsonl" ||
    die "cannot read the GDPR ledger of $target: nothing was restored"

# pg_dump 17+ writes `SET transaction_timeout = 0;`, a setting servers before 17 reject: drop it
# there (a dump of the PostgreSQL 16 production made with the embedded PostgreSQL 18 pg_dump).
drop_unknown_settings() {
    if ((server_version < 170000)); then
        sed '/^SET transaction_timeout = 0;$/d'
    else
        cat
    fi
}

# The exact bytes psql will read, checked once more: a file cut short must never be replayed,
# since psql would commit whatever it had read when the input ended.
{
    echo "-- Added by scripts/restore.sh: start from an empty schema, in the same transaction."
    echo "SET client_min_messages = warning;"
    echo "SET lock_timeout = '60s';  -- fail, rather than wait forever, if a session holds a lock"
    echo "DROP SCHEMA IF EXISTS public CASCADE;"
    echo "CREATE SCHEMA public;"
    echo "ALTER SCHEMA public OWNER TO pg_database_owner;"
    echo "GRANT USAGE ON SCHEMA public TO PUBLIC;"
    gzip -dc -- "$dump" | drop_unknown_settings
} | backup_tool restore-sql >"$sql" || die "$FILE: refused, the database was not touched"
has_end_marker <"$sql" || die "$FILE lacks the end-of-dump marker (truncated dump?): refused"
app_role=()
if [[ -n ${CRM_APP_ROLE:-} ]]; then
    app_role=(-v "app_role=$CRM_APP_ROLE")
fi
{
    echo "-- Added by scripts/restore.sh: in the same transaction again."
    # The dump carries no privileges (--no-privileges): the owner grants the API's role its own,
    # with the function of migration 0010; a backup older than it gets them when the API
    # migrates at its next start.
    if [[ ${#app_role[@]} -ne 0 ]]; then
        echo "SELECT set_config('crm.app_role', :'app_role', true);"
        echo "DO \$\$ BEGIN"
        echo "    IF to_regprocedure('public.crm_grant_app_privileges(name)') IS NULL THEN"
        echo "        RAISE WARNING 'no grants: this backup predates migration 0010';"
        echo "    ELSE"
        echo "        PERFORM public.crm_grant_app_privileges(current_setting('crm.app_role'));"
        echo "    END IF;"
        echo "END \$\$;"
    fi
    # Restored accounts bypassed the per-row notifications: every API process empties its cache.
    echo "NOTIFY crm_user_changed, '*';"
} >>"$sql"

if [[ $ASSUME_YES -ne 1 ]]; then
    echo "This REPLACES every table of $target with the content of $FILE."
    read -r -p "Type 'yes' to continue: " answer || answer=""
    [[ $answer == "yes" ]] || die "aborted, the database was not touched"
fi

echo "Restoring $FILE into $target"
if ! pg psql -X -q -w --single-transaction -v ON_ERROR_STOP=1 ${app_role[@]+"${app_role[@]}"} \
    -f - <"$sql" >/dev/null; then
    die "restore failed: the transaction was rolled back, the database is unchanged"
fi
if ! replay_ledgers; then
    kept="$BACKUP_DIR/ledger_unapplied_$(date -u +%Y%m%d_%H%M%S).jsonl"
    mkdir -p -- "$BACKUP_DIR"
    cp -- "$work/ledger.jsonl" "$kept"
    backup_tool sign "$kept" || true
    die "the backup is restored, but re-applying the GDPR ledger FAILED: people anonymised" \
        "since the backup are back in it. Fix the cause, then run: $0 --ledger-only --ledger $kept"
fi
pg psql -X -q -w -v ON_ERROR_STOP=1 -c "ANALYZE" </dev/null >/dev/null
echo "Restore complete (ANALYZE done). Restart the API so it drops its cached query plans."
