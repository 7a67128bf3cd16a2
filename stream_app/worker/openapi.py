"""The OpenAPI description of the worker's HTTP side, served at /openapi.json."""

from __future__ import annotations

from typing import Any

_LIST = {
    "type": "object",
    "required": ["user_id", "items", "model_version", "last_click_ts", "in_session"],
    "properties": {
        "user_id": {"type": "string"},
        "items": {"type": "array", "items": {"type": "string"},
                  "description": "the last list served to the user, best first (at most 20 items)"},
        "model_version": {"type": "string"},
        "last_click_ts": {"type": "number", "description": "event time of the user's last click, seconds"},
        "in_session": {"type": "boolean", "description": "false when the session has no known click yet"},
    },
}


def spec(version: str) -> dict[str, Any]:
    """OpenAPI 3.1 document; ``version`` is the package version."""
    text = {"text/plain": {"schema": {"type": "string"}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "streamrec worker", "version": version,
                 "description": "Health, metrics and the latest recommendations of one streamrec worker. "
                                "Requests for a user owned by another worker of the group are redirected to it."},
        "paths": {
            "/healthz": {"get": {"summary": "liveness: the process serves HTTP and its produced records are delivered",
                                 "responses": {"200": {"description": "alive", "content": {"application/json": {
                                     "schema": {"type": "object", "properties": {"status": {"type": "string"}}}}}},
                                     "503": {"description": "a produced record was not delivered; offsets no longer "
                                                            "advance: restart the worker"}}}},
            "/catalogue": {"get": {"summary": "the live catalogue: records applied from the items topic, items by "
                                              "state (docs/input.md#catalogue)",
                                   "responses": {"200": {"description": "topic, caught_up, records_applied, items"}}}},
            "/readyz": {"get": {"summary": "readiness: tables recovered, model loaded, catalogue read, not rebalancing",
                                "responses": {
                                    "200": {"description": "ready"},
                                    "503": {"description": "not ready yet (recovering or rebalancing)"}}}},
            "/metrics": {"get": {"summary": "Prometheus text exposition format",
                                 "responses": {"200": {"description": "metrics", "content": text}}}},
            "/users/{user_id}/recommendations": {"get": {
                "summary": "the user's latest list, from the worker that owns the user's partition",
                "parameters": [{"name": "user_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {
                    "200": {"description": "the latest list", "content": {"application/json": {"schema": _LIST}}},
                    "404": {"description": "no state for this user on its owner"},
                    "302": {"description": "the user belongs to another worker: follow Location"},
                },
            }},
            "/profiles": {"get": {"summary": "the live profiles: records applied from the users topic, users held, "
                                             "attributes the model does not know (docs/input.md#profiles)",
                                  "responses": {"200": {"description": "topic, caught_up, records_applied, users, "
                                                                       "unknown_attributes, used_by_the_model"}}}},
            "/users/{user_id}/similar": {"get": {
                "summary": "the users whose long-term vectors are closest (cosine) to this user's, from every "
                           "partition (session-aware models; docs/quality.md#long-term-users)",
                "parameters": [{"name": "user_id", "in": "path", "required": True, "schema": {"type": "string"}},
                               {"name": "k", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                                       "maximum": 1000, "default": 10}}],
                "responses": {
                    "200": {"description": "user_id and users: [{user_id, score}], best first"},
                    "400": {"description": "k is not an integer from 1 to 1000"},
                    "404": {"description": "no vector for this user yet (written at the user's first session gap)"},
                },
            }},
            "/openapi.json": {"get": {"summary": "this document", "responses": {"200": {"description": "OpenAPI"}}}},
        },
    }
