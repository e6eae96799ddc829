#!/usr/bin/env bash
# The test command (make test): lint, start the local stack if it is not up,
# run unit and integration tests against it, and stop the stack again (only
# if this script started it) whether the tests pass or not.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"
bin="$repo/.venv/bin"

"$bin/ruff" check . && "$bin/ruff" format --check . && "$bin/mypy" || {
    echo "run-tests: lint failed" >&2
    exit 1
}

started=0
if ! "$here/stack.sh" status >/dev/null 2>&1; then
    "$here/stack.sh" up || exit 1
    started=1
fi
stop_stack() { ((started)) && "$here/stack.sh" down; }
trap stop_stack EXIT

if (($#)); then
    "$bin/pytest" "$@"  # what was asked, as asked
    exit
fi
# First the tests that stop or hang Kafka or Redis under everyone's feet, one
# at a time, while the tests that need no stack (CPU, no broker) run beside
# them: the fault tests spend most of their time waiting for a broker or a
# worker to come back, and a broker restarts fastest while it holds few
# topics. Then the integration tests that leave the shared stack alone, three
# at a time on the two cores (each has its own topics, group and data
# directory, and most of their time is spent waiting on a broker or a worker).
unit_log="$(mktemp -t journey-unit-XXXX.log)"
"$bin/pytest" -m "not integration" -p no:cacheprovider --durations=5 >"$unit_log" 2>&1 &
unit=$!
"$bin/pytest" -m stack_fault -p no:cacheprovider --durations=10 || status=$?
wait "$unit" || status=$?
echo "--- the tests that need no stack (run beside the stack_fault tests):"
cat "$unit_log"
rm -f "$unit_log"
"$bin/pytest" -n 3 --dist load -m "integration and not stack_fault" -p no:cacheprovider --durations=10 \
    || status=$?
exit "${status:-0}"
