"""Hypothesis strategies for touchpoints on the default map."""

from __future__ import annotations

from hypothesis import strategies as st

from models import Touchpoint, load_map
from models.events import Clock, Erase

MAP = load_map()
TYPES = sorted(MAP.event_types)
CHANNELS = sorted(MAP.channels)
T0 = 1_790_000_000_000


@st.composite
def touchpoints(draw: st.DrawFn, customers: int = 4, max_events: int = 60) -> list[Touchpoint]:
    """A stream of events for a few customers; ids repeat, so duplicates occur."""
    n = draw(st.integers(min_value=0, max_value=max_events))
    out = []
    for _ in range(n):
        cid = f"c{draw(st.integers(0, customers - 1))}"
        eid = f"e{draw(st.integers(0, max_events))}"
        out.append(
            Touchpoint(
                event_id=eid,
                customer_id=cid,
                type=draw(st.sampled_from(TYPES)),
                channel=draw(st.sampled_from(CHANNELS)),
                # Mostly increasing, sometimes late: out-of-order delivery.
                ts=T0 + draw(st.integers(-3_600_000, 30 * 86_400_000)),
                properties=draw(PROPERTIES),
            )
        )
    return out


# What drift signals read: ratings, feedback scores, order values (sometimes junk).
PROPERTIES = st.none() | st.fixed_dictionaries(
    {},
    optional={
        "rating": st.integers(1, 5) | st.just("five"),
        "score": st.integers(0, 10),
        "sentiment": st.floats(-1, 1, allow_nan=False),
        "order_value": st.floats(0, 2000, allow_nan=False) | st.just(-5),
        # The map's dimensions (models.dimensions): listed values, others, junk.
        "device": st.sampled_from(["desktop", "mobile", "tablet", "fridge", ""])
        | st.integers()
        | st.lists(st.text(max_size=3), max_size=2),
        "variant": st.sampled_from(["control", "treatment", "C"]) | st.text(max_size=40),
        "segment": st.sampled_from(["new", "returning", "vip"]) | st.none(),
        "tz": st.sampled_from(["Europe/Berlin", "America/New_York", "UTC"]),
    },
)


@st.composite
def journeys(draw: st.DrawFn, customers: int = 3, max_items: int = 60) -> list[Touchpoint | Clock | Erase]:
    """Events with the worker's clock readings among them, spanning months,
    so stalls, inactivity, defection and nudge windows all happen; now and
    then a customer is erased."""
    events = draw(touchpoints(customers=customers, max_events=max_items))
    out: list[Touchpoint | Clock | Erase] = []
    for n, ev in enumerate(events):
        roll = draw(st.integers(0, 19))
        if roll < 5:
            later = draw(st.integers(0, 400 * 86_400_000))
            out.append(Clock(ev.customer_id, ev.ts + later))
        elif roll == 5:
            out.append(Erase(ev.customer_id, f"x{n}", ev.ts))
        out.append(ev)
    return out
