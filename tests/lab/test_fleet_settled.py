"""The fleet's provisioning steps survive an attempt that timed out after acting: repeated, and
a repeat's refusal read back (``lab.fleet.fleet.settled``). Scripted answers; no keyserver, no
sleeping (the wait is injected)."""

from __future__ import annotations

from typing import Any

import pytest

from lab.api import ApiCallError
from lab.fleet.fleet import settled


def refused(status: int, retry_after: float | None = None) -> ApiCallError:
    return ApiCallError("POST", "/v1/vehicles", status, b"{}", retry_after=retry_after)


class Script:
    """Answers in order: an exception is raised, a dict returned. Records the waits."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.asked = 0
        self.waits: list[float] = []
        self.read_backs = 0

    async def request(self) -> dict[str, Any]:
        self.asked += 1
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        assert isinstance(answer, dict)
        return answer

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)

    def read_back(self, result: dict[str, Any] | None) -> Any:
        async def read() -> dict[str, Any] | None:
            self.read_backs += 1
            return result

        return read


async def test_a_repeat_refused_because_the_lost_attempt_acted_is_read_back_as_done() -> None:
    script = Script(TimeoutError(), refused(409))  # registered, answer lost; the repeat: exists
    done = await settled(script.request, script.read_back({"vin": "V"}), sleep=script.sleep)
    assert done == {"vin": "V"}
    assert (script.asked, script.read_backs, len(script.waits)) == (2, 1, 1)


async def test_a_refusal_of_the_first_attempt_stands_without_a_read_back() -> None:
    script = Script(refused(409))
    with pytest.raises(ApiCallError):
        await settled(script.request, script.read_back({"vin": "V"}), sleep=script.sleep)
    assert script.read_backs == 0


async def test_a_repeat_whose_read_back_finds_nothing_is_refused() -> None:
    script = Script(OSError("reset"), refused(404))
    with pytest.raises(ApiCallError) as failed:
        await settled(script.request, script.read_back(None), sleep=script.sleep)
    assert failed.value.status == 404
    assert script.read_backs == 1


async def test_a_429_is_asked_again_after_its_retry_after_capped() -> None:
    script = Script(refused(429, retry_after=1.0), refused(429, retry_after=30.0), {"ok": True})
    assert await settled(script.request, sleep=script.sleep) == {"ok": True}
    assert script.waits == [1.0, 2.0]


async def test_attempts_are_bounded() -> None:
    script = Script(*[TimeoutError() for _ in range(3)])
    with pytest.raises(TimeoutError):
        await settled(script.request, attempts=3, sleep=script.sleep)
    assert script.asked == 3
