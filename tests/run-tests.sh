#!/bin/bash
# Runs every test program of one or more build trees and prints one closing line:
#   "N passed, N failed"
# Each test program is a cmocka group; its "[       OK ]" and "[  FAILED  ]" lines are
# counted. A program that dies without a cmocka summary counts as one failure.
# Usage: tests/run-tests.sh BUILD_DIR [BUILD_DIR...]   (env TEST_FILTER=substring)
set -u
cd "$(dirname "$0")/.."
passed=0
failed=0
failed_names=()
for build in "$@"; do
    for t in "$build"/tests/${TEST_GLOB:-test_}*; do
        [ -x "$t" ] && [ -f "$t" ] || continue
        case "$t" in *.log) continue ;; esac
        case "$t" in *"${TEST_FILTER:-}"*) ;; *) continue ;; esac
        log="$build/tests/$(basename "$t").log"
        echo "=== $t"
        start=$(date +%s)
        VIGIL_BUILD="$build" ASAN_OPTIONS="detect_leaks=1:abort_on_error=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}" \
            UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
            timeout --kill-after=10 "${TEST_TIMEOUT:-900}" "$t" >"$log" 2>&1
        rc=$?
        ok=$(grep -c '^\[       OK \]' "$log")
        bad=$(grep -E '^\[  (FAILED|ERROR)   ?\] [A-Za-z_]' "$log" | grep -v 'test(s)' | sort -u | wc -l)
        if ! grep -qE '^\[  (PASSED|FAILED)  \] [0-9]+ test' "$log" && [ "$rc" -ne 0 ]; then
            bad=$((bad + 1))
        elif [ "$rc" -ne 0 ] && [ "$bad" -eq 0 ]; then
            bad=1
        fi
        passed=$((passed + ok))
        failed=$((failed + bad))
        echo "    $ok passed, $bad failed, exit $rc, $(( $(date +%s) - start ))s"
        if [ "$bad" -ne 0 ]; then
            failed_names+=("$t")
            tail -n 40 "$log" | sed 's/^/    | /'
        fi
    done
done
if [ "${#failed_names[@]}" -ne 0 ]; then
    echo "failing programs: ${failed_names[*]}"
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
