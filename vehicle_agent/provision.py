"""Provisioning a car: make its key, register it with the keyserver, learn the issuer keys,
and fetch the one-time owner pairing code the car shows on its screen.

Every request goes to the configured keyserver; the issuer keys are accepted only if the trust
update verifies under the root key from the car's own configuration.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import aiohttp

from keycore import SoftwareSigner, TrustStore
from keycore.cose import point_bytes
from keycore.encoding import b64url_encode
from keycore.request_proof import HEADER, sign_request
from vehicle_agent.config import AgentConfig
from vehicle_agent.errors import AgentError, StateError
from vehicle_agent.state import AgentState, Identity

TIMEOUT = aiohttp.ClientTimeout(total=10)


class ProvisioningError(AgentError):
    pass


@dataclass(frozen=True)
class PairingCode:
    code: str
    expires_at: int

    def shown(self) -> str:
        return f"{self.code[:4]} {self.code[4:]}"


async def provision(config: AgentConfig) -> PairingCode:
    """Register this car (once) and return its first pairing code."""
    if not config.provisioning_secret:
        raise ProvisioningError("setting 'provisioning_secret' is needed to provision")
    config.state_path.parent.mkdir(parents=True, exist_ok=True)
    state = AgentState.open(config.state_path)
    try:
        try:
            state.identity()
        except StateError:
            pass
        else:
            raise ProvisioningError(f"{config.state_path}: this car is provisioned already")
        vehicle_key = SoftwareSigner.generate()
        async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
            body = {
                "vin": config.vin,
                "public_key": b64url_encode(point_bytes(vehicle_key.public_key)),
            }
            headers = {"Authorization": f"Provisioning {config.provisioning_secret}"}
            async with http.post(
                f"{config.keyserver_url}/v1/vehicles", json=body, headers=headers
            ) as response:
                await _expect(response, 201, "registering the car")
            async with http.get(f"{config.keyserver_url}/v1/trust-update") as response:
                await _expect(response, 200, "fetching the issuer keys")
                update = await response.read()
            try:
                trust = TrustStore(config.root_key).apply(update)
            except Exception as exc:  # the server's keys do not verify under our root
                raise ProvisioningError(f"the trust update does not verify: {exc}") from None
            identity = Identity(config.vin, vehicle_key, config.root_key, config.keyserver_url)
            state.set_identity(identity)
            state.save_trust(trust)
            return await _pairing_code(http, identity)
    except aiohttp.ClientError as exc:
        raise ProvisioningError(f"keyserver {config.keyserver_url}: {exc}") from None
    finally:
        state.close()


async def pairing_code(config: AgentConfig) -> PairingCode:
    """A new one-time owner pairing code for a provisioned car (replaces any earlier one)."""
    state = AgentState.open(config.state_path)
    try:
        identity = state.identity()
        async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
            return await _pairing_code(http, identity)
    except aiohttp.ClientError as exc:
        raise ProvisioningError(f"keyserver {config.keyserver_url}: {exc}") from None
    finally:
        state.close()


async def _pairing_code(http: aiohttp.ClientSession, identity: Identity) -> PairingCode:
    path = f"/v1/vehicles/{identity.vin}/pairing-code"
    proof = sign_request(
        identity.vehicle_key,
        device_id=identity.vin,
        method="POST",
        path=path,
        body=b"",
        timestamp=int(time.time()),
    )
    async with http.post(f"{identity.keyserver_url}{path}", headers={HEADER: proof}) as response:
        await _expect(response, 201, "asking for a pairing code")
        answer = await response.json()
    return PairingCode(str(answer["code"]), int(answer["expires_at"]))


async def _expect(response: aiohttp.ClientResponse, status: int, doing: str) -> None:
    if response.status == status:
        return
    try:
        error = (await response.json())["error"]
        detail = f"{error['code']}: {error['message']}"
    except (aiohttp.ContentTypeError, KeyError, TypeError, ValueError):
        detail = f"HTTP {response.status}"
    raise ProvisioningError(f"{doing}: {detail}")
