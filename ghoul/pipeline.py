"""`ghoul pipeline`: every stage in order, into one run directory, each skipped when its output already exists.

prepare -> pretrain -> evaluate -> fine-tune on horror -> evaluate -> generate, rank, preference stage -> evaluate
-> win-rate of the preference stage over the fine-tuned model -> samples -> report.
The defaults are the tiny CPU run; a config file with a larger preset and real data is the full-scale one.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ghoul.align.judges import JUDGES_HELP, check_judge
from ghoul.align.rlhf import METHODS
from ghoul.config import option, to_dict
from ghoul.errors import GhoulError
from ghoul.files import atomic_write_text, read_json
from ghoul.model import PRESETS

GROUP_SIZE = 4  # stories the judge compares at once, as the seed did
# The before/after samples in the report are for reading, so they leave out the unlikeliest tokens. The stories the
# judge ranks, and those of the win-rate, come from the model's whole distribution: a fine-tune on top-k samples
# learns the truncation, which sharpens the model whatever the judge picked (docs/feedback.md).
READING_TOP_K = 200
PROMPTS = ["I heard something in the attic", "The last thing my grandmother told me",
           "Nobody lives on the fourth floor"]


@dataclass
class PipelineConfig:
    output_dir: Path = option(Path("runs/pipeline"), "run directory holding every stage's output")
    data_dir: Path | None = option(None, "local copies of the data, laid out as shared/data (default: $GHOUL_DATA_DIR; "
                                         "without either, the small public files are downloaded into the cache)")
    model: str = option("tiny", "model preset to pretrain", choices=list(PRESETS))
    seq_len: int = option(128, "tokens per training row")
    batch_size: int = option(8, "rows per micro-batch")
    pretrain_steps: int = option(200, "pretraining steps")
    pretrain_lr: float = option(3e-3, "pretraining peak learning rate")
    finetune_steps: int = option(60, "fine-tuning steps on the horror corpus")
    finetune_lr: float = option(1e-3, "fine-tuning peak learning rate")
    hellaswag_limit: int = option(200, "HellaSwag examples scored per evaluation")
    num_samples: int = option(36, "stories generated for the judge")
    max_new_tokens: int = option(96, "tokens per story")
    judge: str = option("length", f"who picks the best story of each group: {JUDGES_HELP}")
    method: str = option("winners", "the preference stage after ranking", choices=list(METHODS))
    preference_steps: int = option(10, "steps of the preference stage")
    winrate_pairs: int = option(24, "story pairs the judge compares for the win-rate of the preference stage over "
                                    "the fine-tuned model")
    prompts: list[str] = option(PROMPTS, "prompts for the stories and the before/after samples")
    seed: int = option(1337, "random seed of every stage")
    device: str = option("auto", "cpu, cuda, mps, or auto")

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir)
        env = os.environ.get("GHOUL_DATA_DIR")
        if self.data_dir is None and env:
            self.data_dir = Path(env)
        if self.data_dir is not None and not Path(self.data_dir).is_dir():
            raise GhoulError(f"--data-dir {self.data_dir} does not exist: give a folder laid out as shared/data")
        for name in ("pretrain_steps", "finetune_steps", "num_samples", "preference_steps", "hellaswag_limit",
                     "winrate_pairs"):
            if getattr(self, name) < 1:
                raise GhoulError(f"--{name.replace('_', '-')} must be at least 1")
        if self.num_samples < GROUP_SIZE * len(self.prompts):
            raise GhoulError(f"--num-samples {self.num_samples} leaves some of the {len(self.prompts)} prompts without "
                             f"a group of {GROUP_SIZE} stories: give at least {GROUP_SIZE * len(self.prompts)}")


def local(cfg: PipelineConfig, relative: str) -> str | None:
    """The local copy of a data file, or None (the stage then downloads it)."""
    if cfg.data_dir is None:
        return None
    path = Path(cfg.data_dir) / relative
    if not path.is_file():
        raise GhoulError(f"{path} is missing: --data-dir must be laid out as shared/data ({relative})")
    return str(path)


def say(step: str, message: str) -> None:
    print(f"ghoul pipeline [{step}] {message}", file=sys.stderr, flush=True)


def prepare_data(cfg: PipelineConfig) -> dict[str, Path]:
    from ghoul.data.prepare import PrepareConfig
    from ghoul.data.prepare import run as prepare

    out = cfg.output_dir / "data"
    sources = {"fineweb": ("fineweb", local(cfg, "fineweb/fineweb_subset.jsonl"), 2000),
               "horror": ("creepypasta", local(cfg, "creepypasta/reddit_horror_stories.jsonl"), None)}
    for name, (source, path, limit) in sources.items():
        say("prepare", f"{name}: {path or source + ' (download)'}")
        prepare(PrepareConfig(source, out / name, source_path=path, val_tokens=20_000,
                              limit_docs=None if path else limit, progress=True))
    return {name: out / name for name in sources}


def train_stage(cfg: PipelineConfig, name: str, dataset: Path, base: Path | None, steps: int, lr: float) -> Path:
    from ghoul.train.stages import FinetuneConfig, TrainConfig, run_or_resume

    kind = TrainConfig if base is None else FinetuneConfig
    stage = kind(dataset=str(dataset), output_dir=cfg.output_dir / name, model=cfg.model, base_model=base,
                 batch_size=cfg.batch_size, seq_len=cfg.seq_len, max_steps=steps, learning_rate=lr,
                 warmup_iters=min(10, steps // 10), warmdown_iters=steps // 4, eval_every=max(1, steps // 4),
                 eval_iters=10, sample_every=steps, sample_prompt=cfg.prompts[0], seed=cfg.seed, device=cfg.device)
    say(name, f"{steps} steps on {dataset.name}")
    if run_or_resume(stage) is None:
        say(name, f"{stage.output_dir} has finished; skipped")
    return stage.output_dir


def evaluate(cfg: PipelineConfig, name: str, model_dir: Path, data: Path) -> dict[str, Any]:
    """HellaSwag on a subset and validation loss on `data`, cached in RUN/eval/NAME.json for the same checkpoint and
    settings (a stage trained further, or another --hellaswag-limit or --seq-len, is evaluated again)."""
    from ghoul.checkpoint import load_model_and_tokenizer, resolve_checkpoint
    from ghoul.dist import resolve_device
    from ghoul.eval.hellaswag import default_data_path, evaluate_hellaswag, load_hellaswag
    from ghoul.eval.loss import evaluate_loss, read_split

    path = cfg.output_dir / "eval" / f"{name}.json"
    key = {"checkpoint": str(resolve_checkpoint(model_dir)), "hellaswag_limit": cfg.hellaswag_limit,
           "seq_len": cfg.seq_len, "val_data": str(data)}
    cached = read_json(path)
    if cached is not None and cached.get("key") == key:
        say("eval", f"{path} exists; skipped")
        return cached
    device = resolve_device(cfg.device)
    model, tokenizer = load_model_and_tokenizer(model_dir, device)
    hs_path = local(cfg, "hellaswag/hellaswag_val.jsonl") or default_data_path()
    say("eval", f"{name}: HellaSwag ({cfg.hellaswag_limit} examples) and val loss on {data.name}")
    hs = evaluate_hellaswag(model, tokenizer, load_hellaswag(hs_path, cfg.hellaswag_limit), device, progress=True)
    loss = evaluate_loss(model, read_split(data), device, cfg.seq_len, max_tokens=20_000)
    result = {"model": str(model_dir), "hellaswag_acc": hs["acc_norm"], "hellaswag_acc_sum": hs["acc"],
              "hellaswag_n": hs["n"], "val_loss": loss["loss"], "val_tokens": loss["tokens"], "val_data": data.name,
              "key": key}
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    return result


def feedback(cfg: PipelineConfig, base: Path) -> Path:
    from ghoul.align.rlhf import RlhfConfig
    from ghoul.align.rlhf import run as rlhf

    prompts_file = cfg.output_dir / "prompts.txt"
    atomic_write_text(prompts_file, "\n".join(cfg.prompts) + "\n")
    result = rlhf(RlhfConfig(base_model=base, output_dir=cfg.output_dir / "rlhf", method=cfg.method,
                             seed=cfg.seed, device=cfg.device, prompts_file=prompts_file,
                             num_samples=cfg.num_samples, max_new_tokens=cfg.max_new_tokens, generate_batch_size=8,
                             judge=cfg.judge, max_steps=cfg.preference_steps,
                             batch_size=1, seq_len=cfg.seq_len, learning_rate=cfg.finetune_lr,
                             warmdown_iters=cfg.preference_steps // 4))
    return result.model


def win_rate(cfg: PipelineConfig, a: Path, b: Path) -> dict[str, Any]:
    """The judge's win-rate of model `a` over `b` on the pipeline's prompts, cached in RUN/eval/winrate.json (the
    pairs and judgments beside it, in winrate-pairs.jsonl)."""
    from dataclasses import asdict

    from ghoul.align.compare import CompareConfig
    from ghoul.align.compare import run as compare

    path = cfg.output_dir / "eval" / "winrate.json"
    if path.is_file():
        say("win-rate", f"{path} exists; skipped")
        return json.loads(path.read_text())
    pairs = path.with_name("winrate-pairs.jsonl")
    pairs.unlink(missing_ok=True)  # an interrupted comparison starts over: its figure needs every pair
    say("win-rate", f"{cfg.winrate_pairs} pairs, preference stage against fine-tuned, judged by {cfg.judge}")
    result = compare(CompareConfig(a=a, b=b, judge=cfg.judge, n=cfg.winrate_pairs,
                                   prompts_file=cfg.output_dir / "prompts.txt", max_new_tokens=cfg.max_new_tokens,
                                   out=pairs, seed=cfg.seed, device=cfg.device))
    record = {"a": "preference", "b": "finetune", "judge": cfg.judge, "pairs": cfg.winrate_pairs, **asdict(result)}
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return record


def compare_samples(cfg: PipelineConfig, models: dict[str, Path]) -> Path:
    """The same prompts and seeds through each stage's model, for the report's before/after table."""
    from ghoul.generate import GenerateConfig
    from ghoul.generate import run as generate

    out = cfg.output_dir / "samples"
    for name, model_dir in models.items():
        prompts_file = cfg.output_dir / "prompts.txt"
        generate(GenerateConfig(checkpoint=model_dir, prompts_file=prompts_file, num_samples=len(cfg.prompts),
                                max_new_tokens=cfg.max_new_tokens, top_k=READING_TOP_K, seed=cfg.seed,
                                device=cfg.device, out=out / f"{name}.jsonl", print_samples=False))
    return out


def run(cfg: PipelineConfig) -> Path:
    """Run every stage that is not yet done; returns the report's path."""
    from ghoul.report import write_report

    check_judge(cfg.judge)  # a missing key or package fails now, not after pretraining
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cfg.output_dir / "pipeline.json", json.dumps(to_dict(cfg), indent=2) + "\n")
    data = prepare_data(cfg)
    pretrained = train_stage(cfg, "pretrain", data["fineweb"], None, cfg.pretrain_steps, cfg.pretrain_lr)
    evaluate(cfg, "pretrain", pretrained, data["fineweb"])
    finetuned = train_stage(cfg, "finetune", data["horror"], pretrained, cfg.finetune_steps, cfg.finetune_lr)
    evaluate(cfg, "finetune", finetuned, data["horror"])
    preferred = feedback(cfg, finetuned)
    evaluate(cfg, "preference", preferred, data["horror"])
    win_rate(cfg, preferred, finetuned)
    compare_samples(cfg, {"pretrain": pretrained, "finetune": finetuned, "preference": preferred})
    report = write_report(cfg.output_dir)
    say("report", f"{report} (and report.md)")
    return report
