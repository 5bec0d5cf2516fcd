"""Hugging Face interop: read a `GPT2LMHeadModel` directory, and export a ghoul model as a GPT-2, LLaMA or Qwen3
directory (`ghoul export hf`) with its tokenizer (`ghoul.hf_tokenizer`).

GPT-2 differs from ghoul only in layout: its Conv1D stores weights as (in, out), nn.Linear as (out, in). LLaMA
needs no permutation either: ghoul's rotary embedding rotates the pairs (x[i], x[i + hs/2]) as Hugging Face's
`rotate_half` does, c_attn holds q, k, v in that order, and c_fc holds the SwiGLU gate before the up projection.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ghoul.checkpoint import STATE_FILE, TIED, load_weights, read_model_config, read_weights, write_weights
from ghoul.config import option
from ghoul.errors import GhoulError
from ghoul.eval.curves import REFERENCES
from ghoul.files import atomic_directory, read_json, read_jsonl, write_json
from ghoul.hf_tokenizer import TOKENIZER_FILES, export_tokenizer, write_tokenizer_files
from ghoul.layout import CONFIG_FILE, WEIGHTS_FILE, resolve_checkpoint
from ghoul.model import GPT, GPTConfig
from ghoul.tokenizer import Tokenizer
from ghoul.tokenizer.bpe import BPETokenizer

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
BUFFERS = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers older transformers versions saved
GELU_TANH = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")  # the same tanh approximation
# The architecture switches of the two families that export: GPT-2's (the GPTConfig defaults), and LLaMA's
# (Touvron et al. 2023), whose embeddings may be untied and whose qk_norm makes it Qwen3
GPT2 = dict(norm="layernorm", norm_position="pre", activation="gelu", position="learned", bias=True, qk_norm=False,
            moe_experts=0, tie_embeddings=True)
LLAMA = dict(norm="rmsnorm", norm_position="pre", activation="swiglu", position="rotary", bias=False, moe_experts=0)
NOT_EXPORTABLE = ("has no Hugging Face GPT-2 equivalent, nor a LLaMA one; exportable are GPT-2 (the GPTConfig "
                  "defaults) and LLaMA (norm rmsnorm, norm_position pre, activation swiglu, position rotary, bias "
                  "False, no MoE; tied or untied embeddings; qk_norm True gives Qwen3)")

# ghoul's names outside the blocks -> LLaMA's
TOP_NAMES = {"transformer.wte.weight": "model.embed_tokens.weight", "transformer.ln_f.weight": "model.norm.weight",
             "lm_head.weight": "lm_head.weight"}
# ghoul's names within a block -> the Hugging Face weights each holds, stacked along the output rows (a fused
# matrix holds several)
BLOCK_NAMES = {"ln_1": ("input_layernorm",), "ln_2": ("post_attention_layernorm",),
               "attn.c_attn": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
               "attn.c_proj": ("self_attn.o_proj",), "attn.q_norm": ("self_attn.q_norm",),
               "attn.k_norm": ("self_attn.k_norm",), "mlp.c_proj": ("mlp.down_proj",),
               "mlp.c_fc": ("mlp.gate_proj", "mlp.up_proj")}  # MLP.forward: gate, up = h.chunk(2)
# model_type of what export_hf writes -> the model card's name for it
ARCHITECTURES = {"gpt2": "GPT-2", "llama": "LLaMA-style (RMSNorm, SwiGLU, rotary positions)",
                 "qwen3": "Qwen3-style (LLaMA-style, with RMSNorm of queries and keys)"}


def transpose_conv1d(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` with its Conv1D matrices transposed: GPT-2's (in, out) <-> nn.Linear's (out, in), both ways alike."""
    return {k: v.t().contiguous() if k.endswith(CONV1D) else v for k, v in state.items()}


