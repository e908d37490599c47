"""The OpenAPI 3.1 document, derived from the route tables (keyserver.routing).

Each operation comes from its route's declaration: summary, operationId, tag, security,
parameters and responses as declared; the request body's schema generated from its model
(pydantic, ``$defs`` moved into the components); and what the declaration implies — the
degraded answers of its ``Behaviour``, its rate limit, admission control's refusals. Response
bodies are component schemas each route module declares (``SCHEMAS``), referenced by name. Tests
check that every served route is documented, with a unique operationId and a tag, and that
schemathesis finds no 5xx and no schema violation.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from keyserver import admission, degraded, ratelimit
from keyserver.config import Config
from keyserver.routing import Route

DEGRADED_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["reason", "stale_age_s", "detail"],
    "additionalProperties": False,
    "description": "set on a degraded answer (also the PK-Degraded header): the answer is last "
    "known data (stale_age_s old), a token signed without the state store, a write accepted "
    "into the local journal, or a command not sent",
    "properties": {
        "reason": {"enum": [degraded.STORE_UNAVAILABLE, degraded.CAR_UNREACHABLE]},
        "stale_age_s": {"type": ["integer", "null"], "minimum": 0},
        "detail": {"type": "string"},
    },
}
_DEGRADED_REF = {"$ref": "#/components/schemas/Degraded"}
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "additionalProperties": False,
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        },
        "degraded": _DEGRADED_REF,
    },
}
PENDING_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["status", "operation_id", "accepted_at", "degraded"],
    "additionalProperties": False,
    "description": "a write accepted into the keyserver's durable journal while the state "
    "store is down; it is applied, in order, once the store is back",
    "properties": {
        "status": {"const": "accepted_pending"},
        "operation_id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{8,64}$"},
        "accepted_at": {"type": "integer", "minimum": 0},
        "key_id": {
            "type": "string",
            "description": "an accepted invitation: the key it will create once applied; its "
            "token comes from POST /v1/keys/{key_id}/token when the store is back",
        },
        "degraded": _DEGRADED_REF,
    },
}
_DEGRADED_HEADERS = {
    degraded.DEGRADED_HEADER: {
        "description": "present on a degraded answer: why (store_unavailable, car_unreachable)",
        "schema": {"type": "string"},
    },
    degraded.STALE_AGE_HEADER: {
        "description": "with last known data: its age in seconds",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
}
_TRY_LATER = "temporarily_unavailable: the state store is down and this request needs it (or "
_TRY_LATER += "the caller is not known from before the outage); retry after Retry-After; "
_TRY_LATER += "outcome_unknown: a write may have been applied, check before repeating it"


def error(description: str) -> dict[str, Any]:
    """A response object for a JSON error."""
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def strict_object(properties: dict[str, Any]) -> dict[str, Any]:
    """An object schema with exactly these properties, all required."""
    return {
        "type": "object",
        "required": list(properties),
        "additionalProperties": False,
        "properties": properties,
    }


def json_body(schema_ref: str) -> dict[str, Any]:
    return {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_ref}"}}},
    }


def json_response(description: str, schema_ref: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_ref}"}}},
    }


def document(
    routes: Iterable[Route],
    schemas: Iterable[Mapping[str, Any]],
    *,
    version: str,
    config: Config,
) -> dict[str, Any]:
    """The document of ``routes``; ``schemas``: the response bodies' component schemas."""
    merged_schemas: dict[str, Any] = {
        "Error": ERROR_SCHEMA,
        "Degraded": DEGRADED_SCHEMA,
        "PendingChange": PENDING_SCHEMA,
    }
    for fragment in schemas:
        _merge(merged_schemas, copy.deepcopy(dict(fragment)))
    table = tuple(routes)
    paths: dict[str, Any] = {}
    for route in table:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, merged_schemas)
    behaviours = {(r.method.lower(), r.path): r.degraded for r in table}
    _declare_degraded(paths, merged_schemas, behaviours)
    for route in table:
        if route.rate_limit is not None:
            operation = paths[route.path][route.method.lower()]
            ratelimit.document(operation, route.rate_limit, config)
    doc = {
        "openapi": "3.1.0",
        "info": {
            "title": "phonekey keyserver",
            "version": version,
            "description": "Keys, sessions and revocation for phone-as-key cars.",
        },
        "tags": [{"name": name} for name in dict.fromkeys(r.tag for r in table)],
        "paths": paths,
        "components": {
            "schemas": merged_schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "deviceProof": {"type": "apiKey", "in": "header", "name": "PK-Device-Proof"},
                "provisioning": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "`Provisioning <secret>`: the factory's provisioning secret",
                },
            },
        },
    }
    admission.document(doc)
    return doc


