#!/usr/bin/env bash
# Instructions per proxied request, counted by valgrind's callgrind: repeatable whatever
# else the machine is doing, unlike CPU time. Each target runs twice under callgrind, once
# serving N1 and once N2 requests (c=8, whole answers, from the shared bench's mock and
# loadgen); (I(N2) - I(N1)) / (N2 - N1) cancels start-up and shutdown.
#
# Usage (from the repository root; the shared bench's mockllm and loadgen must be built):
#   bash benches/instructions.sh [llmmux] [governed] [floor-reqwest] [floor-hyper] [nginx]
#                                                        (default: llmmux)
# governed is LLMMux with a database API key (rate limits counted, never binding) and the
# audit log in PostgreSQL, as compare.sh's governed run; PostgreSQL's own work is not counted.
# Environment:
#   BENCH_DIR   the shared bench (default: ../shared/bench next to the checkout)
#   LLMMUX_BIN  the gateway (default: target/release/llmmux, built if missing)
#   PG          PostgreSQL for governed (default: host=127.0.0.1 port=5432 user=postgres)
#   N1, N2      request counts (default 500 and 2500)
#   KEEP=DIR    keep the callgrind files there (TARGET.N1.out, TARGET.N2.out), for
#               callgrind_annotate or a function-by-function difference between targets
#   STREAM=1    streamed answers of 64 tokens instead (per stream; N1/N2 default 200/600)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
BENCH_DIR="${BENCH_DIR:-$ROOT/../shared/bench}"
BIN="${LLMMUX_BIN:-$ROOT/target/release/llmmux}"
PG="${PG:-host=127.0.0.1 port=5432 user=postgres}"
KEY=sk-bench-key
STREAM="${STREAM:-0}"
if [[ "$STREAM" == 1 ]]; then N1="${N1:-200}"; N2="${N2:-600}"; else N1="${N1:-500}"; N2="${N2:-2500}"; fi
WORK="$(mktemp -d "${TMPDIR:-/tmp}/llmmux-instr.XXXXXX")"
MOCK_PORT=19500 PORT=19501
trap 'kill $(jobs -p) 2>/dev/null || true; [[ -n "${GOV_DB:-}" ]] && governed_drop; rm -rf "$WORK"' EXIT
# shellcheck source=benches/governed.sh
source "$ROOT/benches/governed.sh"

command -v valgrind >/dev/null || { echo "valgrind is needed" >&2; exit 1; }
MOCK="$BENCH_DIR/mockllm/target/release/mockllm"
LOADGEN="$BENCH_DIR/loadgen/target/release/loadgen"
[[ -x "$MOCK" && -x "$LOADGEN" ]] || { echo "build the shared bench's mockllm and loadgen first" >&2; exit 1; }
[[ -x "$BIN" ]] || cargo build --release -p llmmux

floor_bin() {
  cargo bench --bench floor_proxy --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "floor_proxy" and m.get("executable"):
        print(m["executable"])'
}

