"""`ghoul rlhf`: the feedback loop in one command: generate stories, have a judge pick the best of each group, and
learn from the judgments, all in one run directory. `--method` picks the last step: `winners` fine-tunes on the
chosen stories, `dpo` runs DPO on the preference pairs, `ppo` and `grpo` train a reward model on the rankings and
then the policy against it.

Every step writes its own file and is skipped when that file is complete, so the command resumes at any step:
RUN/stories.jsonl -> RUN/rankings.jsonl -> RUN/winners.jsonl -> RUN/data/winners/ -> RUN/finetune/ (winners),
or -> RUN/dpo/ (dpo), or -> RUN/reward/ -> RUN/ppo/ or RUN/grpo/ (ppo, grpo): the new model is the last of them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ghoul.advice import RERUN, SET_ASIDE, Advice, advising
from ghoul.checkpoint import read_model_config
from ghoul.config import build, flag, group, option, refuse_changed, require, to_dict
from ghoul.data.prepare import PrepareConfig
from ghoul.data.prepare import run as prepare
from ghoul.errors import GhoulError
from ghoul.feedback import rank, winners
from ghoul.feedback.dpo import DpoConfig
from ghoul.feedback.dpo import run as dpo
from ghoul.feedback.judges import JudgeOptions
from ghoul.feedback.ppo import PpoConfig, RlConfig, encode_prompts
from ghoul.feedback.ppo import run as reinforce
from ghoul.feedback.records import FeedbackRun
from ghoul.feedback.reward import RewardTrainConfig
from ghoul.feedback.reward import train_run as train_reward
from ghoul.files import is_output_of, read_json, read_jsonl, sole_writer, write_json
from ghoul.generate import GenerateConfig, read_prompts
from ghoul.generate import run as generate
from ghoul.layout import CONFIG_FILE, resolve_checkpoint
from ghoul.tokenizer import TOKENIZER_FILE, load_tokenizer
from ghoul.train.stages import FinetuneConfig, max_steps, run_or_resume
from ghoul.train.stages import run as finetune

# What to learn from the judgments; see docs/feedback.md for what each needs and costs.
METHODS = ("winners", "dpo", "ppo", "grpo")
_TRAIN = {"max_steps", "learning_rate", "batch_size", "total_batch_size", "warmdown_iters", "dtype"}
_RL = {"max_steps", "learning_rate", "prompts_per_step", "kl_coef", "reward_steps", "reward_learning_rate"}
# the options of the training step each method reads: given for another method, they are refused, not ignored
METHOD_OPTIONS = {"winners": _TRAIN | {"seq_len"}, "dpo": _TRAIN | {"beta"}, "ppo": _RL, "grpo": _RL}
# after a non-finite loss: a rerun resumes the training step from its last good checkpoint, at the rate given now
RETUNE = ("lower --learning-rate (ppo, grpo: or the reward model's --reward-learning-rate) and run the same command "
          "again")
# too few winners (or pairs) for one step: the training options a method reads may change on a rerun, the stories'
# may not (ppo and grpo read none: their reward model's batch is its own)
MORE_STORIES = "make more stories (--num-samples, --max-new-tokens) into a new --output-dir"
TOO_FEW = {"winners": f"lower --batch-size or --seq-len and run the same command again, or {MORE_STORIES}",
           "dpo": f"lower --batch-size and run the same command again, or {MORE_STORIES}",
           "ppo": MORE_STORIES, "grpo": MORE_STORIES}
# what the stories were made with: a rerun that changes one is refused (it would skip the stories as complete, or
# add to them stories that the rankings' groups do not hold)
STORY_OPTIONS = ("base_model", "prompt", "prompts_file", "num_samples", "max_new_tokens", "temperature", "top_k",
                 "top_p", "seed")
# what the config.json of a feedback run holds: one without them (a training run's, a model's) is not written over
RUN_KEYS = ("method", "num_samples")


@dataclass
class RlhfConfig:
    TABLE_PER: ClassVar[str] = "method"  # a config file's [dpo] table holds the options of --method dpo, etc.

    base_model: Path | None = option(None, "model directory to generate stories from and to train (required)")
    output_dir: Path = option(Path("runs/rlhf"), "run directory holding every step's output")
    method: str = option("winners", "what to learn from the judgments: winners (fine-tune on the chosen stories), "
                         "dpo, ppo or grpo (against a reward model trained on the rankings)", choices=list(METHODS))
    seed: int = option(1337, "random seed of generation, grouping and training")
    device: str = option("auto", "cpu, cuda, mps, or auto")
    # ---- generate
    prompt: str = option("", "text every story continues (empty: start from <|endoftext|>)")
    prompts_file: Path | None = option(None, "file of prompts, one per line, cycled over the stories", metavar="FILE")
    num_samples: int = option(400, "stories to generate")
    max_new_tokens: int = option(256, "tokens per story")
    temperature: float = option(1.0, "sampling temperature of the stories")
    top_k: int | None = option(None, "sample the stories only from the k most likely tokens")
    top_p: float | None = option(None, "sample the stories only from the smallest set of tokens holding this "
                                       "probability")
    generate_batch_size: int = option(16, "stories generated together on the device")
    # ---- rank
    group_size: int = option(4, "stories per group; the judge picks one of them (ppo, grpo: also samples per prompt)")
    judging: JudgeOptions = group(JudgeOptions)
    # ---- the training step (unset: the defaults of `ghoul finetune`, `ghoul dpo`, `ghoul reward train`, `ghoul ppo`)
    max_steps: int | None = option(None, "optimizer steps of the training step (default: its command's)")
    learning_rate: float | None = option(None, "peak learning rate of the training step (default: its command's)")
    batch_size: int | None = option(None, "rows (winners) or preference pairs (dpo) per micro-batch")
    total_batch_size: int | None = option(None, "tokens (winners) or pairs (dpo) per optimizer step, reached by "
                                                "gradient accumulation")
    seq_len: int | None = option(None, "tokens per row of the winners fine-tune (default: the model's block size)")
    warmdown_iters: int | None = option(None, "steps of linear decay to zero at the end (winners, dpo)")
    dtype: str | None = option(None, "compute dtype of the training step (winners, dpo)",
                               choices=["auto", "float32", "bfloat16"])
    beta: float | None = option(None, "DPO's beta")
    prompts_per_step: int | None = option(None, "prompts sampled at each step of PPO and GRPO")
    kl_coef: float | None = option(None, "PPO's and GRPO's KL penalty weight")
    reward_steps: int | None = option(None, "optimizer steps of the reward model (ppo, grpo)")
    reward_learning_rate: float | None = option(None, "peak learning rate of the reward model (ppo, grpo)")

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise GhoulError(f"--method must be one of {', '.join(METHODS)}, got {self.method}")
        if self.base_model is None:
            raise GhoulError("--base-model is required: the model directory to generate from and fine-tune")
        require(self, ("num_samples", "max_new_tokens", "generate_batch_size", "max_steps", "batch_size", "seq_len",
                       "total_batch_size", "reward_steps", "prompts_per_step"), lambda v: v >= 1,
                "at least 1")  # not the steps' flags
        unused = [name for name in set().union(*METHOD_OPTIONS.values()) - METHOD_OPTIONS[self.method]
                  if getattr(self, name) is not None]
        if unused:
            users = sorted(m for m in METHODS if unused[0] in METHOD_OPTIONS[m])
            raise GhoulError(f"{flag(unused[0])} is not used by --method {self.method} (only by "
                             f"{' and '.join(users)}): leave it out")
        if self.num_samples < self.group_size:
            raise GhoulError(f"--num-samples {self.num_samples} makes no group of --group-size {self.group_size}")
        self.base_model, self.output_dir = Path(self.base_model), Path(self.output_dir)


@dataclass
class RlhfResult:
    run_dir: Path
    stories: Path
    rankings: Path
    winners: Path | None  # winners.jsonl (method winners only)
    model: Path  # the trained model (a run directory whose `latest` names the final checkpoint)


def stage_configs(cfg: RlhfConfig) -> dict[str, Any]:
    """The configs of the steps, built (and so checked) before any step runs."""
    cfg.judging.check()  # a missing key or package fails now, not after the stories are made
    block = read_model_config(cfg.base_model)["block_size"]
    if cfg.seq_len is not None and cfg.seq_len > block:
        raise GhoulError(f"--seq-len {cfg.seq_len} exceeds the block size of {cfg.base_model} ({block})")
    if cfg.method in ("ppo", "grpo"):  # now, not after the stories, their ranking and the reward model
        encode_prompts(read_prompts(cfg), load_tokenizer(cfg.base_model), cfg.max_new_tokens, block)
    out = FeedbackRun(cfg.output_dir)
    generate = GenerateConfig(checkpoint=cfg.base_model, prompt=cfg.prompt, prompts_file=cfg.prompts_file,
                              num_samples=cfg.num_samples, max_new_tokens=cfg.max_new_tokens,
                              temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, seed=cfg.seed,
                              batch_size=cfg.generate_batch_size, device=cfg.device, out=out.stories,
                              print_samples=False)
    ranking = rank.RankConfig(stories=out.stories, out=out.rankings, group_size=cfg.group_size,
                              seed=cfg.seed, judging=cfg.judging)
    steps: dict[str, Any] = dict(generate=generate, rank=ranking)
    given = {k: getattr(cfg, k) for k in METHOD_OPTIONS[cfg.method] if getattr(cfg, k) is not None}
    if cfg.method != "winners":
        return steps | preference_configs(cfg, out, given)
    steps["export"] = winners.ExportWinnersConfig(out.rankings, out.stories, out.winners)
    steps["prepare"] = PrepareConfig("jsonl", out.winners_data, tokenizer=model_tokenizer(cfg.base_model),
                                     source_path=str(out.winners), workers=1, progress=False)
    steps["final"] = build(FinetuneConfig, dataset=str(out.winners_data), base_model=cfg.base_model,
                           output_dir=out.model("winners"), eval_every=0, seed=cfg.seed, device=cfg.device, **given)
    return steps


def preference_configs(cfg: RlhfConfig, out: FeedbackRun, given: dict[str, Any]) -> dict[str, Any]:
    """The steps after ranking of dpo (its trainer) and ppo/grpo (a reward model, then the policy against it)."""
    pairs = dict(rankings=out.rankings, stories=out.stories, seed=cfg.seed, device=cfg.device)
    if cfg.method == "dpo":
        return {"final": build(DpoConfig, policy=cfg.base_model, output_dir=out.model("dpo"), **pairs, **given)}
    reward = {key: given.pop(name) for name, key in (("reward_steps", "max_steps"),
                                                     ("reward_learning_rate", "learning_rate")) if name in given}
    return {"reward": build(RewardTrainConfig, base_model=cfg.base_model, output_dir=out.reward, **pairs,
                            **reward),
            "final": build(PpoConfig if cfg.method == "ppo" else RlConfig,
                policy=cfg.base_model, reward=out.reward, output_dir=out.model(cfg.method),
                prompt=cfg.prompt, prompts_file=cfg.prompts_file, group_size=cfg.group_size,
                max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=cfg.seed, device=cfg.device,
                **given)}


def sampling_truncation(cfg: RlhfConfig) -> str:
    """The sampling options that cut the model's distribution, as typed (empty when there are none)."""
    cuts = []
    if cfg.top_k:
        cuts.append(f"--top-k {cfg.top_k}")
    if cfg.top_p is not None and cfg.top_p < 1:
        cuts.append(f"--top-p {cfg.top_p}")
    if cfg.temperature < 1:
        cuts.append(f"--temperature {cfg.temperature}")
    return " ".join(cuts)


