"""Helpers for tests against the real local stack (deploy/local/stack.sh up).

Each test gets its own app id, topics and group (uuid-named), so tests never
see each other's data. Workers run as real ``journey worker`` processes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from models import CustomerState, Rejection, Touchpoint, Transition, fold_customer, load_map, parse_touchpoint
from stream.engine.codec import decode_stored
from stream.settings import Settings
from stream.tools.kafka import Record, group_lag, group_offsets, latest_values, read_topic
from stream.tools.simulator import SimMessage

JOURNEY = str(Path(sys.executable).with_name("journey"))
MAP = load_map()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_settings(tmp_path: Path, **over: Any) -> Settings:
    """Settings with unique names for one test; fast group failover."""
    run = uuid.uuid4().hex[:10]
    values: dict[str, Any] = {
        "broker": os.environ.get("JOURNEY_TEST_BROKER", "kafka://127.0.0.1:9092"),
        "app_id": f"it-{run}",
        "touchpoints_topic": f"it-{run}-touchpoints",
        "transitions_topic": f"it-{run}-transitions",
        "dlq_topic": f"it-{run}-dlq",
        "stalls_topic": f"it-{run}-stalls",
        "drift_topic": f"it-{run}-drift",
        "nudges_topic": f"it-{run}-nudges",
        "held_out_topic": f"it-{run}-held-out",
        "outcomes_topic": f"it-{run}-outcomes",
        "erasures_topic": f"it-{run}-erasures",
        "identities_topic": f"it-{run}-identities",
        "redis_url": os.environ.get("JOURNEY_TEST_REDIS", "redis://127.0.0.1:6379/0"),
        "redis_prefix": f"it-{run}:",
        "view_prefix": f"it-{run}:view:",
        "partitions": 4,
        "data_dir": tmp_path / "data",
        # The broker's least (group.min.session.timeout.ms): a killed worker's
        # partitions move on after 6 s, not 10.
        "session_timeout_s": 6.0,
        "heartbeat_interval_s": 1.0,
        "log_level": "INFO",
    }
    values.update(over)
    return Settings(**values)


@dataclass
class WorkerProcess:
    """One ``journey worker`` subprocess with its own web port and log."""

    settings: Settings
    log_path: Path
    data_dir: Path | None = None  # default: one of its own, named after the log
    proc: subprocess.Popen[bytes] | None = None
    web_port: int = field(default_factory=free_port)
    extra_env: dict[str, str] = field(default_factory=dict)  # besides the settings (Faust's own, say)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def start(self) -> WorkerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("JOURNEY_")}
        env.update(self.settings.to_env())
        env["JOURNEY_WEB_PORT"] = str(self.web_port)
        env["JOURNEY_DATA_DIR"] = str(self.data_dir or self.settings.data_dir / self.log_path.stem)
        env.update(self.extra_env)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([JOURNEY, "worker"], env=env, stdout=log, stderr=subprocess.STDOUT)
        return self

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, Any]:
        status, body, _ = self.request("GET", path, timeout=timeout)
        return status, body

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
        auth: bool = True,
    ) -> tuple[int, Any, dict[str, str]]:
        """One HTTP request; the body parsed as JSON when it is. The worker's
        token is sent unless ``auth`` is False or a header says otherwise."""
        h = dict(headers or {})
        token = self.settings.api_token
        if auth and token is not None and "Authorization" not in h:
            h["Authorization"] = f"Bearer {token.get_secret_value()}"
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, raw, got = resp.status, resp.read(), dict(resp.headers)
        except urllib.error.HTTPError as err:
            status, raw, got = err.code, err.read(), dict(err.headers)
        try:
            return status, orjson.loads(raw or b"null"), got
        except orjson.JSONDecodeError:
            return status, raw, got

    def health(self) -> dict[str, Any] | None:
        try:
            return self.get("/health", timeout=2.0)[1]  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return None

    def wait_ready(self, timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.tail()}")
            h = self.health()
            if h and h.get("ready"):
                return h
            time.sleep(0.5)
        raise AssertionError(f"worker not ready after {timeout} s:\n{self.tail()}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=60)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def start_ready_worker(settings: Settings, tmp_path: Path, spawn: list[WorkerProcess]) -> WorkerProcess:
    """The tracker's topics, then one worker (log ``worker.log`` under
    ``tmp_path``), in ``spawn`` for the teardown, answering ready on /health."""
    from stream.tools.kafka import ensure_topics, tracker_topics

    ensure_topics(settings, tracker_topics(settings))
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    spawn.append(worker)
    worker.wait_ready()
    return worker


def start_ready_pair(
    settings: Settings, tmp_path: Path, spawn: list[WorkerProcess]
) -> tuple[WorkerProcess, WorkerProcess]:
    """Two workers (logs worker-a, worker-b under ``tmp_path``), in ``spawn`` for
    the teardown, each answering ready on /health."""
    a = WorkerProcess(settings, tmp_path / "worker-a.log").start()
    b = WorkerProcess(settings, tmp_path / "worker-b.log").start()
    spawn += [a, b]
    a.wait_ready()
    b.wait_ready()
    return a, b


def start_owning_pair(
    settings: Settings, tmp_path: Path, spawn: list[WorkerProcess]
) -> tuple[WorkerProcess, WorkerProcess]:
    """:func:`start_ready_pair`, then until each worker owns half of the partitions."""
    a, b = start_ready_pair(settings, tmp_path, spawn)
    half = settings.partitions // 2
    wait_for(
        "both workers to own partitions",
        lambda: all(len((w.health() or {}).get("partitions", [])) == half for w in (a, b)),
        timeout=120,
    )
    return a, b


def wait_processed(settings: Settings, workers: Iterable[WorkerProcess], timeout: float = 180.0) -> None:
    """Until the group has committed every touchpoint (lag 0) and stays there briefly."""
    deadline = time.monotonic() + timeout
    zero_since: float | None = None
    while time.monotonic() < deadline:
        for w in workers:
            if w.proc is not None and w.proc.poll() is not None:
                raise AssertionError(f"worker exited with {w.proc.returncode}:\n{w.tail()}")
        lag = group_lag(settings, settings.app_id, settings.touchpoints_topic)
        if lag == 0:
            zero_since = zero_since or time.monotonic()
            if time.monotonic() - zero_since > 2.0:
                return
        else:
            zero_since = None
        time.sleep(0.5)
    offsets = group_offsets(settings, settings.app_id, settings.touchpoints_topic)
    behind = {p: f"committed {c}, end {e}" for p, (c, e) in sorted(offsets.items()) if c != e}
    logs = "\n".join(w.tail() for w in workers)
    raise AssertionError(f"touchpoints not all committed after {timeout} s: {behind}\n{logs}")


def stored_states(settings: Settings) -> dict[str, CustomerState]:
    """The latest state per customer in the table's changelog."""
    latest, _ = latest_values(settings, settings.changelog_topic)
    # Keys the store keeps for itself (the erasure ledger, Faust's offsets) are no customers.
    return {k.decode(): decode_stored(v)[1] for k, v in latest.items() if not k.startswith(b"__")}


