"""`ghoul rlhf`: the feedback loop in one command: generate stories, have a judge pick the best of each group, and
train on the judgments (`--method winners`: fine-tune on the chosen stories), all in one run directory.

Every step writes its own file and is skipped when that file is complete, so the command resumes at any step:
RUN/stories.jsonl -> RUN/rankings.jsonl -> RUN/winners.txt -> RUN/data/winners/ -> RUN/finetune/ (the new model).
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ghoul.align import rank, winners
from ghoul.align.judges import DEFAULT_JUDGE
from ghoul.config import option, to_dict
from ghoul.errors import GhoulError
from ghoul.files import atomic_write_text, read_jsonl

# What to learn from the judgments. Only `winners` exists so far; the others are the planned preference methods,
# and each will add its own step after ranking (preferences.jsonl, then its trainer).
METHODS = ("winners", "dpo", "ppo", "grpo")
AVAILABLE = ("winners",)


@dataclass
class RlhfConfig:
    base_model: Path | None = option(None, "model directory to generate stories from and to train")
    output_dir: Path = option(Path("runs/rlhf"), "run directory holding every step's output")
    method: str = option("winners", "what to learn from the judgments (winners: fine-tune on the chosen stories)",
                         choices=list(METHODS))
    seed: int = option(1337, "random seed of generation, grouping and training")
    device: str = option("auto", "cpu, cuda, mps, or auto")
    # ---- generate
    prompt: str = option("", "text every story continues (empty: start from <|endoftext|>)")
    prompts_file: Path | None = option(None, "file of prompts, one per line, cycled over the stories", metavar="FILE")
    num_samples: int = option(400, "stories to generate")
    max_new_tokens: int = option(256, "tokens per story")
    temperature: float = option(1.0, "sampling temperature")
    top_k: int | None = option(None, "sample only from the k most likely tokens")
    top_p: float | None = option(None, "sample only from the smallest set of tokens holding this probability")
    generate_batch_size: int = option(16, "stories generated together on the device")
    # ---- rank
    judge: str = option(DEFAULT_JUDGE, "openai:MODEL, human, web, random or length")
    group_size: int = option(4, "stories per group; the judge picks one of them")
    task: str = option("Pick the scariest story.", "what the judge is asked to do")
    base_url: str | None = option(None, "OpenAI-compatible server for openai:MODEL (vLLM, llama.cpp, Ollama)")
    host: str = option("127.0.0.1", "address of the web judge's page")
    port: int = option(8765, "port of the web judge's page (0: any free port)")
    # ---- winners fine-tune (unset: `ghoul finetune`'s defaults)
    max_steps: int | None = option(None, "optimizer steps of the fine-tune on the winners")
    learning_rate: float | None = option(None, "peak learning rate of the fine-tune")
    batch_size: int | None = option(None, "rows per micro-batch of the fine-tune")
    seq_len: int | None = option(None, "tokens per row (default: the model's block size)")
    total_batch_size: int | None = option(None, "tokens per optimizer step (gradient accumulation)")
    warmdown_iters: int | None = option(None, "steps of linear decay to zero at the end")
    dtype: str | None = option(None, "compute dtype of the fine-tune", choices=["float32", "bfloat16"])

    def __post_init__(self) -> None:
        if self.method not in AVAILABLE:
            raise GhoulError(f"--method {self.method} is not available yet; available: {', '.join(AVAILABLE)} "
                             "(fine-tune on the stories the judge chose)")
        if self.base_model is None:
            raise GhoulError("--base-model is required: the model directory to generate from and fine-tune")
        self.base_model, self.output_dir = Path(self.base_model), Path(self.output_dir)


@dataclass
class RlhfResult:
    run_dir: Path
    stories: Path
    rankings: Path
    winners: Path
    model: Path  # the fine-tuned model (a run directory whose `latest` names the final checkpoint)


def stage_configs(cfg: RlhfConfig) -> dict[str, Any]:
    """The configs of the steps, built (and so checked) before any step runs."""
    from ghoul.data.prepare import PrepareConfig
    from ghoul.generate import GenerateConfig
    from ghoul.train.stages import FinetuneConfig

    out = cfg.output_dir
    generate = GenerateConfig(checkpoint=cfg.base_model, prompt=cfg.prompt, prompts_file=cfg.prompts_file,
                              num_samples=cfg.num_samples, max_new_tokens=cfg.max_new_tokens,
                              temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, seed=cfg.seed,
                              batch_size=cfg.generate_batch_size, device=cfg.device, out=out / "stories.jsonl",
                              print_samples=False)
    ranking = rank.RankConfig(stories=out / "stories.jsonl", out=out / "rankings.jsonl", judge=cfg.judge,
                              group_size=cfg.group_size, task=cfg.task, seed=cfg.seed, base_url=cfg.base_url,
                              host=cfg.host, port=cfg.port)
    export = winners.ExportWinnersConfig(out / "rankings.jsonl", out / "stories.jsonl", out / "winners.txt")
    prepare = PrepareConfig("rlhf", out / "data" / "winners", tokenizer=model_tokenizer(cfg.base_model),
                            source_path=str(out / "winners.txt"), workers=1, progress=False)
    overrides = {k: getattr(cfg, k) for k in ("max_steps", "learning_rate", "batch_size", "seq_len",
                                              "total_batch_size", "warmdown_iters", "dtype")
                 if getattr(cfg, k) is not None}
    finetune = FinetuneConfig(dataset=str(out / "data" / "winners"), base_model=cfg.base_model,
                              output_dir=out / "finetune", eval_every=0, seed=cfg.seed, device=cfg.device,
                              **overrides)
    return dict(generate=generate, rank=ranking, export=export, prepare=prepare, finetune=finetune)


def model_tokenizer(model_dir: Path) -> str:
    """The tokenizer spec `ghoul prepare` takes for a model directory: `gpt2`, or the path of its own tokenizer."""
    from ghoul.checkpoint import read_model_config, resolve_checkpoint
    from ghoul.tokenizer import TOKENIZER_FILE

    directory = resolve_checkpoint(model_dir)
    name = read_model_config(directory).get("tokenizer", "gpt2")
    return "gpt2" if name == "gpt2" else str(directory / TOKENIZER_FILE)


def run(cfg: RlhfConfig) -> RlhfResult:
    """Run the steps that are not yet complete in cfg.output_dir, in order."""
    from ghoul.generate import run as generate

    steps = stage_configs(cfg)
    out = cfg.output_dir
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.json", json.dumps(to_dict(cfg), indent=2) + "\n")
    stories, rankings, winners_txt = out / "stories.jsonl", out / "rankings.jsonl", out / "winners.txt"
    if stories.is_file() and len(read_jsonl(stories)) >= cfg.num_samples:
        _say(f"1/4 generate: {stories} is complete; skipped")
    else:
        _say(f"1/4 generate: {cfg.num_samples} stories from {cfg.base_model}")
        generate(steps["generate"])
    _say(f"2/4 rank: judge {cfg.judge}, groups of {cfg.group_size}")
    rank.run(steps["rank"])
    if winners_txt.is_file() and winners_txt.stat().st_mtime >= rankings.stat().st_mtime:
        _say(f"3/4 winners: {winners_txt} is up to date; skipped")
    else:
        _say("3/4 winners: export the chosen stories")
        winners.run(steps["export"])
    _say("4/4 fine-tune on the winners")
    _finetune(steps["prepare"], steps["finetune"])
    _say(f"done: the fine-tuned model is {out / 'finetune'} (ghoul generate --checkpoint {out / 'finetune'})")
    return RlhfResult(out, stories, rankings, winners_txt, out / "finetune")


def _finetune(prepare_cfg: Any, finetune_cfg: Any) -> None:
    """Prepare the winners' shards and fine-tune on them; skipped when finished, resumed from its checkpoint."""
    from ghoul.checkpoint import LATEST, STATE_FILE, resolve_checkpoint
    from ghoul.data.prepare import run as prepare
    from ghoul.train.stages import run as finetune

    prepare(prepare_cfg)
    run_dir: Path = finetune_cfg.output_dir
    if (run_dir / LATEST).is_file():
        state = json.loads((resolve_checkpoint(run_dir) / STATE_FILE).read_text(encoding="utf-8"))
        if state["step"] >= finetune_cfg.max_steps:
            _say(f"{run_dir} has finished its {state['step']} steps; skipped")
            return
        finetune_cfg.resume = "latest"
    elif run_dir.exists():
        # an interrupted fine-tune that saved no checkpoint has nothing to resume: start it again
        shutil.rmtree(run_dir)
    finetune(finetune_cfg)


def _say(message: str) -> None:
    print(f"ghoul rlhf: {message}", file=sys.stderr, flush=True)
