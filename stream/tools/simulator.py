"""Persona-based synthetic customers for demos, tests and benchmarks.

Each persona walks a journey with its own channel mix and odds (browsers who
never buy, comparers who abandon carts, buyers, loyal repeat buyers,
complainers who may leave, lapsed customers who may be won back). A seed
makes a run reproducible: the same seed gives the same customers, event ids
and bytes, so sending a run twice changes nothing in the tracker.

:func:`generate` returns messages with the dead-letter reason each should get
(``expect``), so tests can check the dead-letter topic exactly. Event times
start up to ``span_days`` before ``now`` and never pass it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import orjson

from models.timeutil import ms_to_iso

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS

# Events that only happen on one channel.
FIXED_CHANNEL = {
    "store_visit": "store",
    "email_open": "email",
    "email_click": "email",
    "newsletter_signup": "email",
    "call_inbound": "phone",
    "chat_question": "chat",
    "ad_click": "ads",
    "social_engagement": "social",
    "app_open": "mobile_app",
    "referral_sent": "referral",
}


@dataclass(frozen=True)
class SimMessage:
    """One message to produce. ``expect`` is the dead-letter reason, None if valid."""

    key: bytes | None
    value: bytes
    expect: str | None = None


Walk = Callable[[random.Random], list[str]]


@dataclass(frozen=True)
class Persona:
    name: str
    weight: int
    channels: tuple[tuple[str, int], ...]  # (channel, weight) for events of no fixed channel
    walk: Walk
    delay_h: float = 3.0  # mean hours between two of a customer's events (exponential)


def _some(rng: random.Random, options: list[str], lo: int, hi: int) -> list[str]:
    return [rng.choice(options) for _ in range(rng.randint(lo, hi))]


AWARE = ["page_view", "ad_click", "email_open", "social_engagement", "store_visit", "app_open"]
CONSIDER = ["product_view", "search", "review_read", "price_compare", "chat_question", "email_click"]


def _browser(rng: random.Random) -> list[str]:
    out = _some(rng, AWARE, 1, 3)
    if rng.random() < 0.5:
        out += _some(rng, ["product_view", "search"], 1, 2)
    return out


def _comparer(rng: random.Random, treated: bool = False) -> list[str]:
    out = _some(rng, AWARE, 1, 2) + _some(rng, CONSIDER, 2, 5)
    if rng.random() < (0.85 if treated else 0.7):  # the experiment's treatment carts more often
        out.append("add_to_cart")
        if rng.random() < 0.5:
            out.append("checkout_started")
    return out  # abandons the cart


def _buy(rng: random.Random) -> list[str]:
    out = _some(rng, AWARE, 1, 2) + _some(rng, CONSIDER, 1, 3) + ["add_to_cart"]
    if rng.random() < 0.3:
        out.append("coupon_redeemed")
    return [*out, "checkout_started", "purchase"]


def _buyer(rng: random.Random) -> list[str]:
    out = _buy(rng)
    if rng.random() < 0.3:
        out.append(rng.choice(["support_ticket", "return_requested"]))
    return out


def _loyal(rng: random.Random) -> list[str]:
    out = _buy(rng)
    for _ in range(rng.randint(1, 3)):
        out += [
            rng.choice(["product_view", "page_view"]),
            rng.choice(["purchase", "review_written", "referral_sent"]),
        ]
    return out


def _complainer(rng: random.Random) -> list[str]:
    out = [*_buy(rng), "complaint"]
    if rng.random() < 0.5:
        out.append(rng.choice(["support_ticket", "call_inbound"]))
    if rng.random() < 0.4:
        out.append(rng.choice(["unsubscribe", "account_closed"]))
    return out


def _lapsed(rng: random.Random) -> list[str]:
    out = [*_some(rng, AWARE, 1, 2), *_some(rng, CONSIDER, 0, 2), "unsubscribe"]
    if rng.random() < 0.3:
        out += ["ad_click", "product_view", "purchase"]  # won back
    return out


# Each persona converts at its own rate (its walk) and its own pace
# (delay_h): there is something for next-stage odds to learn (bench/odds.py).
PERSONAS: tuple[Persona, ...] = (
    Persona("browser", 30, (("web", 5), ("mobile_app", 3), ("social", 2)), _browser, 8.0),
    Persona("comparer", 20, (("web", 6), ("mobile_app", 3), ("chat", 1)), _comparer, 6.0),
    Persona("buyer", 25, (("web", 5), ("mobile_app", 4), ("store", 1)), _buyer, 1.0),
    Persona("loyal", 10, (("mobile_app", 5), ("web", 3), ("email", 2)), _loyal, 2.0),
    Persona("complainer", 8, (("web", 4), ("phone", 3), ("chat", 3)), _complainer, 3.0),
    Persona("lapsed", 7, (("email", 4), ("web", 4), ("ads", 2)), _lapsed, 12.0),
)
# The default map's dimensions (models/default_map.yaml), drawn from the
# customer's number so the random draws (and so the journeys) stay those of
# the seed: a device class, an A/B variant, a segment from the persona, and
# a time zone.
ZONES = ("Europe/Berlin", "America/New_York", "Asia/Tokyo", "UTC")
SEGMENTS = {"loyal": "vip", "buyer": "returning", "complainer": "returning"}


def _describe(i: int, persona: Persona, channel: str, first: bool) -> dict[str, object]:
    props: dict[str, object] = {"persona": persona.name}
    # A customer's device class: their own, whichever channel an event came by.
    props["device"] = "mobile" if i % 3 == 0 else ("tablet" if i % 7 == 0 else "desktop")
    if first:
        props["variant"] = "treatment" if i % 2 else "control"
        props["segment"] = SEGMENTS.get(persona.name, "new")
        props["tz"] = ZONES[i % len(ZONES)]
    return props


def _event(eid: str, cid: str, etype: str, channel: str, ts: int, props: dict[str, object] | None) -> bytes:
    body: dict[str, object] = {
        "event_id": eid,
        "customer_id": cid,
        "type": etype,
        "channel": channel,
        "timestamp": ms_to_iso(ts),
    }
    if props:
        body["properties"] = props
    return orjson.dumps(body)


def _malformed(rng: random.Random, cid: str, eid: str, ts: int) -> SimMessage:
    key = cid.encode()
    good = {"event_id": eid, "customer_id": cid, "type": "page_view", "channel": "web", "timestamp": ts}
    kind = rng.randrange(8)
    if kind == 0:
        return SimMessage(key, b'{"event_id": "' + eid.encode() + b'", broken', "not_json")
    if kind == 1:
        return SimMessage(key, orjson.dumps([eid, cid]), "not_object")
    if kind == 2:
        return SimMessage(
            key, orjson.dumps({k: v for k, v in good.items() if k != "event_id"}), "missing_field"
        )
    if kind == 3:
        return SimMessage(key, orjson.dumps({**good, "type": "teleport"}), "unknown_type")
    if kind == 4:
        return SimMessage(key, orjson.dumps({**good, "channel": "fax"}), "unknown_channel")
    if kind == 5:
        return SimMessage(key, orjson.dumps({**good, "timestamp": "yesterday"}), "bad_field")
    if kind == 6:
        return SimMessage(b"not-" + key, orjson.dumps(good), "key_mismatch")
    return SimMessage(None, orjson.dumps(good), "key_mismatch")


def generate(
    customers: int,
    seed: int,
    *,
    duplicates: float = 0.0,
    malformed: float = 0.0,
    now_ms: int | None = None,
    span_days: float = 14.0,
    devices: float = 0.0,
) -> list[SimMessage]:
    """Messages for ``customers`` synthetic customers, in production order.

    ``devices``: the share of customers who begin anonymously on two devices
    (ids ``anon-<seed>-<n>-a`` on the web and ``-b`` in the app), then log in
    (an ``identify`` event linking device a) and go on as themselves, their
    first event after the login carrying device b's id (``anonymous_id``):
    the tracker merges the three into one customer (``models.identity``)."""
    rng = random.Random(seed)
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    weights = [p.weight for p in PERSONAS]
    timed: list[tuple[int, int, SimMessage]] = []
    seq = 0
    for i in range(customers):
        persona = rng.choices(PERSONAS, weights)[0]
        cid = f"cust-{seed}-{i:06d}"
        names, cw = zip(*persona.channels, strict=True)
        ts = now - int(rng.uniform(0, span_days) * DAY_MS)
        walk = _comparer(rng, bool(i % 2)) if persona.walk is _comparer else persona.walk(rng)
        # Two anonymous devices before the login (only drawn for when asked: a
        # seed gives the same customers as before without it).
        login = len(walk) // 2 if devices and len(walk) >= 2 and rng.random() < devices else 0
        dev_a, dev_b = f"anon-{seed}-{i:06d}-a", f"anon-{seed}-{i:06d}-b"
        for n, etype in enumerate(walk):
            channel = FIXED_CHANNEL.get(etype) or rng.choices(names, cw)[0]
            props: dict[str, object] | None = _describe(i, persona, channel, n == 0)
            if etype == "purchase":
                props = {**(props or {}), "order_value": round(rng.uniform(5, 400), 2)}
            who = cid
            if n < login:
                who = dev_a if n % 2 == 0 else dev_b
                channel = FIXED_CHANNEL.get(etype) or ("web" if who == dev_a else "mobile_app")
            elif login and n == login:
                ident = _event(f"{cid}-login", cid, "identify", "web", ts, {"previous_id": dev_a})
                timed.append((ts, seq, SimMessage(cid.encode(), ident)))
                seq += 1
                props = {**(props or {}), "anonymous_id": dev_b}
            value = _event(f"{who}-e{n}", who, etype, channel, ts, props)
            timed.append((ts, seq, SimMessage(who.encode(), value)))
            seq += 1
            ts = min(now, ts + int(rng.expovariate(1 / (persona.delay_h * HOUR_MS))) + 1000)
    timed.sort(key=lambda t: (t[0], t[1]))
    out: list[SimMessage] = []
    later: list[tuple[int, SimMessage]] = []
    for idx, (ts, _, msg) in enumerate(timed):
        out.append(msg)
        if duplicates and rng.random() < duplicates:
            later.append((len(out) - 1 + rng.randint(1, 50), msg))  # redelivered a little later
        if malformed and rng.random() < malformed:
            cid = msg.key.decode() if msg.key else "anon"
            out.append(_malformed(rng, cid, f"{cid}-bad{idx}", ts))
    if later:
        # Insert from the back so earlier positions stay valid.
        for pos, msg in sorted(later, key=lambda t: t[0], reverse=True):
            out.insert(min(pos + 1, len(out)), msg)
    return out


def uniform(
    customers: int,
    seed: int,
    *,
    events: int = 10,
    now_ms: int | None = None,
    span_days: float = 14.0,
) -> list[SimMessage]:
    """The effect-heavy mix: ``events`` per customer on average, each of the
    map's event types (and channels) equally likely, so about one event in
    nine or so is a purchase, a complaint, an unsubscribe or a closed account:
    loyalty, drift, defection, win-backs and nudges all happen often. In
    production order (event time), as :func:`generate` gives."""
    from models.journey_map import load_map

    jmap = load_map()
    types, channels = sorted(jmap.event_types), sorted(jmap.channels)
    rng = random.Random(seed)
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    timed: list[tuple[int, int, SimMessage]] = []
    for i in range(customers * events):
        c = rng.randrange(customers)
        cid = f"uni-{seed}-{c:06d}"
        ts = now - int(rng.uniform(0, span_days) * DAY_MS)
        etype = rng.choice(types)
        props: dict[str, object] | None = None
        if etype == "purchase":
            props = {"order_value": round(rng.uniform(5, 400), 2)}
        value = _event(f"{cid}-u{i}", cid, etype, rng.choice(channels), ts, props)
        timed.append((ts, i, SimMessage(cid.encode(), value)))
    timed.sort(key=lambda t: (t[0], t[1]))
    return [m for _, _, m in timed]


def produce(
    send: Callable[[bytes | None, bytes], object],
    messages: Iterable[SimMessage],
    rate: float = 0.0,
) -> int:
    """Hand each message to ``send(key, value)``, at most ``rate`` per second (0: no limit)."""
    n = 0
    start = time.monotonic()
    for msg in messages:
        send(msg.key, msg.value)
        n += 1
        if rate > 0:
            ahead = n / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
    return n
