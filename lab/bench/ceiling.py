"""The reference servers of ``phonekey bench issue``, run as ``python -m lab.bench.ceiling``.

``ceiling``: an aiohttp handler that does only the cryptography a token refresh cannot avoid —
parse and verify the device proof (one ES256 verify) and sign a new token (``keycore.issue``) —
and nothing else: no session, no store, no nonce, no middleware, no logging.
``bare``: a handler that does nothing and returns a constant small JSON body.

Both serve the refresh's route on 127.0.0.1, port 0 (aiohttp's "Running on" line says which).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from aiohttp import web

from keycore import ROLE_ENTITLEMENTS, Role, SoftwareSigner, issue
from keycore.cose import load_point
from keycore.encoding import b64url_decode, b64url_encode
from keycore.errors import InvalidProof
from keycore.request_proof import HEADER, parse_request_proof, verify_request_proof

ROUTE = "/v1/keys/{key_id}/token"
VIN = "5YJ3E1EA7KF000001"
LIFETIME_S = 7 * 86_400
MAX_SKEW_S = 60
_BARE_BODY = b'{"ok":true}'


def ceiling_app(holder_xy: bytes) -> web.Application:
    """Verify the proof with the (known) device key, sign a token for it: the unavoidable work."""
    holder = load_point(holder_xy)
    issuer = SoftwareSigner.generate()

    async def refresh(request: web.Request) -> web.Response:
        try:
            proof = parse_request_proof(request.headers.get(HEADER, ""))
            verify_request_proof(
                proof,
                public_key=holder,
                method=request.method,
                path=request.path_qs,
                body=b"",
                now=time.time(),
                max_skew=MAX_SKEW_S,
            )
        except InvalidProof:
            return web.json_response({"error": "bad proof"}, status=401)
        now = int(time.time())
        token = issue(  # the claims of the keyserver's owner tokens: the same work to sign
            signer=issuer,
            vin=VIN,
            holder=holder,
            role=Role.OWNER,
            now=now,
            expires=now + LIFETIME_S,
            not_before=now,
            entitlements=ROLE_ENTITLEMENTS[Role.OWNER],
        )
        return web.json_response({"token": b64url_encode(token)})

    app = web.Application()
    app.router.add_post(ROUTE, refresh)
    return app


def bare_app() -> web.Application:
    async def nothing(request: web.Request) -> web.Response:
        return web.Response(body=_BARE_BODY, content_type="application/json")

    app = web.Application()
    app.router.add_post(ROUTE, nothing)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.bench.ceiling", description=__doc__)
    parser.add_argument("mode", choices=("ceiling", "bare"))
    parser.add_argument("--holder", help="the device public key x || y, base64url (ceiling)")
    args = parser.parse_args(argv)
    if args.mode == "ceiling":
        if not args.holder:
            parser.error("ceiling needs --holder")
        app = ceiling_app(b64url_decode(args.holder))
    else:
        app = bare_app()
    web.run_app(
        app,
        host="127.0.0.1",
        port=0,
        access_log=None,
        print=lambda message: print(message, file=sys.stderr, flush=True),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
