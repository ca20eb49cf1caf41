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
#   streams    the 10,000-stream scenario (issue #13): STREAMS_N (10000, or as many as the
#              file limit allows one process: two sockets per stream) concurrent slow
#              streams (mockllm --delay-ms 400, 40 tokens: 16 s each) through direct, nginx
#              and LLMMux plain, one target at a time; prints errors, TTFT p50/p99, stream
#              time p50, peak RSS of the target's process tree and LLMMux's idle RSS.
#              With FLOOR_BIN set (the floor_proxy bench's binary: `cargo bench --bench
#              floor_proxy --no-run` prints its path) the floor of LLMMux's stack runs too.
#
# Usage (from the repository root; the shared bench's setup.sh must have run once):
#   bash benches/compare.sh [plain] [audit-off] [governed] [streams]
#                                   (default: plain audit-off governed)
# Environment:
#   BENCH_DIR   the shared bench (default: ../shared/bench next to the checkout)
#   QUICK=1     short runs (passed to run.sh); any other run.sh variable passes through
#   PG          PostgreSQL for the governed run (default: host=127.0.0.1 port=5432 user=postgres)
#   LLMMUX_BIN  the binary (default: target/release/llmmux, built if missing)
#   LLMMUX_ENV  more settings for every LLMMux run (e.g. "AUDIT_ENABLED=false")
#   FLOOR_BIN   streams: add the floor proxy (FLOOR_CLIENT=reqwest, the default, or hyper)
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
AUDIT_SPOOL_DIR=$WORK/spool AUDIT_JOURNAL_PATH=$WORK/audit.jsonl ${LLMMUX_ENV:-}"

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

# shellcheck source=benches/governed.sh
source "$ROOT/benches/governed.sh"

run_governed() {
  echo "== governed: database API key with rate limits, audit to PostgreSQL"
  governed_setup
  TARGETS="${TARGETS:-direct nginx llmmux}" API_KEY="$GOV_KEY" \
    LLMMUX_CMD="env $COMMON DATABASE_URL=$GOV_URL JWT_SECRET=$GOV_SECRET $BIN serve" \
    bash "$BENCH_DIR/run.sh"
  echo "audit rows written: $(psql "$PG dbname=$GOV_DB" -qAt -c 'SELECT count(*) FROM audit_requests')"
  governed_drop
}

