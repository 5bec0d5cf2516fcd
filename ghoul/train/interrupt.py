"""Ctrl-C during training: the first asks every rank to stop at the end of the step, where a checkpoint is an exact
resume point; a second stops at once, saving nothing (the last checkpoint stands).
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

from ghoul import dist


class StepInterrupt:
    """Catches SIGINT while installed; `agreed()` at a step boundary says, alike on every rank, whether to stop."""

    def __init__(self, d: dist.DistInfo) -> None:
        self.d, self.requested, self._previous = d, False, None

    def install(self) -> StepInterrupt:
        # signal handlers can only be set from the main thread; elsewhere Ctrl-C stays a plain KeyboardInterrupt
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle) or signal.default_int_handler
        return self

    def remove(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self.d.is_main:  # os.write, not print: the handler may run inside another write to stderr (the bar's)
            os.write(2, b"\ninterrupt: stopping after this step, with a checkpoint (Ctrl-C again: stop now, "
                        b"saving nothing)\n")

    def agreed(self, synced: bool) -> bool:
        """Whether to stop after this step. Under torchrun one rank's Ctrl-C stops them all at the same step: its
        flag is summed over the ranks (a one-number all-reduce), so every rank saves, or exits, together and none is
        left waiting in a collective. That sum waits for the device, so it is taken only at steps where the loop
        syncs anyway (`synced`: a logged step), never adding a sync to the steps between."""
        if not self.d.distributed:
            return self.requested
        return synced and dist.all_reduce_sum([float(self.requested)], self.d.device)[0] > 0
