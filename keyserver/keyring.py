"""The issuer key ring on disk: private keys in 0600 PEM files, metadata, the last trust update.

Layout of the key directory (mode 0700)::

    root.pem              root private key (production: offline or in an HSM; see ``Signer``)
    issuer-<kid>.pem      one per issuer key in the ring
    ring.json             statuses, validity windows, the trust-store update sequence
    trust-update.cbor     the latest root-signed trust-store update, served to cars and phones

Signing goes through ``keycore.Signer``: that protocol is the seam where a KMS or HSM signer plugs
in instead of ``SoftwareSigner`` (it needs only ``kid``, ``public_key`` and ``sign``).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keycore import IssuerKey, IssuerKeyRing, KeyStatus, SoftwareSigner, TrustStore
from keyserver.errors import KeyRingError

RING_FILE = "ring.json"
ROOT_FILE = "root.pem"
TRUST_FILE = "trust-update.cbor"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class KeyRingState:
    ring: IssuerKeyRing
    root: SoftwareSigner
    trust_sequence: int
    trust_update: bytes

    def trust_store(self) -> TrustStore:
        return TrustStore(self.root.public_key).apply(self.trust_update)


class KeyRingStore:
    """Reads and writes one key directory. Every write is atomic (temp file, fsync, rename)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def exists(self) -> bool:
        return (self.directory / RING_FILE).exists()

    def init(self, *, now: int, key_lifetime: int, max_token_lifetime: int) -> KeyRingState:
        if self.exists():
            raise KeyRingError(f"a key ring already exists in {self.directory}")
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        root = SoftwareSigner.generate()
        ring = IssuerKeyRing.create(
            now=now, key_lifetime=key_lifetime, max_token_lifetime=max_token_lifetime
        )
        self._write_secret(ROOT_FILE, root.to_pem())
        return self._publish(ring, root, sequence=1, now=now)

    def load(self) -> KeyRingState:
        try:
            meta = json.loads((self.directory / RING_FILE).read_text())
            root = SoftwareSigner.from_pem((self.directory / ROOT_FILE).read_bytes())
            trust_update = (self.directory / TRUST_FILE).read_bytes()
            keys = tuple(self._load_key(entry) for entry in meta["keys"])
            ring = IssuerKeyRing(keys, int(meta["key_lifetime"]), int(meta["max_token_lifetime"]))
            state = KeyRingState(ring, root, int(meta["trust_sequence"]), trust_update)
            if meta.get("version") != FORMAT_VERSION:
                raise KeyRingError(f"{RING_FILE}: unsupported version {meta.get('version')!r}")
            state.trust_store()  # the stored update must verify under the stored root
        except FileNotFoundError as exc:
            raise KeyRingError(
                f"no key ring in {self.directory} ({Path(exc.filename).name} missing)"
            ) from None
        except KeyRingError:
            raise
        except Exception as exc:  # any other inconsistency: one clear line, never a traceback
            raise KeyRingError(
                f"unreadable key ring in {self.directory}: {type(exc).__name__}: {exc}"
            ) from None
        if sum(k.status is KeyStatus.ACTIVE for k in ring.keys) != 1:
            raise KeyRingError(f"{RING_FILE}: exactly one active key is required")
        return state

    def rotate(self, *, now: int) -> KeyRingState:
        state = self.load()
        return self._publish(state.ring.rotate(now=now), state.root, state.trust_sequence + 1, now)

    def retire(self, kid: bytes, *, now: int) -> KeyRingState:
        """Stop trusting ``kid`` at once (e.g. compromised); rotate the active key away first."""
        state = self.load()
        try:
            ring = state.ring.drop(kid)
        except KeyError:
            raise KeyRingError(f"no key {kid.hex()} in the ring") from None
        except ValueError as exc:
            raise KeyRingError(str(exc)) from None
        return self._publish(ring, state.root, state.trust_sequence + 1, now)

    def _publish(
        self, ring: IssuerKeyRing, root: SoftwareSigner, sequence: int, now: int
    ) -> KeyRingState:
        for key in ring.keys:
            path = self.directory / _key_file(key.kid)
            if not path.exists():
                assert isinstance(key.signer, SoftwareSigner)
                self._write_secret(path.name, key.signer.to_pem())
        update = ring.trust_update(root, sequence=sequence, now=now)
        meta: dict[str, Any] = {
            "version": FORMAT_VERSION,
            "trust_sequence": sequence,
            "key_lifetime": ring.key_lifetime,
            "max_token_lifetime": ring.max_token_lifetime,
            "keys": [
                {
                    "kid": k.kid.hex(),
                    "status": k.status.value,
                    "not_before": k.not_before,
                    "not_after": k.not_after,
                }
                for k in ring.keys
            ],
        }
        self._write(TRUST_FILE, update, 0o644)
        self._write(RING_FILE, json.dumps(meta, indent=2).encode() + b"\n", 0o644)
        kept = {_key_file(k.kid) for k in ring.keys}
        for stale in self.directory.glob("issuer-*.pem"):
            if stale.name not in kept:
                stale.unlink()
        return KeyRingState(ring, root, sequence, update)

    def _load_key(self, entry: dict[str, Any]) -> IssuerKey:
        kid = bytes.fromhex(entry["kid"])
        signer = SoftwareSigner.from_pem((self.directory / _key_file(kid)).read_bytes())
        if signer.kid != kid:
            raise KeyRingError(f"{_key_file(kid)} holds key {signer.kid.hex()}")
        return IssuerKey(
            signer, KeyStatus(entry["status"]), int(entry["not_before"]), int(entry["not_after"])
        )

    def _write_secret(self, name: str, data: bytes) -> None:
        self._write(name, data, 0o600)

    def _write(self, name: str, data: bytes, mode: int) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{name}.")
        try:
            os.fchmod(fd, mode)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.directory / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _key_file(kid: bytes) -> str:
    return f"issuer-{kid.hex()}.pem"