def load_hf_model(directory: str | Path) -> GPT:
    """A ghoul GPT with the weights of a directory saved by `transformers`' `GPT2LMHeadModel.save_pretrained`."""
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise GhoulError(f"{directory} is not a Hugging Face model directory: config.json is missing")
    hf = json.loads(config_path.read_text(encoding="utf-8"))
    if hf.get("model_type") != "gpt2":
        raise GhoulError(f"{config_path}: model_type is {hf.get('model_type')!r}; only GPT-2 checkpoints load")
    if hf.get("activation_function", "gelu_new") not in GELU_TANH:
        raise GhoulError(f"{config_path}: activation {hf['activation_function']!r} is not GPT-2's tanh GELU")
    model = GPT(GPTConfig(block_size=hf["n_positions"], vocab_size=hf["vocab_size"], n_layer=hf["n_layer"],
                          n_head=hf["n_head"], n_embd=hf["n_embd"], layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
                          dropout=0.0, bias=True))
    # GPT2Model files name the weights without "transformer."
    state = {(k if k.startswith(("transformer.", "lm_head.")) else "transformer." + k): v
             for k, v in _read_hf_weights(directory).items() if not k.endswith(BUFFERS)}
    load_weights(model, transpose_conv1d(state), directory)
    return model


def _read_hf_weights(directory: Path) -> dict[str, torch.Tensor]:
    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    legacy = directory / "pytorch_model.bin"
    if single.is_file():
        return read_weights(single)
    if index.is_file():
        shards = sorted(set(read_json(index)["weight_map"].values()))
        return {k: v for shard in shards for k, v in read_weights(directory / shard).items()}
    if legacy.is_file():
        return torch.load(legacy, map_location="cpu", weights_only=True)
    raise GhoulError(f"{directory} holds no model.safetensors or pytorch_model.bin")


def export_hf(model_dir: str | Path, out: str | Path) -> Path:
    """Write the ghoul model directory `model_dir` as a directory that transformers' `AutoModelForCausalLM` and
    `AutoTokenizer` load without custom code: a GPT2LMHeadModel, LlamaForCausalLM or Qwen3ForCausalLM."""
    model_dir, out = resolve_checkpoint(model_dir), Path(out)  # a run directory means its newest checkpoint
    cfg = read_model_config(model_dir)
    check_export_target(out, model_dir)
    config = language_config(model_dir, cfg)
    family = export_family(config, model_dir, NOT_EXPORTABLE)
    tokenizer = export_tokenizer(model_dir, config.vocab_size)
    state = exported_weights(model_dir, config)
    if family == "gpt2":
        hf_config, state = gpt2_config(config), transpose_conv1d(state)
    else:
        hf_config, state = llama_config(config, state), llama_state(state)
    eot = tokenizer.eot_id if tokenizer else None
    special_ids = dict(bos_token_id=eot, eos_token_id=eot, pad_token_id=eot)
    dtype = str(next(iter(state.values())).dtype).removeprefix("torch.")  # ghoul saves one dtype throughout
    hf_config.update(special_ids, torch_dtype=dtype)
    with atomic_directory(out) as tmp:
        write_json(tmp / "config.json", hf_config)
        write_weights(state, tmp / WEIGHTS_FILE)
        if tokenizer is not None:
            write_json(tmp / "generation_config.json", special_ids)
            write_tokenizer_files(tokenizer, tmp, config.block_size)
        card = model_card(model_dir, cfg, sum(t.numel() for t in state.values()), hf_config, tokenizer)
        (tmp / "README.md").write_text(card, encoding="utf-8")
    return out


def language_config(model_dir: Path, cfg: dict) -> GPTConfig:
    """The GPTConfig of the model directory whose config.json is `cfg`; a one-line error unless a language model."""
    if cfg.get("kind", "language") != "language":
        raise GhoulError(f"{model_dir} is a {cfg['kind']} model: only language models have a causal LM form")
    return GPTConfig.from_dict(cfg)


def exported_weights(model_dir: Path, config: GPTConfig) -> dict[str, torch.Tensor]:
    """The model's weights in ghoul's names as exports hold them: a tied head once (as the embedding), and exactly
    `vocab_size` rows in the embedding and head (the padding rows of --pad-vocab cropped)."""
    weights = model_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise GhoulError(f"{model_dir} has no {WEIGHTS_FILE}: the checkpoint is incomplete")
    state = {k: v for k, v in read_weights(weights).items() if k != TIED or not config.tie_embeddings}
    for key in ("transformer.wte.weight", TIED):
        if key in state:
            state[key] = state[key][:config.vocab_size].contiguous()
    return state


