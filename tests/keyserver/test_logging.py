"""The keyserver's log handler writes its JSON lines in batches, and loses none of them."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator

import pytest

from keyserver.http import JsonLogFormatter
from keyserver.observability import BatchingStreamHandler

HANG_GUARD_S = 10.0


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    log = logging.getLogger("test.batching")
    log.propagate = False
    log.setLevel(logging.INFO)
    yield log
    log.handlers.clear()


def attach(log: logging.Logger, **options: float) -> tuple[BatchingStreamHandler, io.StringIO]:
    stream = io.StringIO()
    handler = BatchingStreamHandler(stream, **options)  # type: ignore[arg-type]
    handler.setFormatter(JsonLogFormatter())
    log.addHandler(handler)
    return handler, stream


def messages(stream: io.StringIO) -> list[str]:
    return [json.loads(line)["msg"] for line in stream.getvalue().splitlines()]


def test_lines_wait_for_the_batch_and_close_writes_them(logger: logging.Logger) -> None:
    handler, stream = attach(logger, interval=3600)
    for n in range(3):
        logger.info(f"request {n}")
    assert stream.getvalue() == ""  # batched: nothing written per line
    handler.close()
    assert messages(stream) == ["request 0", "request 1", "request 2"]


def test_a_warning_goes_out_at_once_with_the_lines_before_it(logger: logging.Logger) -> None:
    handler, stream = attach(logger, interval=3600)
    logger.info("request")
    logger.warning("store unavailable")
    assert messages(stream) == ["request", "store unavailable"]
    handler.close()


def test_a_full_batch_goes_out_at_once(logger: logging.Logger) -> None:
    handler, stream = attach(logger, interval=3600, max_bytes=200)
    for n in range(10):
        logger.info(f"request {n}")
    assert len(messages(stream)) >= 5  # every ~200 bytes, without waiting
    handler.close()
    assert len(messages(stream)) == 10


def test_waiting_lines_are_written_by_the_writer_thread(logger: logging.Logger) -> None:
    handler, stream = attach(logger, interval=0.01)
    written = threading.Event()
    original = handler._write_pending

    def watched() -> None:
        original()
        if stream.getvalue():
            written.set()

    handler._write_pending = watched  # type: ignore[method-assign]
    logger.info("request")
    assert written.wait(HANG_GUARD_S)  # a hang guard, not a timing assertion
    assert messages(stream) == ["request"]
    handler.close()
