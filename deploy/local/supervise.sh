#!/usr/bin/env bash
# A restart loop for `journey worker` (what docker compose's restart policy
# does for containers): runs the command, and when it exits non-zero (70: a
# batch failed; 75: a partition stalled past JOURNEY_STALL_EXIT_S; or a
# crash) starts it again after a pause. A clean exit (0) ends the loop;
# SIGTERM or SIGINT stops the command and the loop.
#
#   deploy/local/supervise.sh journey worker
set -uo pipefail
pause="${SUPERVISE_PAUSE_S:-2}"
child=0
stop() {
    ((child)) && kill -TERM "$child" 2>/dev/null && wait "$child"
    exit 0
}
trap stop TERM INT
while true; do
    "$@" &
    child=$!
    wait "$child"
    rc=$?
    child=0
    ((rc == 0)) && exit 0
    echo "supervise: '$*' exited with status $rc; starting it again in ${pause} s" >&2
    sleep "$pause" &
    wait $!
done
