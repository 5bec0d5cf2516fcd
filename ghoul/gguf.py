"""`ghoul export gguf`: a checkpoint as one GGUF file, its tokenizer inside, that llama.cpp, Ollama and LM Studio run,
with an Ollama Modelfile beside it.

The file is written from the Hugging Face form that `ghoul.hf` exports, as llama.cpp's own converter reads it: GPT-2's
switches (tied or untied head) become llama.cpp's `gpt2` graph, LLaMA's its `llama` graph, and LLaMA's with QK-norm
its `qwen3` graph. The `llama` graph rotates adjacent pairs (x[2i], x[2i + 1]) where ghoul rotates (x[i], x[i + hs/2]),
so the rows of each head's query and key matrices are interleaved to match, as llama.cpp's convert_hf_to_gguf.py
does; the `qwen3` graph rotates as ghoul does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ghoul.checkpoint import read_model_config
from ghoul.config import option
from ghoul.errors import GhoulError
from ghoul.files import atomic_write, atomic_write_text, refuse_input_as_output
from ghoul.hf import GPT2, export_family, exported_weights, gpt2_config, language_config, llama_config, llama_state
from ghoul.layout import WEIGHTS_FILE, resolve_checkpoint
from ghoul.sampling import READING_SAMPLING
from ghoul.tokenizer import Tokenizer, load_tokenizer
from ghoul.tokenizer.bpe import GPT4_PATTERN, BPETokenizer
from ghoul.tokenizer.gpt2 import EOT, GPT2_PATTERN, gpt2_file

if TYPE_CHECKING:
    import gguf

    from ghoul.model import GPTConfig

DTYPES = ("f32", "f16", "q8_0")
# llama.cpp's gpt2 graph takes an untied output matrix too, where Hugging Face's GPT2LMHeadModel ties it
GPT2_SWITCHES = {k: v for k, v in GPT2.items() if k != "tie_embeddings"}
# ghoul's pre-split patterns -> llama.cpp's pre-tokenizer with the same split (src/llama-vocab.cpp). "dbrx" is
# GPT-4's cl100k split without LLaMA 3's shortcut of taking a whole word that is in the vocabulary (ignore_merges),
# which gives other ids than merging does; tests/test_gguf.py compares the ids on real text.
PRE_TOKENIZERS = {GPT2_PATTERN: "gpt-2", GPT4_PATTERN: "dbrx"}
NOT_EXPORTABLE = ("has no llama.cpp equivalent; exportable are GPT-2 (norm layernorm, activation gelu, position "
                  "learned, bias True; tied or untied head), LLaMA (norm rmsnorm, activation swiglu, position rotary, "
                  "bias False) and LLaMA with qk_norm (Qwen3), all with norm_position pre and no MoE")
GGUF_MAGIC = b"GGUF"  # the first bytes of every GGUF file (ggml's docs/gguf.md)
# sampling of the Modelfile: ghoul's reading settings, with what Ollama adds by default turned off (a top-p of 0.9 and
# a repeat penalty), which ghoul's sampler does not apply
SAMPLING = {**READING_SAMPLING, "top_p": 1.0, "repeat_penalty": 1.0}


@dataclass
class GgufConfig:
    checkpoint: Path = option(help="ghoul model directory (or run directory) to export", positional=True)
    out: Path = option(help="the GGUF file to write (an Ollama Modelfile is written beside it)", positional=True)
    dtype: str = option("f16", "weight type of the matrices: f32 (exact), f16 (half the size) or q8_0 (8-bit, "
                               "about a quarter); norms and biases stay f32", choices=list(DTYPES))


def export_gguf(checkpoint: str | Path, out: str | Path, dtype: str = "f16") -> Path:
    """Write the ghoul model directory `checkpoint` as the GGUF file `out`, and a Modelfile beside it."""
    gguf = _gguf()
    if dtype not in DTYPES:
        raise GhoulError(f"unknown GGUF dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    model_dir, out = resolve_checkpoint(checkpoint), Path(out)
    config = language_config(model_dir, read_model_config(model_dir))
    check_target(out, model_dir / WEIGHTS_FILE)
    arch = export_family(config, model_dir, NOT_EXPORTABLE, GPT2_SWITCHES)  # llama.cpp's architecture of that name
    tok = checked_tokenizer(model_dir, config.vocab_size)
    ollama = out.parent / "Modelfile"
    text = modelfile(out, config)
    if ollama.is_file() and ollama.read_text(encoding="utf-8", errors="replace") != text:  # a user's is never lost
        raise GhoulError(f"{ollama} exists and is not the Modelfile this export writes (another model's, or edited): "
                         "move it away, or export into another folder")
    state = exported_weights(model_dir, config)
    writer = gguf.GGUFWriter(None, arch)
    writer.add_name(model_dir.parent.name if model_dir.name.startswith("step_") else model_dir.name)
    add_hyperparameters(writer, arch, config, state)
    add_tokenizer(writer, tok, config.vocab_size)
    writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                          "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype])
    for name, tensor in gguf_tensors(arch, config, state).items():
        add_tensor(writer, name, tensor, dtype)
    atomic_write(out, lambda tmp: _write_file(writer, tmp))
    atomic_write_text(ollama, text)
    return out


def _gguf() -> Any:
    """The gguf package, imported on use: it is the optional extra ghoul[gguf] (a missing one gives the one-line
    "pip install 'ghoul[gguf]'"), and `ghoul export gguf --help` works without it."""
    import gguf  # the optional extra

    return gguf


def check_target(out: Path, weights: Path) -> None:
    """Refuse a target that is a folder, a file other than a GGUF (an earlier export is replaced; a user's file of
    another kind never is), inside the model directory, or the Modelfile's place (a one-line error)."""
    if out.is_dir():
        raise GhoulError(f"{out} is a directory: give the path of the GGUF file to write, e.g. {out / 'model.gguf'}")
    if out.name == "Modelfile" or (out.parent / "Modelfile").is_dir():
        raise GhoulError(f"{out.parent / 'Modelfile'} is where the Ollama Modelfile goes: give another path")
    refuse_input_as_output(out, weights.parent, flag="OUT")  # the model directory, its weights and config
    if out.is_file():
        with open(out, "rb") as f:
            if f.read(4) != GGUF_MAGIC:
                raise GhoulError(f"{out} exists and is not a GGUF file: give another OUT, or move it away first")