def changelog_records(settings: Settings) -> list[Record]:
    return list(read_topic(settings, settings.changelog_topic))


@dataclass
class Expected:
    """What the tracker must end with for a list of produced messages: the plain fold."""

    states: dict[str, CustomerState]
    transitions: dict[str, Transition]
    dead: Counter[tuple[bytes, str]]
    applied: int
    duplicates: int


def expected(messages: Iterable[SimMessage]) -> Expected:
    runs: dict[str, list[Touchpoint]] = {}
    dead: Counter[tuple[bytes, str]] = Counter()
    for m in messages:
        parsed = parse_touchpoint(m.value, MAP, key=m.key)
        if isinstance(parsed, Rejection):
            dead[(m.value, parsed.reason)] += 1
        else:
            runs.setdefault(parsed.customer_id, []).append(parsed)
    states: dict[str, CustomerState] = {}
    transitions: dict[str, Transition] = {}
    applied = duplicates = 0
    for cid, evs in runs.items():
        out = fold_customer(MAP, None, evs)
        assert out.state is not None
        states[cid] = out.state
        transitions.update((t.transition_id, t) for t in out.transitions)
        applied += out.applied
        duplicates += out.duplicates
    return Expected(states, transitions, dead, applied, duplicates)


def dead_letters(settings: Settings) -> tuple[Counter[tuple[bytes, str]], int]:
    """DLQ contents de-duplicated by source coordinates, and the raw record count."""
    by_source: dict[bytes, tuple[bytes, str]] = {}
    raw = 0
    for rec in read_topic(settings, settings.dlq_topic):
        raw += 1
        assert rec.value is not None
        by_source[rec.headers["journey.dlq.source"]] = (rec.value, rec.headers["journey.dlq.reason"].decode())
    return Counter(by_source.values()), raw


