#!/usr/bin/env bash
# The local stack without Docker: a single-node Apache Kafka in KRaft mode
# (jars from Maven Central, pinned in deploy/local/pom.xml, cached),
# Debian's redis-server and Debian's prometheus (scraping the local workers
# with deploy/prometheus/prometheus.yml), all on 127.0.0.1, data under one
# directory.
#
#   deploy/local/stack.sh up       start Kafka, Redis and Prometheus, wait until they answer
#   deploy/local/stack.sh down     stop both (TERM, then KILL after 20 s)
#   deploy/local/stack.sh status   say what runs, exit 1 if something does not
#   deploy/local/stack.sh kafka-stop   stop Kafka alone (TERM, as an outage or an upgrade would)
#   deploy/local/stack.sh kafka-start  start Kafka alone again on the same data, wait until it answers
#   deploy/local/stack.sh redis-stop   stop Redis alone (an outage)
#   deploy/local/stack.sh redis-start  start Redis alone again, wait until it answers
#   deploy/local/stack.sh redis-hang   Redis stops answering, its data kept (SIGSTOP)
#   deploy/local/stack.sh redis-resume Redis answers again (SIGCONT)
#   deploy/local/stack.sh logs     tail the broker and Redis logs
#   deploy/local/stack.sh clean    down, then delete the data directory
#
# Environment (defaults in brackets):
#   JOURNEY_STACK_DIR   data, logs and pid files      [<repo>/.stack]
#   JOURNEY_CACHE_DIR   cached Kafka jars             [~/.cache/journey]
#   KAFKA_PORT          broker listener               [9092]
#   KAFKA_CONTROLLER_PORT  KRaft controller listener  [9093]
#   REDIS_PORT          Redis                         [6379]
#   PROMETHEUS_PORT     Prometheus                    [9090]
#   KAFKA_HEAP_OPTS     broker JVM heap               [-Xms256m -Xmx768m]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
stack_dir="${JOURNEY_STACK_DIR:-$repo/.stack}"
cache_dir="${JOURNEY_CACHE_DIR:-$HOME/.cache/journey}"
kafka_port="${KAFKA_PORT:-9092}"
controller_port="${KAFKA_CONTROLLER_PORT:-9093}"
redis_port="${REDIS_PORT:-6379}"
prometheus_port="${PROMETHEUS_PORT:-9090}"
kafka_version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/pom.xml")"
libs="$cache_dir/kafka-$kafka_version/libs"

say() { printf 'stack: %s\n' "$*"; }
die() { printf 'stack: error: %s\n' "$*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pid_alive() {
    local f="$1"
    [[ -f "$f" ]] && kill -0 "$(cat "$f")" 2>/dev/null
}