def checked_tokenizer(model_dir: Path, vocab_size: int) -> Tokenizer:
    """The model's tokenizer when llama.cpp has an exact equivalent: GPT-2's, or an own byte-level BPE whose
    pre-split pattern llama.cpp has; a one-line error otherwise."""
    tok = load_tokenizer(model_dir)
    if isinstance(tok, BPETokenizer):
        if tok.pat_str not in PRE_TOKENIZERS:
            raise GhoulError(f"{model_dir}: its BPE tokenizer's pre-split pattern ({tok.pattern}) has no llama.cpp "
                             "pre-tokenizer; only the gpt2 and gpt4 patterns export")
    elif tok.name != "gpt2":
        raise GhoulError(f"{model_dir}: a {tok.name} tokenizer has no llama.cpp equivalent; only byte-level BPE "
                         "tokenizers export (gpt2, or one made by `ghoul tokenizer train`)")
    if tok.vocab_size > vocab_size:
        raise GhoulError(f"{model_dir}: its tokenizer has {tok.vocab_size:,} tokens but the model only "
                         f"{vocab_size:,} rows: export the model trained with this tokenizer")
    return tok


def vocabulary(tok: Tokenizer) -> tuple[dict[str, int], list[str]]:
    """The tokens (GPT-2's printable form of their bytes: a space is Ġ) with their ids, and the merges "a b" in
    rank order, as GPT-2's vocab.json and merges.txt hold them."""
    if isinstance(tok, BPETokenizer):
        vocab, merges = tok.gpt2_vocab_and_merges()
        if len(vocab) < tok.vocab_size:
            raise GhoulError("the BPE tokenizer has two tokens with the same bytes, and a GGUF vocabulary holds "
                             "each token once")
        return vocab, [f"{a} {b}" for a, b in merges]
    vocab = json.loads(gpt2_file("encoder.json").read_text(encoding="utf-8"))  # GPT-2's own files
    merges = gpt2_file("vocab.bpe").read_text(encoding="utf-8").splitlines()[1:]  # after the "#version" line
    return vocab, [line for line in merges if line]


def add_tokenizer(writer: gguf.GGUFWriter, tok: Tokenizer, n_vocab: int) -> None:
    """llama.cpp's byte-level BPE ("gpt2" model): tokens, their types, merges, pre-tokenizer and <|endoftext|> as
    bos and eos, never added to a prompt. Ids past the tokenizer's (a larger model vocabulary) are unused tokens."""
    gguf = _gguf()
    vocab, merges = vocabulary(tok)
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    types = [gguf.TokenType.UNUSED] * n_vocab
    own = isinstance(tok, BPETokenizer)
    specials = set(tok.special_tokens.values()) if own else {tok.eot_id}  # GPT-2 has <|endoftext|> alone
    for text, i in vocab.items():
        tokens[i] = text
        types[i] = gguf.TokenType.CONTROL if i in specials else gguf.TokenType.NORMAL
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(PRE_TOKENIZERS[tok.pat_str if own else GPT2_PATTERN])
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tok.eot_id)
    writer.add_eos_token_id(tok.eot_id)
    writer.add_add_bos_token(False)  # ghoul's prompts start with their text, and so does its training data
    writer.add_add_eos_token(False)


