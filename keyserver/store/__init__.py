"""Keyserver state: the Store interface and its SQLite and Redis adapters."""

from keyserver.store.base import Store

__all__ = ["Store"]
