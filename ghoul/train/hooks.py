"""What pretraining and fine-tuning run beside the validation loss, at some steps: HellaSwag accuracy and a sample
written to samples.jsonl. The stage hands them to the loop, which knows no evaluation but its loss."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ghoul import dist
from ghoul.eval.hellaswag import default_data_path, evaluate_hellaswag, hellaswag_record, load_hellaswag
from ghoul.model import GPT
from ghoul.sampling import READING_SAMPLING
from ghoul.tokenizer import Tokenizer
from ghoul.train.config import HellaswagOptions, LoopOptions, SampleOptions
from ghoul.train.logger import RunLogger


@dataclass
class HellaswagHook:
    """HellaSwag accuracy (acc_norm) into the step's record, scored by every rank on its share of the examples."""

    options: HellaswagOptions
    tokenizer: Tokenizer
    d: dist.DistInfo
    loop: LoopOptions  # its dtype, as the loop resolved it

    @property
    def every(self) -> int:
        return self.options.hellaswag_every

    def __call__(self, step: int, model: GPT, record: dict[str, Any], logger: RunLogger) -> None:
        examples = load_hellaswag(self.options.hellaswag_path or default_data_path(), self.options.hellaswag_limit)
        result = evaluate_hellaswag(model, self.tokenizer, examples, self.d.device, rank=self.d.rank,
                                    world_size=self.d.world_size, dtype=self.loop.dtype,
                                    progress=False)  # restores train mode itself
        record.update(hellaswag_record(result))


@dataclass
class SampleHook:
    """A sample of the model, written by rank 0 to samples.jsonl, from a generator of its own (the training RNG
    stays untouched). Every rank draws it: the forward passes of a sharded (FSDP) model gather its parameters from
    all of them."""

    options: SampleOptions
    tokenizer: Tokenizer
    seed: int
    d: dist.DistInfo

    @property
    def every(self) -> int:
        return self.options.sample_every

    def __call__(self, step: int, model: GPT, record: dict[str, Any], logger: RunLogger) -> None:
        tok, prompt_text = self.tokenizer, self.options.sample_prompt
        prompt = tok.encode(prompt_text) if prompt_text else [tok.eot_id]
        idx = torch.tensor([prompt[-(model.config.block_size - 1):]], device=self.d.device)
        generator = torch.Generator(device=self.d.device).manual_seed(self.seed + step)
        model.eval()
        out = model.generate(idx, self.options.sample_tokens, **READING_SAMPLING, eos_id=tok.eot_id,
                             generator=generator)[0, idx.size(1):].tolist()
        model.train()
        if not self.d.is_main:
            return
        text = tok.decode(out[:out.index(tok.eot_id)] if tok.eot_id in out else out)
        logger.sample({"step": step, "prompt": prompt_text, "text": text})
