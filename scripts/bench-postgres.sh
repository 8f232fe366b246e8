#!/usr/bin/env bash
# PostgreSQL beside redb in one command (issue 13 §4): the same `nems-bench publish` run on
# the embedded redb store and then on a throwaway PostgreSQL cluster on this machine
# (scripts/with-postgres.sh), then both rates and their ratio. Options go to nems-bench:
#   scripts/bench-postgres.sh --subscriptions 1000000 --seconds 20
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p nems -p nems-e2e >&2
echo "== redb"
redb=$(target/release/nems-bench publish "$@")
printf '%s\n' "$redb"
echo "== PostgreSQL"
pg=$(scripts/with-postgres.sh bash -c \
    'NEMS_DATABASE_URL="$NEMS_TEST_DATABASE_URL/postgres" target/release/nems-bench publish "$@"' \
    bench "$@")
printf '%s\n' "$pg"
# "publishes   30220 ops in   15.01s =   2014/s   p50   30.71 ms  p99   61.42 ms  errors 0"
field() { printf '%s\n' "$1" | awk -v phase="$2" -v n="$3" '$1 == phase { sub("/s", "", $n); print $n }'; }
echo
printf '%-22s %12s %12s %8s\n' "" "redb" "PostgreSQL" "ratio"
for phase in preload publishes; do
    r=$(field "$redb" "$phase" 7); p=$(field "$pg" "$phase" 7)
    [ -n "$r" ] && [ -n "$p" ] || continue
    printf '%-22s %10s/s %10s/s %8s\n' "$phase" "$r" "$p" "$(awk -v a="$p" -v b="$r" 'BEGIN { printf "%.2f", a / b }')"
    printf '%-22s %9s ms %9s ms\n' "  p99" "$(field "$redb" "$phase" 12)" "$(field "$pg" "$phase" 12)"
done
