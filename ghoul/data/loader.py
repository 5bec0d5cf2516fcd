"""The one training data loader: `(x, y)` batches from token shards (memory-mapped) or an in-memory token array.

The shards of a split are read as one stream. Each step takes the next `batch_size * seq_len * world_size`
tokens; rank r gets its own contiguous slice of them, so ranks never overlap and stay in step. At the end of
the stream it wraps around and counts an epoch; `state_dict()` holds the position, so a resumed run continues
with exactly the next batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ghoul.advice import advice
from ghoul.data.shards import ShardHeader, find_shards, is_count, read_header, read_meta, read_shard
from ghoul.dist import to_device
from ghoul.errors import GhoulError


class EpochLoader:
    """What every loader shares: `one_epoch` for evaluation, on top of `reset`, `steps_per_epoch` and `__next__`."""

    def one_epoch(self, max_batches: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One pass from the start (e.g. for val loss): `reset()`, then `steps_per_epoch` batches at most."""
        self.reset()
        steps = self.steps_per_epoch if max_batches is None else min(max_batches, self.steps_per_epoch)
        for _ in range(steps):
            yield next(self)


class ShardLoader(EpochLoader):
    """Batches of `(x, y)`, each `(batch_size, seq_len)` int64, y being x shifted by one token.

    `data` is a shard directory (its `split` shards), a glob of shard files, or the tokens themselves
    (a numpy array, list or tensor: a fine-tuning corpus small enough to hold in memory). With `vocab_size` (the
    model's), a batch holding a larger token id is a one-line error instead of an IndexError in the embedding.
    """

    def __init__(self, data: str | Path | np.ndarray | Sequence[int] | torch.Tensor, batch_size: int, seq_len: int,
                 *, split: str = "train", rank: int = 0, world_size: int = 1,
                 device: str | torch.device = "cpu", in_memory: bool = False, vocab_size: int | None = None) -> None:
        if batch_size < 1 or seq_len < 1:
            raise GhoulError(f"batch_size and seq_len must be positive (got {batch_size}, {seq_len})")
        if not 0 <= rank < world_size:
            raise GhoulError(f"rank {rank} is not in 0..{world_size - 1} (world_size {world_size})")
        self.batch_size, self.seq_len, self.split = batch_size, seq_len, split
        self.rank, self.world_size, self.device = rank, world_size, torch.device(device)
        self.model_vocab = vocab_size
        self.meta: dict[str, Any] = {}
        if isinstance(data, (str, Path)):
            self._paths = find_shards(data, split)
            self._arrays: dict[int, np.ndarray] = {}
            headers = [read_header(p) for p in self._paths]
            counts = [h.count for h in headers]
            self.where = str(data)
            self._check_vocab(Path(data), headers)
            if in_memory:  # small corpora: read once, no file handles held
                self._arrays = {0: np.concatenate([np.asarray(read_shard(p)) for p in self._paths])}
                self._paths, counts = [Path(self.where)], [sum(counts)]
        else:
            array = data.cpu().numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
            if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
                raise GhoulError(f"in-memory tokens must be a 1-D integer array, not {array.dtype} {array.shape}")
            self._paths, self._arrays, counts, self.where = [Path("<memory>")], {0: array}, [len(array)], "<memory>"
        self._starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        self.tokens = int(self._starts[-1])
        if self.steps_per_epoch < 1:
            raise GhoulError(f"{self.where}: {self.tokens:,} {split} tokens are too few for one step of "
                             f"batch_size*seq_len*world_size+1 = {self.span + 1:,}: "
                             f"{advice().too_few or 'lower --batch-size or --seq-len'}")
        self.position = 0  # tokens of this epoch consumed by all ranks together
        self.epoch = 0

    def _check_vocab(self, data: Path, headers: list[ShardHeader]) -> None:
        self.meta = read_meta(data if data.is_dir() else self._paths[0].parent) or {}
        vocab = self.meta.get("vocab_size")
        for path, header in zip(self._paths, headers, strict=True):
            if vocab is not None and vocab > np.iinfo(header.dtype).max + 1:
                raise GhoulError(f"{path}: a vocabulary of {vocab:,} tokens does not fit its "
                                 f"{header.dtype} tokens: prepare it again (uint32 shards)")

    @property
    def span(self) -> int:
        """Tokens one step consumes over all ranks."""
        return self.batch_size * self.seq_len * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        return (self.tokens - 1) // self.span  # the +1 is y's last target

    @property
    def vocab_size(self) -> int | None:
        return self.meta.get("vocab_size")

    @property
    def eot_id(self) -> int | None:
        return self.meta.get("eot_id")

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.position + self.span + 1 > self.tokens:
            self.position, self.epoch = 0, self.epoch + 1
        local = self.batch_size * self.seq_len
        buf = self._read(self.position + self.rank * local, local + 1)
        if self.model_vocab is not None:
            # checked per batch, on the tokens just read: the max costs about what their copy did (6 us for 16K
            # tokens), where checking whole shards at start would read all of a 100B-token set first
            top = int(buf.max())
            if top >= self.model_vocab:
                raise GhoulError(f"{self.where} holds token id {top}, outside the model's vocabulary of "
                                 f"{self.model_vocab:,} (at token {self.position:,} of the {self.split} stream): "
                                 "the data was made with another tokenizer; prepare it with the model's")
        self.position += self.span
        return self._to_device(buf)

    def reset(self) -> None:
        """Back to the first batch of the first epoch."""
        self.position, self.epoch = 0, 0

    def state_dict(self) -> dict[str, Any]:
        """Where the next batch starts; the same on every rank, so rank 0's copy serves all."""
        return {"position": self.position, "epoch": self.epoch, "tokens": self.tokens, "split": self.split}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("tokens") != self.tokens:
            raise GhoulError(f"loader state is from a {state.get('split')} set of {state.get('tokens')} tokens, "
                             f"but {self.where} ({self.split}) has {self.tokens:,}: resume with the same data")
        position, epoch = state.get("position"), state.get("epoch")
        if not all(map(is_count, (position, epoch))) or position > self.tokens:
            # a ValueError, as for any damaged state: the trainer names the checkpoint it came from
            raise ValueError(f"position {position!r:.20} and epoch {epoch!r:.20} are no stream position")
        self.position, self.epoch = position, epoch

    def _read(self, start: int, n: int) -> np.ndarray:
        """Tokens [start, start + n) of the stream, across shard boundaries, as int64."""
        out = np.empty(n, dtype=np.int64)
        i = int(np.searchsorted(self._starts, start, side="right")) - 1
        done = 0
        while done < n:
            shard = self._shard(i)
            offset = start + done - int(self._starts[i])
            take = min(n - done, len(shard) - offset)
            out[done:done + take] = shard[offset:offset + take]
            done, i = done + take, i + 1
        return out

    def _shard(self, i: int) -> np.ndarray:
        if i not in self._arrays:
            if len(self._arrays) >= 2:  # keep few maps open: a 100B-token set has 1,000 shards
                del self._arrays[next(iter(self._arrays))]
            self._arrays[i] = read_shard(self._paths[i])
        return self._arrays[i]

    def _to_device(self, buf: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        t = to_device(torch.from_numpy(buf), self.device)
        B, T = self.batch_size, self.seq_len
        return t[:-1].view(B, T), t[1:].view(B, T)  # (B, T) each
