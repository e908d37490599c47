"""The issuer key ring on disk, split the way a PKI splits it: the root signs, servers serve.

An admin directory (``keyserver keys init``; mode 0700) holds everything; a serving key directory
holds the serving part only, written there by ``keyserver keys publish``::

    root.pem              root private key: admin directory only (or a KMS/HSM; see ``Signer``)
    root-public.pem       the root's public key, which cars hold from the factory
    issuer-<kid>.pem      one per issuer key in the ring (0600): servers sign tokens with these
    ring.json             statuses, validity windows, the trust-store update sequence
    trust-update.cbor     the latest root-signed trust-store update, served to cars and phones

Loading checks that the pieces agree (the update verifies under the root, lists exactly the ring's
keys, carries ring.json's sequence), so a serving keyserver never serves a half-published ring.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from keycore import (
    InvalidTrustUpdate,
    IssuerKey,
    IssuerKeyRing,
    KeyStatus,
    Signer,
    SoftwareSigner,
    TrustStore,
)
from keycore.cose import key_id
from keyserver.errors import KeyRingError

RING_FILE = "ring.json"
ROOT_FILE = "root.pem"
ROOT_PUBLIC_FILE = "root-public.pem"
TRUST_FILE = "trust-update.cbor"
FORMAT_VERSION = 1
MAX_FILE_BYTES = 64 * 1024  # every file here is far smaller; a bigger one is not ours


@dataclass(frozen=True)
class KeyRingState:
    """What a serving keyserver holds: issuer keys, the root's public key, the signed update."""

    ring: IssuerKeyRing
    root_key: ec.EllipticCurvePublicKey
    trust_sequence: int
    trust_update: bytes
    trust: TrustStore  # ``trust_update`` applied under ``root_key``: checked when built

    @classmethod
    def verified(
        cls,
        ring: IssuerKeyRing,
        root_key: ec.EllipticCurvePublicKey,
        trust_sequence: int,
        trust_update: bytes,
    ) -> KeyRingState:
        """The state if its parts agree; raises KeyRingError naming the first disagreement."""
        try:
            trust = TrustStore(root_key).apply(trust_update)
        except InvalidTrustUpdate as exc:
            raise KeyRingError(
                f"{TRUST_FILE} does not verify under the root key ({exc.reason.value})"
            ) from None
        if trust.sequence != trust_sequence:
            raise KeyRingError(
                f"{TRUST_FILE} has sequence {trust.sequence}, {RING_FILE} says {trust_sequence}"
            )
        listed = {k.kid: (k.not_before, k.not_after) for k in trust.keys.values()}
        held = {k.kid: (k.not_before, k.not_after) for k in ring.keys}
        if listed != held:  # a car would refuse tokens from a key the update does not list
            raise KeyRingError(f"{TRUST_FILE} and {RING_FILE} list different issuer keys")
        if sum(k.status is KeyStatus.ACTIVE for k in ring.keys) != 1:
            raise KeyRingError(f"{RING_FILE}: exactly one active key is required")
        return cls(ring, root_key, trust_sequence, trust_update, trust)

    @property
    def root_kid(self) -> bytes:
        return key_id(self.root_key)

    def trust_store(self) -> TrustStore:
        return self.trust


