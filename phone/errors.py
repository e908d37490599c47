"""Errors raised by the reference phone client.

    PhoneError          base
    ├── WalletCorrupt   a stored row, or the wallet file itself, cannot be read; nothing was
    │                   changed (phone.wallet)
    └── _CloudFailure   the cloud did not do a request; ``in_doubt`` when it may have acted all
                        the same (phone.client; private: the client answers with an outcome)

Bluetooth failures are ``ble_fallback.errors.BleError``; the client turns both kinds into an
outcome (phone.outcomes) and never retries what may have succeeded.
"""

from __future__ import annotations


class PhoneError(Exception):
    """Base of the phone client's errors; the message is one line."""
