"""StateCache: bounded, per partition, and holding values not yet stored."""

from __future__ import annotations

from models.state import CustomerState
from stream.engine.codec import encode_stored
from stream.engine.state_cache import StateCache


def state(cid: str, events: int) -> CustomerState:
    return CustomerState(cid, "awareness", 0, {"awareness": 0}, "web", 0, 0, events)


def test_a_held_value_is_read_before_the_store_and_survives_eviction_until_stored() -> None:
    store: dict[bytes, bytes] = {b"a": encode_stored(1, state("a", 1))}
    cache = StateCache(lambda p, k: store.get(k), maxsize=0)  # nothing stays cached
    newer = (2, state("a", 2))
    cache.hold(0, b"a", newer)
    cache.load(0, b"b")  # other reads would evict a plain entry
    assert cache.load(0, b"a") is newer  # not the store's older value
    newest = (3, state("a", 3))
    cache.hold(0, b"a", newest)  # a later batch, planned before the first is stored
    cache.stored(0, b"a", newer)  # the first batch's value reaches the store
    assert cache.load(0, b"a") is newest  # the later hold stays
    store[b"a"] = encode_stored(*newest)
    cache.stored(0, b"a", newest)
    loaded = cache.load(0, b"a")
    assert loaded is not None and loaded[0] == 3  # from the store now (size 0)


def test_a_held_erasure_reads_as_a_new_customer_and_revocation_drops_holds() -> None:
    store = {b"a": encode_stored(1, state("a", 1))}
    cache = StateCache(lambda p, k: store.get(k), maxsize=10)
    cache.hold(0, b"a", None)  # erased in a batch not yet stored
    assert cache.load(0, b"a") is None
    cache.on_partition_revoked(0)
    loaded = cache.load(0, b"a")
    assert loaded is not None and loaded[0] == 1


def test_the_least_recently_written_entry_goes_first() -> None:
    reads: list[bytes] = []

    def read(p: int, k: bytes) -> bytes | None:
        reads.append(k)
        return None

    cache = StateCache(read, maxsize=3)
    for k in (b"a", b"b", b"c"):
        cache.load(0, k)
    cache.stored(0, b"a", (1, state("a", 1)))  # written again: now the newest
    cache.load(0, b"d")  # evicts b, the oldest
    assert len(cache) == 3
    reads.clear()
    for k in (b"a", b"c", b"d"):
        cache.load(0, k)
    assert reads == []  # all three still cached
    cache.load(0, b"b")
    assert reads == [b"b"]  # b was the one evicted
