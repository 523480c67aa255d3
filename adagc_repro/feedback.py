"""Feedback for waits that can take more than a couple of seconds (tokenizer training, packing, model
export, evaluation, checkpoint writes): a spinner on a terminal, a start line elsewhere (logs), and one
line with the time taken when the wait ends.

    with status("packing 1,234 documents into blocks of 256 tokens"):
        ...
"""

from __future__ import annotations

import contextlib
import sys
import time


@contextlib.contextmanager
def status(message: str, stream=None):
    """Show `message` while the block runs, then `message: done in X s` (or `failed after X s`)."""
    stream = stream or sys.stderr
    started = time.perf_counter()
    outcome = "failed after"
    try:
        if stream.isatty():
            from rich.console import Console

            with Console(file=stream).status(f"{message} …"):
                yield
        else:
            print(f"{message} …", file=stream, flush=True)
            yield
        outcome = "done in"
    finally:
        print(f"{message}: {outcome} {time.perf_counter() - started:.1f} s", file=stream, flush=True)
