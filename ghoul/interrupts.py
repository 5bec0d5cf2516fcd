"""Ctrl-C held back for a moment, so that it never falls between saving a record and counting it."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def interrupt_held() -> Iterator[None]:
    """Hold a Ctrl-C that arrives inside the block until the block ends, then deliver it: a record appended to a file
    and the tally that counts it change together, so a summary printed on Ctrl-C counts exactly what was saved."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread receives signals
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught and callable(previous):  # the default handler raises KeyboardInterrupt
        previous(signal.SIGINT, caught[0])
