"""``journey``: the one command line entry point.

    journey worker                 run a tracker worker (configured by JOURNEY_* variables)
    journey simulate               produce persona-based synthetic customers
    journey emit [FILE]            send JSON lines (one event each) from a file or stdin
    journey status                 live customer counts per stage, from the table's changelog
    journey map check [FILE]       validate a journey map
    journey map diff OLD NEW       what changes from one map to another
    journey replay --map NEW       fold the retained touchpoints under NEW and the live map, side by side
    journey groups [APP_ID...]     blue/green: the active group, and how far each is behind
    journey promote APP_ID         blue/green: make a caught-up group the active one
    journey settings               the effective settings and their variables

Every flag has an environment fallback, shown in ``--help``.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import orjson
from pydantic import ValidationError

from models.errors import JourneyError
from models.journey_map import load_map
from stream.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"journey: error: {message}", err=True)
    sys.exit(code)


def load_settings() -> Settings:
    """Settings from the environment, or a message naming the bad variable."""
    try:
        return Settings()
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            lines.append(f"{Settings.env_name(field)}: {err['msg']}")
        _fail("bad settings:\n  " + "\n  ".join(lines), 2)


class JourneyGroup(click.Group):
    """Turns the errors users can act on into one line and an exit status."""

    def invoke(self, ctx: click.Context) -> Any:
        from kafka.errors import KafkaError
        from redis.exceptions import RedisError

        try:
            return super().invoke(ctx)
        except JourneyError as exc:
            _fail(str(exc))
        except RedisError as exc:
            _fail(f"Redis: {exc} (is it running? deploy/local/stack.sh up)")
        except KafkaError as exc:
            try:
                broker = Settings().broker
            except ValidationError:
                broker = "JOURNEY_BROKER"
            _fail(f"Kafka at {broker}: {exc} (is it running? deploy/local/stack.sh up)")


@click.group(cls=JourneyGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Real-time customer journey tracker on Kafka."""


_held_locks: list[Any] = []


def _lock_data_dir(data_dir: Path) -> None:
    """Refuse to share a RocksDB data directory with another running worker.

    Two workers on one directory would crash on RocksDB's own lock at the
    first rebalance that hands both the same partition; say so at start.
    The lock is released when the process exits, however it exits.
    """
    import fcntl

    handle = (data_dir / ".journey-worker.lock").open("w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        _fail(
            f"another worker uses JOURNEY_DATA_DIR={data_dir}; "
            "give each worker on this host its own data directory"
        )
    _held_locks.append(handle)


@main.command()
def worker() -> None:
    """Run a tracker worker until stopped (Ctrl-C or SIGTERM).

    Creates the tracker's topics if missing (and checks their partition
    counts), then starts a Faust worker with the touchpoints agent and the
    web server on JOURNEY_WEB_PORT.
    """
    settings = load_settings()
    try:
        # Faust creates only the last level of its data directory.
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _fail(f"cannot create JOURNEY_DATA_DIR={settings.data_dir}: {exc.strerror or exc}")
    if settings.store.startswith("rocksdb"):
        _lock_data_dir(settings.data_dir)
    from stream.tools.kafka import ensure_topics, tracker_topics

    try:
        jmap = load_map(settings.map_path)
        ensure_topics(settings, tracker_topics(settings))
    except JourneyError as exc:
        _fail(str(exc))

    from stream.engine.watchdog import stop_timed_out
    from stream.faust.app import bounded_worker
    from stream.worker import build_worker, tune_gc

    worker = build_worker(settings, jmap)
    tune_gc(settings.gc_threshold)
    runner = bounded_worker(
        worker.app,
        settings.log_level.lower(),
        settings.stop_timeout_s,
        stop_timed_out(settings.stop_timeout_s),
    )
    runner.execute_from_commandline()


def sim_option(*flags: str, env: str, **kwargs: Any) -> Callable[[F], F]:
    """A simulator flag with its JOURNEY_SIM_* fallback shown in --help."""
    return click.option(*flags, envvar=f"JOURNEY_SIM_{env}", show_envvar=True, show_default=True, **kwargs)


