"""Shared fixtures: a root of trust, an issuer key ring, a provisioned car's state, a phone, and
the keyserver's clock moved by hand."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from keycore import (
    IssuerKeyRing,
    RevocationState,
    Role,
    SoftwareSigner,
    TrustStore,
    issue,
)
from keyserver import clock as clock_module
from tests.keyserver.keys_harness import Clock

VIN = "5YJ3E1EA7KF000001"
OTHER_VIN = "1HGCM82633A004352"
NOW = 1_800_000_000  # 2027-01-15T08:00:00Z, a Friday
DAY = 86_400


@dataclass
class World:
    root: SoftwareSigner
    ring: IssuerKeyRing
    trust: TrustStore
    phone: SoftwareSigner
    revocations: RevocationState

    @property
    def issuer(self) -> SoftwareSigner:
        signer = self.ring.active.signer
        assert isinstance(signer, SoftwareSigner)
        return signer

    def token(self, role: Role = Role.OWNER, **kwargs: object) -> bytes:
        args: dict[str, object] = {
            "signer": self.issuer,
            "vin": VIN,
            "holder": self.phone.public_key,
            "role": role,
            "now": NOW,
            "expires": NOW + DAY,
        }
        args.update(kwargs)
        return issue(**args)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def world() -> World:
    root = SoftwareSigner.generate()
    ring = IssuerKeyRing.create(now=NOW - 30 * DAY)
    trust = TrustStore(root.public_key).apply(ring.trust_update(root, sequence=1, now=NOW))
    return World(root, ring, trust, SoftwareSigner.generate(), RevocationState(VIN))


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The keyserver's clock (``keyserver.clock.now``), moved by the test."""
    fake = Clock()
    monkeypatch.setattr(clock_module, "now", fake)
    return fake
