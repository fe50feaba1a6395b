#!/usr/bin/env bash
# Count GoogleTest cases in a build directory after `make check`.
# Usage: tests/summarize.sh BUILDDIR   -> prints "N passed, N failed"
# A test program that ran no summary (crash, watchdog, timeout) counts as
# one failure, so a crash can never look like success.
set -u
dir=${1:-.}
passed=0
failed=0
shopt -s nullglob globstar
for trs in "$dir"/tests/**/*.trs; do
    log=${trs%.trs}.log
    result=$(sed -n 's/^:test-result: //p' "$trs" | head -n 1)
    p=$(grep -Eo '^\[  PASSED  \] [0-9]+ test' "$log" 2>/dev/null | grep -Eo '[0-9]+' | tail -n 1)
    f=$(grep -Eo '^\[  FAILED  \] [0-9]+ test' "$log" 2>/dev/null | grep -Eo '[0-9]+' | tail -n 1)
    p=${p:-0}
    f=${f:-0}
    if [ "$result" != PASS ] && [ "$result" != SKIP ] && [ "$f" -eq 0 ]; then
        f=1 # crashed or hung before gtest could summarise
    fi
    passed=$((passed + p))
    failed=$((failed + f))
done
echo "$passed passed, $failed failed"
