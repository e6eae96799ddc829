"""Segment's tracking API calls as touchpoints: what apps that already use
Segment's (or RudderStack's) SDKs send, translated to the event contract.

Pure: one call (a JSON object, as in ``POST /v1/track`` or one item of
``POST /v1/batch``) in, the touchpoint's JSON (checked afterwards by
``models.events.parse_touchpoint``, like any event) or a
:class:`~models.events.Rejection` out.

* ``messageId`` is the event id; ``userId``, falling back to
  ``anonymousId``, the customer.
* ``track``: the ``event`` name through :data:`EVENT_NAMES` (Segment's
  e-commerce, email and mobile specs) and the map's own ``event_names``; a
  name that is already one of the map's types, or is one written in snake
  case (``"Newsletter Signup"`` -> ``newsletter_signup``), passes as such.
* ``page`` and ``screen``: ``page_view``. ``identify``: the ``identify``
  event, linking ``anonymousId`` when the call carries both ids;
  ``alias``: the ``identify`` event of ``userId`` linking ``previousId``
  (``models.identity``). Any other call that carries both ids links them
  too (``properties.anonymous_id``).
* The channel: ``context.channel`` or ``properties.channel`` if the map
  knows it, else from Segment's channel names (``browser`` -> ``web``,
  ``mobile`` -> ``mobile_app``), else from the library (analytics-ios,
  -android, -react-native, -flutter: ``mobile_app``), else ``web``.
* The time: ``timestamp``, else ``originalTimestamp``, else ``receivedAt``
  (the server's, passed in).
* ``properties`` are carried over; traits are not (they are profile data,
  not touchpoints).
"""

from __future__ import annotations

import re
from typing import Any, Final

from models.events import ANONYMOUS_ID, PREVIOUS_ID, Rejection
from models.journey_map import IDENTIFY, JourneyMap

# Segment's spec names -> the default map's event types. Names whose type a
# map does not know are refused (unknown_type) unless the map's own
# ``event_names`` say otherwise.
EVENT_NAMES: Final[dict[str, str]] = {
    # E-commerce spec v2: browsing
    "Products Searched": "search",
    "Product List Viewed": "product_view",
    "Product List Filtered": "product_view",
    "Promotion Viewed": "page_view",
    "Promotion Clicked": "ad_click",
    "Product Clicked": "product_view",
    "Product Viewed": "product_view",
    "Product Added to Wishlist": "product_view",
    "Product Shared": "social_engagement",
    "Cart Shared": "social_engagement",
    # ordering
    "Product Added": "add_to_cart",
    "Product Removed": "cart_item_removed",
    "Checkout Started": "checkout_started",
    "Checkout Step Viewed": "checkout_started",
    "Checkout Step Completed": "checkout_started",
    "Payment Info Entered": "checkout_started",
    "Order Updated": "checkout_started",
    "Order Completed": "purchase",
    "Order Refunded": "return_requested",
    "Order Cancelled": "return_requested",
    # coupons and reviews
    "Coupon Entered": "coupon_redeemed",
    "Coupon Applied": "coupon_redeemed",
    "Product Reviewed": "review_written",
    # email spec
    "Email Opened": "email_open",
    "Email Link Clicked": "email_click",
    "Unsubscribed": "unsubscribe",
    # mobile spec
    "Application Opened": "app_open",
    "Push Notification Tapped": "app_open",
    # B2B SaaS spec
    "Signed Up": "newsletter_signup",
    "Account Deleted": "account_closed",
}
PAGE_TYPE: Final = "page_view"
CALL_TYPES: Final = ("track", "page", "screen", "identify", "alias")
CHANNEL_NAMES: Final = {"browser": "web", "mobile": "mobile_app", "server": "web"}
_MOBILE_LIBRARIES: Final = re.compile(r"ios|android|react-native|flutter|swift|kotlin|xamarin", re.I)
_SNAKE: Final = re.compile(r"[^a-z0-9]+")


