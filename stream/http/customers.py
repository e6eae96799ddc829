"""``GET /customers/{id}`` and ``DELETE /customers/{id}``: one customer's state, and its erasure.

* ``GET``: the customer's state, from whichever worker owns the customer's
  partition (forwarded there once, signed by this worker, never with the
  client's credentials: ``stream.http.peers``); 404 for a customer never
  seen, 503 while no worker owns it.
* ``DELETE``: any worker takes it (:func:`erase`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
from faust.web import Request, Response, View

from models.events import ERASE_HEADER, Erase, id_problem
from models.insight import next_stage
from models.state import CustomerState
from stream.engine.codec import decode_stored
from stream.engine.partitioning import key_partition
from stream.faust.app import owner_url
from stream.http.events import RETRY_AFTER_S
from stream.http.funnel import FIGURES_CACHE
from stream.http.peers import FORWARDED_HEADER, peer_headers

if TYPE_CHECKING:
    from stream.worker import Worker

log = logging.getLogger(__name__)

ERASE_HEADERS = ((ERASE_HEADER, b"1"),)


async def erase(w: Worker, customer_id: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    """``DELETE /customers/{id}``: an erasure record on the touchpoints topic,
    applied by the customer's owner in order with their events. Answers 202
    with the erasure id once the broker has the record; the state is gone
    when ``GET /customers/{id}`` answers 404 and the ``erased`` record is on
    the erasures topic."""
    settings = w.settings
    problem = id_problem(customer_id, "customer_id")
    if problem is not None:
        return 400, {"error": "bad_customer_id", "detail": problem}, {}
    erasure = Erase(customer_id, uuid.uuid4().hex, int(time.time() * 1000))
    key = customer_id.encode()
    out = w.batches()
    out.add(
        settings.touchpoints_topic,
        key_partition(key, settings.partitions),
        key,
        erasure.to_json(),
        ERASE_HEADERS,
    )
    try:
        await asyncio.wait_for(out.send(), settings.api_produce_timeout_s)
    except Exception as exc:
        log.warning("DELETE /customers: producing the erasure failed: %r", exc)
        return (
            503,
            {"error": "unavailable", "detail": "the broker did not take the erasure; send it again"},
            {"Retry-After": str(RETRY_AFTER_S)},
        )
    log.info("erasure %s of a customer accepted", erasure.erasure_id)
    return 202, {"erasure_id": erasure.erasure_id, "customer_id": customer_id, "status": "accepted"}, {}


async def forward_to_owner(
    w: Worker, view: View, request: Request, partition: int, path: str | None = None
) -> Response:
    """The owning worker's answer to ``request`` (or a GET of ``path``),
    forwarded once, without the client's credentials (``stream.http.peers``);
    503 while nobody (else) owns it."""
    unavailable = {
        "error": "unavailable",
        "detail": "the customer's partition has no owner now (rebalancing)",
    }
    retry = {"Retry-After": "2"}
    if request.headers.get(FORWARDED_HEADER) is not None:  # forwarded to us already: never again
        return view.json(unavailable, status=503, headers=retry)
    try:
        url = owner_url(w.app, w.settings.changelog_topic, partition)
    except Exception as exc:  # the assignor mid-rebalance, topics gone...
        log.info("no owner known for partition %d: %r", partition, exc)
        url = None
    if url is None or url == w.own_url():
        return view.json(unavailable, status=503, headers=retry)
    if path is None:
        path = request.path_qs  # type: ignore[attr-defined]
    headers = peer_headers(w.settings.token, "GET", path, int(time.time() * 1000))
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
            session.get(f"{url}{path}", headers=headers, allow_redirects=False) as resp,
        ):
            body = await resp.read()
            return view.bytes(body, content_type=resp.content_type, status=resp.status)
    except Exception as exc:
        log.info("forwarding to the owner %s failed: %r", url, exc)
        return view.json(
            {"error": "unavailable", "detail": "the customer's owner did not answer"},
            status=503,
            headers=retry,
        )


async def next_stage_odds(w: Worker, state: CustomerState) -> dict[str, Any] | None:
    """The customer's odds of a later stage (``models.insight.next_stage``)
    from every worker's figures; None where there is no later stage, or
    while the figures cannot be gathered (the state is answered all the same)."""
    try:
        total = await FIGURES_CACHE.get(w)
    except Exception as exc:  # a peer mid-rebalance: the state still answers
        log.info("GET /customers: no figures for the odds: %r", exc)
        return None
    return next_stage(w.journey_map, state, total.ttc, total.waiting, int(time.time() * 1000))


def register(w: Worker) -> None:
    """Register ``GET`` and ``DELETE /customers/{customer_id}``."""
    settings = w.settings

    @w.app.page("/customers/{customer_id}")
    class CustomerView(View):
        """One customer's journey state, from the worker that owns it."""

        async def get(self, request: Request, customer_id: str) -> Response:
            problem = id_problem(customer_id, "customer_id")
            if problem is not None:
                return self.json({"error": "bad_customer_id", "detail": problem}, status=400)
            key = customer_id.encode()
            partition = key_partition(key, settings.partitions)
            if partition not in w.active_partitions():
                return await forward_to_owner(w, self, request, partition)
            merged_from = request.query.get("merged_from")
            if merged_from is not None and id_problem(merged_from, "merged_from") is not None:
                merged_from = None
            root = await self._read(partition, key, merged_from)
            if not isinstance(root, str):
                return root
            # A merged anonymous id: the customer it was merged into answers,
            # and says so (models.identity). A chain is resolved by the stream
            # (merges are sent on to the end of it), never followed here.
            if merged_from is not None:
                return self.json({"error": "unknown customer", "customer_id": merged_from}, status=404)
            root_key = root.encode()
            root_partition = key_partition(root_key, settings.partitions)
            if root_partition not in w.active_partitions():
                path = f"/customers/{quote(root, safe='')}?merged_from={quote(customer_id, safe='')}"
                return await forward_to_owner(w, self, request, root_partition, path)
            answer = await self._read(root_partition, root_key, customer_id)
            if isinstance(answer, str):  # the customer it names is itself merged: not followed
                return self.json({"error": "unknown customer", "customer_id": customer_id}, status=404)
            return answer

        async def _read(self, partition: int, key: bytes, merged_from: str | None = None) -> Response | str:
            """The stored customer's answer (with ``merged_from`` when asked for
            through that id, and their next-stage odds), a 404 for nobody, or
            the id an alias points to."""
            raw = w.store.get(partition, key)
            if raw is None:
                asked = merged_from if merged_from is not None else key.decode()
                return self.json({"error": "unknown customer", "customer_id": asked}, status=404)
            _, state = decode_stored(raw)
            if state.merged_into is not None:
                return state.merged_into
            body = state.to_api()
            if merged_from is not None:
                body["merged_from"] = merged_from
            body["next_stage_odds"] = await next_stage_odds(w, state)
            return self.json(body)

        async def delete(self, request: Request, customer_id: str) -> Response:
            """Erase the customer; any worker takes it."""
            status, body, headers = await erase(w, customer_id)
            return self.json(body, status=status, headers=headers)