def export_family(config: GPTConfig, model_dir: Path, not_exportable: str, gpt2: dict = GPT2) -> str:
    """The family ("gpt2", "llama" or "qwen3") whose switches, `gpt2` or LLAMA, the model has; else a one-line error
    naming the switches that keep the nearer family out ("name = value"), then `not_exportable`."""
    off = {name: [f"{k} = {getattr(config, k)!r}" for k, v in switches.items() if getattr(config, k) != v]
           for name, switches in (("gpt2", gpt2), ("llama", LLAMA))}
    if not off["gpt2"]:
        return "gpt2"
    if not off["llama"]:
        return "qwen3" if config.qk_norm else "llama"
    raise GhoulError(f"{model_dir}: {', '.join(min(off.values(), key=len))} {not_exportable}")


def gpt2_config(config: GPTConfig) -> dict:
    """config.json of a GPT2LMHeadModel for a ghoul GPTConfig with GPT-2's switches."""
    c = config
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": c.vocab_size,
        "n_positions": c.block_size, "n_ctx": c.block_size, "n_embd": c.n_embd, "n_layer": c.n_layer,
        "n_head": c.n_head, "n_inner": None, "activation_function": "gelu_new", "resid_pdrop": c.dropout,
        "embd_pdrop": c.dropout, "attn_pdrop": c.dropout, "layer_norm_epsilon": c.layer_norm_eps,
        "initializer_range": 0.02, "tie_word_embeddings": True,
    }


def llama_config(config: GPTConfig, state: dict[str, torch.Tensor]) -> dict:
    """config.json of a LlamaForCausalLM (or Qwen3ForCausalLM, with `qk_norm`) for a ghoul GPTConfig."""
    c, qwen = config, config.qk_norm
    hf = {
        "architectures": ["Qwen3ForCausalLM" if qwen else "LlamaForCausalLM"],
        "model_type": "qwen3" if qwen else "llama",
        "vocab_size": c.vocab_size, "hidden_size": c.n_embd, "num_hidden_layers": c.n_layer,
        "intermediate_size": state["transformer.h.0.mlp.c_fc.weight"].size(0) // 2,  # gate and up stacked
        "num_attention_heads": c.n_head, "num_key_value_heads": c.n_head, "head_dim": c.n_embd // c.n_head,
        "hidden_act": "silu", "max_position_embeddings": c.block_size, "rms_norm_eps": c.layer_norm_eps,
        # rope_theta for transformers 4, rope_parameters for 5; "default" is plain RoFormer frequencies, no scaling
        "rope_theta": c.rope_theta, "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
        "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0, "tie_word_embeddings": c.tie_embeddings,
        "initializer_range": 0.02, "use_cache": True,
    }
    if qwen:  # every layer full causal attention, as ghoul's
        hf.update(use_sliding_window=False, sliding_window=None, max_window_layers=c.n_layer,
                  layer_types=["full_attention"] * c.n_layer)
    return hf


def llama_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ghoul's weights (embeddings already cropped) under LLaMA/Qwen3 names, fused matrices split."""
    out = {}
    for key, tensor in state.items():
        if key in TOP_NAMES:
            out[TOP_NAMES[key]] = tensor
        else:  # transformer.h.{i}.{module}.weight
            layer, name = key.removeprefix("transformer.h.").split(".", 1)
            module, kind = name.rsplit(".", 1)
            parts = BLOCK_NAMES[module]
            for part, piece in zip(parts, tensor.chunk(len(parts)), strict=True):
                out[f"model.layers.{layer}.{part}.{kind}"] = piece.contiguous()
    return out


# what export_hf writes: a folder holding anything else is not replaced
EXPORT_FILES = {CONFIG_FILE, WEIGHTS_FILE, "generation_config.json", "README.md", *TOKENIZER_FILES}