need() {
    local missing=()
    command -v java >/dev/null || missing+=("java (apt-get install openjdk-17-jre-headless)")
    command -v redis-server >/dev/null || missing+=("redis-server (apt-get install redis-server)")
    command -v redis-cli >/dev/null || missing+=("redis-cli (apt-get install redis-tools)")
    command -v prometheus >/dev/null || missing+=("prometheus (apt-get install prometheus)")
    command -v curl >/dev/null || missing+=("curl (apt-get install curl)")
    if [[ ! -f "$libs/.complete" ]]; then
        command -v mvn >/dev/null || missing+=("mvn, to fetch the Kafka jars once (apt-get install maven)")
    fi
    if ((${#missing[@]})); then
        for m in "${missing[@]}"; do printf 'stack: missing: %s\n' "$m" >&2; done
        exit 1
    fi
}

fetch_jars() {
    [[ -f "$libs/.complete" ]] && return 0
    say "fetching Apache Kafka $kafka_version jars from Maven Central into $libs (once)"
    local tmp="$libs.partial"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    if ! mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$tmp" >"$cache_dir/mvn.log" 2>&1; then
        tail -20 "$cache_dir/mvn.log" >&2
        die "mvn could not fetch the Kafka jars (full log: $cache_dir/mvn.log)"
    fi
    rm -rf "$libs"
    mv "$tmp" "$libs"
    touch "$libs/.complete"
}

kafka_cmd() {
    # shellcheck disable=SC2206  # the heap options are meant to split
    cmd=(java ${KAFKA_HEAP_OPTS:--Xms256m -Xmx768m} -XX:+UseG1GC -Djava.awt.headless=true
        "-Dlog4j.configuration=file:$here/log4j.properties"
        "-Dkafka.logs.dir=$stack_dir/kafka/logs"
        -cp "$libs/*" "$@")
}

kafka_java() {
    local cmd
    kafka_cmd "$@"
    "${cmd[@]}"
}

write_kafka_config() {
    mkdir -p "$stack_dir/kafka/data" "$stack_dir/kafka/logs"
    cat >"$stack_dir/kafka/server.properties" <<EOF
# Written by deploy/local/stack.sh: single node, broker and controller in one.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller_port
listeners=PLAINTEXT://127.0.0.1:$kafka_port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$kafka_port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$stack_dir/kafka/data
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.retention.hours=168
EOF
}

kafka_up() {
    if pid_alive "$stack_dir/kafka.pid"; then
        say "kafka already running (pid $(cat "$stack_dir/kafka.pid"))"
        return 0
    fi
    port_open "$kafka_port" && die "port $kafka_port is taken by another process (set KAFKA_PORT)"
    fetch_jars
    write_kafka_config
    if [[ ! -f "$stack_dir/kafka/data/meta.properties" ]]; then
        local cluster_id
        cluster_id="$(kafka_java kafka.tools.StorageTool random-uuid)"
        kafka_java kafka.tools.StorageTool format -t "$cluster_id" \
            -c "$stack_dir/kafka/server.properties" >"$stack_dir/kafka/logs/format.log" 2>&1 ||
            { cat "$stack_dir/kafka/logs/format.log" >&2; die "could not format the Kafka log directory"; }
    fi
    say "starting kafka $kafka_version on 127.0.0.1:$kafka_port"
    # log4j appends: only lines written after this start tell that it is up.
    wc -l <"$stack_dir/kafka/logs/server.log" 2>/dev/null >"$stack_dir/kafka/logs/start-line" || echo 0 >"$stack_dir/kafka/logs/start-line"
    local cmd
    kafka_cmd kafka.Kafka "$stack_dir/kafka/server.properties"
    # Its own session: a broker started from a test or a script outlives their process group.
    setsid nohup "${cmd[@]}" >"$stack_dir/kafka/logs/stdout.log" 2>&1 &
    echo $! >"$stack_dir/kafka.pid"
}

kafka_wait() {
    local deadline=$((SECONDS + ${STACK_WAIT_SECONDS:-90}))
    while ((SECONDS < deadline)); do
        pid_alive "$stack_dir/kafka.pid" || {
            tail -30 "$stack_dir/kafka/logs/stdout.log" "$stack_dir/kafka/logs/server.log" 2>/dev/null >&2
            die "kafka exited during start-up (logs: $stack_dir/kafka/logs)"
        }
        if port_open "$kafka_port" && tail -n "+$(($(cat "$stack_dir/kafka/logs/start-line" 2>/dev/null || echo 0) + 1))" \
            "$stack_dir/kafka/logs/server.log" 2>/dev/null | grep -q "Kafka Server started"; then
            say "kafka is up on 127.0.0.1:$kafka_port"
            return 0
        fi
        sleep 0.5
    done
    die "kafka did not answer within ${STACK_WAIT_SECONDS:-90} s (logs: $stack_dir/kafka/logs)"
}

redis_up() {
    mkdir -p "$stack_dir/redis"
    if pid_alive "$stack_dir/redis.pid"; then
        say "redis already running (pid $(cat "$stack_dir/redis.pid"))"
        return 0
    fi
    port_open "$redis_port" && die "port $redis_port is taken by another process (set REDIS_PORT)"
    say "starting redis on 127.0.0.1:$redis_port"
    redis-server --bind 127.0.0.1 --port "$redis_port" --daemonize yes \
        --dir "$stack_dir/redis" --pidfile "$stack_dir/redis.pid" \
        --logfile "$stack_dir/redis/redis.log" --save "" --appendonly no >/dev/null
    local deadline=$((SECONDS + 20))
    while ((SECONDS < deadline)); do
        if [[ "$(redis-cli -p "$redis_port" ping 2>/dev/null)" == PONG ]]; then
            say "redis is up on 127.0.0.1:$redis_port"
            return 0
        fi
        sleep 0.2
    done
    die "redis did not answer PONG within 20 s (log: $stack_dir/redis/redis.log)"
}

prometheus_up() {
    mkdir -p "$stack_dir/prometheus"
    if pid_alive "$stack_dir/prometheus.pid"; then
        say "prometheus already running (pid $(cat "$stack_dir/prometheus.pid"))"
        return 0
    fi
    port_open "$prometheus_port" && die "port $prometheus_port is taken by another process (set PROMETHEUS_PORT)"
    say "starting prometheus on 127.0.0.1:$prometheus_port"
    setsid prometheus --config.file="$repo/deploy/prometheus/prometheus.yml" \
        --storage.tsdb.path="$stack_dir/prometheus/data" \
        --web.listen-address="127.0.0.1:$prometheus_port" \
        >"$stack_dir/prometheus/prometheus.log" 2>&1 </dev/null &
    echo $! >"$stack_dir/prometheus.pid"
    local deadline=$((SECONDS + 30))
    while ((SECONDS < deadline)); do
        if curl -fs "http://127.0.0.1:$prometheus_port/-/ready" >/dev/null 2>&1; then
            say "prometheus is up on http://127.0.0.1:$prometheus_port"
            return 0
        fi
        pid_alive "$stack_dir/prometheus.pid" || die "prometheus exited (log: $stack_dir/prometheus/prometheus.log)"
        sleep 0.3
    done
    die "prometheus not ready within 30 s (log: $stack_dir/prometheus/prometheus.log)"
}

stop_pid() {
    local name="$1" f="$2"
    if ! pid_alive "$f"; then
        rm -f "$f"
        return 0
    fi
    local pid
    pid="$(cat "$f")"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 20))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$f"
    say "$name stopped"
}

status() {
    local rc=0
    if pid_alive "$stack_dir/kafka.pid" && port_open "$kafka_port"; then
        say "kafka   up    127.0.0.1:$kafka_port (pid $(cat "$stack_dir/kafka.pid"))"
    else
        say "kafka   down"; rc=1
    fi
    if [[ "$(redis-cli -p "$redis_port" ping 2>/dev/null)" == PONG ]]; then
        say "redis   up    127.0.0.1:$redis_port"
    else
        say "redis   down"; rc=1
    fi
    if curl -fs "http://127.0.0.1:$prometheus_port/-/ready" >/dev/null 2>&1; then
        say "prometheus up http://127.0.0.1:$prometheus_port"
    else
        say "prometheus down"; rc=1
    fi
    return $rc
}

case "${1:-}" in
up)
    need
    mkdir -p "$stack_dir" "$cache_dir"
    redis_up
    prometheus_up
    kafka_up
    kafka_wait
    ;;
down)
    stop_pid kafka "$stack_dir/kafka.pid"
    stop_pid redis "$stack_dir/redis.pid"
    stop_pid prometheus "$stack_dir/prometheus.pid"
    ;;
status) status ;;
kafka-stop) stop_pid kafka "$stack_dir/kafka.pid" ;;
kafka-start)
    need
    kafka_up
    kafka_wait
    ;;
redis-stop) stop_pid redis "$stack_dir/redis.pid" ;;
redis-start)
    need
    redis_up
    ;;
redis-hang) pid_alive "$stack_dir/redis.pid" && kill -STOP "$(cat "$stack_dir/redis.pid")" && say "redis hangs (SIGSTOP)" ;;
redis-resume) pid_alive "$stack_dir/redis.pid" && kill -CONT "$(cat "$stack_dir/redis.pid")" && say "redis answers again" ;;
logs) tail -n 50 -F "$stack_dir/kafka/logs/server.log" "$stack_dir/redis/redis.log" ;;
clean)
    "$0" down
    rm -rf "$stack_dir"
    say "removed $stack_dir"
    ;;
*)
    sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
