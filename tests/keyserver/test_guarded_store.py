"""GuardedStore over a scripted fake store, with a fake clock and a recording sleep: refusal
without a call, retries only when safe and affordable, deadlines, and what the breaker counts."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from keyserver.errors import Conflict, StoreUnavailable
from keyserver.store.guarded import CircuitOpen, GuardedStore, GuardPolicy, is_outage
from resilience.breaker import BreakerConfig, BreakerState, CircuitBreaker
from resilience.overload import Deadline, RetryBudget

NOT_SENT = StoreUnavailable("not sent", may_have_succeeded=False)
MAYBE_APPLIED = StoreUnavailable("sent, no answer", may_have_succeeded=True)
HANG = object()  # the call never answers


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class FakeStore:
    """Each call takes the next scripted outcome: an exception to raise, HANG, or a value."""

    def __init__(self, *outcomes: object) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[str] = []
        self.closed = False

    async def _next(self, name: str) -> object:
        self.calls.append(name)
        outcome = self.outcomes.pop(0) if self.outcomes else "ok"
        if outcome is HANG:
            await asyncio.Event().wait()
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def account(self, account_id: str) -> object:
        return await self._next("account")

    async def put_session(self, session: object) -> object:
        return await self._next("put_session")

    async def refresh_context(
        self, token_hash: bytes, *, claim: object = None, **_: object
    ) -> object:
        return await self._next("refresh_context")

    async def close(self) -> None:
        self.closed = True


def guarded(
    inner: FakeStore,
    clock: FakeClock,
    *,
    budget: RetryBudget | None = None,
    policy: GuardPolicy | None = None,
    deadline: Callable[[], Deadline | None] = lambda: None,
) -> Any:
    breaker = CircuitBreaker(
        "redis", BreakerConfig(record_exception=is_outage), clock=clock, rng=lambda: 0.5
    )
    return GuardedStore(
        inner,
        breaker,
        budget=budget or RetryBudget(0.1, clock=clock),
        policy=policy or GuardPolicy(attempt_timeout_s=0.05),
        deadline=deadline,
        clock=clock,
        sleep=clock.sleep,
    )


async def test_a_success_passes_through_and_is_counted() -> None:
    clock, inner = FakeClock(), FakeStore("alice")
    store = guarded(inner, clock)
    assert await store.account("a1") == "alice"
    assert store.breaker.metrics.successful == 1
    assert store.budget.requests == 1
    assert store.budget.retries == 0


async def test_an_open_breaker_refuses_without_calling_the_store() -> None:
    clock, inner = FakeClock(), FakeStore()
    store = guarded(inner, clock)
    store.breaker.force_open()
    with pytest.raises(CircuitOpen) as refused:
        await store.put_session("s")
    assert isinstance(refused.value, StoreUnavailable)
    assert not refused.value.may_have_succeeded
    assert refused.value.retry_after_s > 0
    assert inner.calls == []
    assert store.budget.retries == 0


@pytest.mark.parametrize("method", ["account", "put_session"])
async def test_a_call_that_certainly_failed_is_retried_once(method: str) -> None:
    clock, inner = FakeClock(), FakeStore(NOT_SENT, "second")
    store = guarded(inner, clock)
    answer = await getattr(store, method)("x")
    assert answer == ("second" if method == "account" else None)  # put_session answers nothing
    assert inner.calls == [method, method]
    assert store.budget.retries == 1
    assert len(clock.sleeps) == 1
    assert 0 <= clock.sleeps[0] <= store.policy.backoff_max_s


async def test_attempts_are_bounded() -> None:
    clock, inner = FakeClock(), FakeStore(NOT_SENT, NOT_SENT, NOT_SENT, NOT_SENT)
    store = guarded(inner, clock, policy=GuardPolicy(attempt_timeout_s=0.05, max_attempts=3))
    with pytest.raises(StoreUnavailable):
        await store.account("a1")
    assert len(inner.calls) == 3


async def test_a_write_that_may_have_succeeded_is_never_retried() -> None:
    clock, inner = FakeClock(), FakeStore(MAYBE_APPLIED, "would double")
    store = guarded(inner, clock)
    with pytest.raises(StoreUnavailable) as failed:
        await store.put_session("s")
    assert failed.value is MAYBE_APPLIED
    assert inner.calls == ["put_session"]
    assert store.budget.retries == 0


async def test_an_empty_budget_stops_retries() -> None:
    clock, inner = FakeClock(), FakeStore(NOT_SENT, "second")
    store = guarded(inner, clock, budget=RetryBudget(0.0, min_per_s=0.0, clock=clock))
    with pytest.raises(StoreUnavailable):
        await store.account("a1")
    assert inner.calls == ["account"]
    assert store.budget.denied == 1
    assert store.budget.retries == 0


async def test_the_budget_is_about_a_tenth_of_calls() -> None:
    clock = FakeClock()
    inner = FakeStore(*[NOT_SENT] * 400)
    store = guarded(inner, clock, budget=RetryBudget(0.1, min_per_s=0.0, clock=clock))
    for _ in range(100):
        with pytest.raises(StoreUnavailable):
            await store.account("a1")
    assert store.budget.retries <= 10
    assert len(inner.calls) <= 110


async def test_a_deadline_that_cannot_fit_another_attempt_stops_retries() -> None:
    clock, inner = FakeClock(), FakeStore(NOT_SENT, "second")
    # 40 ms left: less than one 50 ms attempt after the backoff
    store = guarded(inner, clock, deadline=lambda: Deadline(clock.now + 0.04))
    with pytest.raises(StoreUnavailable):
        await store.account("a1")
    assert inner.calls == ["account"]
    assert store.budget.retries == 0


async def test_a_passed_deadline_stops_the_call_before_it_starts() -> None:
    clock, inner = FakeClock(), FakeStore()
    store = guarded(inner, clock, deadline=lambda: Deadline(clock.now - 0.001))
    with pytest.raises(StoreUnavailable) as failed:
        await store.put_session("s")
    assert not failed.value.may_have_succeeded
    assert inner.calls == []
    assert store.breaker.metrics.successful == 0


@pytest.mark.parametrize(
    ("method", "kwargs", "maybe_applied"),
    [
        ("account", {}, False),
        ("put_session", {}, True),
        ("refresh_context", {}, False),
        ("refresh_context", {"claim": "nonce"}, True),
    ],
)
async def test_a_hung_call_times_out_as_a_failure(
    method: str, kwargs: dict[str, object], maybe_applied: bool
) -> None:
    clock, inner = FakeClock(), FakeStore(HANG, HANG)
    policy = GuardPolicy(attempt_timeout_s=0.01, max_attempts=1)
    store = guarded(inner, clock, policy=policy)
    if method == "refresh_context":
        kwargs = {"device_id": None, "key_id": None, "now": 0, **kwargs}
    with pytest.raises(StoreUnavailable) as failed:
        await getattr(store, method)(b"x", **kwargs)
    assert failed.value.may_have_succeeded is maybe_applied
    assert store.breaker.metrics.failed == 1


async def test_the_request_deadline_cutting_a_call_counts_as_neither() -> None:
    clock, inner = FakeClock(), FakeStore(HANG)
    # the request has 10 ms left, the attempt would have 10 s: the deadline cuts the call
    store = guarded(
        inner,
        clock,
        policy=GuardPolicy(attempt_timeout_s=10.0),
        deadline=lambda: Deadline(clock.now + 0.01),
    )
    with pytest.raises(StoreUnavailable) as failed:
        await store.put_session("s")
    assert failed.value.may_have_succeeded
    metrics = store.breaker.metrics
    assert metrics.failed == 0
    assert metrics.successful == 0


async def test_a_conflict_is_an_answer_not_a_failure() -> None:
    clock, inner = FakeClock(), FakeStore(Conflict("exists"))
    store = guarded(inner, clock)
    with pytest.raises(Conflict):
        await store.put_session("s")
    assert inner.calls == ["put_session"]
    assert store.breaker.metrics.failed == 0


async def test_failures_open_the_breaker_then_calls_fail_fast() -> None:
    clock = FakeClock()
    inner = FakeStore(*[MAYBE_APPLIED] * 10)
    store = guarded(inner, clock)
    for _ in range(10):
        with pytest.raises(StoreUnavailable):
            await store.put_session("s")
    assert store.breaker.state is BreakerState.OPEN
    with pytest.raises(CircuitOpen):
        await store.account("a1")
    assert len(inner.calls) == 10
    clock.now += 10  # past the open wait: half-open lets a trial call through
    assert await store.account("a1") == "ok"


async def test_close_passes_through_even_with_the_breaker_open() -> None:
    clock, inner = FakeClock(), FakeStore()
    store = guarded(inner, clock)
    store.breaker.force_open()
    await store.close()
    assert inner.closed