def add_hyperparameters(writer: gguf.GGUFWriter, arch: str, config: GPTConfig, state: dict[str, torch.Tensor]) -> None:
    """The architecture's keys, from the Hugging Face config.json that `ghoul export hf` writes."""
    writer.add_vocab_size(config.vocab_size)
    writer.add_block_count(config.n_layer)
    if arch == "gpt2":
        hf = gpt2_config(config)
        writer.add_context_length(hf["n_positions"])
        writer.add_embedding_length(hf["n_embd"])
        writer.add_feed_forward_length(4 * hf["n_embd"])  # GPT-2's MLP, as ghoul's gelu MLP
        writer.add_head_count(hf["n_head"])
        writer.add_layer_norm_eps(hf["layer_norm_epsilon"])
        return
    hf = llama_config(config, state)
    writer.add_context_length(hf["max_position_embeddings"])
    writer.add_embedding_length(hf["hidden_size"])
    writer.add_feed_forward_length(hf["intermediate_size"])
    writer.add_head_count(hf["num_attention_heads"])
    writer.add_head_count_kv(hf["num_key_value_heads"])
    writer.add_key_length(hf["head_dim"])
    writer.add_value_length(hf["head_dim"])
    writer.add_rope_dimension_count(hf["head_dim"])  # every dimension of a head rotates
    writer.add_rope_freq_base(hf["rope_theta"])
    writer.add_layer_norm_rms_eps(hf["rms_norm_eps"])


def gguf_tensors(arch: str, config: GPTConfig, state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The weights as float32 arrays under llama.cpp's names, through their Hugging Face names. Linear weights keep
    PyTorch's (out, in) layout, which is what GGUF stores."""
    gguf = _gguf()
    hf_state = state if arch == "gpt2" else llama_state(state)  # ghoul's names are GPT-2's Hugging Face names
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], config.n_layer)
    out = {}
    for key, tensor in hf_state.items():
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise GhoulError(f"weight {key} has no llama.cpp {arch} name")  # a new ghoul weight this export lacks
        if arch == "llama" and key.endswith(("q_proj.weight", "k_proj.weight")):
            tensor = interleave_rotary(tensor, config.n_head)
        out[name] = tensor.float().numpy()
    return out


def interleave_rotary(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """Reorder each head's output rows from ghoul's rotary pairs (i, i + hs/2) to llama.cpp's (2i, 2i + 1): row 2i
    takes row i, row 2i + 1 takes row i + hs/2 (convert_hf_to_gguf.py's LlamaModel.permute)."""
    out_rows, *rest = weight.shape
    halves = weight.reshape(n_head, 2, out_rows // n_head // 2, *rest)  # (nh, 2, hs/2, in)
    return halves.transpose(1, 2).reshape(weight.shape)  # (nh * hs, in)


def add_tensor(writer: gguf.GGUFWriter, name: str, tensor: np.ndarray, dtype: str) -> None:
    """Add one weight in `dtype`; vectors (norm gains, biases) stay float32, as llama.cpp's converter keeps them, and
    a q8_0 matrix whose rows do not fill whole 32-value blocks falls back to f16."""
    gguf = _gguf()
    q8_0 = gguf.GGMLQuantizationType.Q8_0
    if tensor.ndim == 1 or dtype == "f32":
        writer.add_tensor(name, tensor.astype(np.float32))
    elif dtype == "q8_0" and tensor.shape[-1] % gguf.GGML_QUANT_SIZES[q8_0][0] == 0:
        writer.add_tensor(name, gguf.quants.quantize(tensor, q8_0), raw_dtype=q8_0)
    else:
        writer.add_tensor(name, tensor.astype(np.float16))


def _write_file(writer: gguf.GGUFWriter, path: Path) -> None:
    writer.write_header_to_file(path)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def modelfile(out: Path, config: GPTConfig) -> str:
    """An Ollama Modelfile for the GGUF `out` beside it: the prompt continued as it is (no chat template), a stop at
    <|endoftext|>, and a context no longer than the model was trained for (learned positions end there)."""
    lines = [f"FROM ./{out.name}", "", "# a story model continues the text it is given: no chat template",
             'TEMPLATE """{{ .Prompt }}"""', f'PARAMETER stop "{EOT}"',
             f"PARAMETER num_ctx {config.block_size}", f"PARAMETER num_predict {config.block_size // 2}"]
    lines += [f"PARAMETER {key} {value}" for key, value in SAMPLING.items()]
    return "\n".join(lines) + "\n"


def run(cfg: GgufConfig) -> Path:
    out = export_gguf(cfg.checkpoint, cfg.out, cfg.dtype)
    size = out.stat().st_size
    shown = f"{size / 2**20:,.1f} MiB" if size >= 2**20 else f"{size / 2**10:,.1f} KiB"  # a small model: not 0.0 MiB
    print(f"wrote {out} ({shown}, {cfg.dtype}) and {out.parent / 'Modelfile'}: run it with "
          f"`llama-cli -m {out}`, or `ollama create my-ghoul -f {out.parent / 'Modelfile'}`")
    return out
