"""Identity stitching: one person's anonymous and known ids become one customer.

The contract (README "Identity"):

* An ``identify`` event (``type: "identify"``, every map knows it) for the
  known ``customer_id`` names that id as known; ``properties.previous_id``
  links an anonymous id to it.
* Any event may carry the same link as ``properties.anonymous_id``; its
  ``customer_id`` is then the known id.

How a link travels (each step in the owner of one id, in order with that
id's events; the ids may live on different partitions):

1. The known id's owner applies the event, marks the customer known and
   sends a :class:`Link` record, keyed by the anonymous id, through the
   touchpoints topic (header :data:`LINK_HEADER`), unless that id is merged
   already or the customer holds :data:`MAX_IDS` ids.
2. The anonymous id's owner checks the guards (:func:`link_refusal`): a
   known id is never merged into another, an id merged into one customer is
   never merged into a second. Refused: the link is dead-lettered
   (``merge_refused``) and audited. Accepted: the anonymous state goes, in a
   :class:`MergeRecord` keyed by the known id with a deterministic merge id
   (header :data:`MERGE_HEADER`), and the id's own state becomes an alias
   (``CustomerState.merged_into``): it leaves its stage, and its later
   events are re-keyed to the known id (header :data:`REKEYED_HEADER`).
3. The known id's owner applies the merge once (:func:`merge_states`; a
   merge whose anonymous id it holds already changes nothing, so a
   redelivery repeats nothing) and audits it on the identities topic.

A merge record reaching an id that is itself an alias is sent on to the
id it was merged into, so a chain ends at one customer; a link that would
merge an id into itself (directly or through aliases) changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import msgspec
import orjson

from models.events import (
    ANONYMOUS_ID,
    PREVIOUS_ID,
    Erase,
    Rejection,
    Touchpoint,
    id_problem,
    json_object,
)
from models.journey_map import IDENTIFY, JourneyMap
from models.outputs import Recovered, stable_id
from models.state import (
    AFTER_STALL_KEPT,
    DEDUP_WINDOW,
    ID_DIGEST_BYTES,
    NUDGES_KEPT,
    SIGNALS_KEPT,
    CustomerState,
    Drift,
    NudgeRef,
    Stall,
)
from models.timeutil import in_range

LINK_HEADER: Final = "journey-link"
MERGE_HEADER: Final = "journey-merge"
REKEYED_HEADER: Final = "journey-rekeyed-from"
# How many ids may be merged into one customer. A link past it is refused
# (audited); the event that carried it is applied to the known customer.
MAX_IDS: Final = 64
IDENTITY_CHANNEL: Final = "identity"  # the channel of a transition a merge caused


def merge_id(anonymous_id: str, known_id: str) -> str:
    """The deterministic id of merging ``anonymous_id`` into ``known_id``."""
    return stable_id("merge", anonymous_id, known_id)


def link_of(ev: Touchpoint) -> str | None:
    """The anonymous id an event links to its customer, if any (an id:
    ``parse_touchpoint`` checked it)."""
    props = ev.properties
    if not props:
        return None
    linked = props.get(PREVIOUS_ID) if ev.type == IDENTIFY else None
    if linked is None:
        linked = props.get(ANONYMOUS_ID)
    if linked is None or linked == ev.customer_id:
        return None
    return linked


@dataclass(frozen=True, slots=True)
class Link:
    """Ask the owner of ``anonymous_id`` to merge it into ``known_id``."""

    anonymous_id: str
    known_id: str
    at: int  # event time of the event that carried the link

    @property
    def customer_id(self) -> str:  # whose owner applies it
        return self.anonymous_id

    def to_json(self) -> bytes:
        return orjson.dumps({"link": self.anonymous_id, "known": self.known_id, "at": self.at})


class MergeRecord(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """An anonymous id's state, on its way to the known id it was merged into."""

    merge_id: str
    anonymous_id: str
    known_id: str
    at: int
    state: CustomerState | None  # None: the anonymous id had no journey

    @property
    def customer_id(self) -> str:  # whose owner applies it
        return self.known_id


_MERGE_ENCODER: Final = msgspec.msgpack.Encoder()
_MERGE_DECODER: Final = msgspec.msgpack.Decoder(MergeRecord)


def encode_merge(m: MergeRecord) -> bytes:
    return _MERGE_ENCODER.encode(m)


def parse_link(raw: bytes | None, key: bytes | None) -> Link | Rejection:
    """Validate a link record (one with the :data:`LINK_HEADER` header)."""
    obj = json_object(raw, "a link record")
    if isinstance(obj, Rejection):
        return obj
    anon, known, at = obj.get("link"), obj.get("known"), obj.get("at")
    problem = id_problem(anon, "link") or id_problem(known, "known")
    if problem is not None:
        return Rejection("bad_field", problem)
    if isinstance(at, bool) or not isinstance(at, int) or not in_range(at):
        return Rejection("bad_field", "at must be epoch milliseconds in the tracker's time range")
    assert isinstance(anon, str) and isinstance(known, str)
    if key is not None and key != anon.encode():
        return Rejection("key_mismatch", "the message key must be the anonymous id")
    return Link(anon, known, at)