def transition_records(settings: Settings) -> tuple[dict[str, dict[str, Any]], int]:
    """Transitions de-duplicated by transition_id, and the raw record count."""
    out: dict[str, dict[str, Any]] = {}
    raw = 0
    for rec in read_topic(settings, settings.transitions_topic):
        raw += 1
        assert rec.value is not None
        body = orjson.loads(rec.value)
        out[body["transition_id"]] = body
    return out, raw


def diff_states(got: dict[str, CustomerState], want: dict[str, CustomerState], limit: int = 5) -> str:
    """A readable account of how two state maps differ (empty if equal)."""
    lines = []
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    if missing:
        lines.append(f"{len(missing)} customers missing, e.g. {missing[:limit]}")
    if extra:
        lines.append(f"{len(extra)} unexpected customers, e.g. {extra[:limit]}")
    wrong = [c for c in want if c in got and got[c] != want[c]]
    if wrong:
        lines.append(f"{len(wrong)} customers differ from the fold:")
        for c in wrong[:limit]:
            lines.append(f"  {c}: got {got[c]}\n  {' ' * len(c)}  want {want[c]}")
    return "\n".join(lines)


def forensics(
    settings: Settings, got: dict[str, CustomerState], want: dict[str, CustomerState], limit: int = 3
) -> str:
    """For a few customers that differ: where their events sit in the
    touchpoints topic, and every changelog value written for them (changelog
    offset, source offset of the last event applied, events applied, last
    ids), so a failure shows which write started from which state."""
    wrong = [c for c in want if got.get(c) != want[c]][:limit]
    if not wrong:
        return ""
    keys = {c.encode() for c in wrong}
    lines = ["forensics:"]
    events: dict[bytes, list[str]] = {k: [] for k in keys}
    for rec in read_topic(settings, settings.touchpoints_topic):
        if rec.key in keys:
            try:
                body = orjson.loads(rec.value or b"")
            except orjson.JSONDecodeError:
                body = None
            eid = body.get("event_id", "?") if isinstance(body, dict) else "?"
            events[rec.key].append(f"{eid}@{rec.partition}:{rec.offset}")
    writes: dict[bytes, list[str]] = {k: [] for k in keys}
    for rec in read_topic(settings, settings.changelog_topic):
        if rec.key in keys and rec.value is not None:
            o, st = decode_stored(rec.value)
            last = st.recent[-16:].hex()  # the digests of the last two ids
            writes[rec.key].append(f"  cl {rec.partition}:{rec.offset} o={o} n={st.events} last={last}")
    for k in sorted(keys):
        lines.append(f" {k.decode()} events: {' '.join(events[k])}")
        lines.extend(writes[k])
    return "\n".join(lines)


def settled_states(
    settings: Settings, timeout: float = 30.0, jmap: Any = MAP
) -> tuple[dict[str, CustomerState], dict[str, CustomerState]]:
    """The stored states and the plain fold of the touchpoints topic, once they
    agree or ``timeout`` passes: clock records for deadlines that came due
    may still be arriving after the input lag reached zero."""
    deadline = time.monotonic() + timeout
    while True:
        folded = fold_topic(settings, jmap)
        got = stored_states(settings)
        if got == folded or time.monotonic() > deadline:
            return got, folded
        time.sleep(1.0)


def assert_equals_fold(settings: Settings, want: Expected) -> None:
    """State, dead letters and transitions equal the fold's, once repeats are dropped.

    At-least-once delivery may repeat dead letters and transitions after a
    crash or rebalance; consumers drop them by source and by id, so do we.
    """
    got, folded = settled_states(settings)
    assert got == folded, diff_states(got, folded) + "\n" + forensics(settings, got, folded)
    # And the events applied are exactly the fold's of what was sent (clock
    # records add stalls, drift and defection, never events).
    assert {c: (s.events, s.type_counts) for c, s in got.items()} == {
        c: (s.events, s.type_counts) for c, s in want.states.items()
    }, diff_states(got, want.states)
    dead, _ = dead_letters(settings)
    assert dead == want.dead
    transitions, _ = transition_records(settings)
    assert set(transitions) == set(want.transitions)


