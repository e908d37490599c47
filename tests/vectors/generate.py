"""Test vectors for keycore's signed documents, made from fixed test keys by keycore itself.

``python -m tests.vectors.generate`` rewrites the JSON files next to this module; ``vector_files()``
returns their exact bytes without writing, so a test can prove the files still match the code.
Valid documents come from keycore's public functions; failing ones are built by hand with cbor2,
re-signed with the right key wherever a case needs a valid signature over a bad payload.
ES256 signatures are deterministic (RFC 6979), so every run writes the same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.vectors.ble import ble_vectors
from tests.vectors.proofs import proof_vectors
from tests.vectors.revocation_lists import revocation_vectors
from tests.vectors.signed_time import signed_time_vectors
from tests.vectors.tokens import token_vectors
from tests.vectors.trust_updates import trust_vectors

HERE = Path(__file__).resolve().parent


def vectors() -> dict[str, dict[str, Any]]:
    """Every vector file's content, by file name."""
    return {
        "tokens.json": token_vectors(),
        "proofs.json": proof_vectors(),
        "revocation_lists.json": revocation_vectors(),
        "trust_updates.json": trust_vectors(),
        "signed_time.json": signed_time_vectors(),
        "ble.json": ble_vectors(),
    }


def vector_files() -> dict[str, bytes]:
    """The exact bytes of every vector file, by file name."""
    return {
        name: (json.dumps(data, indent=2) + "\n").encode("utf-8")
        for name, data in vectors().items()
    }


def main() -> None:
    for name, data in vector_files().items():
        (HERE / name).write_bytes(data)
        print(f"wrote {HERE / name}")


if __name__ == "__main__":
    main()