def parse_merge(raw: bytes | None, key: bytes | None, jmap: JourneyMap) -> MergeRecord | Rejection:
    """Validate a merge record (one with the :data:`MERGE_HEADER` header):
    its shape, its ids, its merge id and that its state fits the map."""
    try:
        m = _MERGE_DECODER.decode(raw or b"")
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return Rejection("bad_field", f"not a merge record: {exc}"[:200])
    problem = id_problem(m.anonymous_id, "anonymous_id") or id_problem(m.known_id, "known_id")
    if problem is not None:
        return Rejection("bad_field", problem)
    if m.merge_id != merge_id(m.anonymous_id, m.known_id) or not in_range(m.at):
        return Rejection("bad_field", "the merge id or time does not fit its ids")
    s = m.state
    if s is not None and (
        s.customer_id != m.anonymous_id
        or s.is_alias
        or s.stage not in jmap.stage_by_name
        or any(st not in jmap.stage_by_name for st in s.stages)
        or (s.stall is not None and s.stall.stage not in jmap.stage_by_name)
        or any(n.stage not in jmap.stage_by_name for n in s.nudges)
    ):
        return Rejection("bad_field", "the merged state does not fit the map")
    if key is not None and key != m.known_id.encode():
        return Rejection("key_mismatch", "the message key must be the known id")
    return m


def link_refusal(state: CustomerState | None, link: Link) -> str | None:
    """Why the owner of ``link.anonymous_id`` (in ``state``) refuses to merge
    it into ``link.known_id``, or None to merge (or to do nothing: it is
    merged into that customer already)."""
    if state is None:
        return None
    if state.merged_into is not None:
        if state.merged_into == link.known_id:
            return None
        return f"{link.anonymous_id!r} is merged into another customer already"
    if state.known or state.ids:
        return "both ids are known: two known customers are never merged"
    return None


def merged_stage(jmap: JourneyMap, known: CustomerState, anon: CustomerState) -> tuple[str, int]:
    """The merged customer's stage and when it was entered (the merge rule's stage part).

    * Neither side in an exit stage: the stage further along the map (by its
      rank); the same stage on both sides keeps the earlier entry.
    * One side in an exit stage (defected): the exit wins only if it is the
      later news, entered after the other side's last event; otherwise the
      person is active on the other id and keeps that side's stage.
    * Both in exit stages: the later exit.
    """
    k_exit = jmap.stage_by_name[known.stage].exit
    a_exit = jmap.stage_by_name[anon.stage].exit
    if k_exit != a_exit:
        out, other = (known, anon) if k_exit else (anon, known)
        if out.stage_entered_at > other.last_event_at:
            return out.stage, out.stage_entered_at
        return other.stage, other.stage_entered_at
    if known.stage == anon.stage:
        return known.stage, min(known.stage_entered_at, anon.stage_entered_at)
    if k_exit:  # both exit stages
        later = known if known.stage_entered_at >= anon.stage_entered_at else anon
        return later.stage, later.stage_entered_at
    # neither side in an exit stage: the further stage along the map
    index = jmap.stage_by_name
    win = known if index[known.stage].index >= index[anon.stage].index else anon
    return win.stage, win.stage_entered_at


def _window(first: bytes, second: bytes) -> bytes:
    """Both de-duplication windows as one: ``first``'s digests, then
    ``second``'s, each once, the newest DEDUP_WINDOW kept."""
    seen: set[bytes] = set()
    out: list[bytes] = []
    for w in (first, second):
        for i in range(0, len(w), ID_DIGEST_BYTES):
            d = w[i : i + ID_DIGEST_BYTES]
            if d not in seen:
                seen.add(d)
                out.append(d)
    return b"".join(out[-DEDUP_WINDOW:])


def _drift(known: Drift | None, anon: Drift | None) -> Drift | None:
    """The score brought to the later time (the newer evidence), its flags
    with it; the signal hits of both, newest last."""
    if known is None or anon is None:
        return known if known is not None else anon
    newer = known if known.at >= anon.at else anon
    signals = tuple(sorted({*known.signals, *anon.signals}, key=lambda s: (s[2], s[0], s[1]))[-SIGNALS_KEPT:])
    return Drift(newer.score, newer.at, newer.at_risk, newer.inactive, signals)


