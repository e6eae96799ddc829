#!/usr/bin/env bash
# The engine's slow fault tests, outside `make test`: the join-then-leave
# rebalance test N times in a row (default 20), then the 60 s broker outage,
# then Redis hung for 60 s through a stall burst three times the nudge outbox's
# bound, then five SIGKILLs in a stream of 100,000 events (both stores).
# Needs the local stack (deploy/local/stack.sh up); prints a line per run and
# a last line `soak: P passed, F failed`. Each run keeps its worker logs.
#
#   bench/soak.sh [RUNS]
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cd "$repo"
runs="${1:-20}"
logs="$(mktemp -d -t journey-soak-XXXX)"
passed=0 failed=0
for i in $(seq 1 "$runs"); do
    if .venv/bin/pytest -q -p no:cacheprovider --basetemp "$logs/run-$i" \
        "tests/integration/test_tracker.py::test_workers_joining_and_leaving_mid_stream_lose_nothing" \
        >"$logs/rebalance-$i.log" 2>&1; then
        passed=$((passed + 1)); echo "rebalance run $i: passed"
    else
        failed=$((failed + 1)); echo "rebalance run $i: FAILED (log: $logs/rebalance-$i.log, workers: $logs/run-$i)"
    fi
done
if JOURNEY_TEST_LONG=1 .venv/bin/pytest -q -p no:cacheprovider \
    "tests/integration/test_engine.py::test_broker_restart_mid_stream[60.0]" >"$logs/outage-60s.log" 2>&1; then
    passed=$((passed + 1)); echo "60 s broker outage: passed"
else
    failed=$((failed + 1)); echo "60 s broker outage: FAILED (log: $logs/outage-60s.log)"
fi
if JOURNEY_TEST_LONG=1 .venv/bin/pytest -q -p no:cacheprovider \
    tests/integration/test_outbox.py >"$logs/outbox-redis-60s.log" 2>&1; then
    passed=$((passed + 1)); echo "Redis hung 60 s through a stall burst past the outbox bound: passed"
else
    failed=$((failed + 1)); echo "Redis hung 60 s through a stall burst: FAILED (log: $logs/outbox-redis-60s.log)"
fi
if JOURNEY_TEST_LONG=1 .venv/bin/pytest -q -p no:cacheprovider \
    "tests/integration/test_engine.py::test_kill_rounds" >"$logs/kill-rounds.log" 2>&1; then
    passed=$((passed + 1)); echo "five SIGKILLs in 100,000 events, memory and RocksDB: passed"
else
    failed=$((failed + 1)); echo "five SIGKILLs in 100,000 events: FAILED (log: $logs/kill-rounds.log)"
fi
echo "soak: $passed passed, $failed failed"
((failed == 0))
