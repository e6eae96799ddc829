"""``GET /map``: the live journey map, one HTML page with no build step.

The page (``stream/http/static/map.html``) draws the map and reads
``/funnel`` from the browser, asking for the token when one is set.
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING

from faust.web import Request, Response, View

if TYPE_CHECKING:
    from stream.worker import Worker


def register(w: Worker) -> None:
    """Register ``GET /map``."""

    @w.app.page("/map")
    class MapView(View):
        """The live journey map."""

        async def get(self, request: Request) -> Response:
            html = resources.files("stream.http").joinpath("static/map.html").read_bytes()
            return self.bytes(html, content_type="text/html")