def check_export_target(out: Path, model_dir: Path) -> None:
    """The export replaces `out` whole: refuse anything there but an earlier export, and the model's own folders."""
    if model_dir.resolve().is_relative_to(out.resolve()):
        raise GhoulError(f"{out} holds the model being exported: give a new directory for the export")
    if out.exists() and not out.is_dir():
        raise GhoulError(f"{out} is a file: give a new directory for the export")
    if out.is_dir() and any(out.iterdir()):
        try:
            earlier = json.loads((out / "config.json").read_text(encoding="utf-8")).get("model_type") in ARCHITECTURES
        except (OSError, ValueError, AttributeError):
            earlier = False
        if not earlier:
            raise GhoulError(f"{out} is a folder that is not an earlier export, and the export would replace it "
                             "whole: give a new or empty directory")
        added = sorted(p.name for p in out.iterdir() if p.name not in EXPORT_FILES)  # a user's notes, say
        if added:
            raise GhoulError(f"{out} is an earlier export that also holds {', '.join(added[:3])}, which the export "
                             "would delete (it replaces the folder whole): move them away, or give a new directory")


def model_card(model_dir: Path, cfg: dict, n_params: int, hf_config: dict, tokenizer: Tokenizer | None) -> str:
    """A Hugging Face model card from what the run directory knows: architecture, training, HellaSwag, a sample."""
    run_dir = model_dir.parent
    state = read_json(model_dir / STATE_FILE, {})
    train = state.get("config", {})
    evals, log, samples = (read_jsonl(run_dir / name, missing_ok=True)
                           for name in ("eval.jsonl", "log.jsonl", "samples.jsonl"))
    hellaswag = next((r["hellaswag_acc"] for r in reversed(evals + log) if r.get("hellaswag_acc") is not None), None)
    model_type, cls = hf_config["model_type"], hf_config["architectures"][0]
    words = "gpt2" if tokenizer is not None and tokenizer.name == "gpt2" else "none exported"
    if isinstance(tokenizer, BPETokenizer):
        words = f"own byte-level BPE ({tokenizer.vocab_size:,} tokens, {tokenizer.pattern} pattern)"
    lines = ["---", "library_name: transformers", "pipeline_tag: text-generation", f"tags: [{model_type}, ghoul]",
             "---", "", f"# {model_dir.parent.name if state else model_dir.name}", "",
             f"A {ARCHITECTURES[model_type]} model trained with ghoul; it loads with "
             f"`transformers.AutoModelForCausalLM.from_pretrained` (a `{cls}`). For llama.cpp, Ollama or LM Studio, "
             f"`ghoul export gguf {model_dir} model.gguf` writes it as a GGUF file.", "",
             f"- architecture: {ARCHITECTURES[model_type]}, {cfg['n_layer']} layers, {cfg['n_head']} heads, width "
             f"{cfg['n_embd']}, context {cfg['block_size']} tokens, {n_params:,} parameters, tokenizer {words}"]
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
    push: str | None = option(None, "also upload the folder to this Hugging Face repository (log in first: "
                                    "hf auth login)", metavar="REPO_ID")

    def __post_init__(self) -> None:
        # the Hub's form of a repository id, checked before the export rather than after it, at the upload
        if self.push is not None and (not re.fullmatch(r"[\w.-]{1,96}(/[\w.-]{1,96})?", self.push)
                                      or ".." in self.push or "--" in self.push):
            raise GhoulError(f"--push {self.push!r} is no Hugging Face repository id: give NAME or OWNER/NAME "
                             "(letters, digits, '-', '_' and '.')")


def push_folder(out: Path, repo_id: str) -> None:
    """Upload an exported folder with huggingface_hub; any failure is one clear line, the folder stays written."""
    try:
        from huggingface_hub import HfApi  # the optional extra ghoul[hf]
    except ImportError:
        raise GhoulError(f"--push needs huggingface_hub: pip install 'ghoul[hf]' (the folder {out} is written)"
                         ) from None
    try:
        api = HfApi()
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(folder_path=str(out), repo_id=repo_id)
    except Exception as e:  # offline, not logged in, no write access: the hub client raises many kinds
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise GhoulError(f"could not push {out} to {repo_id} ({reason}); the folder is written: check the network "
                         "and that you are logged in (`hf auth login`), then run the command again") from None


def run(cfg: ExportConfig) -> Path:
    out = export_hf(cfg.checkpoint, cfg.out)
    print(f"wrote {out} (load it with transformers.AutoModelForCausalLM.from_pretrained('{out}'))")
    if cfg.push:
        push_folder(out, cfg.push)
        print(f"pushed to https://huggingface.co/{cfg.push}")
    return out