def model_tokenizer(model_dir: Path) -> str:
    """The tokenizer spec `ghoul prepare` takes for a model directory: `gpt2`, or the path of its own tokenizer."""
    directory = resolve_checkpoint(model_dir)
    name = read_model_config(directory).get("tokenizer", "gpt2")
    return "gpt2" if name == "gpt2" else str(directory / TOKENIZER_FILE)


def run(cfg: RlhfConfig) -> RlhfResult:
    """Run the steps that are not yet complete in cfg.output_dir, in order."""
    with (advising(Advice(go_on=RERUN, retune=RETUNE, restart=RETUNE, earlier=SET_ASIDE, too_few=TOO_FEW[cfg.method])),
          sole_writer(cfg.output_dir)):
        return run_steps(cfg)


def run_steps(cfg: RlhfConfig) -> RlhfResult:
    steps = stage_configs(cfg)
    out = FeedbackRun(cfg.output_dir)
    if not is_output_of(cfg.output_dir / CONFIG_FILE, RUN_KEYS):
        raise GhoulError(f"{cfg.output_dir} holds another kind of run or a model (its {CONFIG_FILE} is not a feedback "
                         "run's): give another --output-dir")
    if out.stories.is_file():  # every later step learns from them
        refuse_changed(cfg, read_json(cfg.output_dir / CONFIG_FILE), STORY_OPTIONS, cfg.output_dir)
    write_json(cfg.output_dir / CONFIG_FILE, to_dict(cfg))
    total = 3 if cfg.method == "dpo" else 4  # steps, for the progress messages
    truncation = sampling_truncation(cfg)
    if cfg.method == "winners" and truncation:
        _say(f"warning: {truncation} cuts off the unlikeliest tokens of the stories the fine-tune learns from, which "
             "sharpens the model whatever the judge picks; for --method winners sample from the whole distribution "
             "(see docs/feedback.md)")
    if len(read_jsonl(out.stories, missing_ok=True)) >= cfg.num_samples:
        _say(f"1/{total} generate: {out.stories} is complete; skipped")
    else:
        _say(f"1/{total} generate: {cfg.num_samples} stories from {cfg.base_model}")
        generate(steps["generate"])
    _say(f"2/{total} rank: judge {cfg.judging.judge}, groups of {cfg.group_size}")
    rank.run(steps["rank"])
    if cfg.method == "winners":
        if out.winners.is_file() and out.winners.stat().st_mtime >= out.rankings.stat().st_mtime:
            _say(f"3/4 winners: {out.winners} is up to date; skipped")
        else:
            _say("3/4 winners: export the chosen stories")
            winners.run(steps["export"])
        _say("4/4 fine-tune on the winners")
        prepare(steps["prepare"])
        _train_step(finetune, steps["final"])
    elif cfg.method == "dpo":
        _say("3/3 DPO on the preference pairs of the rankings")
        _train_step(dpo, steps["final"])
    else:
        _say("3/4 train a reward model on the rankings")
        _train_step(train_reward, steps["reward"])
        _say(f"4/4 {cfg.method.upper()} against the reward model")
        _train_step(lambda c: reinforce(c, cfg.method), steps["final"])
    model = out.model(cfg.method)
    _say(f"done: the new model is {model} (ghoul generate --checkpoint {model}; ghoul compare --a {model} "
         f"--b {cfg.base_model})")
    return RlhfResult(out.root, out.stories, out.rankings, out.winners if cfg.method == "winners" else None, model)


def _train_step(train: Any, step_cfg: Any) -> None:
    """Run a training step unless it has finished; resume it from its checkpoint when it can."""
    if run_or_resume(step_cfg, train) is None:
        _say(f"{step_cfg.run.output_dir} has finished its {max_steps(step_cfg)} steps; skipped")


def _say(message: str) -> None:
    print(f"ghoul rlhf: {message}", file=sys.stderr, flush=True)
