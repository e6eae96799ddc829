#!/usr/bin/env bash
# The demo (make demo): a worker and the simulator in the background, on the
# stack that `make demo` started. `demo.sh stop` (make demo-stop) ends them.
#
# Environment: DEMO_CUSTOMERS [20000], DEMO_RATE events/s [300],
# DEMO_DEVICES [0.2: the share who browse anonymously on two devices, then log in],
# DEMO_SPAN_DAYS [0.01: event times over the last quarter hour],
# JOURNEY_MAP_PATH [deploy/local/demo-map.yaml: a cart stalls after 20 s],
# JOURNEY_WEB_PORT [6066], and any other JOURNEY_* setting.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
run="${JOURNEY_STACK_DIR:-$repo/.stack}/demo"
bin="$repo/.venv/bin"
port="${JOURNEY_WEB_PORT:-6066}"
# The demo map has thresholds in seconds and minutes, so stalls, nudges,
# churn risk and defection show within a minute or two.
export JOURNEY_MAP_PATH="${JOURNEY_MAP_PATH:-$here/demo-map.yaml}"

stop() {
    for name in simulator worker; do
        if [[ -f "$run/$name.pid" ]] && kill -0 "$(cat "$run/$name.pid")" 2>/dev/null; then
            kill -TERM "$(cat "$run/$name.pid")" || true
            echo "demo: stopped the $name"
        fi
        rm -f "$run/$name.pid"
    done
}

start() {
    mkdir -p "$run"
    stop >/dev/null
    cd "$repo"
    # Under a restart loop, as a supervisor would run it: a worker that
    # exits non-zero (a failed batch, a stalled partition) starts again.
    nohup "$here/supervise.sh" "$bin/journey" worker >"$run/worker.log" 2>&1 &
    echo $! >"$run/worker.pid"
    echo "demo: worker starting under deploy/local/supervise.sh (log: $run/worker.log)"
    for _ in $(seq 1 120); do
        if curl -fs "http://127.0.0.1:$port/health" >/dev/null 2>&1; then break; fi
        kill -0 "$(cat "$run/worker.pid")" 2>/dev/null || { tail -20 "$run/worker.log"; exit 1; }
        sleep 1
    done
    curl -fs "http://127.0.0.1:$port/health" >/dev/null || { echo "demo: worker not ready" >&2; exit 1; }
    nohup "$bin/journey" simulate --customers "${DEMO_CUSTOMERS:-20000}" --rate "${DEMO_RATE:-300}" \
        --span-days "${DEMO_SPAN_DAYS:-0.01}" --duplicates 0.02 --malformed 0.01 \
        --devices "${DEMO_DEVICES:-0.2}" >"$run/simulator.log" 2>&1 &
    echo $! >"$run/simulator.pid"
    echo "demo: simulator sending ${DEMO_RATE:-300} events/s (log: $run/simulator.log)"
    sleep 30
    local status someone
    status="$("$bin/journey" status)"
    echo "$status"
    someone="$(sed -n 's/^example customer: //p' <<<"$status")"
    cat <<EOT

Customers are moving. Look at:
  journey map      http://127.0.0.1:$port/map   (live, in a browser)
  funnel           curl -s http://127.0.0.1:$port/funnel
  live counts      .venv/bin/journey status --watch 2
  one customer     curl -s http://127.0.0.1:$port/customers/${someone:-<customer_id>}
  its serving view redis-cli hgetall journey:view:${someone:-<customer_id>}
  worker metrics   curl -s http://127.0.0.1:$port/metrics | grep ^journey_
  Prometheus       http://127.0.0.1:${PROMETHEUS_PORT:-9090}  (journey rules and alerts loaded; try journey:customers:sum)
  nudges live      .venv/bin/journey tail nudges     (also: stalls, held-out, drift, outcomes)
  transitions      .venv/bin/journey tail transitions; refused events: .venv/bin/journey tail dlq
  identity merges  .venv/bin/journey tail identities   (a device's id: GET /customers/anon-...-a)
  a changed map    .venv/bin/journey map diff $JOURNEY_MAP_PATH my-map.yaml
                   .venv/bin/journey replay --map my-map.yaml --out replay.json
Stop everything:   make demo-stop
EOT
}

case "${1:-}" in
start) start ;;
stop) stop ;;
*) echo "usage: demo.sh start|stop" >&2; exit 2 ;;
esac
