from collections import Counter

import orjson

from models import Rejection, Touchpoint, fold, load_map, parse_touchpoint
from stream.tools.simulator import PERSONAS, generate

MAP = load_map()
NOW = 1_795_503_600_000


def test_same_seed_same_bytes_other_seed_other_customers() -> None:
    a = generate(50, 1, duplicates=0.1, malformed=0.1, now_ms=NOW)
    assert a == generate(50, 1, duplicates=0.1, malformed=0.1, now_ms=NOW)
    b = generate(50, 2, now_ms=NOW)
    assert {m.key for m in a}.isdisjoint({m.key for m in b})


def test_expected_reasons_match_the_contract_and_valid_events_fit_the_map() -> None:
    msgs = generate(500, 3, duplicates=0.05, malformed=0.05, now_ms=NOW)
    reasons: Counter[str] = Counter()
    valid = []
    for m in msgs:
        out = parse_touchpoint(m.value, MAP, key=m.key)
        if m.expect is None:
            assert isinstance(out, Touchpoint), (m, out)
            assert out.ts <= NOW
            valid.append(out)
        else:
            assert isinstance(out, Rejection) and out.reason == m.expect
            reasons[m.expect] += 1
    assert len(reasons) >= 6
    assert len(valid) > len({e.event_id for e in valid})  # duplicates are in there


def test_personas_reach_every_stage() -> None:
    msgs = generate(2000, 4, now_ms=NOW)
    events = [e for m in msgs if isinstance(e := parse_touchpoint(m.value, MAP, key=m.key), Touchpoint)]
    stages = Counter(s.stage for s in fold(MAP, events).values())
    assert set(stages) == set(MAP.stage_names)
    assert {p.name for p in PERSONAS} == {"browser", "comparer", "buyer", "loyal", "complainer", "lapsed"}


def test_the_two_device_persona_merges_into_one_customer() -> None:
    from models.reducer import LinkedFold

    jmap = MAP
    plain = generate(200, 5, now_ms=NOW)
    assert not any(m.key and m.key.startswith(b"anon-") for m in plain)  # only when asked for
    msgs = generate(200, 5, devices=0.5, now_ms=NOW)
    folder = LinkedFold(jmap)
    for m in msgs:
        parsed = parse_touchpoint(m.value, jmap, key=m.key)
        assert not isinstance(parsed, Rejection), parsed
        folder.apply(parsed)
    aliases = [s for s in folder.states.values() if s.merged_into is not None]
    stitched = [s for s in folder.states.values() if s.ids]
    assert len(aliases) > 50 and len(stitched) > 25
    assert all(a.merged_into in folder.states and a.customer_id.startswith("anon-") for a in aliases)
    assert all(c.known and c.customer_id.startswith("cust-") for c in stitched)
    # every event of a person is counted once, on the person
    events_of = Counter(
        orjson.loads(m.value)["customer_id"].removesuffix("-a").removesuffix("-b").replace("anon-", "cust-")
        for m in msgs
    )
    for c in stitched:
        assert c.events == events_of[c.customer_id]
