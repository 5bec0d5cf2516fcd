"""The `ghoul` command: one verb per stage, each a config dataclass and a plain `run(cfg)` function.

Stage modules are imported only for the command that runs, so `ghoul --help` and torch-free commands
(tokenizer training, data preparation) start quickly.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import re
import signal
import sys
from dataclasses import dataclass
from importlib import metadata

from ghoul import __version__
from ghoul.config import add_config_args, config_from_args
from ghoul.errors import GhoulError


@dataclass(frozen=True)
class Command:
    name: str  # one or two words, e.g. "generate" or "export hf"
    target: str  # "module:ConfigClass:function"
    help: str


# The subcommand table. Add a stage by adding a line.
COMMANDS = [
    Command("generate", "ghoul.generate:GenerateConfig:run", "sample text from a checkpoint or a fresh preset"),
    Command("export hf", "ghoul.hf:ExportConfig:run", "a checkpoint as a transformers directory (GPT-2, LLaMA, Qwen3)"),
    Command("export gguf", "ghoul.gguf:GgufConfig:run", "a checkpoint as a GGUF file for llama.cpp, Ollama, LM Studio"),
    Command("eval hellaswag", "ghoul.eval.hellaswag:HellaswagConfig:run", "HellaSwag accuracy of a checkpoint"),
    Command("eval loss", "ghoul.eval.loss:LossConfig:run", "validation loss of a checkpoint on token shards"),
    Command("eval checkpoints", "ghoul.eval.checkpoints:CheckpointsConfig:run", "score and plot a run's checkpoints"),
    Command("tokenizer train", "ghoul.tokenizer.cli:TrainConfig:train", "learn a byte-level BPE or char tokenizer"),
    Command("tokenizer encode", "ghoul.tokenizer.cli:EncodeConfig:encode", "print the token ids of a text"),
    Command("tokenizer decode", "ghoul.tokenizer.cli:DecodeConfig:decode", "print the text of token ids"),
    Command("learn bigram", "ghoul.learn.bigram:BigramConfig:run", "train a bigram table on horror stories"),
    Command("learn gpt", "ghoul.learn.gpt:LearnGPTConfig:run", "train a small GPT, architecture switches as flags"),
    Command("learn compare", "ghoul.learn.compare:CompareConfig:run", "train GPT variants alike; a table of them"),
    Command("prepare", "ghoul.data.prepare:PrepareConfig:run", "tokenize a text source into token shards"),
    Command("pretrain", "ghoul.train.stages:TrainConfig:run", "train a fresh GPT on token shards"),
    Command("finetune", "ghoul.train.stages:FinetuneConfig:run", "continue training a model on another dataset"),
    Command("rank", "ghoul.feedback.rank:RankConfig:run",
            "a judge (model or person) picks the best story of each group"),
    Command("export winners", "ghoul.feedback.winners:ExportWinnersConfig:run",
            "the stories a judge chose, to train on"),
    Command("preferences", "ghoul.feedback.preferences:PreferencesConfig:run", "rankings -> (chosen, rejected) pairs"),
    Command("reward train", "ghoul.feedback.reward:RewardTrainConfig:train_run", "train a reward model on rankings"),
    Command("reward score", "ghoul.feedback.reward:ScoreConfig:score_run", "score stories with a reward model"),
    Command("dpo", "ghoul.feedback.dpo:DpoConfig:run", "align a model on preference pairs with DPO"),
    Command("ppo", "ghoul.feedback.ppo:PpoConfig:run_ppo", "align a model with PPO against a reward model or a judge"),
    Command("grpo", "ghoul.feedback.ppo:RlConfig:run_grpo",
            "align a model with GRPO against a reward model or a judge"),
    Command("compare", "ghoul.feedback.compare:CompareConfig:run", "win-rate of model A over model B, judged in pairs"),
    Command("rlhf", "ghoul.feedback.rlhf:RlhfConfig:run",
            "the feedback loop: generate, rank, then winners/DPO/PPO/GRPO"),
    Command("pipeline", "ghoul.pipeline:PipelineConfig:run", "every stage in order, then the report (laptop-sized)"),
    Command("report", "ghoul.report:ReportConfig:run", "write report.html and report.md for a pipeline run"),
    Command("plan", "ghoul.plan:PlanConfig:run", "memory, time and cost of a training run before you rent GPUs"),
    Command("serve", "ghoul.web.playground:ServeConfig:run", "a local page to write prompts and watch stories stream"),
]


def _find(argv: list[str]) -> tuple[Command | None, list[str]]:
    for words in (2, 1):
        name = " ".join(argv[:words])
        for cmd in COMMANDS:
            if cmd.name == name:
                return cmd, argv[words:]
    return None, argv


def _help(prefix: str = "") -> str:
    """The commands under `prefix` ("eval" for `ghoul eval --help`; all of them for none), a line each."""
    commands = _group(prefix) if prefix else COMMANDS
    width, name = max(len(c.name) for c in commands), f"ghoul {prefix}".rstrip()
    lines = [f"usage: {name} COMMAND [options]   ({name} COMMAND --help for its options)", "", "commands:"]
    return "\n".join(lines + [f"  {c.name.ljust(width)}  {c.help}" for c in commands])


def _group(word: str) -> list[Command]:
    """The commands of two words that `word` begins (eval: hellaswag, loss, checkpoints); none for another word."""
    return [c for c in COMMANDS if c.name.startswith(f"{word} ")]


def _no_command(argv: list[str]) -> int:
    """The answer to words that name no command: a group's list of commands for `ghoul eval --help`, and an error
    naming the commands there are (the group's for `ghoul eval` or `ghoul eval nosuch`); the exit code."""
    group = sorted(c.name.split()[1] for c in _group(argv[0]))
    if group and argv[1:2] in ([], ["-h"], ["--help"]):
        if argv[1:]:
            print(_help(argv[0]))
            return 0
        print(f"ghoul {argv[0]}: error: give one of its commands: {', '.join(group)} (see ghoul {argv[0]} --help)",
              file=sys.stderr)
        return 2
    within, known = (f"{argv[0]} ", group) if group else ("", sorted({c.name.split()[0] for c in COMMANDS}))
    print(f"ghoul: error: unknown command '{' '.join(argv[:2])}'; {within}commands: {', '.join(known)} "
          f"(see ghoul {within}--help)", file=sys.stderr)
    return 2


def build_parser(cmd: Command) -> tuple[argparse.ArgumentParser, type, object]:
    """The argument parser of one command, with its config class and entry point."""
    module_name, cls_name, fn_name = cmd.target.split(":")
    module = importlib.import_module(module_name)
    cls, fn = getattr(module, cls_name), getattr(module, fn_name)
    # no abbreviations: `finetune --activation swiglu` would otherwise be read as --activation-checkpointing
    parser = argparse.ArgumentParser(prog=f"ghoul {cmd.name}", description=cmd.help, allow_abbrev=False)
    add_config_args(parser, cls)
    return parser, cls, fn


def cli_reference() -> str:
    """Every command's --help as markdown: docs/cli.md is this text, and a test keeps the two equal."""
    parts = ["# ghoul command reference", "", "Generated from the parser (`ghoul --reference > docs/cli.md`).", ""]
    for cmd in COMMANDS:
        parser, _, _ = build_parser(cmd)
        # argparse wraps to the terminal (2 columns short of it): a fixed width gives the same text everywhere
        parser.formatter_class = functools.partial(argparse.HelpFormatter, width=98)
        parts += [f"## ghoul {cmd.name}", "", "```", parser.format_help().rstrip(), "```", ""]
    return "\n".join(parts)


def optional_extra(module: str) -> str | None:
    """The extra of ghoul's package metadata (`pip install 'ghoul[EXTRA]'`) that installs `module`, if any."""
    root = module.split(".")[0].replace("_", "-").lower()
    try:
        requirements = metadata.requires("ghoul") or []
    except metadata.PackageNotFoundError:
        return None
    for line in requirements:
        name, _, marker = line.partition(";")
        extra = marker.split("extra ==")[-1].strip().strip("'\"") if "extra ==" in marker else None
        if extra not in (None, "dev") and re.split(r"[<>=!~\[ ]", name.strip(), maxsplit=1)[0].lower() == root:
            return extra
    return None


def usage_error(e: Exception) -> str | None:
    """The one-line message of an error the user can fix, or None for one that is a bug or the machine's."""
    if isinstance(e, GhoulError):
        return str(e)
    if isinstance(e, ModuleNotFoundError):
        extra = optional_extra(e.name or "")
        return f"this command needs {e.name}: pip install 'ghoul[{extra}]'" if extra else None
    if isinstance(e, UnicodeDecodeError):  # a binary or otherwise encoded file where text was expected
        return f"an input file is not UTF-8 text ({e.reason} at byte {e.start}): give a UTF-8 text file"
    if isinstance(e, OSError) and e.filename is not None:  # without a path it is a network or device error
        return f"{e.strerror or e}: {e.filename}" + (f" -> {e.filename2}" if e.filename2 is not None else "")
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_help())
        return 0
    if argv[0] == "--version":
        print(f"ghoul {__version__}")
        return 0
    if argv[0] == "--reference":
        print(cli_reference(), end="")
        return 0
    cmd, rest = _find(argv)
    if cmd is None:
        return _no_command(argv)
    try:
        parser, cls, fn = build_parser(cmd)
        args = parser.parse_args(rest)
        if "torch" in sys.modules:  # the command computes with torch (the others never import it: they start fast)
            from ghoul import dist  # imports torch, which the torch-free commands never load

            dist.allow_tf32()  # training, evaluation and sampling alike
        fn(config_from_args(cls, args))
    except (GhoulError, ModuleNotFoundError, UnicodeDecodeError, OSError) as e:
        message = usage_error(e)
        if message is None:
            raise
        print(f"ghoul {cmd.name}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ghoul {cmd.name}: interrupted", file=sys.stderr)
        return 130
    return 0


def entry() -> None:
    """The `ghoul` program (the console script, `python -m ghoul`, torchrun's workers): `main`, then exit with its
    code."""
    try:
        code = main()
    except KeyboardInterrupt:  # a second Ctrl-C while main reported the first
        code = 130
    if code == 130:  # stopped by Ctrl-C: another one during the interpreter's shutdown would only print tracebacks
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if "TORCHELASTIC_RUN_ID" in os.environ:  # set by torchrun for its workers
        # A worker leaves without the interpreter's shutdown: objects still tied to the destroyed gloo process group
        # (an FSDP model's shards, their collectives' work) would be freed there, where gloo's threads can abort
        # the process (SIGABRT) after the command succeeded. Every file the command wrote is closed by now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code)
