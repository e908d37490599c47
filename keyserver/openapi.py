"""The OpenAPI 3.1 document, assembled from the fragments each route module declares.

A route module exposes ``PATHS`` (OpenAPI path items keyed by path) and ``SCHEMAS`` (component
schemas); ``document()`` merges them with the shared pieces below. A test checks that every route
the app serves is documented and that schemathesis finds no 5xx and no schema violation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import web

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
        }
    },
}


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
    paths: Iterable[Mapping[str, Any]], schemas: Iterable[Mapping[str, Any]], *, version: str
) -> dict[str, Any]:
    merged_paths: dict[str, Any] = {}
    for fragment in paths:
        for path, item in fragment.items():
            merged_paths.setdefault(path, {}).update(item)
    merged_schemas: dict[str, Any] = {"Error": ERROR_SCHEMA}
    for fragment in schemas:
        merged_schemas.update(fragment)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "phonekey keyserver",
            "version": version,
            "description": "Keys, sessions and revocation for phone-as-key cars.",
        },
        "paths": merged_paths,
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
