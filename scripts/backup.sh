#!/usr/bin/env bash
# Verified, signed backup of the CRM database: backups/crm_YYYYmmdd_HHMMSS.sql.gz (UTC), or
# .sql.gz.age when BACKUP_ENCRYPTION=age, with its HMAC tag (.sig) and checksum (.sha256), and
# beside it the GDPR anonymisation ledger as it stood once the dump was made
# (crm_YYYYmmdd_HHMMSS.ledger.jsonl, signed too): restore.sh re-applies the newest one it finds.
#
#   scripts/backup.sh [--compose]
#
# BACKUP_DIR (default backups/) and BACKUP_KEEP (default 14: the newest backups kept) are read
# from the environment; BACKUP_SIGNING_KEY, BACKUP_ENCRYPTION and BACKUP_AGE_RECIPIENT like the
# API's settings (environment or .env). The dump is a plain SQL dump made with --clean
# --if-exists, so restoring it recreates every object. Nothing is pruned unless this backup
# succeeded.
set -euo pipefail
# shellcheck source=scripts/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

usage() {
    echo "usage: $0 [--compose]" >&2
    exit 2
}

ORIGINAL_ARGS=("$@")
while [[ $# -gt 0 ]]; do
    case "$1" in
        --compose) COMPOSE=1 ;;
        -h | --help) usage ;;
        *) usage ;;
    esac
    shift
done

BACKUP_KEEP="${BACKUP_KEEP:-14}"
[[ $BACKUP_KEEP =~ ^[1-9][0-9]*$ ]] || die "BACKUP_KEEP must be a positive integer, got '$BACKUP_KEEP'"

require_python
enter_target ${ORIGINAL_ARGS[@]+"${ORIGINAL_ARGS[@]}"}

umask 077
mkdir -p -- "$BACKUP_DIR"

# One backup at a time (cron and a manual run could overlap); flock is util-linux, Linux only.
if command -v flock >/dev/null; then
    exec 9>"$BACKUP_DIR/.backup.lock"
    flock -n 9 || die "another backup is running in $BACKUP_DIR"
fi

stamp="$(date -u +%Y%m%d_%H%M%S)"
final="$BACKUP_DIR/crm_$stamp.sql.gz"
[[ ! -e $final ]] || die "$final already exists"
tmp="$(mktemp "$BACKUP_DIR/.crm_$stamp.tmp.XXXXXX")"
tmp_sum="$tmp.sha256"
tmp_ledger="$tmp.ledger"
trap 'rm -f -- "$tmp" "$tmp.sig" "$tmp.age" "$tmp.age.sig" "$tmp_sum" "$tmp_ledger" "$tmp_ledger.sig"' EXIT

echo "Backing up $(target_description)"
# pipefail: a pg_dump failure fails this line even though gzip succeeds.
if ! pg pg_dump --clean --if-exists --no-owner --no-privileges --no-password </dev/null |
    gzip -9 >"$tmp"; then
    die "pg_dump failed: no backup written, nothing pruned"
fi

gzip -t -- "$tmp" || die "the compressed dump is corrupt: no backup written, nothing pruned"
[[ -s $tmp ]] || die "the dump is empty: no backup written, nothing pruned"
gzip -dc -- "$tmp" | has_end_marker ||
    die "the dump lacks the end-of-dump marker: no backup written, nothing pruned"

# Read after the dump, so it lists at least every anonymisation the dump holds: a restore of
# this backup re-applies the ones made while it ran.
dump_ledger >"$tmp_ledger" || die "reading the GDPR ledger failed: no backup written, nothing pruned"
backup_tool sign "$tmp_ledger" || die "signing the GDPR ledger failed: no backup written, nothing pruned"

# Encrypted (when configured), then signed: the tag covers the very bytes stored and copied.
sealed="$(backup_tool seal "$tmp")" || die "sealing the backup failed: no backup written, nothing pruned"
final="$final${sealed#"$tmp"}"
echo "$(checksum_of "$sealed")  $(basename "$final")" >"$tmp_sum"
chmod 600 -- "$sealed" "$sealed.sig" "$tmp_sum" "$tmp_ledger" "$tmp_ledger.sig"
ledger="$(ledger_of "$final")"
mv -- "$tmp_ledger.sig" "$ledger.sig"
mv -- "$tmp_ledger" "$ledger"
mv -- "$sealed.sig" "$final.sig"
mv -- "$tmp_sum" "$final.sha256"
mv -- "$sealed" "$final"
trap - EXIT
echo "Backup written: $final ($(du -h -- "$final" | cut -f1))"

# Retention: names sort chronologically; keep the newest BACKUP_KEEP, with their tags and
# checksums, encrypted or not.
name='crm_[0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]_[0-9][0-9][0-9][0-9][0-9][0-9].sql.gz'
backups=()
while IFS= read -r path; do
    backups+=("$path")
done < <(find "$BACKUP_DIR" -maxdepth 1 -type f \( -name "$name" -o -name "$name.age" \) | sort)
excess=$((${#backups[@]} - BACKUP_KEEP))
for ((i = 0; i < excess; i++)); do
    pruned_ledger="$(ledger_of "${backups[i]}")"
    rm -f -- "${backups[i]}" "${backups[i]}.sha256" "${backups[i]}.sig" \
        "$pruned_ledger" "$pruned_ledger.sig"
    echo "Pruned: ${backups[i]}"
done