# The command that serves on $PORT for one target.
target_cmd() {
  case "$1" in
    llmmux) echo "env HOST=127.0.0.1 PORT=$PORT BACKENDS=mock-model=http://127.0.0.1:$MOCK_PORT \
LOG_LEVEL=warn MAX_IN_FLIGHT_PER_SERVER=0 API_KEYS=sk-bench-key AUDIT_SPOOL_DIR=$WORK/spool \
AUDIT_JOURNAL_PATH=$WORK/audit.jsonl $BIN serve" ;;
    governed) echo "env HOST=127.0.0.1 PORT=$PORT BACKENDS=mock-model=http://127.0.0.1:$MOCK_PORT \
LOG_LEVEL=warn MAX_IN_FLIGHT_PER_SERVER=0 DATABASE_URL=$GOV_URL JWT_SECRET=$GOV_SECRET \
AUDIT_SPOOL_DIR=$WORK/spool $BIN serve" ;;
    floor-reqwest) echo "$(floor_bin) 127.0.0.1:$PORT http://127.0.0.1:$MOCK_PORT reqwest" ;;
    floor-hyper) echo "$(floor_bin) 127.0.0.1:$PORT http://127.0.0.1:$MOCK_PORT hyper" ;;
    nginx)
      mkdir -p "$WORK/nginx/tmp"
      sed -e "s#@RUN@#$WORK/nginx#g; s/@PORT@/$PORT/g; s/@MOCK_PORT@/$MOCK_PORT/g; s/@API_KEY@/sk-bench-key/g" \
        -e "s/worker_processes auto;/worker_processes 1;\nmaster_process off;/" -e "s#nginx-tmp/#tmp/#" \
        "$BENCH_DIR/conf/nginx.conf.tmpl" > "$WORK/nginx/nginx.conf"
      echo "/usr/sbin/nginx -p $WORK/nginx -c $WORK/nginx/nginx.conf -e $WORK/nginx/error.log" ;;
    *) echo "unknown target $1 (llmmux, floor-reqwest, floor-hyper, nginx)" >&2; return 1 ;;
  esac
}

# Instructions of one life of the target serving $2 requests.
count() {
  local cmd="$1" n="$2" out="$WORK/cg.$RANDOM" vg load words w pre=() rest=()
  # `env VAR=... prog`: valgrind goes after the variables, or it would count `env` alone.
  read -ra words <<< "$cmd"
  for w in "${words[@]}"; do
    if [[ ${#rest[@]} -eq 0 && ( "$w" == env || "$w" == *=* ) ]]; then pre+=("$w"); else rest+=("$w"); fi
  done
  "${pre[@]}" valgrind --tool=callgrind --callgrind-out-file="$out" "${rest[@]}" > "$WORK/target.log" 2>&1 &
  vg=$!
  for _ in $(seq 1 300); do
    curl -s -o /dev/null -m 1 "http://127.0.0.1:$PORT/v1/chat/completions" -H "authorization: Bearer $KEY" \
      -H 'content-type: application/json' -d '{"model":"mock-model","messages":[{"role":"user","content":"hi"}],"max_tokens":1}' && break
    sleep 0.2
  done
  load=(--url "http://127.0.0.1:$PORT/v1/chat/completions" --api-key "$KEY" --concurrency 8
    --requests "$n" --duration 600)
  [[ "$STREAM" == 1 ]] && load+=(--stream --max-tokens 64)
  "$LOADGEN" "${load[@]}" > "$WORK/load.json"
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if d["errors"] == 0 else 1)' "$WORK/load.json" ||
    { echo "load errors: $(cat "$WORK/load.json")" >&2; exit 1; }
  sleep 1
  if [[ "$cmd" == */nginx* ]]; then kill -QUIT "$vg"; else kill -TERM "$vg"; fi
  wait "$vg" 2>/dev/null || true
  [[ -n "${KEEP:-}" ]] && mkdir -p "$KEEP" && cp "$out" "$KEEP/$3.$n.out"
  awk '/^summary:/ {print $2}' "$out"
}

tokens=16
[[ "$STREAM" == 1 ]] && tokens=64
"$MOCK" --listen "127.0.0.1:$MOCK_PORT" --models mock-model --tokens "$tokens" --delay-ms 1 --threads 1 \
  > "$WORK/mock.log" 2>&1 &
sleep 0.3
printf '| target | instructions per %s |\n|---|---:|\n' "$([[ "$STREAM" == 1 ]] && echo stream || echo request)"
for t in "${@:-llmmux}"; do
  KEY=sk-bench-key
  if [[ "$t" == governed ]]; then
    [[ -n "${GOV_DB:-}" ]] || governed_setup
    KEY="$GOV_KEY"
  fi
  cmd=$(target_cmd "$t")
  a=$(count "$cmd" "$N1" "$t"); b=$(count "$cmd" "$N2" "$t")
  printf '| %s | %s |\n' "$t" "$(( (b - a) / (N2 - N1) ))"
done
