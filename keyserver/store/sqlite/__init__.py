"""The embedded SQLite store (``SQLiteStore``): the keyserver's zero-configuration default for a
single node, one file in WAL mode.

    store         SQLiteStore: the Store operations, each one transaction
    transactions  the one connection and its worker thread; SQLite's errors mapped
    records       rows ↔ records, shared statements
    ledger        the revocation ledger and the holders it counts
    ownership     the ownership history
    channel       remote commands and audit events
    schema        the schema, its version and the housekeeping sweeps
"""

from keyserver.store.sqlite.schema import SCHEMA_VERSION
from keyserver.store.sqlite.store import SQLiteStore

__all__ = ["SCHEMA_VERSION", "SQLiteStore"]
