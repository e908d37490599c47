"""The surge's population, made over the REST API as people and the factory would: one account
with one enrolled phone, and cars provisioned, paired to it and keyed for that phone."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import aiohttp

from keycore import SoftwareSigner
from keycore.cose import point_bytes
from keycore.encoding import b64url_encode
from keyserver.auth import device_id_for
from lab.api import call

SETUP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Population:
    bearer: str
    device: SoftwareSigner
    device_id: str
    cars: list[tuple[str, SoftwareSigner, str]]  # (VIN, the car's key, the phone's key id)


def surge_vin(number: int) -> str:
    return f"PKSRG{number:012d}"  # 17 characters, no I, O or Q


async def set_up(base_url: str, provisioning_secret: str, *, cars: int) -> Population:
    timeout = aiohttp.ClientTimeout(total=SETUP_TIMEOUT_S)
    async with aiohttp.ClientSession(base_url, timeout=timeout) as http:
        email, password = f"surge-{secrets.token_hex(4)}@example.org", secrets.token_urlsafe(18)
        credentials = {"email": email, "password": password}
        await call(http, "/v1/accounts", credentials)
        bearer = str((await call(http, "/v1/sessions", credentials))["token"])
        device = SoftwareSigner.generate()
        xy = point_bytes(device.public_key)
        phone = (device, device_id_for(xy))
        enrolment = {"name": "surge phone", "public_key": b64url_encode(xy), "password": password}
        await call(http, "/v1/devices", enrolment, bearer=bearer, signer=phone)
        made = []
        for number in range(cars):
            vin, car = surge_vin(number), SoftwareSigner.generate()
            registration = {"vin": vin, "public_key": b64url_encode(point_bytes(car.public_key))}
            await call(
                http, "/v1/vehicles", registration,
                authorization=f"Provisioning {provisioning_secret}",
            )  # fmt: skip
            shown = await call(http, f"/v1/vehicles/{vin}/pairing-code", None, signer=(car, vin))
            await call(http, f"/v1/vehicles/{vin}/owner", {"code": shown["code"]},
                       bearer=bearer, signer=phone)  # fmt: skip
            key = await call(http, f"/v1/vehicles/{vin}/keys", {"device_id": phone[1]},
                             bearer=bearer, signer=phone)  # fmt: skip
            made.append((vin, car, str(key["key_id"])))
    return Population(bearer, device, phone[1], made)
