"""What a stopped run or a damaged checkpoint tells the user to do, in the words of the command that was typed: the
training commands' flags by default, the pipeline's, rlhf's or the learning stage's where those run the stages.
No torch here: the checkpoint reader below every trainer gives its advice too."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class Advice:
    """The imperatives of a stopped run's messages; the commands that run training stages themselves (pipeline, rlhf,
    learn) give their own (`advising`)."""

    # after a stop that left a checkpoint to continue from
    go_on: str = "continue with --resume"
    # after a non-finite loss, with a checkpoint before it, and with none
    retune: str = "lower --learning-rate or raise --warmup-iters and --resume"
    restart: str = "lower --learning-rate or raise --warmup-iters and start the run over with --resume"
    # after a checkpoint that cannot be read
    earlier: str = "resume from an earlier checkpoint with --resume DIR"
    # when the data hold too little for one step (None: the loader's own words, in the training commands' flags)
    too_few: str | None = None


TRAINING_ADVICE = Advice()
RERUN = "run the same command again to continue"  # the commands that skip what is done and resume the rest
# the same commands' way past a damaged checkpoint: they resume a stage from its newest one, so it must go
SET_ASIDE = ("move the checkpoint out of its run directory and run the same command again: the stage resumes from "
             "the one before it, or starts over")
_advice: ContextVar[Advice] = ContextVar("advice", default=TRAINING_ADVICE)


def advice() -> Advice:
    return _advice.get()


@contextmanager
def advising(words: Advice) -> Iterator[None]:
    """Stopped runs inside give `words`; the outermost command's stand (the pipeline's over the rlhf it runs)."""
    token = _advice.set(words) if _advice.get() is TRAINING_ADVICE else None
    try:
        yield
    finally:
        if token is not None:
            _advice.reset(token)
