"""Fields of a request's path: a VIN in the path is refused with ``invalid_vin``. (Bodies are
pydantic models: keyserver.bodies.)"""

from __future__ import annotations

from aiohttp import web

from keycore.token import check_vin
from keyserver.http import ApiError


def path_vin(request: web.Request) -> str:
    """The ``{vin}`` of the request's path, checked."""
    try:
        return check_vin(request.match_info["vin"])
    except ValueError as error:
        raise ApiError(400, "invalid_vin", str(error)) from None
