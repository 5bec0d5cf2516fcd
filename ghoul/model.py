"""The GPT-2 model: config and presets, the transformer, and sampling with a key/value cache.

Parameter names follow Hugging Face's GPT-2 (`transformer.wte`, `transformer.h.0.attn.c_attn`, `lm_head`), so the
official weights load by name and serve as a correctness oracle. Linear layers keep PyTorch's (out, in) layout;
`ghoul.hf` transposes to and from GPT-2's Conv1D (in, out) layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
from torch.nn import functional as F

from ghoul.errors import GhoulError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class GPTConfig:
    block_size: int = 1024  # longest context, in tokens (learned position embeddings)
    vocab_size: int = 50257  # GPT-2's 50,000 merges + 256 bytes + <|endoftext|>
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0  # GPT-2 pretraining used 0.1; modern short runs use none
    bias: bool = True  # biases in Linear layers and LayerNorms, as GPT-2
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head != 0:
            raise GhoulError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) <= 0:
                raise GhoulError(f"model {name} must be positive, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise GhoulError(f"dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def from_name(cls, name: str, **overrides) -> GPTConfig:
        """A preset by name (`gpt2`, `gpt2-medium`, `gpt2-large`, `gpt2-xl`, `tiny`, `small`), fields overridable."""
        if name not in PRESETS:
            raise GhoulError(f"unknown model preset '{name}'; presets: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, data: dict) -> GPTConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# Presets are data. The four GPT-2 sizes are OpenAI's (Radford et al. 2019, table 2); `tiny` and `small` are
# CPU sizes for tests and demos (about 0.8M and 30M parameters with the GPT-2 vocabulary).
PRESETS: dict[str, dict] = {
    "tiny": dict(n_layer=2, n_head=2, n_embd=16, block_size=128),
    "small": dict(n_layer=6, n_head=6, n_embd=384, block_size=256),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),
}


class KVCache:
    """Keys and values of every layer for the tokens seen so far, preallocated for `max_len` positions."""

    def __init__(self, config: GPTConfig, batch_size: int, max_len: int, device, dtype) -> None:
        hs = config.n_embd // config.n_head
        shape = (config.n_layer, batch_size, config.n_head, max_len, hs)
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.pos = 0  # number of positions filled; advanced once per forward, after the last layer

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        T = k.size(2)
        self.k[layer, :, :, self.pos:self.pos + T] = k
        self.v[layer, :, :, self.pos:self.pos + T] = v
        return self.k[layer, :, :, :self.pos + T], self.v[layer, :, :, :self.pos + T]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.residual = True  # scaled at init, see GPT._init_weights
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        B, T, C = x.size()
        hs = C // self.n_head
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        past = 0
        if cache is not None:
            past = cache.pos
            k, v = cache.update(layer, k, v)  # (B, nh, past + T, hs)
        if past > 0 and T > 1:
            raise ValueError("the KV cache takes a multi-token chunk only as the first (prefill) call")
        # A prefill (or plain forward) is causal; a single new token attends to everything before it.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=past == 0 and T > 1,
                                           dropout_p=self.dropout if self.training else 0.0)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.residual = True
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))  # GPT-2's "gelu_new"


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer)  # pre-LayerNorm residual blocks (GPT-2)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied, as GPT-2 (counted once)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            # GPT-2 scales the residual projections by 1/sqrt(2 * n_layer): two residual adds per block.
            std = 0.02 / math.sqrt(2 * self.config.n_layer) if getattr(module, "residual", False) else 0.02
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters, the tied embedding counted once; `non_embedding` leaves out both embedding tables."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wte.weight.numel() + self.transformer.wpe.weight.numel()
        return n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward): 6 per weight plus attention's 12 * L * T * C
        (PaLM, Chowdhery et al. 2022, appendix B); position embeddings do no matmul work."""
        c = self.config
        n = self.num_params() - self.transformer.wpe.weight.numel()
        return 6 * n + 12 * c.n_layer * seq_len * c.n_embd

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Final-LayerNorm hidden states (B, T, n_embd) of tokens `idx` (B, T), continuing `cache` if given."""
        B, T = idx.size()
        past = cache.pos if cache is not None else 0
        if past + T > self.config.block_size:
            raise ValueError(f"sequence of {past + T} tokens exceeds block_size {self.config.block_size}")
        pos = torch.arange(past, past + T, dtype=torch.long, device=idx.device)  # (T,)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for i, block in enumerate(self.transformer.h):
            x = block(x, cache, i)
        if cache is not None:
            cache.pos += T
        return self.transformer.ln_f(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, vocab) and, with `targets` (B, T; -1 = ignore), the mean cross-entropy loss."""
        logits = self.lm_head(self.hidden_states(idx))  # (B, T, V)
        loss = None
        if targets is not None:
            # float32 loss whatever the autocast dtype: the log-softmax over 50k classes needs the precision
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss

    @torch.inference_mode()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, eos_id: int | None = None, generator: torch.Generator | None = None,
                 use_cache: bool = True) -> torch.Tensor:
        """Continue each row of `idx` (B, T) by up to `max_new_tokens`; returns prompt + new tokens.

        `temperature=0` is greedy. Rows that produced `eos_id` are padded with it; generation stops early once
        every row has. Contexts longer than `block_size` are cropped to the last `block_size` tokens.
        """
        block = self.config.block_size
        # Decoding one token is a matrix-vector product bound by memory bandwidth; on CPUs the (in, out) layout of
        # the output projection streams about twice as fast as nn.Linear's (out, in), and it is the largest matrix.
        head_t = self.lm_head.weight.t().contiguous()  # (C, V)
        cache, finished = None, torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        for _ in range(max_new_tokens):
            if not use_cache:
                x = self.hidden_states(idx[:, -block:])
            elif cache is None or cache.pos >= block:
                # (re)fill the cache from the cropped context, so cropping gives what a no-cache forward gives
                context = idx[:, -block:]
                max_len = min(block, context.size(1) + max_new_tokens)
                cache = KVCache(self.config, idx.size(0), max_len, idx.device, head_t.dtype)
                x = self.hidden_states(context, cache)
            else:
                x = self.hidden_states(idx[:, -1:], cache)
            logits = x[:, -1, :] @ head_t  # (B, V)
            next_id = sample_next(logits, temperature, top_k, top_p, generator)  # (B,)
            if eos_id is not None:
                next_id = torch.where(finished, torch.full_like(next_id, eos_id), next_id)
                finished |= next_id == eos_id
            idx = torch.cat([idx, next_id[:, None]], dim=1)
            if eos_id is not None and bool(finished.all()):
                break
        return idx

    def save_pretrained(self, directory: str | Path, tokenizer=None) -> None:
        """Write `config.json` and `model.safetensors` (and an own tokenizer's file) into `directory`, atomically."""
        from ghoul.checkpoint import save_model_dir

        save_model_dir(self, directory, tokenizer)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> GPT:
        """Load a model directory written by `save_pretrained` (or by training)."""
        from ghoul.checkpoint import load_model_dir

        return load_model_dir(directory, device)

    @classmethod
    def from_hf(cls, directory: str | Path) -> GPT:
        """Load a directory saved by `transformers`' `GPT2LMHeadModel.save_pretrained`."""
        from ghoul.checkpoint import load_weights
        from ghoul.hf import read_hf_checkpoint

        config, state = read_hf_checkpoint(directory)
        model = cls(GPTConfig.from_dict(config))
        load_weights(model, state, directory)
        return model


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token id per row of `logits` (B, V): greedy at temperature 0, else sampled after top-k and top-p."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the tokens ranked above it already hold top_p of the mass (the best one always stays)
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