@main.command()
@sim_option(
    "--customers", "-n", env="CUSTOMERS", default=1000, type=click.IntRange(1), help="Synthetic customers"
)
@sim_option(
    "--seed", env="SEED", default=None, type=int, help="Random seed (same seed, same events); random if unset"
)
@sim_option("--rate", env="RATE", default=0.0, type=click.FloatRange(0), help="Events/s at most; 0: no limit")
@sim_option(
    "--duplicates", env="DUPLICATES", default=0.0, type=click.FloatRange(0, 1), help="Share sent twice"
)
@sim_option(
    "--malformed", env="MALFORMED", default=0.0, type=click.FloatRange(0, 1), help="Share of bad messages"
)
@sim_option(
    "--span-days",
    env="SPAN_DAYS",
    default=14.0,
    type=click.FloatRange(0),
    help="Journeys start this far back",
)
@sim_option(
    "--devices",
    env="DEVICES",
    default=0.0,
    type=click.FloatRange(0, 1),
    help="Share who browse anonymously on two devices, then log in (merged into one customer)",
)
@click.option("--dry-run", is_flag=True, help="Print the events as JSON lines instead of sending them")
def simulate(
    customers: int,
    seed: int | None,
    rate: float,
    duplicates: float,
    malformed: float,
    span_days: float,
    devices: float,
    dry_run: bool,
) -> None:
    """Produce synthetic customers' touchpoints to the touchpoints topic."""
    import random

    from stream.tools.simulator import generate, produce

    if seed is None:
        seed = random.SystemRandom().randrange(1_000_000)
    messages = generate(
        customers, seed, duplicates=duplicates, malformed=malformed, span_days=span_days, devices=devices
    )
    if dry_run:
        out = sys.stdout.buffer
        for m in messages:
            out.write(m.value + b"\n")
        return
    settings = load_settings()
    from stream.tools.kafka import Sender, ensure_topics, tracker_topics

    try:
        ensure_topics(settings, tracker_topics(settings))
    except JourneyError as exc:
        _fail(str(exc))
    click.echo(
        f"simulating {customers} customers (seed {seed}): {len(messages)} messages to "
        f"{settings.touchpoints_topic}" + (f" at {rate:g}/s" if rate else ""),
        err=True,
    )
    topic = settings.touchpoints_topic
    try:
        with Sender(settings) as out:
            sent = produce(lambda k, v: out.send(topic, k, v), messages, rate)
    except JourneyError as exc:
        _fail(str(exc))
    click.echo(f"sent {sent} messages", err=True)


@main.command()
@click.argument("source", type=click.File("rb"), default="-")
def emit(source: click.utils.LazyFile) -> None:
    """Send JSON lines, one touchpoint event each, from SOURCE (default: stdin).

    The message key is the line's customer_id. Lines are sent as they are:
    the worker validates them, and dead-letters what does not fit.
    """
    settings = load_settings()
    from stream.tools.kafka import Sender

    sent = 0
    try:
        out = Sender(settings)
        for line in source:
            line = line.strip()
            if not line:
                continue
            key: bytes | None = None
            try:
                obj = orjson.loads(line)
                if isinstance(obj, dict) and isinstance(obj.get("customer_id"), str):
                    key = obj["customer_id"].encode()
            except orjson.JSONDecodeError:
                pass  # sent anyway: the worker dead-letters it with a reason
            out.send(settings.touchpoints_topic, key, line if isinstance(line, bytes) else line.encode())
            sent += 1
        out.close()
    except JourneyError as exc:
        _fail(str(exc))
    click.echo(f"sent {sent} events to {settings.touchpoints_topic}", err=True)


def stage_counts(settings: Settings) -> tuple[Counter[str], str | None, Counter[str]]:
    """Customers per stage from the latest value of each key in the changelog,
    the id of the customer updated last (an example to look up), and how
    many are stalled now (per stage), at risk (key ``at risk``), stitched
    from several ids (``stitched``) and how many ids were merged
    (``merged ids``, counted in no stage)."""
    from stream.engine.codec import decode_stored
    from stream.tools.kafka import latest_values

    latest, last = latest_values(settings, settings.changelog_topic)
    counts: Counter[str] = Counter()
    flags: Counter[str] = Counter()
    for k, v in latest.items():
        if k.startswith(b"__"):  # the store's own keys (the erasure ledger)
            continue
        state = decode_stored(v)[1]
        if state.merged_into is not None:  # an anonymous id merged into a customer
            flags["merged ids"] += 1
            continue
        if state.ids:
            flags["stitched"] += 1
        counts[state.stage] += 1
        if state.stall is not None:
            flags[state.stall.stage] += 1
        if state.drift is not None and state.drift.at_risk:
            flags["at risk"] += 1
    return counts, last.decode() if last is not None else None, flags


