#!/usr/bin/env bash
# Runs a command with a throwaway PostgreSQL cluster (Debian's server binaries, a free
# loopback port, a temporary folder; stopped and removed afterwards), its base URL in
# NEMS_TEST_DATABASE_URL: the e2e harness then runs every stack's core on a database of
# its own in that cluster (the backend matrix; see tests/src/postgres.rs).
#   scripts/with-postgres.sh cargo nextest run -p nems-e2e
# NEMS_PG_OPTIONS adds server settings ("-c shared_buffers=2GB ...").
set -euo pipefail
bin=${NEMS_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
    echo "with-postgres: PostgreSQL's server binaries are missing (apt-get install postgresql, or set NEMS_PG_BIN)" >&2
    exit 1
fi
dir=$(mktemp -d /tmp/nems-pg-XXXXXX)
as_owner() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
if [ "$(id -u)" = 0 ]; then chown postgres "$dir"; fi
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
as_owner "$bin/initdb" -D "$dir/data" -U nems --auth=trust -E UTF8 --no-instructions >/dev/null
stop() {
    as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap stop EXIT
as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=500 ${NEMS_PG_OPTIONS:-}" start >/dev/null
echo "with-postgres: cluster on 127.0.0.1:$port" >&2
NEMS_TEST_DATABASE_URL="postgres://nems@127.0.0.1:$port" "$@"