def _operation(route: Route, schemas: dict[str, Any]) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": route.operation_id,
        "tags": [route.tag],
        "summary": route.summary,
    }
    if route.description is not None:
        operation["description"] = route.description
    if route.security:
        operation["security"] = [{k: list(v) for k, v in s.items()} for s in route.security]
    if route.parameters:
        operation["parameters"] = copy.deepcopy(list(route.parameters))
    if route.body is not None:
        name = model_schema(route.body, schemas)
        operation["requestBody"] = {
            "required": route.body_required,
            "content": {"application/json": {"schema": {"$ref": f"{_REFS}{name}"}}},
        }
    operation["responses"] = copy.deepcopy({k: dict(v) for k, v in route.responses.items()})
    return operation


_REFS = "#/components/schemas/"


def model_schema(model: type[BaseModel], schemas: dict[str, Any]) -> str:
    """Add ``model``'s JSON schema (and those it refers to) to the components; its name."""
    generated = model.model_json_schema(ref_template=_REFS + "{model}", mode="validation")
    for name, nested in generated.pop("$defs", {}).items():
        _merge(schemas, {name: _untitled(nested)})
    _merge(schemas, {model.__name__: _untitled(generated)})
    return model.__name__


def _merge(schemas: dict[str, Any], more: Mapping[str, Any]) -> None:
    for name, schema in more.items():
        if schemas.setdefault(name, schema) != schema:
            raise ValueError(f"two different component schemas are named {name}")


def _untitled(schema: Any) -> Any:
    """The schema without pydantic's generated ``title``s (the names say it already)."""
    if isinstance(schema, dict):
        return {
            k: _untitled(v) for k, v in schema.items() if not (k == "title" and isinstance(v, str))
        }
    if isinstance(schema, list):
        return [_untitled(v) for v in schema]
    return schema


def _declare_degraded(
    paths: dict[str, Any],
    schemas: dict[str, Any],
    behaviours: Mapping[tuple[str, str], degraded.Behaviour],
) -> None:
    """Each operation's degraded answers, from its route's declared behaviour: the marker header
    on its answers, the optional ``degraded`` field on its JSON bodies, 429
    temporarily_unavailable where the store is used, and 202 accepted_pending for journaled
    writes."""
    for path, item in paths.items():
        for method, operation in item.items():
            behaviour = behaviours.get((method, path))
            if behaviour in (None, degraded.Behaviour.NO_STORE, degraded.Behaviour.READINESS):
                continue
            responses = operation["responses"]
            if behaviour is degraded.Behaviour.JOURNALED:
                responses["202"] = {
                    "description": "accepted into the journal while the state store is down",
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/PendingChange"}
                        }
                    },
                }
            for status, response in responses.items():
                if status.startswith("2") or status == "429":
                    response["headers"] = {**_DEGRADED_HEADERS, **response.get("headers", {})}
                for media in response.get("content", {}).values():
                    _allow_marker(media.get("schema", {}), schemas)
            if "429" in responses:
                described = responses["429"]
                described["description"] += f"; {_TRY_LATER}"
                retry = described["headers"].setdefault(
                    "Retry-After", {"schema": {"type": "string"}}
                )
                retry.setdefault("schema", {"type": "string"})
            else:
                responses["429"] = {
                    **error(_TRY_LATER),
                    "headers": {
                        **_DEGRADED_HEADERS,
                        "Retry-After": {
                            "required": True,
                            "schema": {"type": "string", "pattern": "^[0-9]+$"},
                        },
                    },
                }


def _allow_marker(schema: dict[str, Any], schemas: dict[str, Any]) -> None:
    """Let a JSON answer's object schema carry the optional ``degraded`` field."""
    ref = schema.get("$ref", "")
    target = schemas.get(ref.rsplit("/", 1)[-1]) if ref.startswith("#/components/") else schema
    if isinstance(target, dict) and isinstance(target.get("properties"), dict):
        target["properties"].setdefault("degraded", _DEGRADED_REF)


def served_routes(app: web.Application) -> set[tuple[str, str]]:
    """(method, path) of every route the app serves, in OpenAPI's path syntax."""
    routes = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if path is None or route.method == "HEAD":
            continue
        routes.add((route.method.lower(), str(path)))
    return routes


def documented_routes(doc: Mapping[str, Any]) -> set[tuple[str, str]]:
    return {(method, path) for path, item in doc["paths"].items() for method in item}
