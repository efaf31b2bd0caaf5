#!/usr/bin/env bash
# Restore a backup made by scripts/backup.sh, all or nothing.
#
#   scripts/restore.sh [--yes] [--compose] FILE
#
# Checks the file first (checksum when FILE.sha256 exists, gzip integrity, end-of-dump marker),
# asks for confirmation unless --yes, then replays it in ONE transaction that starts by emptying
# the public schema: either the database ends up exactly as in the backup, or it is left as it
# was. ANALYZE runs afterwards. Restart the API afterwards (its connections cache query plans).
set -euo pipefail
# shellcheck source=scripts/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

usage() {
    echo "usage: $0 [--yes] [--compose] FILE" >&2
    exit 2
}

ORIGINAL_ARGS=("$@")
ASSUME_YES=0
FILE=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --yes | -y) ASSUME_YES=1 ;;
        --compose) COMPOSE=1 ;;
        -h | --help) usage ;;
        -*) usage ;;
        *)
            [[ -z $FILE ]] || usage
            FILE="$1"
            ;;
    esac
    shift
done
[[ -n $FILE ]] || usage
[[ -f $FILE ]] || die "$FILE: no such file"

# Check the file before touching (or even starting) any database. When the script re-runs under
# dbenv.py (CRM_DBENV set), the first run already did it.
if [[ -z ${CRM_DBENV:-} ]]; then
    if [[ -f "$FILE.sha256" ]]; then
        read -r expected _ <"$FILE.sha256" || true
        [[ "$(checksum_of "$FILE")" == "${expected:-}" ]] ||
            die "$FILE does not match $FILE.sha256: refused, the database was not touched"
        echo "Checksum OK"
    else
        echo "Warning: no $FILE.sha256, the checksum cannot be verified" >&2
    fi
    gzip -t -- "$FILE" 2>/dev/null || die "$FILE is not a valid gzip file (truncated?): refused"
fi

enter_target ${ORIGINAL_ARGS[@]+"${ORIGINAL_ARGS[@]}"}

umask 077
work="$(mktemp -d)"
trap 'rm -rf -- "$work"' EXIT
sql="$work/restore.sql"

target="$(target_description)"
server_version="$(pg psql -X -w -At -v ON_ERROR_STOP=1 -c "SHOW server_version_num" </dev/null)" ||
    die "cannot connect to $target: nothing was restored"
[[ $server_version =~ ^[0-9]+$ ]] || die "unexpected server version '$server_version'"

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
    gzip -dc -- "$FILE" | drop_unknown_settings
} >"$sql"
has_end_marker <"$sql" || die "$FILE lacks the end-of-dump marker (truncated dump?): refused"

if [[ $ASSUME_YES -ne 1 ]]; then
    echo "This REPLACES every table of $target with the content of $FILE."
    read -r -p "Type 'yes' to continue: " answer || answer=""
    [[ $answer == "yes" ]] || die "aborted, the database was not touched"
fi

echo "Restoring $FILE into $target"
if ! pg psql -X -q -w --single-transaction -v ON_ERROR_STOP=1 -f - <"$sql" >/dev/null; then
    die "restore failed: the transaction was rolled back, the database is unchanged"
fi
pg psql -X -q -w -v ON_ERROR_STOP=1 -c "ANALYZE" </dev/null >/dev/null
echo "Restore complete (ANALYZE done). Restart the API so it drops its cached query plans."
