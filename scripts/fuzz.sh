#!/usr/bin/env bash
# Coverage-guided fuzzing of the parsers with AFL++ through cargo-afl (works on stable Rust).
#
#   scripts/fuzz.sh [target|all] [seconds]      (defaults: all, 600 seconds per target)
#
# Targets: the functions of fuzz-targets/src/lib.rs (bundle, subscription_xml,
# subscription_json, criteria, jwt, headers, mesh). For each one: builds the harness
# (fuzz-targets/afl, outside the workspace), fuzzes it under `nice -n 19` for the given time,
# starting from its committed corpus (fuzz-targets/corpus/<target>/) plus any seeds, then
# minimizes the queue with afl-cmin back into fuzz-targets/corpus/<target>/ and prints
# execs, corpus size, crashes and hangs. Crashes and hangs stay in
# fuzz-targets/afl/out/<target>/default/{crashes,hangs}/ and make the script exit non-zero.
#
# Environment:
#   NEMS_FUZZ_SEEDS  a directory with <target>/ subdirectories of extra seed inputs (read
#                    only; a seed kept verbatim by afl-cmin is left out of the corpus)
#   NEMS_FUZZ_JOBS   targets fuzzed at once (default 1; each takes one core)
#   NEMS_FUZZ_TIMEOUT  AFL's per-input timeout in ms (default 1000): slower is a hang
#   NEMS_FUZZ_MAX_FILES  corpus files kept per target after afl-cmin (default 40)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

targets=(bundle subscription_xml subscription_json criteria jwt headers mesh)
which=${1:-all}
seconds=${2:-600}
jobs=${NEMS_FUZZ_JOBS:-1}
timeout_ms=${NEMS_FUZZ_TIMEOUT:-1000}
max_files=${NEMS_FUZZ_MAX_FILES:-40}
seeds=${NEMS_FUZZ_SEEDS:-}
if [[ $which != all ]]; then
    [[ " ${targets[*]} " == *" $which "* ]] || { echo "unknown target $which (one of: ${targets[*]} or all)" >&2; exit 2; }
    targets=("$which")
fi

# --- the tool: cargo-afl, and AFL++ built for this toolchain ---
if ! cargo afl --version >/dev/null 2>&1; then
    cargo install cargo-afl --locked
fi
if ! config=$(cargo afl config --build 2>&1); then
    # Not an error when AFL++ is already built for this rustc.
    grep -q "already built" <<<"$config" || { echo "$config" >&2; exit 1; }
fi

# --- the harness ---
harness=$root/fuzz-targets/afl
export CARGO_TARGET_DIR=$harness/target
(cd "$harness" && nice -n 19 cargo afl build --release --locked)
bin=$CARGO_TARGET_DIR/release/nems-afl
rustc_id=$(rustc -V | awk '{print $2 "-" substr($3, 2, 7)}')
afl_bin=$(ls -d "${XDG_DATA_HOME:-$HOME/.local/share}"/afl.rs/rustc-"$rustc_id"*/afl.rs-*/afl/bin | tail -1)

export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
export AFL_QUIET=1
out_root=$harness/out
mkdir -p "$out_root"

