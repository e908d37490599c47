"""Placing a car's audit events in its owners' tenures by the car's clock (keyserver.tenure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from keyserver.models import Tenure
from keyserver.tenure import CarEvent, tenures_of, within

SALE = 1_000


def trail(times: list[float | None]) -> list[CarEvent]:
    return [
        CarEvent(seq, {"kind": "decision"} if t is None else {"kind": "decision", "at": t})
        for seq, t in enumerate(times, start=1)
    ]


def _ascending(times: list[int | None]) -> list[int | None]:
    timed = iter(sorted(t for t in times if t is not None))
    return [None if t is None else next(timed) for t in times]


# The car's trusted time only moves forward: timed events come in ascending order.
car_times = st.lists(st.one_of(st.none(), st.integers(0, 2 * SALE)), max_size=30).map(_ascending)


@given(times=car_times)
def test_no_event_is_shown_to_both_sides_of_a_sale_and_every_timed_one_to_one(
    times: list[float | None],
) -> None:
    events = trail(times)
    seller = {e.seq for e in within(events, [Tenure("seller", 0, SALE)])}
    buyer = {e.seq for e in within(events, [Tenure("buyer", SALE, None)])}
    assert not seller & buyer
    timed = {e.seq for e in events if "at" in e.event}
    assert timed <= seller | buyer


def test_an_untimed_event_takes_the_span_of_the_timed_events_around_it() -> None:
    events = trail([10, None, SALE - 1, None, SALE + 1, None])
    assert [e.seq for e in within(events, [Tenure("s", 0, SALE)])] == [1, 2, 3]
    assert [e.seq for e in within(events, [Tenure("b", SALE, None)])] == [5, 6]


def test_an_unreadable_time_counts_as_none() -> None:
    for bad in (True, "12", -1.0, float("nan"), float("inf"), 10**400):
        (event,) = [CarEvent(1, {"kind": "decision", "at": bad})]
        assert within([event], [Tenure("b", SALE, None)]) == []  # could be before the sale
        assert within([event], [Tenure("first", 0, None)]) == [event]


def test_a_current_owner_the_history_does_not_show_reads_from_0() -> None:
    history = [Tenure("old", 0, SALE)]
    assert tenures_of("legacy", history, "legacy") == [Tenure("legacy", 0, None)]
    assert tenures_of("old", history, "legacy") == [Tenure("old", 0, SALE)]
    assert tenures_of("stranger", history, "legacy") == []
