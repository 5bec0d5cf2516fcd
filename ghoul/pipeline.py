"""`ghoul pipeline`: every stage in order, into one run directory, each skipped when its output already exists.

prepare -> pretrain -> evaluate -> fine-tune on horror -> evaluate -> generate, rank, preference stage -> evaluate
-> win-rate of the preference stage over the fine-tuned model -> samples -> report.
The defaults are a laptop CPU run (the README says how they were chosen); a config file with a larger preset,
`tokenizer = "gpt2"` and more steps is a GPU one.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ghoul.advice import RERUN, SET_ASIDE, Advice, advising
from ghoul.checkpoint import load_model_and_tokenizer
from ghoul.config import build, option, option_owners, refuse_changed, refuse_set, require, to_dict
from ghoul.data.corpus import CORPORA, CORPUS_HELP, build_corpus, write_corpus
from ghoul.data.loader import ShardLoader
from ghoul.data.prepare import PrepareConfig
from ghoul.data.prepare import run as prepare
from ghoul.dist import resolve_device
from ghoul.errors import GhoulError
from ghoul.eval.hellaswag import default_data_path, evaluate_hellaswag, hellaswag_record, load_hellaswag
from ghoul.eval.loss import evaluate_loss, loss_record, read_split
from ghoul.feedback.compare import CompareConfig
from ghoul.feedback.compare import run as compare
from ghoul.feedback.judges import JUDGES_HELP, check_judge
from ghoul.feedback.records import FEEDBACK_DIR
from ghoul.feedback.rlhf import METHOD_OPTIONS, METHODS, RlhfConfig
from ghoul.feedback.rlhf import run as rlhf
from ghoul.files import atomic_write_text, read_json, sole_writer, write_json
from ghoul.generate import GenerateConfig
from ghoul.generate import run as generate
from ghoul.layout import PIPELINE_FILE, resolve_checkpoint
from ghoul.model import PRESETS
from ghoul.report import write_report
from ghoul.sampling import READING_SAMPLING
from ghoul.tokenizer import TOKENIZER_FILE, load_tokenizer
from ghoul.tokenizer.bpe import BPETokenizer
from ghoul.train.config import ADAMW_BESIDE_MUON, train_option
from ghoul.train.stages import FinetuneConfig, TrainConfig, run_or_resume

GROUP_SIZE = 4  # stories the judge compares at once, as the seed did
# What a rerun of a run may change: how it runs, or what keys a cache of its own (an evaluation's, the win-rate's);
# any other option shapes stages that a rerun skips as finished, so a change would be silently ignored
RERUN_OPTIONS = ("output_dir", "data_dir", "device", "dtype", "compile", "hellaswag_limit", "eval_tokens",
                 "winrate_judge", "winrate_pairs")
# after a non-finite loss: a rerun with another learning rate is refused (RERUN_OPTIONS), so it starts anew
RETUNE = ("lower that stage's learning rate (--pretrain-lr, --finetune-lr or --preference-lr; with Muon also "
          "--muon-lr) and run the pipeline into a new --output-dir")
# a step larger than a training stage's text (checked before the first stage); then too few winners (or pairs) for
# one step of the preference stage. A rerun keeps every option that made the data. Only the winners' fine-tune cuts
# its text into --seq-len windows; the other methods train on whole pairs
TOO_FEW_TEXT = "lower --batch-size or --seq-len, and run the pipeline into a new --output-dir"
MORE_STORIES = "raise --num-samples or --max-new-tokens for more stories, and run the pipeline into a new --output-dir"
TOO_FEW = {"winners": f"lower --seq-len, or {MORE_STORIES}", "dpo": MORE_STORIES, "ppo": MORE_STORIES,
           "grpo": MORE_STORIES}
PROMPTS = ["I heard something in the attic", "The last thing my grandmother told me",
           "Nobody lives on the fourth floor"]


@dataclass
class PipelineConfig:
    output_dir: Path = option(Path("runs/pipeline"), "run directory holding every stage's output")
    data_dir: Path | None = option(None, "local copies of the data, laid out as shared/data (default: $GHOUL_DATA_DIR; "
                                         "without either, the small public files are downloaded into the cache and "
                                         "FineWeb streams from the Hub, with ghoul[data])")
    tokenizer: str = option("bpe", "bpe: train the run's own byte-level BPE on its training text; gpt2: GPT-2's",
                            choices=["bpe", "gpt2"])
    vocab_size: int = option(4096, "vocabulary of the run's own BPE tokenizer")
    pretrain_data: str = option("horror", f"text to pretrain on ({CORPUS_HELP})", choices=list(CORPORA))
    finetune_data: str = option("stories", "text to fine-tune on; its held-out documents (every 10th Reddit "
                                           "story; general: a tenth of it) are what every stage's evaluation scores",
                                choices=list(CORPORA))
    model: str = option("laptop", "model preset to pretrain", choices=list(PRESETS))
    seq_len: int = option(256, "tokens per training row")
    batch_size: int = option(8, "rows per micro-batch of pretraining and fine-tuning (the preference stage: 1)")
    optimizer: str = option("muon", "Muon for the hidden matrices and AdamW for the rest, or AdamW for everything "
                                    "(pretraining and fine-tuning)", choices=["muon", "adamw"])
    pretrain_steps: int = option(1280, "pretraining steps")
    pretrain_lr: float = option(0.02, f"pretraining peak learning rate (with Muon: of {ADAMW_BESIDE_MUON})")
    finetune_steps: int = option(580, "fine-tuning steps")
    finetune_lr: float = option(0.02, "fine-tuning learning rate at its start, decayed linearly to zero (with Muon: "
                                      f"of {ADAMW_BESIDE_MUON})")
    muon_lr: float = option(0.013, "pretraining peak learning rate of Muon's hidden matrices (fine-tuning: "
                                   "the same fraction of it as --finetune-lr is of --pretrain-lr)")
    hellaswag_limit: int = option(200, "HellaSwag examples scored per evaluation")
    eval_tokens: int | None = option(None, "held-out tokens each stage's evaluation scores (default: every held-out "
                                           "story)")
    num_samples: int = option(36, "stories generated for the judge")
    max_new_tokens: int = option(128, "tokens per story")
    judge: str = option("length", f"who picks the best story of each group: {JUDGES_HELP}")
    winrate_judge: str | None = option(None, "who judges the win-rate of the preference stage over the fine-tuned "
                                             "model (default: --judge, which makes the figure circular)")
    method: str = option("winners", "the preference stage after ranking", choices=list(METHODS))
    preference_steps: int = option(10, "steps of the preference stage")
    preference_lr: float = option(1e-3, "peak learning rate of the preference stage (AdamW)")
    winrate_pairs: int = option(24, "story pairs the judge compares for the win-rate of the preference stage over "
                                    "the fine-tuned model")
    prompts: list[str] = option(PROMPTS, "prompts for the stories and the before/after samples")
    seed: int = option(1337, "random seed of every stage")
    device: str = option("auto", "cpu, cuda, mps, or auto")
    dtype: str = train_option("dtype")  # of every training stage
    compile: bool | None = train_option("compile")

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir)
        env = os.environ.get("GHOUL_DATA_DIR")
        if self.data_dir is None and env:
            self.data_dir = Path(env)
        if self.data_dir is not None and not Path(self.data_dir).is_dir():
            raise GhoulError(f"--data-dir {self.data_dir} does not exist: give a folder laid out as shared/data")
        require(self, ("pretrain_steps", "finetune_steps", "num_samples", "preference_steps", "hellaswag_limit",
                       "winrate_pairs", "eval_tokens", "max_new_tokens", "seq_len", "batch_size"), lambda v: v >= 1,
                "at least 1")
        require(self, ("pretrain_lr", "finetune_lr", "muon_lr", "preference_lr"), lambda v: v > 0, "positive")
        if not self.prompts or not all(p.strip() for p in self.prompts):  # a config file's `prompts = []`, or ''
            raise GhoulError("--prompts needs at least one prompt, and no empty one")
        if self.eval_tokens is not None and self.eval_tokens < self.seq_len:
            raise GhoulError(f"--eval-tokens {self.eval_tokens} are fewer than one window of --seq-len "
                             f"{self.seq_len}: give at least {self.seq_len}")
        if self.tokenizer != "bpe":
            refuse_set(self, ("vocab_size",), "--tokenizer bpe")
        if self.optimizer != "muon":
            refuse_set(self, ("muon_lr",), "--optimizer muon")
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
    """Token shards of the pretraining and the fine-tuning text in RUN/data/CORPUS, made with the run's tokenizer;
    each corpus is also kept as JSON lines in RUN/data/text, the held-out stories first."""
    out = cfg.output_dir / "data"
    corpora = {name: build_corpus(name, lambda relative: local(cfg, relative), cfg.seed)
               for name in dict.fromkeys((cfg.pretrain_data, cfg.finetune_data))}
    spec = run_tokenizer(cfg, out, [doc for corpus in corpora.values() for doc in corpus.train])
    tokenizer = load_tokenizer(spec)
    for name, corpus in corpora.items():
        text = out / "text" / f"{name}.jsonl"
        if not text.is_file():
            write_corpus(corpus, text)
        say("prepare", f"{name}: {len(corpus.train):,} training and {len(corpus.val):,} held-out documents")
        val_tokens = sum(len(ids) + 1 for ids in tokenizer.encode_batch(corpus.val))  # + 1: each one's eot
        prepare(PrepareConfig("jsonl", out / name, tokenizer=spec, source_path=str(text), val_tokens=val_tokens,
                              progress=True))
    return {"pretrain": out / cfg.pretrain_data, "finetune": out / cfg.finetune_data}


def run_tokenizer(cfg: PipelineConfig, out: Path, docs: list[str]) -> str:
    """The run's tokenizer: GPT-2's, or a byte-level BPE trained on the training documents (never on the held-out
    ones) and kept in RUN/data/tokenizer.json."""
    if cfg.tokenizer == "gpt2":
        return "gpt2"
    path = out / TOKENIZER_FILE
    if path.is_file():
        say("tokenizer", f"{path} exists; skipped")
    else:
        say("tokenizer", f"training a {cfg.vocab_size:,}-token byte-level BPE on {len(docs):,} documents")
        out.mkdir(parents=True, exist_ok=True)
        BPETokenizer.train(dict.fromkeys(docs), cfg.vocab_size).save(path)  # a story in two corpora counts once
    return str(path)


def train_stage(cfg: PipelineConfig, name: str, dataset: Path, base: Path | None, steps: int, lr: float) -> Path:
    """Pretraining (no `base`) or fine-tuning `base`: together one warmup-stable-decay schedule, pretraining warming
    up and holding its rate, the fine-tune stage decaying its own to zero (the README has the measurement)."""
    if base is None:
        kind, start, schedule = TrainConfig, {"model": cfg.model}, dict(warmup_iters=min(10, steps // 10))
    else:
        kind, start, schedule = FinetuneConfig, {"base_model": base}, dict(warmup_iters=0, warmdown_iters=steps)
    stage = build(kind, dataset=str(dataset), output_dir=cfg.output_dir / name, **start, **schedule,
                  batch_size=cfg.batch_size, seq_len=cfg.seq_len, max_steps=steps, optimizer=cfg.optimizer,
                  **rates(cfg, lr),
                  eval_every=max(1, steps // 4), eval_iters=10, sample_every=steps,
                  sample_prompt=cfg.prompts[0], seed=cfg.seed, device=cfg.device, dtype=cfg.dtype,
                  compile=cfg.compile)
    say(name, f"{steps} steps on {dataset.name}")
    if run_or_resume(stage) is None:
        say(name, f"{stage.run.output_dir} has finished; skipped")
    return stage.run.output_dir


def evaluate(cfg: PipelineConfig, name: str, model_dir: Path, data: Path) -> dict[str, Any]:
    """HellaSwag on a subset and validation loss on `data`, cached in RUN/eval/NAME.json for the same checkpoint and
    settings (a stage trained further, or another --hellaswag-limit, --eval-tokens or --seq-len, is evaluated
    again). The key names paths from the run directory, so a run moved or renamed keeps its evaluations."""
    path = cfg.output_dir / "eval" / f"{name}.json"
    key = {"checkpoint": os.path.relpath(resolve_checkpoint(model_dir), cfg.output_dir),
           "hellaswag_limit": cfg.hellaswag_limit, "eval_tokens": cfg.eval_tokens, "seq_len": cfg.seq_len,
           "val_data": os.path.relpath(data, cfg.output_dir)}
    cached = read_json(path)
    if cached is not None and cached.get("key") == key:
        say("eval", f"{path} exists; skipped: {figures(cached)}")
        return cached
    device = resolve_device(cfg.device)
    model, tokenizer = load_model_and_tokenizer(model_dir, device)
    hs_path = local(cfg, "hellaswag/hellaswag_val.jsonl") or default_data_path()
    say("eval", f"{name}: HellaSwag ({cfg.hellaswag_limit} examples) and val loss on {data.name}")
    hs = evaluate_hellaswag(model, tokenizer, load_hellaswag(hs_path, cfg.hellaswag_limit), device, progress=True)
    loss = evaluate_loss(model, read_split(data), device, cfg.seq_len, max_tokens=cfg.eval_tokens, tokenizer=tokenizer)
    result = {"model": str(model_dir), **hellaswag_record(hs), **loss_record(loss), "val_data": data.name, "key": key}
    write_json(path, result)
    say("eval", f"{name}: {figures(result)}")
    return result


def figures(evaluation: dict[str, Any]) -> str:
    """A stage's evaluation in words: on every held-out token (or --eval-tokens of them), where the training stages'
    validation reads only their first batches."""
    return (f"{evaluation['val_bpb']:.4f} bits per byte ({evaluation['val_loss']:.4f} nats per token) on "
            f"{evaluation['val_tokens']:,} held-out tokens of {evaluation['val_data']}; HellaSwag acc_norm "
            f"{evaluation['hellaswag_acc']:.1%} of {evaluation['hellaswag_n']}")


def rates(cfg: PipelineConfig, lr: float) -> dict[str, float]:
    """A training stage's peak learning rates: `lr`, and Muon's the same fraction of --muon-lr as `lr` is of
    --pretrain-lr."""
    muon = {"muon_lr": cfg.muon_lr * lr / cfg.pretrain_lr} if cfg.optimizer == "muon" else {}
    return {"learning_rate": lr, **muon}


def feedback(cfg: PipelineConfig, base: Path) -> Path:
    prompts_file = cfg.output_dir / "prompts.txt"
    atomic_write_text(prompts_file, "\n".join(cfg.prompts) + "\n")
    training = dict(max_steps=cfg.preference_steps, learning_rate=cfg.preference_lr, batch_size=1, prompts_per_step=1,
                    seq_len=cfg.seq_len, warmdown_iters=cfg.preference_steps // 4, dtype=cfg.dtype)
    result = rlhf(build(RlhfConfig, base_model=base, output_dir=cfg.output_dir / FEEDBACK_DIR, method=cfg.method,
                        seed=cfg.seed, device=cfg.device, prompts_file=prompts_file, num_samples=cfg.num_samples,
                        max_new_tokens=cfg.max_new_tokens, generate_batch_size=8, judge=cfg.judge,
                        **{k: v for k, v in training.items() if k in METHOD_OPTIONS[cfg.method]}))
    return result.model


def win_rate(cfg: PipelineConfig, a: Path, b: Path) -> dict[str, Any]:
    """The judge's win-rate of model `a` over `b` on the pipeline's prompts, cached in RUN/eval/winrate.json (the
    pairs and judgments beside it, in winrate-pairs.jsonl)."""
    judge = cfg.winrate_judge or cfg.judge
    path = cfg.output_dir / "eval" / "winrate.json"
    cached = read_json(path)
    if cached is not None and (cached.get("judge"), cached.get("pairs")) == (judge, cfg.winrate_pairs):
        say("win-rate", f"{path} exists; skipped")
        return cached
    pairs = path.with_name("winrate-pairs.jsonl")
    pairs.unlink(missing_ok=True)  # an interrupted comparison starts over: its figure needs every pair
    say("win-rate", f"{cfg.winrate_pairs} pairs, preference stage against fine-tuned, judged by {judge}")
    result = compare(build(CompareConfig, a=a, b=b, judge=judge, n=cfg.winrate_pairs,
                           prompts_file=cfg.output_dir / "prompts.txt", max_new_tokens=cfg.max_new_tokens,
                           out=pairs, seed=cfg.seed, device=cfg.device))
    record = {"a": "preference", "b": "finetune", "judge": judge, "training_judge": cfg.judge,
              "pairs": cfg.winrate_pairs, **asdict(result)}
    write_json(path, record)
    return record


def compare_samples(cfg: PipelineConfig, models: dict[str, Path]) -> Path:
    """The same prompts and seeds through each stage's model, for the report's before/after table, sampled for
    reading; the stories the judge ranks, and the win-rate's, come from the whole distribution. The samples are made
    anew on every run (seconds), so a rerun's report shows them as this version samples, never a file it refuses."""
    out = cfg.output_dir / "samples"
    for name, model_dir in models.items():
        (out / f"{name}.jsonl").unlink(missing_ok=True)
        generate(GenerateConfig(checkpoint=model_dir, prompts_file=cfg.output_dir / "prompts.txt",
                                num_samples=len(cfg.prompts), max_new_tokens=cfg.max_new_tokens, **READING_SAMPLING,
                                seed=cfg.seed, device=cfg.device, out=out / f"{name}.jsonl", print_samples=False))
    return out


