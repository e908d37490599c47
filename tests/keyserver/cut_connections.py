"""Finalizing the connections a Redis fault cut, inside the test that cut them.

When a test kills or pauses a redis-server, redis-py's asyncio pool can drop a connection to it
without closing its socket (the pool forgets it; compare redis/redis-py#3201), and the garbage
collector finalizes it later — with ``filterwarnings = error``, as a ResourceWarning raised in
whatever test happens to be running then. The fault tests call ``finalize_cut_connections()``
after closing their stores: it collects now, while the event loop is open, counts the
"unclosed …" warnings of those dropped sockets, stream writers and redis-py connections, and
hands every other exception raised in a finalizer to the usual hook, so that one still fails
the test.
"""

from __future__ import annotations

import gc
import sys
from typing import Any


def finalize_cut_connections() -> int:
    """Collect garbage now; the number of dropped sockets finalized."""
    dropped = 0
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        nonlocal dropped
        error = unraisable.exc_value
        if isinstance(error, ResourceWarning) and str(error).startswith("unclosed "):
            dropped += 1
        else:
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        gc.collect()
    finally:
        sys.unraisablehook = previous
    return dropped
