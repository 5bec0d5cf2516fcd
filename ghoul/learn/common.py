"""What the learning commands share: their options, the text made into token shards with our own tokenizer,
and one training run through the one training loop, ending in a printed sample."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import torch

from ghoul.advice import Advice, advising
from ghoul.config import build, option, refuse_set, require
from ghoul.data.prepare import PrepareConfig
from ghoul.data.prepare import run as prepare
from ghoul.data.sources import SOURCE_PATH_HELP, SOURCES, TEXT_FIELD_HELP, make_source
from ghoul.errors import GhoulError
from ghoul.files import read_jsonl
from ghoul.tokenizer import TOKENIZER_FILE, Tokenizer, load_tokenizer
from ghoul.tokenizer.bpe import BPETokenizer
from ghoul.tokenizer.char import CharTokenizer
from ghoul.train.config import TrainConfig, train_option
from ghoul.train.context import training_run
from ghoul.train.logger import LOG_FILE
from ghoul.train.loop import train

DATA_DIR = "data"  # the token shards, inside the output directory
# a learning run is not continued (a rerun into its directory is refused, check_fresh): a stopped one is trained again
_RETRAIN = "lower --learning-rate or raise --warmup-iters and train again into another --output-dir"
_AGAIN = "learn runs are not continued: train again into another --output-dir"
LEARN_ADVICE = Advice(go_on=_AGAIN, retune=_RETRAIN, restart=_RETRAIN, earlier=_AGAIN,
                      too_few="lower --batch-size or --block-size, or give more text")


@dataclass
class LearnConfig:
    output_dir: Path = option(Path("runs/learn"), "output directory: tokenizer, token shards, run log, checkpoint")
    source: str = option("creepypasta", "text source", choices=sorted(SOURCES))
    source_path: str | None = option(None, SOURCE_PATH_HELP, metavar="FILE|DIR|GLOB")
    text_field: str | None = option(None, TEXT_FIELD_HELP)
    limit_docs: int | None = option(None, "read only the first N documents")
    tokenizer: str | None = option(None, "tokenizer JSON file to use (default: train one on the text now)",
                                   metavar="PATH")
    tokenizer_kind: str = option("bpe", "tokenizer trained when --tokenizer is not given", choices=["bpe", "char"])
    vocab_size: int = option(1024, "vocabulary of the trained BPE tokenizer")
    val_fraction: float = option(0.1, "share of the tokens (the first ones) held out for the validation loss")
    steps: int = option(600, "optimizer steps")
    batch_size: int = option(16, "rows per step")
    block_size: int = option(128, "tokens per row (the GPT's context length)")
    learning_rate: float = option(2e-3, "peak learning rate of AdamW")
    weight_decay: float = option(0.1, "decoupled weight decay of 2-D weights")
    warmup_iters: int = option(0, "steps of linear warmup")
    warmdown_iters: int | None = option(None, "steps of linear decay to zero at the end (default: a fifth of --steps)")
    eval_every: int = option(100, "steps between validation losses (always at the start and the end)")
    eval_iters: int = option(20, "validation batches per evaluation: the first of the val split, the same "
                                 "every time")
    sample_tokens: int = option(200, "tokens of the sample printed at the end (0: none)")
    sample_prompt: str = option("", "prompt of the sample (empty: start a new document)")
    seed: int = option(1337, "random seed")
    device: str = option("auto", "cpu, cuda, mps, or auto")
    dtype: str = train_option("dtype")
    compile: bool | None = train_option("compile")

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir)
        require(self, ("val_fraction",), lambda v: 0.0 < v < 1.0, "between 0 and 1")
        require(self, ("steps", "batch_size", "block_size", "eval_iters"), lambda v: v >= 1, "at least 1")
        if self.tokenizer or self.tokenizer_kind == "char":  # the vocabulary is the given one, or the characters'
            refuse_set(self, ("vocab_size",), "--tokenizer-kind bpe and no --tokenizer")
        if self.warmup_iters + self.warmdown > self.steps:  # the trainer's own check would name its --max-steps
            fifth = ", a fifth of --steps" if self.warmdown_iters is None else ""
            raise GhoulError(f"--warmup-iters ({self.warmup_iters}) + --warmdown-iters ({self.warmdown}{fifth}) exceed "
                             f"--steps ({self.steps})")
        self.train_config(self.output_dir / DATA_DIR, self.output_dir)  # the trainer's checks now, before the data

    @property
    def warmdown(self) -> int:
        return self.steps // 5 if self.warmdown_iters is None else self.warmdown_iters

    def optimizer_options(self) -> dict[str, Any]:
        """The optimizer and its options, where the command offers a choice (the GPT's); AdamW otherwise."""
        return {}

    def train_config(self, data_dir: Path, run_dir: Path) -> TrainConfig:
        """The trainer's settings for one run on `data_dir` (validated there: learning rate, ...)."""
        return build(TrainConfig, dataset=str(data_dir), output_dir=run_dir, batch_size=self.batch_size,
                     seq_len=self.block_size, max_steps=self.steps, **self.optimizer_options(),
                     learning_rate=self.learning_rate, weight_decay=self.weight_decay,
                     warmup_iters=self.warmup_iters, warmdown_iters=self.warmdown,
                     eval_every=self.eval_every or self.steps, eval_iters=self.eval_iters, seed=self.seed,
                     device=self.device, dtype=self.dtype, compile=self.compile,
                     log_every=max(1, min(10, self.steps // 10)))


@dataclass
class LearnResult:
    run_dir: Path
    params: int
    train_loss: float
    val_loss: float | None
    val_bpb: float | None  # bits per byte: compares across tokenizers, as nats per token do not
    tokens_per_s: float  # the median over the logged steps (evaluation time left out)
    sample: str


def check_fresh(run_dir: Path) -> None:
    """Refuse to train into a directory that already holds a run, before any work is done."""
    if (run_dir / LOG_FILE).exists():
        raise GhoulError(f"{run_dir} already holds a run: choose another --output-dir or delete it")


def prepare_text(cfg: LearnConfig, out: Path) -> tuple[Path, Tokenizer]:
    """Token shards of the source in `out/data` (val split first), and their tokenizer: `cfg.tokenizer`, or one
    trained on the same documents now and saved as `out/tokenizer.json`."""
    docs = list(islice(make_source(cfg.source, cfg.source_path, text_field=cfg.text_field), cfg.limit_docs))
    if cfg.tokenizer:
        spec, tokenizer = cfg.tokenizer, load_tokenizer(cfg.tokenizer)
    else:
        tokenizer = (CharTokenizer.train(docs) if cfg.tokenizer_kind == "char"
                     else BPETokenizer.train(docs, cfg.vocab_size))
        spec = str(out / TOKENIZER_FILE)
        out.mkdir(parents=True, exist_ok=True)
        tokenizer.save(spec)
    total = sum(len(ids) + 1 for ids in tokenizer.encode_batch(docs))  # + 1: the eot after each document
    print(f"{len(docs):,} documents, {total:,} tokens with a {tokenizer.vocab_size:,}-token {tokenizer.name} tokenizer")
    result = prepare(PrepareConfig(source=cfg.source, out=out / DATA_DIR, tokenizer=spec, source_path=cfg.source_path,
                                   text_field=cfg.text_field, val_tokens=int(cfg.val_fraction * total),
                                   limit_docs=cfg.limit_docs, workers=1, progress=False))
    return result.out, tokenizer


def train_model(cfg: LearnConfig, make_model: Callable[[int], torch.nn.Module], tokenizer: Tokenizer,
                data_dir: Path, run_dir: Path) -> LearnResult:
    """Build `make_model(vocab_size)` and train it with the one training loop; print and return a sample."""
    tc = cfg.train_config(data_dir, run_dir)
    # encoded before training: a prompt this tokenizer cannot take (a character the char tokenizer never saw) fails
    # now, not after the run, whose directory a rerun would refuse
    prompt = tokenizer.encode(cfg.sample_prompt) if cfg.sample_prompt else [tokenizer.eot_id]
    with advising(LEARN_ADVICE), training_run(tc.run) as (d, _):
        model = make_model(tokenizer.vocab_size).to(d.device)
        result = train(tc, model, tokenizer, d)
    rates = [r["tokens_per_s"] for r in read_jsonl(run_dir / LOG_FILE) if "tokens_per_s" in r]
    with torch.compiler.set_stance("force_eager"):  # --compile compiled the blocks for the training shapes only
        text = sample(model, tokenizer, cfg, prompt) if cfg.sample_tokens else ""
    if text:
        print(f"--- sample ---\n{text}\n---")
    return LearnResult(run_dir, model.num_params(), result.final_loss, result.val_loss, result.val_bpb,
                       statistics.median(rates) if rates else 0.0, text)


def sample(model: torch.nn.Module, tokenizer: Tokenizer, cfg: LearnConfig, prompt: list[int]) -> str:
    """`cfg.sample_tokens` tokens after the `prompt` (cfg.sample_prompt, or a document start), sampled at
    temperature 1."""
    device = next(model.parameters()).device
    idx = torch.tensor([prompt[-(cfg.block_size - 1):]], device=device)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    model.eval()
    out = model.generate(idx, cfg.sample_tokens, temperature=1.0, generator=generator)[0, idx.size(1):]
    return cfg.sample_prompt + tokenizer.decode(out.tolist())
