"""Records as Redis hashes, for the Redis store (keyserver.store.redis): one hash field per
dataclass field (absent when None), parsed back by the field's type; and ledger entries."""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Callable, Mapping, Sequence
from enum import Enum
from typing import Any, TypeVar

from redis.typing import EncodableT

from keyserver.models import RevocationEntry, RevocationKind

R = TypeVar("R")


def fields_of(record: object) -> dict[EncodableT, EncodableT]:
    values: dict[EncodableT, EncodableT] = {}
    for field in dataclasses.fields(record):  # type: ignore[arg-type]
        value = getattr(record, field.name)
        if value is not None:
            values[field.name] = value.value if isinstance(value, Enum) else value
    return values


def flat(record: object) -> list[EncodableT]:
    return [item for pair in fields_of(record).items() for item in pair]


def _parser(kind: Any) -> Callable[[bytes], object]:
    optional = [arg for arg in typing.get_args(kind) if arg is not type(None)]
    kind = optional[0] if optional else kind
    if kind is bytes:
        return bytes
    if kind is str:
        return bytes.decode
    if issubclass(kind, int):  # int and IntEnum
        return lambda raw: kind(int(raw))
    return lambda raw: kind(raw.decode())  # StrEnum


@functools.cache
def _schema(cls: Any) -> tuple[tuple[str, bytes, Callable[[bytes], object]], ...]:
    hints = typing.get_type_hints(cls)
    return tuple((f.name, f.name.encode(), _parser(hints[f.name])) for f in dataclasses.fields(cls))


def record(cls: type[R], raw: Mapping[Any, Any]) -> R | None:
    if not raw:
        return None
    schema = _schema(typing.cast(Any, cls))
    return cls(
        **{name: None if (v := raw.get(k)) is None else parse(v) for name, k, parse in schema}
    )


def from_values(cls: type[R], values: Sequence[Any]) -> R | None:
    """A record from HMGET's values in field order; None if it has no first field (its id)."""
    if not values or values[0] is None:
        return None
    schema = _schema(typing.cast(Any, cls))
    return cls(
        *[None if v is None else parse(v) for (_, _, parse), v in zip(schema, values, strict=True)]
    )


def text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def present(value: str | None) -> str:
    return "" if value is None else f"={value}"


def revocation_entry(member: bytes) -> RevocationEntry:
    """An entry of the ledger's log: ``sequence:kind:before:until:subject`` (keyserver.store
    .redis.lua says why text), the subject's raw bytes last."""
    sequence, kind, before, until, subject = member.split(b":", 4)
    return RevocationEntry(
        RevocationKind(kind.decode()), subject, int(before), int(until), int(sequence)
    )
