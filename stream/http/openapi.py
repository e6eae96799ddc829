"""The OpenAPI 3.1 document of the worker's HTTP API, served at ``/openapi.json``.

Enumerations (event types, channels, stages, rejection reasons) and limits
come from the journey map and the settings, so the document says what this
worker accepts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from faust.web import Request, Response, View

from models.events import REASONS
from models.journey_map import JourneyMap
from stream.http.segment import CALLS as SEGMENT_CALLS
from stream.settings import Settings

if TYPE_CHECKING:
    from stream.worker import Worker

JSON = "application/json"


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def document(settings: Settings, jmap: JourneyMap) -> dict[str, Any]:
    error = _ref("Error")
    segment_error = {
        "type": "object",
        "properties": {
            "success": {"type": "boolean"},
            "code": {"type": "string"},
            "message": {"type": "string"},
        },
    }
    touchpoint = {
        "type": "object",
        "required": ["event_id", "customer_id", "type", "channel", "timestamp"],
        "properties": {
            "event_id": {"type": "string", "minLength": 1, "maxLength": 128},
            "customer_id": {"type": "string", "minLength": 1, "maxLength": 128},
            "type": {"type": "string", "enum": sorted(jmap.event_types)},
            "channel": {"type": "string", "enum": sorted(jmap.channels)},
            "timestamp": {
                "oneOf": [
                    {"type": "string", "description": "ISO-8601 with a zone"},
                    {"type": "integer", "minimum": 0, "description": "epoch milliseconds"},
                ]
            },
            "properties": {
                "type": "object",
                "description": "free-form; drift signals and the map's dimensions read some keys;"
                " tz must be an IANA time zone",
            },
        },
    }
    result = {
        "type": "object",
        "required": ["index", "status"],
        "properties": {
            "index": {"type": "integer", "minimum": 0},
            "status": {"type": "string", "enum": ["accepted", "rejected"]},
            "event_id": {"type": "string"},
            "reason": {"type": "string", "enum": list(REASONS)},
            "detail": {"type": "string"},
        },
    }
    events_answer = {
        "type": "object",
        "required": ["accepted", "rejected", "results"],
        "properties": {
            "accepted": {"type": "integer", "minimum": 0},
            "rejected": {"type": "integer", "minimum": 0},
            "results": {"type": "array", "items": _ref("EventResult")},
        },
    }
    customer = {
        "type": "object",
        "required": ["customer_id", "stage", "stages", "events"],
        "properties": {
            "customer_id": {"type": "string"},
            "stage": {"type": "string", "enum": list(jmap.stage_names)},
            "stage_entered_at": {"type": "string", "format": "date-time"},
            "stages": {"type": "array", "items": {"type": "object"}},
            "first_touch_channel": {"type": "string"},
            "first_touch_at": {"type": "string", "format": "date-time"},
            "last_event_at": {"type": "string", "format": "date-time"},
            "events": {"type": "integer", "minimum": 0},
            "event_counts": {"type": "object", "additionalProperties": {"type": "integer"}},
            "stall": {"type": ["object", "null"]},
            "drift": {"type": ["object", "null"]},
            "nudges": {"type": "array", "items": {"type": "object"}},
            "next_stage_odds": {
                "type": ["object", "null"],
                "description": "the chance of a later stage within the map's horizon, with its evidence"
                " (README 'Next-stage odds'); null in an exit or the last stage",
                "properties": {
                    "stage": {"type": "string"},
                    "horizon_seconds": {"type": "integer"},
                    "waited_seconds": {"type": "number"},
                    "estimated_from": {"type": "string", "description": "all customers, or dimension=value"},
                    "probability": {"type": "number", "minimum": 0, "maximum": 1},
                    "interval": {"type": ["object", "null"]},
                    "expected_wait_seconds": {"type": ["number", "null"]},
                    "evidence": {
                        "type": "object",
                        "properties": {
                            "customers": {"type": "integer"},
                            "converted": {"type": "integer"},
                            "at_risk": {"type": "integer"},
                        },
                    },
                },
            },
        },
    }
    named_count = {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "count": {"type": "integer"}},
        },
    }
    conversion = {
        "type": "object",
        "required": ["from", "to", "reached_from", "reached_both", "ratio"],
        "properties": {
            "from": {"type": "string", "enum": list(jmap.stage_names)},
            "to": {"type": "string", "enum": list(jmap.stage_names)},
            "reached_from": {"type": "integer", "description": "customers who reached 'from'"},
            "reached_both": {
                "type": "integer",
                "description": "of those, customers who reached 'to' or a later stage (skipping converts)",
            },
            "ratio": {"type": ["number", "null"], "description": "reached_both / reached_from"},
        },
    }
    funnel_answer = {
        "type": "object",
        "required": ["customers", "stages", "conversion", "bottleneck", "workers"],
        "properties": {
            "customers": {"type": "integer"},
            "stages": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "stage": {"type": "string", "enum": list(jmap.stage_names)},
                        "customers": {"type": "integer", "description": "customers in the stage now"},
                        "reached": {"type": "integer", "description": "customers who ever reached it"},
                        "stalled": {"type": "integer", "description": "open stalls in the stage"},
                        "median_seconds_in_stage": {
                            "type": ["number", "null"],
                            "description": "from the time-in-stage histogram of every worker",
                        },
                        "p90_seconds_in_stage": {"type": ["number", "null"]},
                        "top_touchpoints": named_count,
                        "top_channels": named_count,
                        "mean_drift_score": {"type": ["number", "null"]},
                    },
                },
            },
            "conversion": {"type": "array", "items": _ref("Conversion")},
            "bottleneck": {
                "type": ["object", "null"],
                "description": "the stage that loses the most of those who reached it, from the flows",
            },
            "flows": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "from": {"type": "string"},
                        "to": {"type": "string"},
                        "customers": {"type": "integer"},
                    },
                },
            },
            "after_stall": {"type": "array", "items": {"type": "object"}},
            "time_to_convert": {"type": "array", "items": {"type": "object"}},
            "lift": {"type": "array", "items": {"type": "object"}},
            "dimensions": {"type": "array", "items": {"type": "object"}},
            "workers": {
                "type": "object",
                "properties": {
                    "answered": {"type": "integer"},
                    "missing": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    }
    bearer: list[dict[str, list[str]]] = [{"bearer": []}] if settings.api_token is not None else []
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Customer journey tracker",
            "version": "1",
            "description": "Touchpoints in, journeys out. See README.md 'Worker API'.",
        },
        "servers": [{"url": "/"}],
        "security": bearer,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "writeKey": {"type": "http", "scheme": "basic"},
            },
            "schemas": {
                "Touchpoint": touchpoint,
                "EventResult": result,
                "EventsAnswer": events_answer,
                "Customer": customer,
                "Conversion": conversion,
                "Funnel": funnel_answer,
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
                },
            },
        },
        "paths": {
            "/events": {
                "post": {
                    "summary": "Send touchpoints (one, or an array)",
                    "description": (
                        f"At most {settings.api_max_events} events and {settings.api_max_bytes} bytes. "
                        "Each is checked as on the Kafka path; accepted ones are in the touchpoints "
                        "topic when the answer comes."
                    ),
                    "requestBody": {
                        "required": True,
                        "content": {
                            JSON: {
                                "schema": {
                                    "oneOf": [
                                        _ref("Touchpoint"),
                                        {"type": "array", "items": _ref("Touchpoint")},
                                    ]
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _json(
                            _ref("EventsAnswer"), "per event: accepted, or rejected with its reason"
                        ),
                        "400": _json(error, "the body is not JSON"),
                        "401": _json(error, "a bearer token is required"),
                        "403": _json(error, "no token: a foreign Host (bad_host) or Origin (cross_origin)"),
                        "413": _json(error, "too many events or too many bytes"),
                        "415": _json(error, "no token set: the Content-Type is not application/json"),
                        "503": _json(error, "the broker did not take the events; retry after Retry-After"),
                    },
                }
            },
            "/v1/{call}": {
                "parameters": [
                    {
                        "name": "call",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "enum": list(SEGMENT_CALLS)},
                    }
                ],
                "post": {
                    "summary": "Segment's HTTP tracking API (batch, track, identify, alias, page, screen)",
                    "description": (
                        "For Segment's and RudderStack's SDKs, unchanged: the write key as Basic auth "
                        "(JOURNEY_SEGMENT_WRITE_KEY, else the API token), gzip bodies, 32 KB per call and "
                        "500 KB per batch. Each call becomes a touchpoint (models.segment); one the "
                        "contract refuses goes to the dead-letter topic with its reason."
                    ),
                    "security": [{"writeKey": []}],
                    "requestBody": {"required": True, "content": {JSON: {"schema": {"type": "object"}}}},
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "success": {"type": "boolean"},
                                    "accepted": {"type": "integer"},
                                    "rejected": {"type": "integer"},
                                },
                            },
                            "the broker has the accepted calls; refused ones are in the dead-letter topic",
                        ),
                        "400": _json(
                            segment_error, "the body is not a JSON object (not retried by the SDKs)"
                        ),
                        "401": _json(segment_error, "the write key is missing or wrong"),
                        "404": _json(segment_error, "not one of the calls"),
                        "413": _json(segment_error, "over 32 KB per call or 500 KB per batch"),
                        "503": _json(
                            segment_error, "the broker did not take the calls; retry after Retry-After"
                        ),
                    },
                },
            },
            "/customers/{customer_id}": {
                "parameters": [
                    {"name": "customer_id", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "get": {
                    "summary": "One customer's journey, from whichever worker owns it",
                    "responses": {
                        "200": _json(_ref("Customer"), "the customer"),
                        "400": _json(error, "not a customer id the contract accepts"),
                        "401": _json(error, "a bearer token is required"),
                        "404": _json(error, "never seen"),
                        "503": _json(error, "no worker owns the customer's partition now (rebalancing)"),
                    },
                },
                "delete": {
                    "summary": "Erase the customer (README 'Erasure' says what is and is not erased)",
                    "responses": {
                        "202": _json(
                            {
                                "type": "object",
                                "required": ["erasure_id", "customer_id", "status"],
                                "properties": {
                                    "erasure_id": {"type": "string"},
                                    "customer_id": {"type": "string"},
                                    "status": {"type": "string", "enum": ["accepted"]},
                                },
                            },
                            "accepted: applied in order with the customer's events; then GET is 404",
                        ),
                        "400": _json(error, "not a customer id"),
                        "401": _json(error, "a bearer token is required"),
                        "403": _json(error, "no token: a foreign Host (bad_host) or Origin (cross_origin)"),
                        "415": _json(error, "no token set: the Content-Type is not application/json"),
                        "503": _json(error, "the broker did not take the erasure; retry after Retry-After"),
                    },
                },
            },
            "/funnel": {
                "get": {
                    "summary": "The funnel over all workers: counts, conversion, time in stage, flows,"
                    " bottleneck, time to convert, lift, dimensions",
                    "parameters": [
                        {
                            "name": "dimension",
                            "in": "query",
                            "schema": {
                                "type": "string",
                                **({"enum": [d.name for d in jmap.dimensions]} if jmap.dimensions else {}),
                            },
                            "description": "with value: one dimension value's customers only",
                        },
                        {"name": "value", "in": "query", "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": _json(_ref("Funnel"), "every worker answered"),
                        "206": _json(_ref("Funnel"), "some workers did not answer (listed in workers)"),
                        "400": _json(error, "a dimension or value the map does not declare"),
                        "401": _json(error, "a bearer token is required"),
                    },
                }
            },
            "/funnel/local": {
                "get": {
                    "summary": "This worker's share of the funnel (what /funnel gathers)",
                    "responses": {
                        "200": _json({"type": "object"}, "figures of the owned partitions"),
                        "401": _json(error, "a bearer token is required"),
                    },
                }
            },
            "/map": {
                "get": {
                    "summary": "The live journey map page (it reads /funnel; pass the token as #token=...)",
                    "security": [],
                    "responses": {"200": {"description": "an HTML page", "content": {"text/html": {}}}},
                }
            },
            "/health": {
                "get": {
                    "summary": "Readiness, partitions, progress (no token needed)",
                    "security": [],
                    "responses": {
                        "200": _json({"type": "object"}, "ready"),
                        "503": _json({"type": "object"}, "not ready, with the problems"),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics (no token needed)",
                    "security": [],
                    "responses": {
                        "200": {"description": "Prometheus text format", "content": {"text/plain": {}}}
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {"200": _json({"type": "object"}, "the OpenAPI document")},
                }
            },
        },
    }


def register(w: Worker) -> None:
    """Register ``GET /openapi.json``."""

    @w.app.page("/openapi.json")
    class OpenAPIView(View):
        """The OpenAPI 3.1 document of this API."""

        async def get(self, request: Request) -> Response:
            return self.json(document(w.settings, w.journey_map))
