#!/bin/sh
# Run once by the postgres image, when it initialises an empty volume (docker-entrypoint-initdb.d),
# as the superuser POSTGRES_USER: the two roles of the application (docs/securite.md).
#   crm_owner  owns the database: migrations (the API's start-up) and scripts/restore.sh
#   crm_app    the API: reads and writes rows, nothing else (grants of migration 0010)
# Passwords come from the files CRM_OWNER_PASSWORD_FILE / CRM_APP_PASSWORD_FILE when set, else
# from CRM_OWNER_PASSWORD / CRM_APP_PASSWORD. They reach psql through its environment, never
# its command line.
set -eu

secret() {
    file="$(printenv "${1}_FILE" || true)"
    if [ -n "$file" ]; then
        cat -- "$file"
    else
        printenv "$1" || true
    fi
}

CRM_OWNER_SECRET="$(secret CRM_OWNER_PASSWORD)"
CRM_APP_SECRET="$(secret CRM_APP_PASSWORD)"
if [ -z "$CRM_OWNER_SECRET" ] || [ -z "$CRM_APP_SECRET" ]; then
    echo "10-crm-roles.sh: set CRM_OWNER_PASSWORD and CRM_APP_PASSWORD (or their _FILE)" >&2
    exit 1
fi
export CRM_OWNER_SECRET CRM_APP_SECRET

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v db="$POSTGRES_DB" <<'SQL'
\getenv owner_password CRM_OWNER_SECRET
\getenv app_password CRM_APP_SECRET
CREATE ROLE crm_owner LOGIN PASSWORD :'owner_password';
CREATE ROLE crm_app LOGIN PASSWORD :'app_password';
SELECT format('ALTER DATABASE %I OWNER TO crm_owner', :'db') \gexec
SQL