class KeyRingStore:
    """Reads and writes one key directory. Every write is atomic (temp file, fsync, rename)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def exists(self) -> bool:
        return (self.directory / RING_FILE).exists()

    def holds_root_private_key(self) -> bool:
        return (self.directory / ROOT_FILE).exists()

    def init(self, *, now: int, key_lifetime: int, max_token_lifetime: int) -> KeyRingState:
        if self.exists():
            raise KeyRingError(f"a key ring already exists in {self.directory}")
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        root = SoftwareSigner.generate()
        ring = IssuerKeyRing.create(
            now=now, key_lifetime=key_lifetime, max_token_lifetime=max_token_lifetime
        )
        self._write(ROOT_FILE, root.to_pem(), 0o600)
        return self._sign_and_write(ring, root, sequence=1, now=now)

    def load(self) -> KeyRingState:
        """The serving part, checked whole; never needs (or reads past) the root private key."""
        try:
            meta = json.loads(self._read(RING_FILE))
            if meta.get("version") != FORMAT_VERSION:
                raise KeyRingError(f"{RING_FILE}: unsupported version {meta.get('version')!r}")
            root_key = self._root_public_key()
            keys = tuple(self._load_key(entry) for entry in meta["keys"])
            ring = IssuerKeyRing(keys, int(meta["key_lifetime"]), int(meta["max_token_lifetime"]))
            return KeyRingState.verified(
                ring, root_key, int(meta["trust_sequence"]), self._read(TRUST_FILE)
            )
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

    def rotate(self, *, now: int) -> KeyRingState:
        state = self.load()
        root = self._root_signer(state)
        return self._sign_and_write(state.ring.rotate(now=now), root, state.trust_sequence + 1, now)

    def retire(self, kid: bytes, *, now: int) -> KeyRingState:
        """Stop trusting ``kid`` at once (e.g. compromised); rotate the active key away first."""
        state = self.load()
        root = self._root_signer(state)
        try:
            ring = state.ring.drop(kid)
        except KeyError:
            raise KeyRingError(f"no key {kid.hex()} in the ring") from None
        except ValueError as exc:
            raise KeyRingError(str(exc)) from None
        return self._sign_and_write(ring, root, state.trust_sequence + 1, now)

    def publish(self, target: Path) -> KeyRingState:
        """Write the serving part (never ``root.pem``) to ``target``, where keyservers read it.

        Refused if ``target`` serves another root (every car would refuse its tokens) or a newer
        trust update (cars never go back to an older one)."""
        state = self.load()
        served = KeyRingStore(target)
        if Path(target).resolve() == self.directory.resolve():
            raise KeyRingError("publish to a serving key directory, not to the ring's own")
        if served.exists():
            try:
                current_root = served._root_public_key()
                sequence = int(json.loads(served._read(RING_FILE))["trust_sequence"])
            except Exception:  # a damaged target is repaired by publishing over it
                current_root, sequence = None, 0
            if current_root is not None and key_id(current_root) != state.root_kid:
                raise KeyRingError(
                    f"{target} serves root {key_id(current_root).hex()}, this ring's root is"
                    f" {state.root_kid.hex()}"
                )
            if sequence > state.trust_sequence:
                raise KeyRingError(
                    f"{target} serves trust-store update {sequence}, newer than this ring's"
                    f" {state.trust_sequence}"
                )
        served.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        served._write_serving(state)
        return served.load()

    def _sign_and_write(
        self, ring: IssuerKeyRing, root: Signer, sequence: int, now: int
    ) -> KeyRingState:
        update = ring.trust_update(root, sequence=sequence, now=now)
        state = KeyRingState.verified(ring, root.public_key, sequence, update)
        self._write_serving(state)
        return state

    def _write_serving(self, state: KeyRingState) -> None:
        # Order matters to a keyserver reading while this writes: new keys first, ring.json (the
        # file that names them) last, stale keys removed after; a reader that catches the
        # directory in between sees parts that disagree and keeps what it serves.
        public = state.root_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if self._read_or_none(ROOT_PUBLIC_FILE) != public:
            self._write(ROOT_PUBLIC_FILE, public, 0o644)
        for key in state.ring.keys:
            if not isinstance(key.signer, SoftwareSigner):
                raise KeyRingError(f"issuer key {key.kid.hex()} cannot be written to a file")
            pem = key.signer.to_pem()
            if self._read_or_none(_key_file(key.kid)) != pem:
                self._write(_key_file(key.kid), pem, 0o600)
        meta: dict[str, Any] = {
            "version": FORMAT_VERSION,
            "trust_sequence": state.trust_sequence,
            "key_lifetime": state.ring.key_lifetime,
            "max_token_lifetime": state.ring.max_token_lifetime,
            "keys": [
                {
                    "kid": k.kid.hex(),
                    "status": k.status.value,
                    "not_before": k.not_before,
                    "not_after": k.not_after,
                }
                for k in state.ring.keys
            ],
        }
        self._write(TRUST_FILE, state.trust_update, 0o644)
        self._write(RING_FILE, json.dumps(meta, indent=2).encode() + b"\n", 0o644)
        kept = {_key_file(k.kid) for k in state.ring.keys}
        for stale in self.directory.glob("issuer-*.pem"):
            if stale.name not in kept:
                stale.unlink()

    def _root_public_key(self) -> ec.EllipticCurvePublicKey:
        data = self._read_or_none(ROOT_PUBLIC_FILE)
        if data is None:  # a directory made before root-public.pem existed
            return SoftwareSigner.from_pem(self._read(ROOT_FILE)).public_key
        key = serialization.load_pem_public_key(data)
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
            raise KeyRingError(f"{ROOT_PUBLIC_FILE}: not a P-256 public key")
        return key

    def _root_signer(self, state: KeyRingState) -> SoftwareSigner:
        try:
            root = SoftwareSigner.from_pem(self._read(ROOT_FILE))
        except FileNotFoundError:
            raise KeyRingError(
                f"no root private key in {self.directory}: change the ring in the admin directory"
                f" that holds {ROOT_FILE}, then `keyserver keys publish` it here"
            ) from None
        except ValueError as exc:
            raise KeyRingError(f"{ROOT_FILE}: {exc}") from None
        if root.kid != state.root_kid:
            raise KeyRingError(f"{ROOT_FILE} does not match {ROOT_PUBLIC_FILE}")
        return root

    def _load_key(self, entry: dict[str, Any]) -> IssuerKey:
        kid = bytes.fromhex(entry["kid"])
        signer = SoftwareSigner.from_pem(self._read(_key_file(kid)))
        if signer.kid != kid:
            raise KeyRingError(f"{_key_file(kid)} holds key {signer.kid.hex()}")
        return IssuerKey(
            signer, KeyStatus(entry["status"]), int(entry["not_before"]), int(entry["not_after"])
        )

    def _read(self, name: str) -> bytes:
        with open(self.directory / name, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise KeyRingError(f"{name}: larger than {MAX_FILE_BYTES} bytes")
        return data

    def _read_or_none(self, name: str) -> bytes | None:
        try:
            return self._read(name)
        except FileNotFoundError:
            return None

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