def _nudges(known: tuple[NudgeRef, ...], anon: tuple[NudgeRef, ...]) -> tuple[NudgeRef, ...]:
    """Every nudge of both sides once (by id), oldest first; past NUDGES_KEPT
    the oldest closed ones go first, so every open one stays while it can."""
    by_id = {r.nudge_id: r for r in (*anon, *known)}
    out = sorted(by_id.values(), key=lambda r: (r.created_at, r.nudge_id))
    while len(out) > NUDGES_KEPT:
        closed = next((i for i, r in enumerate(out) if r.outcome is not None), None)
        out.pop(closed if closed is not None else 0)
    return tuple(out)


def _stall(stage: str, known: Stall | None, anon: Stall | None) -> Stall | None:
    """The open stall in the merged stage, if either side has one: the one
    detected first, so the merged customer is not stalled (nor reminded)
    again for the same stage visit."""
    open_here = [s for s in (known, anon) if s is not None and s.stage == stage]
    return min(open_here, key=lambda s: (s.detected_at, s.episode_id)) if open_here else None


@dataclass(frozen=True, slots=True)
class Merged:
    """What :func:`merge_states` made, and the stalls it ended."""

    state: CustomerState
    recovered: tuple[Recovered, ...]


def merge_states(
    jmap: JourneyMap, known: CustomerState | None, anon: CustomerState | None, m: MergeRecord
) -> Merged:
    """The merge rule: the known customer after ``anon`` is merged into it.

    * stage: :func:`merged_stage`; stages reached: both, each at its earlier time;
    * first touch: the earlier one (its channel with it); last event: the later;
    * counts: summed; the de-duplication window: both, the known side's newest;
    * drift: :func:`_drift`; nudges: :func:`_nudges` (every one once: no
      nudge is decided twice, and an open one keeps its cooldown);
    * an open stall: kept if it is in the merged stage (:func:`_stall`),
      else ended with a ``recovered`` record (its stage is left);
    * identity: known, with the anonymous id added to its ids.
    """
    cid = m.known_id
    base_ids = known.ids if known is not None else ()
    ids = base_ids if m.anonymous_id in base_ids else (*base_ids, m.anonymous_id)
    if anon is None:
        if known is None:
            raise ValueError("a merge of nobody into nobody makes no customer")
        return Merged(msgspec.structs.replace(known, known=True, ids=ids, map_version=jmap.version), ())
    if known is None:
        moved = msgspec.structs.replace(
            anon, customer_id=cid, known=True, ids=ids, merged_into=None, map_version=jmap.version
        )
        return Merged(moved, ())
    stage, entered = merged_stage(jmap, known, anon)
    stages = dict(anon.stages)
    for s, at in known.stages.items():
        stages[s] = min(at, stages.get(s, at))
    stages = dict(sorted(stages.items(), key=lambda kv: (kv[1], jmap.stage_by_name[kv[0]].index)))
    first = anon if anon.first_touch_at < known.first_touch_at else known
    counts = _summed(known.type_counts, anon.type_counts)
    stall = _stall(stage, known.stall, anon.stall)
    recovered = tuple(
        Recovered(s.episode_id, cid, s.stage, stage, m.at, m.merge_id)
        for s in (known.stall, anon.stall)
        if s is not None and s is not stall and s.stage != stage
    )
    state = CustomerState(
        customer_id=cid,
        stage=stage,
        stage_entered_at=entered,
        stages=stages,
        first_touch_channel=first.first_touch_channel,
        first_touch_at=first.first_touch_at,
        last_event_at=max(known.last_event_at, anon.last_event_at),
        events=known.events + anon.events,
        type_counts=counts,
        recent=_window(anon.recent, known.recent),
        stall=stall,
        drift=_drift(known.drift, anon.drift),
        nudges=_nudges(known.nudges, anon.nudges),
        known=True,
        ids=ids,
        map_version=jmap.version,
        dims={**anon.dims, **known.dims},
        tz=known.tz or anon.tz,
        flows=_summed(known.flows, anon.flows),
        after_stall=(*anon.after_stall, *known.after_stall)[-AFTER_STALL_KEPT:],
        outcomes=_summed(known.outcomes, anon.outcomes),
    )
    return Merged(state, recovered)


def _summed(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    out = dict(a)
    for k, n in b.items():
        out[k] = out.get(k, 0) + n
    return out


@dataclass(frozen=True, slots=True)
class Forward:
    """A record for another customer's owner, through the touchpoints topic:
    a link, a merge, an event re-keyed from a merged id, or the erasure of
    a merged id."""

    key: str  # the customer it is for
    item: Link | MergeRecord | Touchpoint | Erase
    header: str  # LINK_HEADER, MERGE_HEADER, REKEYED_HEADER or ERASE_HEADER
    header_value: bytes = b"1"

    @property
    def value(self) -> bytes:
        item = self.item
        return encode_merge(item) if isinstance(item, MergeRecord) else item.to_json()