STACK = Path(__file__).resolve().parents[2] / "deploy" / "local" / "stack.sh"


def stack(verb: str) -> None:
    """Run ``deploy/local/stack.sh VERB`` (the same stack make test started)."""
    subprocess.run([str(STACK), verb], check=True, capture_output=True, timeout=180)


class RedisOutage:
    """Redis stopped now, started again on leaving the block."""

    def __enter__(self) -> RedisOutage:
        stack("redis-stop")
        return self

    def __exit__(self, *exc: object) -> None:
        stack("redis-start")


class RedisHang:
    """Redis stops answering now (SIGSTOP: its data stays), answers again on leaving the block."""

    def __enter__(self) -> RedisHang:
        stack("redis-hang")
        return self

    def __exit__(self, *exc: object) -> None:
        stack("redis-resume")


class KafkaOutage:
    """Kafka stopped (SIGTERM) now, started again on :meth:`end` or on leaving the block."""

    def __init__(self) -> None:
        self.ended = False

    def __enter__(self) -> KafkaOutage:
        stack("kafka-stop")
        return self

    def end(self) -> None:
        if not self.ended:
            self.ended = True
            stack("kafka-start")

    def __exit__(self, *exc: object) -> None:
        self.end()


def send_messages(settings: Settings, messages: list[SimMessage], rate: float = 0.0) -> None:
    """Produce in order (one request in flight), batched for speed."""
    from stream.tools.kafka import Sender
    from stream.tools.simulator import produce

    with Sender(settings, linger_ms=50, batch_size=512 * 1024) as out:
        produce(lambda k, v: out.send(settings.touchpoints_topic, k, v), messages, rate)


def wait_applying(worker: WorkerProcess, timeout: float = 120.0) -> None:
    """Until the worker has applied some events (its metrics say so)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if worker_metric(worker, "journey_events_total", outcome="applied") > 0:
                return
        except (OSError, AssertionError):
            pass
        assert worker.proc is not None
        if worker.proc.poll() is not None:
            raise AssertionError(f"worker exited with {worker.proc.returncode}:\n{worker.tail()}")
        time.sleep(0.2)
    raise AssertionError(f"the worker applied nothing in {timeout} s:\n{worker.tail()}")


def worker_metric(worker: WorkerProcess, name: str, **labels: str) -> float:
    with urllib.request.urlopen(worker.url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{want} not in /metrics")


def topic_records(settings: Settings, topic: str) -> list[dict[str, Any]]:
    """Every JSON record of ``topic``, in partition order."""
    return [orjson.loads(r.value) for r in read_topic(settings, topic) if r.value is not None]


def fold_topic(settings: Settings, jmap: Any = MAP) -> dict[str, CustomerState]:
    """The plain fold of everything in the touchpoints topic: events and the
    worker's clock and delivery records alike, each partition in offset order."""
    from models.events import (
        CLOCK_HEADER,
        DELIVERY_HEADER,
        ERASE_HEADER,
        ODDS_HEADER,
        parse_clock,
        parse_delivery,
        parse_erase,
        parse_odds,
    )
    from models.identity import LINK_HEADER, MERGE_HEADER, parse_link, parse_merge
    from models.reducer import fold

    items: list[Touchpoint | Any] = []
    for rec in read_topic(settings, settings.touchpoints_topic):
        parsed: Any
        if CLOCK_HEADER in rec.headers:
            parsed = parse_clock(rec.value, rec.key)
        elif DELIVERY_HEADER in rec.headers:
            parsed = parse_delivery(rec.value, rec.key)
        elif ERASE_HEADER in rec.headers:
            parsed = parse_erase(rec.value, rec.key)
        elif LINK_HEADER in rec.headers:
            parsed = parse_link(rec.value, rec.key)
        elif MERGE_HEADER in rec.headers:
            parsed = parse_merge(rec.value, rec.key, jmap)
        elif ODDS_HEADER in rec.headers:
            parsed = parse_odds(rec.value, rec.key)
        else:
            parsed = parse_touchpoint(rec.value, jmap, key=rec.key)
        if not isinstance(parsed, Rejection):
            items.append(parsed)
    return fold(jmap, items)


def wait_for(what: str, check: Any, timeout: float = 60.0, every: float = 0.5) -> Any:
    """Poll ``check()`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)
