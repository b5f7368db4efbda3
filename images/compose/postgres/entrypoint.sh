#!/usr/bin/env bash
# Entrypoint of pushtrain's stand-in PostgreSQL image (images/compose/postgres/Dockerfile): on the first
# start, initdb in PGDATA with POSTGRES_USER as superuser (password POSTGRES_PASSWORD) and create
# POSTGRES_DB; then run the server as user postgres, listening on every address.
set -euo pipefail

: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
: "${PGDATA:=/var/lib/postgresql/data}"

if [[ "${1:-}" != postgres ]]; then
  exec "$@"
fi

if [[ "$(id -u)" == 0 ]]; then
  mkdir -p "$PGDATA" /var/run/postgresql
  chown postgres:postgres "$PGDATA" /var/run/postgresql
  chmod 700 "$PGDATA"
  run=(setpriv --reuid=postgres --regid=postgres --init-groups)
else
  run=()
fi

if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
  if [[ -z "${POSTGRES_PASSWORD:-}" ]]; then
    echo "[postgres] POSTGRES_PASSWORD is empty: set it (docker-compose.yaml takes it from .env)" >&2
    exit 1
  fi
  echo "[postgres] first start: initdb in $PGDATA, superuser $POSTGRES_USER, database $POSTGRES_DB"
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  chmod 644 "$pwfile"
  "${run[@]}" initdb --pgdata="$PGDATA" --username="$POSTGRES_USER" --pwfile="$pwfile" \
    --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  rm -f "$pwfile"
  # Password logins from the compose network (any address: the containers' addresses are not fixed).
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  if [[ "$POSTGRES_DB" != postgres ]]; then
    echo "CREATE DATABASE \"$POSTGRES_DB\" OWNER \"$POSTGRES_USER\";" \
      | "${run[@]}" postgres --single -D "$PGDATA" postgres >/dev/null
  fi
fi

shift
exec "${run[@]}" postgres -D "$PGDATA" -c listen_addresses='*' "$@"
