#!/usr/bin/env bash
# door.sh: the latency ModelRoute's OpenAI-compatible door adds to a NON-streamed chat
# completion, and its max RPS, measured with the shared gateway bench
# (`$SHARED_BENCH/run.sh`) against its instant mock provider, next to `direct`.
# `make bench-door` builds the release binaries and the adapters, then runs this.
#
# What it does, on loopback only:
#   1. builds (niced) and starts the shared mock (`run.sh mock`, :$MOCK_PORT);
#   2. `run.sh direct`, then for each store of STORES [redb] (postgres: a database
#      made for it on MODELROUTE_TEST_DATABASE_URL's server) and each durability mode
#      of MODES [strict batched]: writes a config with one provider, `mock`, of the
#      `openai` adapter at the mock, serving `llama-3.1-8b-instruct` (the mock answers
#      its fixed completion whatever the model and key), and starts `modelroute
#      serve` on a port it picks itself;
#   3. creates an organization with 1,000,000 USD of credit over the admin API, as
#      loadgen.rs does, and takes its API key;
#   4. `run.sh gateway modelroute-STORE-MODE
#      http://127.0.0.1:PORT/openai/v1/chat/completions BODY PID "Authorization: Bearer KEY"`,
#      BODY being the shared bench's `bodies/direct.json` with the model renamed,
#      and stops that server;
#   5. `run.sh summary` (also written to $OUT/summary.md), and stops everything it started.
#
# Needs oha (`cargo install oha --locked --root DIR`, about 5 minutes), Python 3, curl.
# oha is taken from $OHA if set, else from PATH, else from $BENCH_TOOLS/bin.
#
# Environment (defaults in brackets):
#   MODELROUTE    the release server      [${CARGO_TARGET_DIR:-REPO/target}/release/modelroute]
#   PLUGINS_DIR   adapters (openai.wasm)  [REPO/plugins/dist]
#   SHARED_BENCH  the shared bench        [REPO/../shared/bench]
#   BENCH_TOOLS   where oha was installed [REPO/../bench-tools]     OHA [oha on PATH]
#   BENCH_WORK    everything written here [${TMPDIR:-/tmp}/modelroute-bench]; this run's
#                 config, logs and results go to a fresh $BENCH_WORK/door.XXXXXX, whose
#                 server state is deleted at the end unless KEEP_STATE=1
#   OUT           results folder          [that folder's results/]
#   STORE_TOML    more lines for every server's [store] table (e.g. `pool_size = 64`)
#   MOCK_PORT     [18000]; RATES, DURATION, WARMUP, CONNS, UNLIMITED_CONNS: as run.sh
set -euo pipefail

REPO="$(cd "$(dirname "$0")/../.." && pwd)"
SHARED_BENCH="$(cd "${SHARED_BENCH:-$REPO/../shared/bench}" && pwd)"
MODELROUTE="${MODELROUTE:-${CARGO_TARGET_DIR:-$REPO/target}/release/modelroute}"
PLUGINS_DIR="$(cd "${PLUGINS_DIR:-$REPO/plugins/dist}" && pwd)"
BENCH_TOOLS="${BENCH_TOOLS:-$REPO/../bench-tools}"
export BENCH_WORK="${BENCH_WORK:-${TMPDIR:-/tmp}/modelroute-bench}"
export MOCK_PORT="${MOCK_PORT:-18000}"
MODEL="llama-3.1-8b-instruct"

[[ -x $MODELROUTE ]] || { echo "no server at $MODELROUTE (make bench-door builds it)" >&2; exit 1; }
[[ -f $PLUGINS_DIR/openai.wasm ]] || { echo "no $PLUGINS_DIR/openai.wasm (make plugins)" >&2; exit 1; }
mkdir -p "$BENCH_WORK"
WORK="$(mktemp -d "$BENCH_WORK/door.XXXXXX")"
# run.sh keeps its pid files in $RUN and its results in $OUT: this run's own.
export RUN="$WORK/run"
export OUT="${OUT:-$WORK/results}"
mkdir -p "$RUN" "$OUT"

# oha: measure.py runs the first `oha` on PATH.
if [[ -n ${OHA:-} ]]; then
  mkdir -p "$WORK/bin" && ln -s "$(realpath "$OHA")" "$WORK/bin/oha"
  PATH="$WORK/bin:$PATH"
elif ! command -v oha >/dev/null; then
  PATH="$BENCH_TOOLS/bin:$PATH"
fi
command -v oha >/dev/null || {
  echo "oha not found (set OHA, or: cargo install oha --locked --root $BENCH_TOOLS)" >&2
  exit 1
}
export PATH

