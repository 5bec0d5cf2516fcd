"""Model directories (`config.json` + `model.safetensors` [+ `tokenizer.json`]) and training checkpoints
(`RUN/step_000123/` = a model directory + `optimizer.pt` + `trainer_state.json`, with `RUN/latest` naming the newest):
the one way every stage saves and loads weights. Directories are written whole or not at all.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any, NoReturn

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ghoul import __version__
from ghoul.advice import advice
from ghoul.errors import GhoulError
from ghoul.files import atomic_directory, atomic_write_text, write_json
from ghoul.layout import CONFIG_FILE, LATEST, WEIGHTS_FILE, models_within, resolve_checkpoint, step_dir, step_dirs
from ghoul.model import GPT, GPTConfig
from ghoul.tokenizer import TOKENIZER_FILE, Tokenizer, load_tokenizer

TIED = "lm_head.weight"  # the same tensor as transformer.wte.weight; stored once
# the model class of each `kind` a config.json names: a module defining another kind registers it (the reward
# model, ghoul.feedback.reward), so that loading builds the class that was saved
MODEL_KINDS: dict[str, type[GPT]] = {"language": GPT}
OPTIMIZER_FILE = "optimizer.pt"
SHARDED_OPTIMIZER = "optimizer"  # instead of optimizer.pt in the checkpoints of FSDP runs: one file per rank
STATE_FILE = "trainer_state.json"


def stored_weights(model: GPT) -> dict[str, torch.Tensor]:
    """The weights a model directory stores, as the model holds them (whole, or a sharded model's shards): a tied
    head left out (safetensors forbids shared tensors)."""
    return {k: v.detach() for k, v in model.state_dict().items() if k != TIED or not model.config.tie_embeddings}


def write_model_files(model: GPT, directory: Path, tokenizer: Tokenizer | str | None = None,
                      weights_file: Path | None = None) -> None:
    """Write the model files into an existing `directory` (used inside an atomic directory); `weights_file`, the
    weights the ranks of a sharded (FSDP) run wrote together, is moved in instead of writing the model's."""
    # a model class other than GPT (a reward model) names itself, so that loading builds the same class
    config = {**asdict(model.config), "ghoul_version": __version__, **getattr(model, "dir_config", {})}
    if tokenizer is not None and not isinstance(tokenizer, str):
        if tokenizer.name == "gpt2":
            tokenizer = "gpt2"
        else:
            tokenizer.save(directory / TOKENIZER_FILE)
            tokenizer = TOKENIZER_FILE
    config["tokenizer"] = tokenizer or config.get("tokenizer", "gpt2")
    write_json(directory / CONFIG_FILE, config)
    path = directory / WEIGHTS_FILE
    if weights_file is not None:
        os.replace(weights_file, path)
        return
    write_weights({k: v.cpu().contiguous() for k, v in stored_weights(model).items()}, path)


def write_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    """Write `state` to the safetensors file `path` with the mode of any file the user writes (safetensors creates
    it 0600, unreadable to the group); a failed write is an OSError."""
    try:
        save_file(state, str(path), metadata={"format": "pt"})
    except SafetensorError as e:  # a failed write (a full disk) comes as "I/O error: ... (os error 28)"
        code = re.search(r"os error (\d+)", str(e))
        if code is None:
            raise
        raise OSError(int(code[1]), os.strerror(int(code[1])), str(path)) from None
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


class _KeptErrors:
    """A file for torch.save that keeps the OSError of a failed write: torch reports it only as "unexpected pos"."""

    def __init__(self, f: Any) -> None:
        self.f, self.error = f, None

    def write(self, data: Any) -> int:
        try:
            return self.f.write(data)  # a buffered file writes all of `data` or raises
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def save_torch(obj: Any, path: Path) -> None:
    """torch.save to `path`; a failed write (a full disk) raises its own OSError."""
    with open(path, "wb") as f:
        kept = _KeptErrors(f)
        try:
            torch.save(obj, kept)
        except RuntimeError:
            if kept.error is None:
                raise
            raise kept.error from None


def save_model_dir(model: GPT, directory: str | Path, tokenizer: Tokenizer | str | None = None) -> None:
    """Write a self-contained model directory atomically."""
    with atomic_directory(directory) as tmp:
        write_model_files(model, tmp, tokenizer)


def read_model_config(directory: str | Path) -> dict:
    """The parsed `config.json` of a ghoul GPT's model directory, with a clear error when it is missing or malformed,
    or another kind of model's."""
    directory = resolve_checkpoint(directory)
    if not directory.is_dir():
        state = "is a file" if directory.exists() else "does not exist"
        raise GhoulError(f"checkpoint {directory} {state}: give a model directory (holding {CONFIG_FILE} and "
                         f"{WEIGHTS_FILE}) or a run directory holding checkpoints")
    path = directory / CONFIG_FILE
    if not path.is_file():
        inside = ", ".join(str(p) for p in models_within(directory))
        raise GhoulError(f"{directory} is not a model directory: {CONFIG_FILE} is missing"
                         + (f"; give one of the models in it: {inside}" if inside else ""))
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GhoulError(f"{path} is not valid JSON ({e}): the checkpoint is damaged; save it again") from None
    if not isinstance(config, dict):
        raise GhoulError(f"{path} must hold a JSON object of model settings")
    if "model_type" in config:  # transformers' config.json: an export, or a model from the Hub
        raise GhoulError(f"{directory} is a Hugging Face model directory (model_type {config['model_type']!r}), not a "
                         "ghoul one: give the ghoul model directory it was exported from, or load it with transformers")
    if config.get("model") == "bigram":
        raise GhoulError(f"{directory} holds a bigram model (ghoul learn bigram), which only the learning stage "
                         "samples: give a transformer's model directory")
    return config


def load_model_dir(directory: str | Path, device: str | torch.device = "cpu", kind: str = "language") -> GPT:
    """Build the model from `config.json` and load `model.safetensors` into it; `kind` is the kind the caller
    needs: a language model, or a reward model (which scores texts and generates none)."""
    directory = resolve_checkpoint(directory)
    config = read_model_config(directory)
    found = config.get("kind", "language")
    if found != kind:  # a reward model generates nothing; a language model scores nothing
        what_to_do = "train one with `ghoul reward train`" if kind == "reward" else "give a language model's directory"
        raise GhoulError(f"{directory} is a {found} model, not a {kind} model: {what_to_do}")
    try:
        model = MODEL_KINDS[kind](GPTConfig.from_dict(config))
    except TypeError as e:
        raise GhoulError(f"{directory / CONFIG_FILE} has invalid model settings: {e}") from None
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise GhoulError(f"{directory} has no {WEIGHTS_FILE}: the checkpoint is incomplete")
    load_weights(model, read_weights(weights, device), weights)
    return model.to(device)


def read_weights(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, with a one-line error when it is damaged (a copy cut short, say)."""
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError) as e:
        raise GhoulError(f"{path} could not be read ({e}): the file is damaged") from None


def check_vocab(model: GPT, tokenizer: Tokenizer, where: str | Path = "the model") -> None:
    """A tokenizer whose ids the model cannot embed is an error (a larger, padded model vocabulary is fine)."""
    if tokenizer.vocab_size > model.config.vocab_size:
        raise GhoulError(f"{where}: the tokenizer ({tokenizer.name}) has {tokenizer.vocab_size} tokens but the model "
                         f"only {model.config.vocab_size}: use the tokenizer the model was trained with")


def load_model_and_tokenizer(directory: str | Path, device: str | torch.device = "cpu",
                             kind: str = "language") -> tuple[GPT, Tokenizer]:
    """A model directory's model of `kind` (in eval mode, on `device`) and its tokenizer, checked against each other."""
    model = load_model_dir(directory, device, kind)
    tokenizer = load_tokenizer(resolve_checkpoint(directory))
    check_vocab(model, tokenizer, directory)
    return model.eval(), tokenizer


def load_weights(model: GPT, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load `state` into `model`, every weight accounted for (a tied head may be absent)."""
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatch: config and weights disagree
        raise GhoulError(f"{source} does not match the model config: {str(e).splitlines()[-1].strip()}") from None
    missing = [k for k in missing if k != TIED or not model.config.tie_embeddings]
    if missing or unexpected:
        raise GhoulError(f"{source} does not match the model config: "
                         f"missing {missing[:3]}, unexpected {unexpected[:3]}")


def save_training_checkpoint(run_dir: str | Path, step: int, model: GPT, optimizers: list[torch.optim.Optimizer],
                             state: dict, tokenizer: Tokenizer | str | None = None, keep_last: int = 0,
                             modules: dict[str, torch.nn.Module] | None = None, written: dict[str, Path] | None = None
                             ) -> Path:
    """Write `RUN/step_{step}` atomically, point `RUN/latest` at it, and keep only the newest `keep_last`.
    `modules` are trained beside the model but not part of it (PPO's value head): their weights go with the
    optimizers' state. `written` are what the ranks of an FSDP run wrote together, each its own part, moved in by
    name: the weights (`model.safetensors`) and the sharded optimizer state (`optimizer/`)."""
    target = step_dir(run_dir, step)
    written = written or {}
    try:
        with atomic_directory(target) as tmp:
            write_model_files(model, tmp, tokenizer, weights_file=written.get(WEIGHTS_FILE))
            if SHARDED_OPTIMIZER in written:
                os.replace(written[SHARDED_OPTIMIZER], tmp / SHARDED_OPTIMIZER)
            else:
                save_torch({"optimizers": [opt.state_dict() for opt in optimizers],
                            "modules": {name: m.state_dict() for name, m in (modules or {}).items()}},
                           tmp / OPTIMIZER_FILE)
            write_json(tmp / STATE_FILE, state)
    except OSError as e:  # named after the checkpoint: its temporary folder is gone
        raise OSError(e.errno, e.strerror, str(target)) from None
    atomic_write_text(Path(run_dir) / LATEST, target.name + "\n")
    if keep_last > 0:
        # only checkpoints older than this one: never what `latest` names, nor one a later step wrote
        older = [p for p in step_dirs(run_dir) if int(p.name[5:]) < step]
        for old in older[:max(len(older) - (keep_last - 1), 0)]:
            # renamed first: a kill part-way through the removal leaves a hidden temporary, not a broken checkpoint
            trash = old.with_name(f".{old.name}.pruned.tmp")
            os.replace(old, trash)
            shutil.rmtree(trash)
    return target


def load_training_checkpoint(directory: str | Path, required: tuple[str, ...] = ("step",)
                             ) -> tuple[dict, list[dict], dict[str, dict]]:
    """(trainer state, optimizer state dicts, modules' state dicts) of a checkpoint written by
    `save_training_checkpoint`; the state holds the `required` fields. The optimizer states are None when they are
    sharded (an FSDP run's `optimizer/`, read by ghoul.train.fsdp)."""
    directory = resolve_checkpoint(directory)
    state_path, opt_path = directory / STATE_FILE, directory / OPTIMIZER_FILE
    sharded = (directory / SHARDED_OPTIMIZER / ".metadata").is_file()
    if not state_path.is_file() or not (opt_path.is_file() or sharded):
        raise GhoulError(f"{directory} is not a training checkpoint: it needs {STATE_FILE} and {OPTIMIZER_FILE}")
    state = read_trainer_state(directory, required)
    if sharded:
        return state, None, {}
    try:
        saved = torch.load(opt_path, map_location="cpu", weights_only=True)
        if not isinstance(saved.get("optimizers"), list) or not isinstance(saved.get("modules", {}), dict):
            raise TypeError("no list of optimizer states")
        return state, saved["optimizers"], saved.get("modules", {})
    except (ValueError, RuntimeError, KeyError, TypeError, AttributeError, EOFError, OSError,
            pickle.UnpicklingError) as e:  # truncated, empty, not a torch file, or another object
        _damaged(directory, e)


def _damaged(directory: Path, e: Exception | str) -> NoReturn:
    why = e if isinstance(e, str) else f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
    raise GhoulError(f"{directory} is damaged ({why}): {advice().earlier}") from None


# the fields of trainer_state.json that the trainers read, and their JSON types
STATE_FIELDS: dict[str, type] = {"step": int, "tokens": int, "loader": dict, "rng": dict, "config": dict}


def read_trainer_state(directory: str | Path, required: tuple[str, ...] = ("step",)) -> dict:
    """A checkpoint's `trainer_state.json`, checked: the `required` fields present, every known field of its type
    (an edited file is a one-line error, not a KeyError deep in the trainer)."""
    directory = Path(directory)
    try:
        state = json.loads((directory / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        _damaged(directory, e)
    if not isinstance(state, dict):
        _damaged(directory, f"{STATE_FILE} holds no JSON object")
    for key, kind in STATE_FIELDS.items():
        value = state.get(key)
        if value is None and key in required:
            _damaged(directory, f"{STATE_FILE} has no '{key}'")
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)
                                  or (kind is int and value < 0)):
            _damaged(directory, f"'{key}' in {STATE_FILE} is {json.dumps(value)[:40]}, not "
                                f"{'a count' if kind is int else 'a JSON object'}")
    return state


def load_optimizer_states(optimizers: list[torch.optim.Optimizer], states: list[dict], source: str | Path) -> None:
    """Restore the optimizers of a resumed run; a checkpoint saved with other optimizer settings is an error."""
    try:
        for opt, state in zip(optimizers, states, strict=True):
            opt.load_state_dict(state)
    except (ValueError, KeyError) as e:
        raise GhoulError(f"{source} was saved with other optimizer settings ({str(e).splitlines()[0][:200]}): resume "
                         "with the --optimizer it was trained with") from None