@main.command()
@click.option(
    "--watch",
    default=0.0,
    type=click.FloatRange(0),
    envvar="JOURNEY_STATUS_WATCH",
    show_envvar=True,
    help="Refresh every this many seconds (0: print once)",
)
def status(watch: float) -> None:
    """Live customer counts per journey stage."""
    from stream.tools.kafka import topic_sizes

    settings = load_settings()
    jmap = load_map(settings.map_path)
    topics = {
        "stalls and recoveries": settings.stalls_topic,
        "nudges sent": settings.nudges_topic,
        "nudges held out": settings.held_out_topic,
        "churn risks": settings.drift_topic,
        "nudge outcomes": settings.outcomes_topic,
    }
    while True:
        try:
            counts, example, flags = stage_counts(settings)
            sizes = topic_sizes(settings, topics.values())
        except JourneyError as exc:
            _fail(str(exc))
        total = sum(counts.values())
        widest = max(counts.values(), default=1)
        if watch:
            click.clear()
        click.echo(f"{total} customers  ({time.strftime('%H:%M:%S')}, map {jmap.name!r})")
        for name in jmap.stage_names:
            n = counts.get(name, 0)
            stalled = f"  ({flags[name]} stalled)" if flags.get(name) else ""
            click.echo(f"  {name:<14} {n:>8}  {'#' * round(40 * n / widest)}{stalled}")
        click.echo(f"at risk now: {flags.get('at risk', 0)}")
        click.echo(
            f"identity: {flags.get('stitched', 0)} customers stitched from {flags.get('merged ids', 0)} "
            "anonymous ids merged into them"
        )
        click.echo("records: " + ", ".join(f"{label} {sizes[t]}" for label, t in topics.items()))
        if example:
            click.echo(f"example customer: {example}")
        if not watch:
            return
        time.sleep(watch)


TAIL_TOPICS = {
    "nudges": "nudges_topic",
    "held-out": "held_out_topic",
    "stalls": "stalls_topic",
    "drift": "drift_topic",
    "outcomes": "outcomes_topic",
    "transitions": "transitions_topic",
    "dlq": "dlq_topic",
    "identities": "identities_topic",
}


@main.command()
@click.argument("what", type=click.Choice(sorted(TAIL_TOPICS)))
@click.option("--from-beginning", is_flag=True, help="Print what the topic holds first, then follow")
def tail(what: str, from_beginning: bool) -> None:
    """Follow one of the tracker's output topics, one JSON record per line (Ctrl-C ends)."""
    from kafka import KafkaConsumer

    settings = load_settings()
    topic = getattr(settings, TAIL_TOPICS[what])
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=settings.bootstrap_servers,
        auto_offset_reset="earliest" if from_beginning else "latest",
        enable_auto_commit=False,
        client_id="journey-tail",
    )
    click.echo(f"following {topic} (Ctrl-C ends)", err=True)
    try:
        for message in consumer:
            value = message.value.decode("utf-8", "replace") if message.value is not None else "null"
            click.echo(value)
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()


@main.group(name="map")
def map_group() -> None:
    """Journey map tools."""


@map_group.command("check")
@click.argument("path", required=False, type=click.Path(path_type=Path))
def map_check(path: Path | None) -> None:
    """Validate a journey map (default: the shipped map) and summarise it."""
    try:
        jmap = load_map(path)
    except JourneyError as exc:
        _fail(str(exc))
    click.echo(
        f"map {jmap.name!r}: {len(jmap.stages)} stages, {len(jmap.event_types)} event types, "
        f"{len(jmap.channels)} channels, {len(jmap.moves)} explicit moves, version {jmap.version}"
    )
    for s in jmap.stages:
        extra = " (exit)" if s.exit else ""
        stall = f", stall after {s.stall_after_s}s" if s.stall_after_s else ""
        click.echo(f"  {s.name}{extra}{stall}: {', '.join(s.enter_on) or '-'}")


