#!/usr/bin/env bash
# Runs a command with MODELROUTE_TEST_DATABASE_URL naming a PostgreSQL server the
# tests may create databases on: the one already named, else one answering on
# 127.0.0.1:5432 (trust authentication, database `test`, as CI provides), else a
# throwaway cluster made here with initdb and pg_ctl and removed afterwards.
# Fails when none can be had: a PostgreSQL run is never skipped.
set -euo pipefail

if [ -n "${MODELROUTE_TEST_DATABASE_URL:-}" ]; then
  exec "$@"
fi

default=postgres://postgres@127.0.0.1:5432/test
if command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p 5432 &&
  psql "$default" -qAtc 'SELECT 1' >/dev/null 2>&1; then
  MODELROUTE_TEST_DATABASE_URL=$default exec "$@"
fi

bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
  echo "no PostgreSQL for the tests: set MODELROUTE_TEST_DATABASE_URL, run one on 127.0.0.1:5432, or install postgresql (apt-get install postgresql)" >&2
  exit 1
fi

cluster=$(mktemp -d)
port=$((20000 + RANDOM % 20000))
# initdb refuses to run as root: the cluster then belongs to the postgres user.
as_owner=()
if [ "$(id -u)" = 0 ]; then
  chown postgres "$cluster"
  as_owner=(runuser -u postgres --)
fi
"${as_owner[@]}" "$bin/initdb" -D "$cluster/data" -U postgres -A trust >/dev/null
"${as_owner[@]}" "$bin/pg_ctl" -D "$cluster/data" -l "$cluster/log" -w \
  -o "-h 127.0.0.1 -p $port -k $cluster" start >/dev/null
trap '"${as_owner[@]}" "$bin/pg_ctl" -D "$cluster/data" -m immediate stop >/dev/null; rm -rf "$cluster"' EXIT
"$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -qc 'CREATE DATABASE test' postgres
MODELROUTE_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:$port/test "$@"
