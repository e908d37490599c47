"""One declaration per route (keyserver.routing): the router, the OpenAPI document, admission's
criticalities and the degraded behaviours all come from the route tables; every operation has a
unique operationId and a tag; a route cannot be declared without what it needs; request bodies
are checked by their models with the API's error codes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from keyserver import routing
from keyserver.admission import Criticality
from keyserver.app import OPENAPI, ROUTES, create_app
from keyserver.bodies import Body
from keyserver.config import build
from keyserver.degraded import Behaviour
from keyserver.http import ApiError
from keyserver.routes.identity import NewAccount
from keyserver.routes.revocation import HolderRevocationRequest
from keyserver.routes.sharing import InvitationRequest
from keyserver.routing import Route, RouteDeclarationError


@pytest.fixture
def app(tmp_path: Path) -> web.Application:
    return create_app(build({"data_dir": str(tmp_path)}))


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, operation)
        for path, item in doc["paths"].items()
        for method, operation in item.items()
    ]


def test_the_router_serves_exactly_the_declared_routes(app: web.Application) -> None:
    served = {
        (r.method, r.resource.canonical): r.handler
        for r in app.router.routes()
        if r.resource is not None and r.method != "HEAD"
    }
    assert served == {route.key: route.handler for route in ROUTES}


def test_every_operation_has_a_unique_operation_id_and_a_tag(app: web.Application) -> None:
    listed = operations(app[OPENAPI])
    ids = [operation["operationId"] for _, _, operation in listed]
    assert len(ids) == len(set(ids)) == len(ROUTES)
    assert all(operation["tags"] for _, _, operation in listed)
    declared_tags = {tag["name"] for tag in app[OPENAPI]["tags"]}
    assert {t for _, _, operation in listed for t in operation["tags"]} == declared_tags


def test_request_schemas_are_the_models_and_every_reference_resolves(
    app: web.Application,
) -> None:
    doc = app[OPENAPI]
    for route in ROUTES:
        operation = doc["paths"][route.path][route.method.lower()]
        if route.body is None:
            assert "requestBody" not in operation, route.key
            continue
        content = operation["requestBody"]["content"]["application/json"]
        assert content["schema"] == {"$ref": f"#/components/schemas/{route.body.__name__}"}
        assert operation["requestBody"]["required"] is route.body_required
    schemas = doc["components"]["schemas"]
    refs: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    assert "$defs" not in str(doc)  # pydantic's nested models are components
    for ref in refs:
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.rsplit("/", 1)[1] in schemas, ref


def test_admission_and_degraded_tables_come_from_the_routes() -> None:
    criticalities = routing.criticalities(ROUTES)
    behaviours = routing.degraded(ROUTES)
    assert set(criticalities) == set(behaviours) == {r.key for r in ROUTES}
    refresh = ("POST", "/v1/keys/{key_id}/token")
    assert criticalities[refresh] is Criticality.CRITICAL
    assert behaviours[refresh] is Behaviour.TOKEN_FROM_RING


async def _handler(request: web.Request) -> web.Response:
    return web.Response()


def _route(**changes: Any) -> Route:
    fields: dict[str, Any] = {
        "method": "GET",
        "path": "/x",
        "handler": _handler,
        "operation_id": "getX",
        "tag": "test",
        "summary": "x",
        "criticality": Criticality.SHEDDABLE,
        "degraded": Behaviour.NO_STORE,
        "responses": {"200": {"description": "x"}},
    }
    return Route(**{**fields, **changes})


def test_a_route_is_declared_whole_or_not_at_all() -> None:
    with pytest.raises(RouteDeclarationError, match="criticality"):
        _route(criticality=None)
    with pytest.raises(RouteDeclarationError, match="degraded"):
        _route(degraded=None)
    with pytest.raises(RouteDeclarationError, match="rate limit"):
        _route(method="POST")
    with pytest.raises(RouteDeclarationError, match="camelCase"):
        _route(operation_id="get_x")
    with pytest.raises(RouteDeclarationError, match="operationId declared twice: getX"):
        routing.checked([_route(), _route(path="/y")])
    with pytest.raises(RouteDeclarationError, match="route declared twice: GET /x"):
        routing.checked([_route(), _route(operation_id="getY")])


def refused(model: type[Body], body: dict[str, Any]) -> tuple[str, str]:
    with pytest.raises(ApiError) as caught:
        model.of(body)
    assert caught.value.status == 400
    return caught.value.code, caught.value.message


def test_body_errors_keep_the_api_codes_in_the_order_clients_know() -> None:
    # an unknown field first, then a missing one, then the first invalid one
    assert refused(NewAccount, {"email": 7, "admin": True}) == (
        "unknown_field",
        "unknown field 'admin'",
    )
    assert refused(NewAccount, {"email": 7})[0] == "missing_field"
    assert refused(NewAccount, {"email": 7, "password": "short"}) == (
        "invalid_field",
        "field 'email' must be an e-mail address of at most 254 characters",
    )
    assert refused(NewAccount, {"email": "a@example.org", "password": "short"})[0] == (
        "weak_password"
    )
    # strict: no coercion; nested errors name the top-level field
    assert refused(InvitationRequest, {"role": "driver", "not_before": True})[0] == (
        "invalid_field"
    )
    code, message = refused(
        InvitationRequest,
        {"role": "driver", "schedule": {"utc_offset": 0, "windows": [{"days": ["mon"]}]}},
    )
    assert (code, message.split(" must ")[0]) == ("invalid_field", "field 'schedule'")
    # a whole-body rule with a code of its own
    assert refused(HolderRevocationRequest, {}) == (
        "missing_field",
        "give exactly one of 'device_id' and 'account_id'",
    )
    assert refused(HolderRevocationRequest, {"holder": "x"})[0] == "unknown_field"
    assert refused(HolderRevocationRequest, {"device_id": None})[0] == "invalid_field"


def test_bodies_that_are_not_objects_keep_their_codes() -> None:
    with pytest.raises(ApiError) as caught:
        NewAccount.parse(b'{"email": ')
    assert caught.value.code == "invalid_json"
    with pytest.raises(ApiError) as caught:
        NewAccount.parse(b'["email"]')
    assert caught.value.code == "invalid_body"