def event_type(name: str, jmap: JourneyMap) -> str | None:
    """The map's event type for a track call's event name, or None."""
    mapped = jmap.event_names.get(name) or EVENT_NAMES.get(name)
    if mapped is not None and mapped in jmap.event_types:
        return mapped
    if name in jmap.event_types:
        return name
    snake = _SNAKE.sub("_", name.lower()).strip("_")
    return snake if snake in jmap.event_types else None


def _channel(call: dict[str, Any], props: dict[str, Any] | None, jmap: JourneyMap) -> str:
    context = call.get("context")
    context = context if isinstance(context, dict) else {}
    for given in (context.get("channel"), (props or {}).get("channel")):
        if isinstance(given, str):
            if given in jmap.channels:
                return given
            named = CHANNEL_NAMES.get(given)
            if named is not None and named in jmap.channels:
                return named
    library = context.get("library")
    name = library.get("name") if isinstance(library, dict) else None
    if isinstance(name, str) and _MOBILE_LIBRARIES.search(name) and "mobile_app" in jmap.channels:
        return "mobile_app"
    return "web" if "web" in jmap.channels else min(jmap.channels)


def _text(call: dict[str, Any], name: str) -> str | None:
    value = call.get(name)
    return value if isinstance(value, str) and value else None


def from_segment(
    call: object, jmap: JourneyMap, *, received_at: str, call_type: str | None = None
) -> dict[str, Any] | Rejection:
    """One Segment call as a touchpoint (the event contract's JSON object).
    ``call_type``: the endpoint's (``/v1/track``...), None for a batch item
    (its ``type`` says); ``received_at``: the server's time, ISO-8601."""
    if not isinstance(call, dict):
        return Rejection("not_object", f"got a JSON {type(call).__name__}")
    kind = call_type or call.get("type")
    if not isinstance(kind, str) or kind not in CALL_TYPES:
        shown = kind[:32] if isinstance(kind, str) else type(kind).__name__
        return Rejection("unknown_type", f"the call type {shown!r} is not one of {', '.join(CALL_TYPES)}")
    message_id = call.get("messageId")
    if message_id is None:
        return Rejection("missing_field", "messageId is required (it is the event id)")
    user, anon = call.get("userId"), call.get("anonymousId")
    if user is not None and not isinstance(user, str):
        user = str(user) if isinstance(user, int) and not isinstance(user, bool) else user
    customer = user if user not in (None, "") else anon
    if customer in (None, ""):
        return Rejection("missing_field", "userId or anonymousId is required")
    props = call.get("properties")
    if props is not None and not isinstance(props, dict):
        return Rejection("bad_field", "properties must be an object")
    out_props: dict[str, Any] = dict(props) if props else {}
    if kind == "track":
        name = call.get("event")
        if not isinstance(name, str) or not name:
            return Rejection("missing_field", "a track call needs its event name")
        etype = event_type(name, jmap)
        if etype is None:
            return Rejection(
                "unknown_type",
                f"the map {jmap.name!r} has no event type for {name[:64]!r} (add it under event_names)",
            )
    elif kind in ("page", "screen"):
        etype = PAGE_TYPE
        page = _text(call, "name")
        if page is not None:
            out_props.setdefault("name", page)
    elif kind == "identify":
        etype = IDENTIFY
    else:  # alias: previousId is now userId
        etype = IDENTIFY
        previous = call.get("previousId")
        if previous in (None, ""):
            return Rejection("missing_field", "an alias call needs previousId")
        if user in (None, ""):
            return Rejection("missing_field", "an alias call needs userId")
        out_props[PREVIOUS_ID] = previous
    if kind != "alias" and user not in (None, "") and anon not in (None, "") and anon != user:
        # The SDKs send both ids once a user is identified: the link (models.identity).
        out_props[PREVIOUS_ID if etype == IDENTIFY else ANONYMOUS_ID] = anon
    stamp = call.get("timestamp") or call.get("originalTimestamp") or received_at
    return {
        "event_id": message_id,
        "customer_id": customer,
        "type": etype,
        "channel": _channel(call, props, jmap),
        "timestamp": stamp,
        **({"properties": out_props} if out_props else {}),
    }
