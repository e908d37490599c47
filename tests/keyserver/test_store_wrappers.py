"""Every ``Store`` protocol method is forwarded by every store wrapper — the breaker guard, the
metrics, the last-known cache — with the arguments it was given, under its own name; and the
hub's operations by ``GuardedHub``. A protocol method added without its forwarding fails here
(and in mypy: the wrappers would be abstract)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest

from keyserver.lastknown import LastKnown, LastKnownStore
from keyserver.models import RefreshContext
from keyserver.observability import MeasuredStore, Metrics
from keyserver.store import Store
from keyserver.store.forwarding import ForwardingStore
from keyserver.store.guarded import READS, GuardedHub, GuardedStore, store_breaker
from keyserver.store.redis.hub import RedisHub

OPERATIONS = sorted(
    name for name, value in vars(Store).items() if inspect.isfunction(value) and name[0] != "_"
)
WRAPPERS: dict[str, Callable[[Store], Store]] = {
    "guard": lambda inner: GuardedStore(inner, store_breaker("test")),
    "metrics": lambda inner: MeasuredStore(inner, Metrics.create()),
    "last known": lambda inner: LastKnownStore(inner, LastKnown(capacity=8, max_age_s=60)),
}
# what the wrappers read in an answer (the last-known cache looks into these); others answer None
ANSWERS: dict[str, object] = {
    "refresh_context": RefreshContext(None, None, None, None),
    "revocations": (0, []),
    "withdraw_keys": (0, []),
    "devices_of": [],
    "keys_of_vehicle": [],
    "claim_nonce": False,
}


class RecordingStore:
    """Answers every protocol method, noting its name and its arguments as the protocol binds
    them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        if name not in OPERATIONS:
            raise AttributeError(name)
        signature = inspect.signature(getattr(Store, name))

        async def operation(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            self.calls.append((name, dict(list(bound.arguments.items())[1:])))
            return ANSWERS.get(name)

        return operation


def arguments(name: str) -> tuple[list[Any], dict[str, Any]]:
    """A distinct, hashable value for each parameter of the protocol method ``name``."""
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for parameter in list(inspect.signature(getattr(Store, name)).parameters.values())[1:]:
        value = f"<{name}.{parameter.name}>"
        if parameter.kind is parameter.KEYWORD_ONLY:
            kwargs[parameter.name] = value
        else:
            args.append(value)
    return args, kwargs


def test_the_protocol_is_what_the_wrappers_are_checked_against() -> None:
    assert len(OPERATIONS) > 30
    assert {"refresh_context", "withdraw_keys", "close"} <= set(OPERATIONS)


@pytest.mark.parametrize("wrapper", [ForwardingStore, GuardedStore, MeasuredStore, LastKnownStore])
@pytest.mark.parametrize("name", OPERATIONS)
def test_each_wrapper_writes_out_each_operation_with_the_protocols_signature(
    wrapper: type, name: str
) -> None:
    method = getattr(wrapper, name)
    assert method is not getattr(Store, name), f"{wrapper.__name__} does not forward {name}"
    assert inspect.iscoroutinefunction(method)
    protocol = inspect.signature(getattr(Store, name))
    assert inspect.signature(method).parameters.keys() == protocol.parameters.keys()


@pytest.mark.parametrize("wrapper", WRAPPERS)
@pytest.mark.parametrize("name", OPERATIONS)
async def test_each_wrapper_hands_each_operation_to_the_inner_store_as_given(
    wrapper: str, name: str
) -> None:
    inner = RecordingStore()
    store = WRAPPERS[wrapper](inner)  # type: ignore[arg-type]
    args, kwargs = arguments(name)
    answer = await getattr(store, name)(*args, **kwargs)
    positional = list(inspect.signature(getattr(Store, name)).parameters)[1 : len(args) + 1]
    expected = dict(zip(positional, args, strict=True))
    assert inner.calls == [(name, expected | kwargs)]
    assert answer == ANSWERS.get(name)


@pytest.mark.parametrize("name", OPERATIONS)
async def test_each_operation_reaches_the_policy_under_its_own_name(name: str) -> None:
    names: list[str] = []

    class Named(ForwardingStore):
        async def _through(self, operation: str, call: Any, /, *args: Any, **kwargs: Any) -> Any:
            names.append(operation)
            return await call(*args, **kwargs)

    store = Named(RecordingStore())  # type: ignore[arg-type]
    args, kwargs = arguments(name)
    await getattr(store, name)(*args, **kwargs)
    assert names == ([] if name == "close" else [name])  # close is no store call to guard


async def test_the_metrics_label_each_operation_with_its_name() -> None:
    metrics = Metrics.create()
    store = MeasuredStore(RecordingStore(), metrics)  # type: ignore[arg-type]
    for name in OPERATIONS:
        args, kwargs = arguments(name)
        await getattr(store, name)(*args, **kwargs)
    measured = {
        sample.labels["operation"]
        for sample in next(iter(metrics.store_seconds.collect())).samples
        if sample.name.endswith("_count")
    }
    assert measured == set(OPERATIONS) - {"close"}


def test_the_guards_reads_are_store_or_hub_operations() -> None:
    hub = {name for name in vars(RedisHub) if name[0] != "_"}
    assert set(READS) <= set(OPERATIONS) | hub


def test_the_guarded_hub_forwards_every_hub_operation() -> None:
    operations = {name for name in vars(RedisHub) if name[0] != "_"}
    assert operations == {name for name in vars(GuardedHub) if name[0] != "_"}
    for name in operations - {"channel"}:
        assert inspect.signature(getattr(GuardedHub, name)).parameters.keys() == (
            inspect.signature(getattr(RedisHub, name)).parameters.keys()
        )