def pipeline_advice(too_few: str) -> Advice:
    return Advice(go_on=RERUN, retune=RETUNE, restart=RETUNE, earlier=SET_ASIDE, too_few=too_few)


def run(cfg: PipelineConfig) -> Path:
    """Run every stage that is not yet done; returns the report's path."""
    for judge in dict.fromkeys((cfg.judge, cfg.winrate_judge or cfg.judge)):
        check_judge(judge)  # a missing key or package fails now, not after pretraining
    with sole_writer(cfg.output_dir):  # made here; a second pipeline into it meanwhile is refused
        # a first try that stopped before making anything (data missing, say) binds no option of the next
        if any(p.name != PIPELINE_FILE for p in cfg.output_dir.iterdir()):
            refuse_changed(cfg, read_json(cfg.output_dir / PIPELINE_FILE),
                           [name for name in option_owners(PipelineConfig) if name not in RERUN_OPTIONS],
                           cfg.output_dir)
        write_json(cfg.output_dir / PIPELINE_FILE, to_dict(cfg))
        with advising(pipeline_advice(TOO_FEW_TEXT)):
            data = prepare_data(cfg)
            for corpus in data.values():  # a step larger than a stage's text fails now, not after the stages before
                ShardLoader(corpus, cfg.batch_size, cfg.seq_len)
        with advising(pipeline_advice(TOO_FEW[cfg.method])):  # too few: only the preference stage's data now
            held_out = data["finetune"]  # every stage is measured on the same held-out stories
            pretrained = train_stage(cfg, "pretrain", data["pretrain"], None, cfg.pretrain_steps, cfg.pretrain_lr)
            evaluate(cfg, "pretrain", pretrained, held_out)
            finetuned = train_stage(cfg, "finetune", data["finetune"], pretrained, cfg.finetune_steps,
                                    cfg.finetune_lr)
            evaluate(cfg, "finetune", finetuned, held_out)
            preferred = feedback(cfg, finetuned)
            evaluate(cfg, "preference", preferred, held_out)
            win_rate(cfg, preferred, finetuned)
            compare_samples(cfg, {"pretrain": pretrained, "finetune": finetuned, "preference": preferred})
        report = write_report(cfg.output_dir)
        say("report", f"{report} (and report.md)")
        return report