server_pid=""
databases=()
cleanup() {
  if [[ -n $server_pid ]]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  if [[ -f $RUN/mock.pid ]]; then "$SHARED_BENCH/run.sh" stop-mock || true; fi
  for database in "${databases[@]}"; do
    psql "$MODELROUTE_TEST_DATABASE_URL" -qc "DROP DATABASE IF EXISTS $database WITH (FORCE)" || true
  done
  [[ ${KEEP_STATE:-0} == 1 ]] || rm -rf "$WORK"/state-*
  echo "door.sh: logs and results in $WORK" >&2
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 1. The mock: built here, niced, so that `run.sh mock` only starts it. A port already
# answering would pass run.sh's readiness check with someone else's server.
if curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$MOCK_PORT/"; then
  echo "port $MOCK_PORT already answers: stop that server or set MOCK_PORT" >&2
  exit 1
fi
(cd "$SHARED_BENCH/mock-openai" && CARGO_TARGET_DIR="$BENCH_WORK/target" nice -n 10 cargo build --release -q)
"$SHARED_BENCH/run.sh" mock

# 2-4, once per store and durability mode: ModelRoute with one provider at the mock
# (a server of its own, state of its own), an organization, the gateway's ladder.
# The mock checks no key, but a provider needs one: it comes from the environment,
# as for a real provider.
export MODELROUTE_BENCH_MOCK_KEY="bench-mock-key"
python3 -c 'import json, sys; b = json.load(open(sys.argv[1])); b["model"] = sys.argv[2]; print(json.dumps(b))' \
  "$SHARED_BENCH/bodies/direct.json" "$MODEL" >"$WORK/door.json"
"$SHARED_BENCH/run.sh" direct

# measure STORE MODE: STORE is redb or postgres (a database made for it on the
# server MODELROUTE_TEST_DATABASE_URL names), MODE strict or batched.
measure() {
  local store=$1 mode=$2 name="modelroute-$1-$2" state="$WORK/state-$1-$2"
  local store_toml="durability = \"$mode\""
  [[ -n ${STORE_TOML:-} ]] && store_toml+=$'\n'"$STORE_TOML"
  if [[ $store == postgres ]]; then
    local database="bench_door_${mode}_$$"
    psql "$MODELROUTE_TEST_DATABASE_URL" -qc "CREATE DATABASE $database"
    databases+=("$database")
    store_toml+=$'\n'"backend = \"postgres\""$'\n'"url = \"${MODELROUTE_TEST_DATABASE_URL%/*}/$database\""
  fi
  cat >"$WORK/$name.toml" <<EOF
listen = "127.0.0.1:0"
data_dir = "$state"
plugins_dir = "$PLUGINS_DIR"
public_url = "http://127.0.0.1:0"

[store]
$store_toml

[rate_limits]
requests_per_second = 1000000
burst = 1000000

[upstream]
loopback_http_credentials = true

[[providers]]
name = "mock"
adapter = "openai"
base_url = "http://127.0.0.1:$MOCK_PORT"
api_key_env = "MODELROUTE_BENCH_MOCK_KEY"
allowed_hosts = ["127.0.0.1:$MOCK_PORT"]
[providers.models."$MODEL"]
EOF
  RUST_LOG=warn "$MODELROUTE" serve --config "$WORK/$name.toml" >"$WORK/$name.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 120); do
    [[ -s $state/listen-address ]] && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$WORK/$name.log" >&2; exit 1; }
    sleep 0.5
  done
  local base
  base="http://$(cat "$state/listen-address")"
  base="${base%/}"
  # Ready: the store, the adapters and the dispatcher (200 from /readyz).
  for _ in $(seq 1 60); do curl -sf -o /dev/null "$base/readyz" && break; sleep 0.5; done
  curl -sf -o /dev/null "$base/readyz" || { echo "ModelRoute is not ready" >&2; cat "$WORK/$name.log" >&2; exit 1; }

  # An organization with plenty of credit, and its key.
  local key
  key="$(curl -sf -X POST "$base/admin/v1/organizations" \
    -H "Authorization: Bearer $(cat "$state/admin-token")" -H 'content-type: application/json' \
    -d '{"name":"bench","credit_usd":"1000000"}' |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["api_key"])')"

  "$SHARED_BENCH/run.sh" gateway "$name" "$base/openai/v1/chat/completions" "$WORK/door.json" \
    "$server_pid" "Authorization: Bearer $key"
  kill "$server_pid"
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
}

for store in ${STORES:-redb}; do
  for mode in ${MODES:-strict batched}; do
    measure "$store" "$mode"
  done
done

# 5. The tables.
"$SHARED_BENCH/run.sh" summary | tee "$OUT/summary.md"
