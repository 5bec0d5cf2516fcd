"""`ghoul generate`: sample stories from a checkpoint (or a freshly initialised preset) with the KV-cache sampler.

With `--out stories.jsonl` each story is appended as it is made, and a rerun resumes where an interrupted one stopped:
every story draws from its own generator seeded by (seed, story id), so a story is the same whatever --batch-size
and whatever came before it, and resumed stories equal uninterrupted ones.
"""

from __future__ import annotations

import hashlib
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ghoul import checkpoint as ckpt
from ghoul.config import option, refuse_set, require
from ghoul.dist import resolve_device
from ghoul.errors import GhoulError
from ghoul.files import append_jsonl, read_jsonl, refuse_input_as_output, repair_jsonl, text_lines
from ghoul.layout import WEIGHTS_FILE
from ghoul.model import GPT, PRESETS, GPTConfig
from ghoul.tokenizer import Tokenizer, load_tokenizer

# Every story is kept in memory until the run returns them all (about a kilobyte each): past this, split the work
MAX_SAMPLES = 1_000_000


@dataclass
class GenerateConfig:
    checkpoint: Path | None = option(None, "model directory to sample from (default: a random --model preset)")
    model: str = option("tiny", "preset to initialise randomly when no --checkpoint is given", choices=list(PRESETS))
    prompt: str = option("", "text to continue (empty: start from <|endoftext|>)")
    prompts_file: Path | None = option(None, "file of prompts, one per line, cycled over the samples "
                                       "(instead of --prompt)", metavar="FILE")
    num_samples: int = option(1, "how many samples to draw")
    max_new_tokens: int = option(64, "tokens to generate per sample")
    temperature: float = option(1.0, "sampling temperature; 0 means greedy")
    top_k: int | None = option(None, "sample only from the k most likely tokens")
    top_p: float | None = option(None, "sample only from the smallest set of tokens holding this probability")
    seed: int = option(1337, "random seed: story i draws from its own stream, seeded by (seed, i), whatever "
                             "--batch-size")
    batch_size: int = option(8, "samples of one prompt generated together on the device")
    device: str = option("auto", "cpu, cuda, mps, or auto")
    out: Path | None = option(None, "append the samples as JSON lines to this file (e.g. stories.jsonl); a rerun "
                                    "resumes it")
    print_samples: bool = option(True, "print the samples as they are made")

    def __post_init__(self) -> None:
        require(self, ("num_samples", "max_new_tokens", "batch_size"), lambda v: v >= 1, "at least 1")
        if self.num_samples > MAX_SAMPLES:
            raise GhoulError(f"--num-samples {self.num_samples:,} is more than one run makes ({MAX_SAMPLES:,}): "
                             "split the work into runs with other --seed and --out")
        check_sampling(self.temperature, self.top_k, self.top_p)
        check_prompt_source(self.prompt, self.prompts_file)
        if self.checkpoint is not None:
            refuse_set(self, ("model",), "a random model, without --checkpoint")
        if self.out is not None:
            refuse_input_as_output(self.out, self.prompts_file)


def check_prompt_source(prompt: str, prompts_file: Path | None) -> None:
    if prompts_file is not None and prompt:
        raise GhoulError("give --prompt or --prompts-file, not both")


