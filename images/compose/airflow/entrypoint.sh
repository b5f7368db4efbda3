#!/usr/bin/env bash
# Entrypoint of pushtrain's stand-in Airflow image (images/compose/airflow/Dockerfile). It keeps the
# contract of the official image's entrypoint that docker-compose.yaml relies on:
#   1. wait until the metadata database and the Celery broker accept connections (CONNECTION_CHECK_MAX_COUNT
#      tries, CONNECTION_CHECK_SLEEP_TIME seconds apart; 0 tries skips the wait);
#   2. `airflow db migrate` when _AIRFLOW_DB_MIGRATE is set;
#   3. the admin login when _AIRFLOW_WWW_USER_CREATE is set, for the auth manager in use:
#      SimpleAuthManager: the user is [core] simple_auth_manager_users (docker-compose.yaml sets it), its
#      password goes into [core] simple_auth_manager_passwords_file; FabAuthManager: `airflow users create`;
#   4. `exec airflow "$@"` ("airflow version" and "version" alike), or the command itself when it is bash,
#      python or an absolute path.
set -euo pipefail

: "${CONNECTION_CHECK_MAX_COUNT:=20}"
: "${CONNECTION_CHECK_SLEEP_TIME:=3}"

log() { echo "[entrypoint] $*" >&2; }

# host and port of a URL such as postgresql+psycopg2://user:pw@postgres/airflow or redis://:@redis:6379/0
host_and_port() {
  python3 - "$1" <<'PY'
import sys
from urllib.parse import urlsplit

url = urlsplit(sys.argv[1])
defaults = {"postgresql": 5432, "redis": 6379, "rediss": 6379, "mysql": 3306, "amqp": 5672}
scheme = url.scheme.removeprefix("db+").split("+")[0]
print(url.hostname or "", url.port or defaults.get(scheme, 0))
PY
}

wait_for() {
  local what=$1 url=$2 host port tries=0
  read -r host port < <(host_and_port "$url")
  if [[ -z "$host" || "$port" == 0 ]]; then
    log "$what: no host:port in its URL (a local socket or sqlite?): not waiting"
    return
  fi
  while ! nc -z -w 3 "$host" "$port" 2>/dev/null; do
    tries=$((tries + 1))
    if ((tries >= CONNECTION_CHECK_MAX_COUNT)); then
      log "$what at $host:$port still unreachable after $tries tries: is its service up and healthy?"
      exit 1
    fi
    log "waiting for $what at $host:$port ($tries/$CONNECTION_CHECK_MAX_COUNT)"
    sleep "$CONNECTION_CHECK_SLEEP_TIME"
  done
}

airflow_config() { airflow config get-value "$1" "$2" 2>/dev/null || true; }

create_admin_login() {
  local username=${_AIRFLOW_WWW_USER_USERNAME:-airflow} password=${_AIRFLOW_WWW_USER_PASSWORD:-}
  if [[ -z "$password" ]]; then
    log "_AIRFLOW_WWW_USER_CREATE is set but _AIRFLOW_WWW_USER_PASSWORD is empty: set it in .env"
    exit 1
  fi
  local auth_manager
  auth_manager=$(airflow_config core auth_manager)
  case "$auth_manager" in
    *SimpleAuthManager*)
      local users passwords_file
      users=$(airflow_config core simple_auth_manager_users)
      passwords_file=$(airflow_config core simple_auth_manager_passwords_file)
      passwords_file=${passwords_file:-$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated}
      if [[ ",${users// /}," != *",$username:"* ]]; then
        log "SimpleAuthManager: $username is not in [core] simple_auth_manager_users ($users):" \
            "set AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=$username:admin"
        exit 1
      fi
      mkdir -p "$(dirname "$passwords_file")"
      # Written whole each time: the password in .env is the one that counts. Readable by gid 0 only,
      # which every Airflow container of the deployment runs as.
      (umask 007 && USERNAME="$username" PASSWORD="$password" python3 -c \
        'import json, os, sys; json.dump({os.environ["USERNAME"]: os.environ["PASSWORD"]}, sys.stdout)' \
        >"$passwords_file")
      chgrp 0 "$passwords_file" 2>/dev/null || true
      log "SimpleAuthManager login $username written to $passwords_file"
      ;;
    *FabAuthManager*)
      airflow users create --username "$username" --password "$password" \
        --firstname "${_AIRFLOW_WWW_USER_FIRSTNAME:-Airflow}" --lastname "${_AIRFLOW_WWW_USER_LASTNAME:-Admin}" \
        --email "${_AIRFLOW_WWW_USER_EMAIL:-airflowadmin@example.com}" --role "${_AIRFLOW_WWW_USER_ROLE:-Admin}" \
        || log "FabAuthManager: user $username exists already"
      ;;
    *)
      log "auth manager $auth_manager: create its admin login yourself"
      ;;
  esac
}

if [[ "$CONNECTION_CHECK_MAX_COUNT" -gt 0 ]]; then
  wait_for "the metadata database" "${AIRFLOW__DATABASE__SQL_ALCHEMY_CONN:-}"
  if [[ -n "${AIRFLOW__CELERY__BROKER_URL:-}" ]]; then
    wait_for "the Celery broker" "$AIRFLOW__CELERY__BROKER_URL"
  fi
fi
if [[ -n "${_AIRFLOW_DB_MIGRATE:-}" ]]; then
  airflow db migrate
fi
if [[ -n "${_AIRFLOW_WWW_USER_CREATE:-}" ]]; then
  create_admin_login
fi

case "${1:-}" in
  airflow) shift && exec airflow "$@" ;;
  bash | sh | python | python3 | /*) exec "$@" ;;
  *) exec airflow "$@" ;;
esac
