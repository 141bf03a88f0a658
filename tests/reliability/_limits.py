"""Running a call in a forked child with a deadline, for inputs that may never finish in-process."""

from __future__ import annotations

import multiprocessing
import traceback
from collections.abc import Callable
from typing import Any


def _child(fn: Callable[[], Any], queue) -> None:
    try:
        fn()
        queue.put(("ok", None))
    except BaseException as exc:  # report the type, whatever it is
        queue.put(("raised", f"{type(exc).__module__}.{type(exc).__qualname__}: {exc!s:.200}"))
        traceback.print_exc(limit=0)


def run_with_deadline(fn: Callable[[], Any], seconds: float) -> tuple[str, str | None]:
    """`("ok", None)`, `("raised", "module.Type: message")` or `("timeout", None)`; the child is killed on timeout."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    process = context.Process(target=_child, args=(fn, queue), daemon=True)
    process.start()
    process.join(seconds)
    if process.is_alive():
        process.kill()
        process.join()
        return "timeout", None
    return queue.get(timeout=5) if not queue.empty() else ("raised", f"child died with exit code {process.exitcode}")