@map_group.command("diff")
@click.argument("old", type=click.Path(path_type=Path))
@click.argument("new", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON object with every change")
def map_diff(old: Path, new: Path, as_json: bool) -> None:
    """What changes from map OLD to map NEW: stages, events moved, thresholds, moves, rules.

    Exits 0 with no change, 3 with changes (as diff does with 1, but 1 is an error here).
    """
    from models.map_diff import diff_maps

    try:
        a, b = load_map(old), load_map(new)
    except JourneyError as exc:
        _fail(str(exc))
    changes = diff_maps(a, b)
    if as_json:
        click.echo(
            orjson.dumps(
                {"old": a.version, "new": b.version, "changes": [c.to_dict() for c in changes]},
                option=orjson.OPT_INDENT_2,
            )
        )
    else:
        click.echo(f"map {a.name!r} {a.version} -> {b.name!r} {b.version}: {len(changes)} changes")
        for c in changes:
            click.echo(f"  {c.line()}")
    sys.exit(3 if changes else 0)


@main.command()
@click.option("--map", "new_map", required=True, type=click.Path(path_type=Path), help="The changed map")
@click.option(
    "--live",
    "live_map",
    type=click.Path(path_type=Path),
    default=None,
    help="The map to compare with (default: JOURNEY_MAP_PATH, the live one)",
)
@click.option("--from", "since", default=None, help="Replay from this time (ISO-8601 with a zone) on")
@click.option("--at", "at", default=None, help="Judge stalls and defections as of this time (default: now)")
@click.option(
    "--out", type=click.Path(path_type=Path), default=None, help="Write the report as JSON here too"
)
@click.option("--sample", default=20, type=click.IntRange(0, 10_000), help="Customers who would move, listed")
def replay(
    new_map: Path, live_map: Path | None, since: str | None, at: str | None, out: Path | None, sample: int
) -> None:
    """Fold the retained touchpoints under a changed map and the live map, side by side.

    A consumer of its own reads the topic (the workers are not disturbed);
    both folds run in memory. Replay sees only what the topic still retains.
    """
    from models.timeutil import iso_to_ms
    from stream.tools.replay import render
    from stream.tools.replay import replay as run

    settings = load_settings()
    live = load_map(live_map if live_map is not None else settings.map_path)
    new = load_map(new_map)
    times = {}
    for name, value in (("--from", since), ("--at", at)):
        if value is not None:
            ms = iso_to_ms(value)
            if ms is None:
                _fail(f"{name} must be ISO-8601 with a zone, e.g. 2026-12-01T00:00:00Z")
            times[name] = ms
    report = run(settings, live, new, since_ms=times.get("--from"), at_ms=times.get("--at"), sample=sample)
    figures = report.to_dict()  # folds every state through the funnel counts: once
    click.echo(render(figures))
    if out is not None:
        out.write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))
        click.echo(f"report written to {out}")


@main.command()
@click.argument("app_ids", nargs=-1)
def groups(app_ids: tuple[str, ...]) -> None:
    """Blue/green: which group is active, and how far each group (default:
    JOURNEY_APP_ID) is behind the end of the touchpoints topic."""
    import redis

    from stream.redis.role import active_key
    from stream.tools.kafka import group_offsets

    settings = load_settings()
    active = redis.Redis.from_url(settings.redis_url).get(active_key(settings))
    named = active.decode() if isinstance(active, bytes) else None
    click.echo(f"active group: {named or '(none named: each group by its JOURNEY_ROLE)'}")
    for app_id in app_ids or (settings.app_id,):
        offsets = group_offsets(settings, app_id, settings.touchpoints_topic)
        done = sum(c or 0 for c, _ in offsets.values())
        end = sum(e for _, e in offsets.values())
        mark = "  (active)" if app_id == named else ""
        click.echo(f"  {app_id:<24} {done:>12} of {end} records, {end - done} behind{mark}")


@main.command()
@click.argument("app_id")
@click.option(
    "--max-lag", default=500, type=click.IntRange(0), help="Records it may be behind", show_default=True
)
@click.option(
    "--wait",
    default=60.0,
    type=click.FloatRange(0),
    help="Seconds to wait for it to catch up",
    show_default=True,
)
def promote(app_id: str, max_lag: int, wait: float) -> None:
    """Blue/green: make APP_ID the active group once it has caught up.

    Its workers write the serving view (rewriting it from their tables),
    export the stage gauge and send nudges; the other group's stop within a
    second (README "Blue/green"). The old group can be stopped afterwards.
    """
    import redis

    from stream.redis.role import active_key
    from stream.tools.kafka import group_lag

    settings = load_settings()
    deadline = time.monotonic() + wait
    while True:
        lag = group_lag(settings, app_id, settings.touchpoints_topic)
        if lag is not None and lag <= max_lag:
            break
        behind = "has committed nothing yet" if lag is None else f"is {lag} records behind"
        if time.monotonic() >= deadline:
            _fail(f"group {app_id} {behind} (--max-lag {max_lag}); not promoted")
        click.echo(f"group {app_id} {behind}; waiting", err=True)
        time.sleep(1)
    redis.Redis.from_url(settings.redis_url).set(active_key(settings), app_id)
    click.echo(f"group {app_id} is active ({lag} records behind); the workers switch within a second")


@main.command(name="settings")
def show_settings() -> None:
    """Print the effective settings with their environment variables."""
    settings = load_settings()
    for name, field in Settings.model_fields.items():
        click.echo(f"{Settings.env_name(name):<32} {getattr(settings, name)!s:<28} {field.description}")


if __name__ == "__main__":
    main()