def check_sampling(temperature: float, top_k: int | None = None, top_p: float | None = None) -> None:
    """The sampling options' one check, for every command that samples (generate, compare, rlhf, the playground
    through GenerateConfig): a one-line error for a value the sampler cannot use."""
    if not math.isfinite(temperature) or temperature < 0:  # nan passes `< 0`, then sampling fails midway
        raise GhoulError(f"--temperature must be a finite number >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise GhoulError(f"--top-k must be at least 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise GhoulError(f"--top-p must be in (0, 1], got {top_p}")


def model_and_tokenizer(checkpoint: Path | None, preset: str, device: str, seed: int = 0) -> tuple[GPT, Tokenizer]:
    """A checkpoint with its tokenizer, or a randomly initialised preset with GPT-2's tokenizer."""
    if checkpoint is not None:
        return ckpt.load_model_and_tokenizer(checkpoint, device)
    torch.manual_seed(seed)
    return GPT(GPTConfig.from_name(preset)).to(device).eval(), load_tokenizer("gpt2")


def encode_prompt(tokenizer: Tokenizer, prompt: str, block_size: int) -> list[int]:
    """Token ids of `prompt` (or just <|endoftext|> when empty), checked against the model's context."""
    ids = tokenizer.encode(prompt) if prompt else [tokenizer.eot_id]
    if len(ids) >= block_size:
        raise GhoulError(f"the prompt is {len(ids)} tokens but the model's context is {block_size}: "
                         "shorten the prompt")
    return ids


def read_prompts(cfg: GenerateConfig) -> list[str]:
    """The prompts to cycle over: the lines of --prompts-file (blank ones dropped), else --prompt."""
    if cfg.prompts_file is None:
        return [cfg.prompt]
    lines = text_lines(cfg.prompts_file, "prompts file", "give a text file, one prompt per line")
    prompts = [line.strip() for line in lines]
    prompts = [p for p in prompts if p]
    if not prompts:
        raise GhoulError(f"prompts file {cfg.prompts_file} holds no prompts: write one prompt per line")
    return prompts


def plan_batches(num_samples: int, num_prompts: int, batch_size: int) -> Iterator[range]:
    """Sample ids per batch, made as they are needed (memory does not grow with num_samples). Sample i continues
    prompt i mod P; a batch holds samples of one prompt only, because the sampler needs rows of equal prompt length.
    The plan depends only on its arguments, so a resumed run regenerates exactly the batches an uninterrupted one
    would."""
    for p in range(num_prompts):
        ids = range(p, num_samples, num_prompts)
        for i in range(0, len(ids), batch_size):
            yield ids[i:i + batch_size]


def story_seed(seed: int, story: int) -> int:
    """The generator seed of one story: a hash of (seed, story id), so that stories draw independent streams."""
    digest = hashlib.sha256(f"ghoul-generate:{seed}:{story}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # manual_seed takes a non-negative 63-bit int


def model_source(directory: Path | None, preset: str) -> dict[str, str]:
    """What the stories come from, by what it is rather than how it was named: the model directory as `run` resolved
    it (a run directory's `latest` followed, the path made absolute) and the SHA-256 of its weights; `random:PRESET`
    for a random preset, whose weights the seed decides."""
    if directory is None:
        return {"checkpoint": f"random:{preset}"}
    with open(directory / WEIGHTS_FILE, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {"checkpoint": str(directory), "weights_sha256": digest}


def same_weights(story: dict, source: dict[str, str]) -> bool:
    """A story of the model `source` names, though the model was moved or copied since (its digest is the same)."""
    return "weights_sha256" in source and story.get("weights_sha256") == source["weights_sha256"]


def existing_stories(cfg: GenerateConfig, source: dict[str, str], settings: dict, prompts: list[str]
                     ) -> dict[int, dict]:
    """The stories an earlier run of these settings left in --out, by id; an error for other settings, or for a file
    that is not a stories file. Every complete line is checked before a torn last one is cut."""
    if cfg.out is None or not Path(cfg.out).exists():
        return {}
    done = {}
    for r in read_jsonl(cfg.out):
        if not isinstance(r, dict) or not isinstance(r.get("id"), int) or isinstance(r["id"], bool):
            raise GhoulError(f"{cfg.out} holds lines that are not stories of `ghoul generate`: give another --out")
        expected = dict(prompt=prompts[r["id"] % len(prompts)], **source, sampling=settings, seed=cfg.seed)
        changed = [k for k, v in expected.items()
                   if r.get(k) != v and not (k == "checkpoint" and same_weights(r, source))]
        if changed:
            raise GhoulError(f"{cfg.out} holds stories made with another {', '.join(changed)} (story {r['id']}): "
                             "use another --out (ghoul rlhf: --output-dir), or delete it to start over")
        done[r["id"]] = r
    repair_jsonl(cfg.out, "id")
    return done


def run(cfg: GenerateConfig) -> list[dict]:
    """Generate cfg.num_samples stories (resuming --out when it holds some); returns all of them in id order."""
    device = resolve_device(cfg.device)
    prompts = read_prompts(cfg)
    # loaded and labelled from the resolved directory: a `latest` that moves meanwhile changes neither
    directory = ckpt.resolve_checkpoint(cfg.checkpoint).resolve() if cfg.checkpoint is not None else None
    model, tokenizer = model_and_tokenizer(directory, cfg.model, device, cfg.seed)
    source = model_source(directory, cfg.model)
    prompt_ids = [encode_prompt(tokenizer, p, model.config.block_size) for p in prompts]
    settings = dict(temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens)
    records = existing_stories(cfg, source, settings, prompts)
    if records:
        print(f"{cfg.out} already holds {len(records)} of {cfg.num_samples} stories; resuming", file=sys.stderr)
    with tqdm(total=cfg.num_samples, initial=min(len(records), cfg.num_samples), desc="generating", unit="story",
               disable=cfg.num_samples < 2, file=sys.stderr, dynamic_ncols=True) as bar:
        for ids in plan_batches(cfg.num_samples, len(prompts), cfg.batch_size):
            if all(i in records for i in ids):
                continue
            p = ids[0] % len(prompts)
            generators = [torch.Generator(device=device).manual_seed(story_seed(cfg.seed, i)) for i in ids]
            idx = torch.tensor([prompt_ids[p]] * len(ids), dtype=torch.long, device=device)  # (B, T)
            out = model.generate(idx, cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p,
                                 eos_id=tokenizer.eot_id, generator=generators)
            for i, row in zip(ids, out[:, len(prompt_ids[p]):].tolist(), strict=True):
                if i in records:  # written before the interruption: the regenerated one is identical
                    continue
                if tokenizer.eot_id in row:
                    row = row[:row.index(tokenizer.eot_id)]
                records[i] = dict(id=i, prompt=prompts[p], text=tokenizer.decode(row), **source, sampling=settings,
                                  seed=cfg.seed)
                if cfg.out is not None:
                    append_jsonl(cfg.out, records[i])  # flushed one by one: a crash loses at most one story
                if cfg.print_samples:
                    tqdm.write(f"--- sample {i} ---\n{prompts[p]}{records[i]['text']}", file=sys.stdout)
                bar.update(1)
    if cfg.out is not None:
        print(f"{cfg.out} holds {len(records)} stories", file=sys.stderr)
    return [records[i] for i in sorted(records)]