# Fixtures in the repository that seed a target (besides its corpus).
repo_seeds() {
    case $1 in
        # The public NEMS example messages in ../shared too, when present (read, never copied:
        # inputs kept verbatim are left out of the corpus).
        bundle) ls "$root"/edge/tests/fixtures/bundles/*.xml
                ls "$root"/../shared/fixtures/nems-examples/*.xml 2>/dev/null || true ;;
        subscription_xml) ls "$root"/edge/tests/fixtures/subscription/*.xml ;;
        subscription_json) ls "$root"/edge/tests/fixtures/subscription/*.json ;;
    esac
}

# CPU seconds of a process and all its descendants (their own time and that of the children
# they reaped). afl-fuzz never reaps the persistent-mode target process, so `time` would miss it.
tree_ticks() {
    local sum c
    sum=$(awk '{print $14 + $15 + $16 + $17}' "/proc/$1/stat" 2>/dev/null || echo 0)
    for c in $(pgrep -P "$1"); do sum=$((sum + $(tree_ticks "$c"))); done
    echo "$sum"
}

fuzz_one() {
    local t=$1 in=$out_root/$t.in out=$out_root/$t pid ticks=0 now hz
    rm -rf "$in" "$out" && mkdir -p "$in"
    cp "$root"/fuzz-targets/corpus/"$t"/* "$in"/ 2>/dev/null || true
    repo_seeds "$t" | xargs -r cp -t "$in"/
    if [[ -n $seeds && -d $seeds/$t ]]; then cp "$seeds"/"$t"/* "$in"/; fi
    chmod -R u+w "$in"
    [[ -n $(ls "$in") ]] || printf 'x' >"$in/empty-seed"
    nice -n 19 cargo afl fuzz -V "$seconds" -t "$timeout_ms" -i "$in" -o "$out" -- "$bin" "$t" \
        >"$out_root/$t.log" 2>&1 &
    pid=$!
    # Sampled each second; the last sample stands for the whole run (at most a second short).
    while kill -0 "$pid" 2>/dev/null; do
        now=$(tree_ticks "$pid")
        ((now > ticks)) && ticks=$now
        sleep 1
    done
    hz=$(getconf CLK_TCK)
    echo "$((ticks / hz))" >"$out_root/$t.cpu"
    wait "$pid" || { echo "$t: afl-fuzz failed, see $out_root/$t.log" >&2; tail -20 "$out_root/$t.log" >&2; return 1; }
}

minimize() {
    local t=$1 out=$out_root/$t min=$out_root/$t.min corpus=$root/fuzz-targets/corpus/$t
    rm -rf "$min" "$min.maps"
    # afl-cmin on edges (-e, hit counts ignored); the bash version (the Python one finds no
    # coverage through cargo-afl's persistent harness here).
    PATH=$afl_bin:$PATH AFL_PATH=$afl_bin nice -n 19 "$afl_bin/afl-cmin.bash" -e -t "$timeout_ms" \
        -i "$out/default/queue" -o "$min" -- "$bin" "$t" >"$out_root/$t.cmin.log" 2>&1
    # Then at most $max_files per target, chosen greedily by the edges each adds (smallest
    # first on a tie): the committed corpus stays small.
    nice -n 19 "$afl_bin/afl-showmap" -q -e -t "$timeout_ms" -i "$min" -o "$min.maps" -- "$bin" "$t" \
        >>"$out_root/$t.cmin.log" 2>&1 || true
    python3 - "$min" "$min.maps" "$max_files" <<'PY'
import os, sys
src, maps, cap = sys.argv[1], sys.argv[2], int(sys.argv[3])
cover = {}
for name in os.listdir(src):
    path = os.path.join(maps, name)
    edges = set()
    if os.path.exists(path):
        edges = {line.split(":")[0] for line in open(path) if line.strip()}
    cover[name] = (edges, os.path.getsize(os.path.join(src, name)))
seen, keep = set(), []
while len(keep) < cap and cover:
    name = max(cover, key=lambda n: (len(cover[n][0] - seen), -cover[n][1]))
    if not cover[name][0] - seen:
        break
    seen |= cover.pop(name)[0]
    keep.append(name)
for name in list(cover):
    os.remove(os.path.join(src, name))
print(f"kept {len(keep)} files covering {len(seen)} edges", file=sys.stderr)
PY
    # Seeds kept verbatim are not committed again (fixtures stay where they are).
    local known=$out_root/$t.seedsums
    { repo_seeds "$t"; if [[ -n $seeds && -d $seeds/$t ]]; then ls "$seeds/$t"/*; fi; } \
        | xargs -r sha256sum | cut -d' ' -f1 | sort -u >"$known"
    mkdir -p "$corpus.new"
    for f in "$min"/*; do
        [[ -f $f ]] || continue
        sum=$(sha256sum "$f" | cut -d' ' -f1)
        grep -qx "$sum" "$known" && continue
        cp "$f" "$corpus.new/${sum:0:16}"
    done
    # Inputs that crashed or hung are kept too (after their fix, as regression inputs).
    for f in "$out"/default/crashes/id:* "$out"/default/hangs/id:*; do
        [[ -f $f ]] || continue
        sum=$(sha256sum "$f" | cut -d' ' -f1)
        cp "$f" "$corpus.new/${sum:0:16}"
    done
    rm -rf "$corpus" && mv "$corpus.new" "$corpus"
}

stat() { grep -E "^$2 *:" "$1" | sed 's/^[^:]*: *//'; }

report() {
    local t=$1 stats=$out_root/$t/default/fuzzer_stats corpus=$root/fuzz-targets/corpus/$t
    printf '%-18s run %5ss  cpu %6ss  execs %10s  (%6s/s)  queue %5s  corpus %4s files %7s  crashes %s  hangs %s\n' \
        "$t" "$(stat "$stats" run_time)" "$(cat "$out_root/$t.cpu")" "$(stat "$stats" execs_done)" \
        "$(stat "$stats" execs_per_sec)" "$(stat "$stats" corpus_count)" "$(ls "$corpus" | wc -l)" \
        "$(du -sh "$corpus" | cut -f1)" "$(stat "$stats" saved_crashes)" "$(stat "$stats" saved_hangs)"
}

failed=0
running=0
for t in "${targets[@]}"; do
    if ((running >= jobs)); then wait -n || failed=1; running=$((running - 1)); fi
    echo "fuzzing $t for ${seconds}s"
    (fuzz_one "$t" && minimize "$t") &
    running=$((running + 1))
done
while ((running > 0)); do wait -n || failed=1; running=$((running - 1)); done

echo
echo "AFL++ $(cargo afl --version 2>/dev/null | sed 's/.*AFL++ version/version/')"
problems=0
for t in "${targets[@]}"; do
    [[ -f $out_root/$t/default/fuzzer_stats ]] || { echo "$t: no stats"; failed=1; continue; }
    report "$t" | tee -a "$out_root/report.txt"
    n=$(($(stat "$out_root/$t/default/fuzzer_stats" saved_crashes) + $(stat "$out_root/$t/default/fuzzer_stats" saved_hangs)))
    problems=$((problems + n))
done
if ((problems > 0)); then
    echo "crashes or hangs found: see $out_root/<target>/default/{crashes,hangs}/" >&2
    exit 1
fi
exit "$failed"
