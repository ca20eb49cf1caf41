#!/usr/bin/env bash
# Side-by-side benchmark of LLMMux against the peers of the shared bench (direct, nginx,
# LiteLLM, vllm-router, sglang-router), all on the same mock backend, in three
# configurations of LLMMux:
#
#   plain      static API key, no database; the audit log goes to the local journal
#              (the embedded default). Run beside every peer.
#   audit-off  plain with AUDIT_ENABLED=false: the cost of the audit log (issue #10).
#   governed   a database API key (looked up through the identity cache, with rate limits
#              that are counted but never bind) and the audit log written to PostgreSQL.
#
# Usage (from the repository root; the shared bench's setup.sh must have run once):
#   bash benches/compare.sh [plain] [audit-off] [governed]      (default: all three)
# Environment:
#   BENCH_DIR   the shared bench (default: ../shared/bench next to the checkout)
#   QUICK=1     short runs (passed to run.sh); any other run.sh variable passes through
#   PG          PostgreSQL for the governed run (default: host=127.0.0.1 port=5432 user=postgres)
#   LLMMUX_BIN  the binary (default: target/release/llmmux, built if missing)
# Each run prints run.sh's table; the raw results stay in run.sh's logs directory.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
BENCH_DIR="${BENCH_DIR:-$ROOT/../shared/bench}"
PG="${PG:-host=127.0.0.1 port=5432 user=postgres}"
BIN="${LLMMUX_BIN:-$ROOT/target/release/llmmux}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/llmmux-compare.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

[[ -x "$BIN" ]] || cargo build --release
[[ -x "$BENCH_DIR/run.sh" ]] || { echo "no shared bench at $BENCH_DIR (set BENCH_DIR)" >&2; exit 1; }

# Settings every LLMMux run shares: per-server and global caps lifted (as for the peers),
# logs at warn (the peers log no access lines either; nginx runs with access_log off).
COMMON="HOST=127.0.0.1 PORT=\$BENCH_PORT BACKENDS=\$BENCH_MODEL=\$BENCH_BACKEND_URL \
LOG_LEVEL=warn MAX_IN_FLIGHT_PER_SERVER=0 MAX_IN_FLIGHT=100000 \
AUDIT_SPOOL_DIR=$WORK/spool AUDIT_JOURNAL_PATH=$WORK/audit.jsonl"

run_plain() {
  echo "== plain: static key, audit to the local journal"
  LLMMUX_CMD="env $COMMON API_KEYS=\$BENCH_API_KEY $BIN serve" bash "$BENCH_DIR/run.sh"
}

run_audit_off() {
  echo "== audit-off: static key, AUDIT_ENABLED=false"
  TARGETS="${TARGETS:-direct nginx llmmux}" \
    LLMMUX_CMD="env $COMMON API_KEYS=\$BENCH_API_KEY AUDIT_ENABLED=false $BIN serve" \
    bash "$BENCH_DIR/run.sh"
}

psql_admin() { psql "$PG dbname=postgres" -qAt -v ON_ERROR_STOP=1 -c "$1"; }

run_governed() {
  echo "== governed: database API key with rate limits, audit to PostgreSQL"
  local db=llmmux_bench url secret=bench-jwt-secret-0123456789abcdef-0123456789 port
  psql_admin "DROP DATABASE IF EXISTS $db WITH (FORCE)"
  psql_admin "CREATE DATABASE $db"
  local host port_pg user
  host=$(sed -n 's/.*host=\([^ ]*\).*/\1/p' <<<"$PG"); port_pg=$(sed -n 's/.*port=\([^ ]*\).*/\1/p' <<<"$PG")
  user=$(sed -n 's/.*user=\([^ ]*\).*/\1/p' <<<"$PG")
  url="postgres://$user@${host:-127.0.0.1}:${port_pg:-5432}/$db"
  # A user and an API key, created through the API of a gateway started for that.
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  env -i PATH="$PATH" HOST=127.0.0.1 PORT="$port" BACKENDS=m=http://127.0.0.1:9 DATABASE_URL="$url" \
    JWT_SECRET="$secret" ADMIN_PASSWORD=bench-admin-password LOG_LEVEL=warn \
    AUDIT_SPOOL_DIR="$WORK/spool0" "$BIN" serve > "$WORK/setup.log" 2>&1 &
  local gw=$!
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
  local token key
  token=$(curl -sf "http://127.0.0.1:$port/auth/login" -H 'content-type: application/json' \
    -d '{"username":"superadmin","password":"bench-admin-password"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
  key=$(curl -sf "http://127.0.0.1:$port/auth/api-keys" -H "authorization: Bearer $token" \
    -H 'content-type: application/json' \
    -d '{"name":"bench","rpm_limit":100000000,"tpm_limit":1000000000000}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
  kill "$gw"; wait "$gw" 2>/dev/null || true
  TARGETS="${TARGETS:-direct nginx llmmux}" API_KEY="$key" \
    LLMMUX_CMD="env $COMMON DATABASE_URL=$url JWT_SECRET=$secret $BIN serve" \
    bash "$BENCH_DIR/run.sh"
  echo "audit rows written: $(psql "$PG dbname=$db" -qAt -c 'SELECT count(*) FROM audit_requests')"
  psql_admin "DROP DATABASE IF EXISTS $db WITH (FORCE)"
}

for v in "${@:-plain audit-off governed}"; do
  for w in $v; do
    case "$w" in
      plain) run_plain ;;
      audit-off) run_audit_off ;;
      governed) run_governed ;;
      *) echo "unknown configuration $w (plain, audit-off, governed)" >&2; exit 2 ;;
    esac
  done
done
