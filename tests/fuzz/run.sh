#!/usr/bin/env bash
# Run every built libFuzzer target for a bounded time.
#
# Usage: tests/fuzz/run.sh [SECONDS] [TARGET...]
#   SECONDS  how long each target runs (default 20)
#   TARGET   names like proxy_protocol or fuzz_proxy_protocol (default: all built)
# Run it from the build directory after `make fuzz`; the programs are looked
# for in $EVS_FUZZ_BINDIR, else ./tests/fuzz/bin, else next to this script.
#
# Each target starts from its checked-in seeds (tests/fuzz/corpus/<target>),
# copied to a temporary directory so the checked-in corpus never changes.
# Crash inputs are kept in $EVS_FUZZ_ARTIFACTS (default ./fuzz-artifacts);
# replay one with: tests/fuzz/bin/fuzz_<target> <file>.
# LeakSanitizer uses tests/fuzz/lsan.supp (a libconfig scanner leak).
#
# A target passes when it ran its time without a crash, leak, timeout or
# out-of-memory. The last line is "N passed, N failed"; the exit status is
# non-zero when any target failed. Without clang or its libFuzzer runtime
# (and nothing built) the run is skipped with a message and exit status 0.
set -u
here=$(cd "$(dirname "$0")" && pwd)
seconds=${1:-20}
shift $(($# > 0 ? 1 : 0))
case $seconds in '' | *[!0-9]*) echo "usage: $0 [SECONDS] [TARGET...]" >&2; exit 2 ;; esac

if [ -n "${EVS_FUZZ_BINDIR:-}" ]; then
    bindir=$EVS_FUZZ_BINDIR
elif [ -d tests/fuzz/bin ]; then
    bindir=$(pwd)/tests/fuzz/bin
else
    bindir=$here/bin
fi

libfuzzer_available() {
    local cc=${FUZZ_CC:-clang}
    command -v "$cc" >/dev/null 2>&1 || return 1
    echo 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { return 0; }' |
        "$cc" -x c -fsanitize=fuzzer -o /dev/null - >/dev/null 2>&1
}

targets=()
if [ $# -gt 0 ]; then
    for t in "$@"; do
        t=${t#fuzz_}
        targets+=("$t")
    done
else
    for f in "$bindir"/fuzz_*; do
        [ -x "$f" ] && [ -f "$f" ] && targets+=("$(basename "$f" | sed 's/^fuzz_//')")
    done
fi

if [ ${#targets[@]} -eq 0 ]; then
    if ! libfuzzer_available; then
        echo "SKIP: clang with libFuzzer is not available (install clang and libclang-rt-dev);"
        echo "      no fuzz targets were built in $bindir"
        echo "0 passed, 0 failed"
        exit 0
    fi
    echo "no fuzz targets in $bindir: run 'make fuzz' first (or set EVS_FUZZ_BINDIR)" >&2
    echo "0 passed, 1 failed"
    exit 1
fi

artifacts=${EVS_FUZZ_ARTIFACTS:-$(pwd)/fuzz-artifacts}
mkdir -p "$artifacts" || exit 1
work=$(mktemp -d "${TMPDIR:-/tmp}/evs-fuzz.XXXXXX") || exit 1
trap 'rm -rf "$work"' EXIT

export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1:detect_stack_use_after_return=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export LSAN_OPTIONS="suppressions=$here/lsan.supp:print_suppressions=0${LSAN_OPTIONS:+:$LSAN_OPTIONS}"

passed=0
failed=0
for t in "${targets[@]}"; do
    prog=$bindir/fuzz_$t
    if [ ! -x "$prog" ]; then
        echo "FAIL fuzz_$t: $prog is not built"
        failed=$((failed + 1))
        continue
    fi
    corpus=$work/$t
    mkdir -p "$corpus"
    if [ -d "$here/corpus/$t" ]; then
        cp -R "$here/corpus/$t/." "$corpus/"
    fi
    log=$work/$t.log
    # -timeout: one input taking 25 s is a hang; timeout(1) bounds the whole run.
    # The subshell keeps bash's "Aborted" notice for a crashed target out of
    # the report (the log has the details).
    (timeout -k 10 $((seconds + 120)) "$prog" -max_total_time="$seconds" -max_len=4096 \
        -timeout=25 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$artifacts/fuzz_$t-" "$corpus" >"$log" 2>&1) 2>/dev/null
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    cov=$(grep -Eo 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -n 1)
    units=$(ls "$corpus" | wc -l)
    if [ $rc -eq 0 ]; then
        echo "PASS fuzz_$t: ${execs:-?} runs, ${speed:-?} exec/s, ${cov:-cov: ?}, corpus $units"
        passed=$((passed + 1))
    else
        echo "FAIL fuzz_$t (exit $rc): ${execs:-?} runs, ${cov:-cov: ?}"
        grep -E 'ERROR|invariant failed|SUMMARY|Test unit written|runtime error' "$log" | head -n 20 | sed 's/^/    /'
        cp "$log" "$artifacts/fuzz_$t.log"
        echo "    full log: $artifacts/fuzz_$t.log"
        failed=$((failed + 1))
    fi
done
echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
