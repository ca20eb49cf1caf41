# Sourced by compare.sh and instructions.sh: the governed path's database, with a user and
# an API key whose rate limits are counted but never bind, created through the API of a
# gateway started for that. Needs PG (libpq keywords), BIN and WORK; sets GOV_DB, GOV_URL,
# GOV_SECRET and GOV_KEY. GOV_KEY_JSON replaces the key's settings (e.g. '{"name":"bench"}'
# for a key without limits). governed_drop removes the database again.

psql_admin() { psql "$PG dbname=postgres" -qAt -v ON_ERROR_STOP=1 -c "$1"; }

governed_setup() {
  GOV_DB=llmmux_bench GOV_SECRET=bench-jwt-secret-0123456789abcdef-0123456789
  psql_admin "DROP DATABASE IF EXISTS $GOV_DB WITH (FORCE)"
  psql_admin "CREATE DATABASE $GOV_DB"
  local host port_pg user port gw token key_json
  key_json=${GOV_KEY_JSON:-'{"name":"bench","rpm_limit":100000000,"tpm_limit":1000000000000}'}
  host=$(sed -n 's/.*host=\([^ ]*\).*/\1/p' <<<"$PG"); port_pg=$(sed -n 's/.*port=\([^ ]*\).*/\1/p' <<<"$PG")
  user=$(sed -n 's/.*user=\([^ ]*\).*/\1/p' <<<"$PG")
  GOV_URL="postgres://$user@${host:-127.0.0.1}:${port_pg:-5432}/$GOV_DB"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  env -i PATH="$PATH" HOST=127.0.0.1 PORT="$port" BACKENDS=m=http://127.0.0.1:9 DATABASE_URL="$GOV_URL" \
    JWT_SECRET="$GOV_SECRET" ADMIN_PASSWORD=bench-admin-password LOG_LEVEL=warn \
    AUDIT_SPOOL_DIR="$WORK/spool0" "$BIN" serve > "$WORK/setup.log" 2>&1 &
  gw=$!
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
  token=$(curl -sf "http://127.0.0.1:$port/auth/login" -H 'content-type: application/json' \
    -d '{"username":"superadmin","password":"bench-admin-password"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
  GOV_KEY=$(curl -sf "http://127.0.0.1:$port/auth/api-keys" -H "authorization: Bearer $token" \
    -H 'content-type: application/json' \
    -d "$key_json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
  kill "$gw"; wait "$gw" 2>/dev/null || true
}

governed_drop() { psql_admin "DROP DATABASE IF EXISTS $GOV_DB WITH (FORCE)"; }