# One target at a time against one mock: RSS sampled every 100 ms over the target's process
# tree (the shared bench's procmon), TTFT and errors from the shared loadgen.
run_streams() {
  local n mockp=19300 port=19301 out="$WORK/streams" fit
  mkdir -p "$out/nginx/nginx-tmp"
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  # A one-process gateway holds two sockets per stream (client and server): a machine whose
  # hard file limit is below 2 x 10,000 (and that may not raise it) runs as many as fit.
  fit=$(( ($(ulimit -n) - 256) / 2 ))
  n="${STREAMS_N:-$(( fit < 10000 ? fit : 10000 ))}"
  echo "== streams: $n concurrent streams of 40 tokens 400 ms apart (file limit $(ulimit -n))"
  "$BENCH_DIR/mockllm/target/release/mockllm" --listen "127.0.0.1:$mockp" --models mock-model \
    --tokens 40 --delay-ms 400 --threads 2 > "$out/mock.log" 2>&1 &
  local mock=$!
  sleep 0.5
  kill -0 "$mock" 2>/dev/null || { echo "mockllm did not start (port $mockp in use?)" >&2; return 1; }
  local nginx_conf="$out/nginx/nginx.conf"
  sed -e "s#@RUN@#$out/nginx#g; s/@PORT@/$port/g; s/@MOCK_PORT@/$mockp/g; s/@API_KEY@/sk-bench-key/g" \
    -e "s/worker_connections [0-9]*/worker_connections 65536/" \
    "$BENCH_DIR/conf/nginx.conf.tmpl" > "$nginx_conf"
  printf '| target | ok | errors | TTFT p50 ms | TTFT p99 ms | stream p50 ms | peak RSS MiB | idle RSS MiB |\n'
  printf '|---|---:|---:|---:|---:|---:|---:|---:|\n'
  local target url pid idle
  for target in ${STREAMS_TARGETS:-direct nginx ${FLOOR_BIN:+floor} llmmux}; do
    pid="" idle="—" url="http://127.0.0.1:$port/v1/chat/completions"
    case "$target" in
      direct) url="http://127.0.0.1:$mockp/v1/chat/completions"; pid=$mock ;;
      nginx) /usr/sbin/nginx -p "$out/nginx" -c "$nginx_conf" -e "$out/nginx/error.log" & pid=$! ;;
      floor)
        "${FLOOR_BIN:?FLOOR_BIN: the floor_proxy bench binary}" "127.0.0.1:$port" \
          "http://127.0.0.1:$mockp" "${FLOOR_CLIENT:-reqwest}" > "$out/floor.log" 2>&1 & pid=$! ;;
      llmmux)
        env HOST=127.0.0.1 PORT=$port BACKENDS=mock-model=http://127.0.0.1:$mockp LOG_LEVEL=warn \
          MAX_IN_FLIGHT_PER_SERVER=0 MAX_IN_FLIGHT=1000000 MAX_CONNECTIONS=1000000 \
          API_KEYS=sk-bench-key AUDIT_SPOOL_DIR="$out/spool" AUDIT_JOURNAL_PATH="$out/audit.jsonl" \
          ${LLMMUX_ENV:-} "$BIN" serve > "$out/llmmux.log" 2>&1 & pid=$! ;;
    esac
    for _ in $(seq 1 100); do curl -s -o /dev/null "${url%/v1/*}/v1/models" -H 'authorization: Bearer sk-bench-key' && break; sleep 0.1; done
    curl -s -o /dev/null "$url" -H 'authorization: Bearer sk-bench-key' -H 'content-type: application/json' \
      -d '{"model":"mock-model","messages":[{"role":"user","content":"hi"}],"max_tokens":1}'
    if [[ "$target" == llmmux ]]; then
      sleep 1
      idle=$(awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$pid/status" 2>/dev/null) ||
        { echo "llmmux did not start (see $out/llmmux.log)" >&2; return 1; }
    fi
    rm -f "$out/stop"
    python3 "$BENCH_DIR/lib/procmon.py" sample --out "$out/rss-$target.json" --stop-file "$out/stop" \
      --interval 0.1 --max-seconds 300 "$target=$pid" &
    local mon=$!
    "$BENCH_DIR/loadgen/target/release/loadgen" --url "$url" --stream --concurrency "$n" \
      --requests "$n" --duration 120 --timeout 100 --max-tokens 40 --api-key sk-bench-key \
      --threads 2 > "$out/load-$target.json" 2> "$out/load-$target.err" || true
    touch "$out/stop"; wait "$mon" 2>/dev/null || true
    python3 - "$target" "$out/load-$target.json" "$out/rss-$target.json" "$idle" <<'PY'
import json, sys
name, load, rss, idle = sys.argv[1:]
try:
    d = json.load(open(load))
except Exception as e:
    print(f"| {name} | loadgen failed ({e}) | | | | | | |"); sys.exit()
peak = json.load(open(rss)).get(name, {}).get("peak_rss_kib", 0) / 1024
print(f"| {name} | {d['ok']} | {d['errors']} {d.get('error_kinds') or ''} | {d['ttft_ms']['p50']:.1f} | "
      f"{d['ttft_ms']['p99']:.1f} | {d['lat_ms']['p50']:.0f} | {peak:.1f} | {idle} |")
PY
    [[ "$target" != direct ]] && { kill "$pid"; wait "$pid" 2>/dev/null || true; }
    sleep 2
  done
  kill "$mock"; wait "$mock" 2>/dev/null || true
}

for v in "${@:-plain audit-off governed}"; do
  for w in $v; do
    case "$w" in
      plain) run_plain ;;
      audit-off) run_audit_off ;;
      governed) run_governed ;;
      streams) run_streams ;;
      *) echo "unknown configuration $w (plain, audit-off, governed, streams)" >&2; exit 2 ;;
    esac
  done
done
