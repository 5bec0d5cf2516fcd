"""The GPT-2 model: config and presets, the transformer, and sampling with a key/value cache.

Parameter names follow Hugging Face's GPT-2 (`transformer.wte`, `transformer.h.0.attn.c_attn`, `lm_head`), so the
official weights load by name and serve as a correctness oracle. Linear layers keep PyTorch's (out, in) layout;
`ghoul.hf` transposes to and from GPT-2's Conv1D (in, out) layout.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from ghoul.cross_entropy import head_cross_entropy
from ghoul.errors import GhoulError
from ghoul.sampling import Generators, sample_next

# The architecture switches of the learning stage; the first of each is GPT-2's.
NORMS = ("layernorm", "rmsnorm")
NORM_POSITIONS = ("pre", "post")
ACTIVATIONS = ("gelu", "relu", "relu2", "swiglu")
POSITIONS = ("learned", "rotary", "none")
# --pad-vocab's multiple: GPT-2's 50,257 tokens become 50,304 rows, a size GPU matmul tiles divide (nanoGPT's trick)
VOCAB_PADDING = 64


def vocab_padding(pad_vocab: bool) -> int:
    """GPTConfig.vocab_padding for --pad-vocab (VOCAB_PADDING) or --no-pad-vocab (1: the exact vocabulary)."""
    return VOCAB_PADDING if pad_vocab else 1


@dataclass
class GPTConfig:
    block_size: int = 1024  # longest context, in tokens (learned position embeddings)
    vocab_size: int = 50257  # GPT-2's 50,000 merges + 256 bytes + <|endoftext|>
    # Round the embedding and output tables up to a multiple of this (VOCAB_PADDING for speed). The extra rows
    # are never predicted nor looked up, and the Hugging Face export crops them.
    vocab_padding: int = 1
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0  # GPT-2 pretraining used 0.1; modern short runs use none
    bias: bool = True  # biases in Linear layers and LayerNorms, as GPT-2
    layer_norm_eps: float = 1e-5
    # Architecture experiments (the defaults are GPT-2; anything else has no Hugging Face GPT-2 equivalent)
    norm: str = "layernorm"  # or "rmsnorm"
    norm_position: str = "pre"  # "pre": normalise each sublayer's input (GPT-2); "post": after the residual add
    activation: str = "gelu"  # MLP nonlinearity: "gelu" (tanh approximation), "relu", "relu2", "swiglu"
    position: str = "learned"  # "learned" table (wpe), "rotary" embeddings, or "none" at all
    rope_theta: float = 10000.0  # base of the rotary frequencies (Su et al. 2021)
    tie_embeddings: bool = True  # lm_head shares the token embedding's weight, as GPT-2
    qk_norm: bool = False  # RMSNorm of each head's queries and keys before attention
    moe_experts: int = 0  # > 0: every MLP becomes a mixture of this many expert MLPs
    moe_top_k: int = 1  # experts each token is sent to
    moe_aux_weight: float = 0.01  # weight of the load-balancing loss (0.01: Fedus et al. 2022, section 2.2)

    def __post_init__(self) -> None:
        for name in ("block_size", "vocab_size", "vocab_padding", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) <= 0:
                raise GhoulError(f"model {name} must be positive, got {getattr(self, name)}")
        if self.n_embd % self.n_head != 0:  # after the check above: n_head 0 would divide by zero
            raise GhoulError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise GhoulError(f"dropout must be in [0, 1), got {self.dropout}")
        for name, allowed in (("norm", NORMS), ("norm_position", NORM_POSITIONS), ("activation", ACTIVATIONS),
                              ("position", POSITIONS)):
            if getattr(self, name) not in allowed:
                raise GhoulError(f"model {name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.position == "rotary" and (self.n_embd // self.n_head) % 2:
            raise GhoulError(f"rotary positions rotate pairs of dimensions: the head size n_embd / n_head = "
                             f"{self.n_embd // self.n_head} must be even")
        if self.moe_experts < 0 or (self.moe_experts and not 1 <= self.moe_top_k <= self.moe_experts):
            raise GhoulError(f"moe_experts must be >= 0 and moe_top_k in 1..moe_experts, got {self.moe_experts} "
                             f"experts and top-k {self.moe_top_k}")
        if self.moe_aux_weight < 0:
            raise GhoulError(f"moe_aux_weight must be >= 0, got {self.moe_aux_weight}")

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding and output tables: vocab_size rounded up to a multiple of vocab_padding."""
        return -(-self.vocab_size // self.vocab_padding) * self.vocab_padding

    @classmethod
    def from_name(cls, name: str, **overrides) -> GPTConfig:
        """A preset of PRESETS by name, fields overridable."""
        if name not in PRESETS:
            raise GhoulError(f"unknown model preset '{name}'; presets: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, data: dict) -> GPTConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# Presets are data. The four GPT-2 sizes are OpenAI's (Radford et al. 2019, table 2); `tiny` and `small` are
# CPU sizes for tests and demos (about 0.8M and 30M parameters with the GPT-2 vocabulary); `laptop` is the default
# run's model, what 2 CPU cores train well in minutes with a 4,096-token vocabulary (1.7M parameters; its switches
# were chosen by `ghoul learn compare`, its width by training runs of equal time, see the README).
PRESETS: dict[str, dict] = {
    "tiny": dict(n_layer=2, n_head=2, n_embd=16, block_size=128),
    "small": dict(n_layer=6, n_head=6, n_embd=384, block_size=256),
    "laptop": dict(n_layer=6, n_head=4, n_embd=128, block_size=256, norm="rmsnorm", position="rotary",
                   activation="swiglu", bias=False, qk_norm=True),
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


class RMSNorm(nn.RMSNorm):
    """nn.RMSNorm whose gain follows its input's dtype: under autocast q and k arrive in bfloat16 (QK-norm), and a
    float32 gain sends rms_norm to its slower unfused kernels, with a warning (the bfloat16 step of the default run:
    1.05x faster). The residual stream's norms see float32, where the cast is a no-op. Training on the CPU takes
    the gradient from `_RMSNormCPU`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.to(x.dtype)
        if x.device.type == "cpu" and torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
            return _RMSNormCPU.apply(x, weight, self.eps)
        return F.rms_norm(x, self.normalized_shape, weight, self.eps)


class _RMSNormCPU(torch.autograd.Function):
    """rms_norm over the last dimension with a hand-written gradient. On the CPU torch has a fused forward kernel but
    no fused backward, so autograd differentiates the composite (pow, mean, add, rsqrt, two products) in about a
    dozen element-wise passes; this takes five, for each of the 25 norms of a default-run step."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float | None) -> torch.Tensor:
        out, rstd = torch.ops.aten._fused_rms_norm(x, [x.size(-1)], weight, eps)  # rstd (..., 1), float32
        ctx.save_for_backward(x, weight, rstd)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        x, weight, rstd = ctx.saved_tensors
        x_hat = x * rstd  # float32, as the forward kernel computes it
        grad_hat = grad * weight.float()  # the gradient at x_hat, float32 as x_hat (a bfloat16 product loses digits)
        # x_hat = x * rstd(x): dx = rstd * (grad_hat - x_hat * mean(grad_hat * x_hat))
        dot = (grad_hat * x_hat).mean(dim=-1, keepdim=True)
        grad_x = torch.addcmul(grad_hat, x_hat, dot, value=-1).mul_(rstd).to(x.dtype)
        grad_weight = (grad * x_hat).sum(dim=tuple(range(x.dim() - 1))).to(weight.dtype)
        return grad_x, grad_weight, None


def make_norm(config: GPTConfig) -> nn.Module:
    """The configured normalisation over the n_embd features of the residual stream."""
    if config.norm == "rmsnorm":
        # RMSNorm (Zhang & Sennrich 2019): no mean subtraction and no bias; as fast and as good (LLaMA uses it)
        return RMSNorm(config.n_embd, eps=config.layer_norm_eps)
    return nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)


def rotary(pos: torch.Tensor, head_size: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and signed sin (T, hs) of the rotary angles at absolute positions `pos` (T,) (RoFormer, Su et al. 2021),
    laid out for apply_rotary: pair i of the half split (dimensions i and i + hs/2) turns by angle i."""
    inv_freq = theta ** -(torch.arange(0, head_size, 2, device=pos.device, dtype=torch.float32) / head_size)
    angles = pos.float()[:, None] * inv_freq[None, :]  # (T, hs/2)
    cos, sin = angles.cos(), angles.sin()
    return torch.cat([cos, cos], dim=-1), torch.cat([-sin, sin], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x[i], x[i + hs/2]) of x (B, nh, T, hs) by its position's angle (GPT-NeoX's half split):
    (x1 cos - x2 sin, x2 cos + x1 sin), where swapping the halves is one roll. Three kernels instead of seven,
    forward and backward alike, which matters on CPUs where element-wise work is a large part of a step."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # under autocast, q and k must keep one dtype for attention
    return torch.addcmul(x * cos, x.roll(x.size(-1) // 2, dims=-1), sin)  # (B, nh, T, hs)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs) -> torch.Tensor:
    """Scaled dot-product attention (PyTorch's SDPA kernels). On the CPU, bfloat16 that will be trained through runs
    it in float32: the CPU flash kernel's backward took 96 ms in bfloat16 against 29 ms in float32 for the default
    run's six layers (Sapphire Rapids, AMX), and the casts cost little beside it. Inference keeps bfloat16, where
    casting a long key/value cache at every token would cost more than the forward saves."""
    if q.device.type == "cpu" and q.dtype == torch.bfloat16 and q.requires_grad:
        with torch.autocast("cpu", enabled=False):  # autocast would cast the inputs back to bfloat16
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), **kwargs).to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, **kwargs)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.residual = True  # scaled at init, see GPT._init_weights
        self.resid_dropout = nn.Dropout(config.dropout)
        if config.qk_norm:
            # QK-norm (Henry et al. 2020; Dehghani et al. 2023): bounded attention logits, steadier training
            hs = config.n_embd // config.n_head
            self.q_norm = RMSNorm(hs, eps=config.layer_norm_eps)
            self.k_norm = RMSNorm(hs, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        B, T, C = x.size()
        hs = C // self.n_head
        # (B, nh, T, hs) each
        q, k, v = (t.view(B, T, self.n_head, hs).transpose(1, 2) for t in self.c_attn(x).split(C, dim=2))
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)  # normalised over hs, per head
        if rope is not None:  # before caching: the cache holds keys already rotated to their own positions
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        past = 0
        if cache is not None:
            past = cache.pos
            k, v = cache.update(layer, k, v)  # (B, nh, past + T, hs)
        if past > 0 and T > 1:
            raise ValueError("the KV cache takes a multi-token chunk only as the first (prefill) call")
        # A prefill (or plain forward) is causal; a single new token attends to everything before it.
        y = attention(q, k, v, is_causal=past == 0 and T > 1,
                      dropout_p=self.dropout if self.training else 0.0)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.activation = config.activation
        hidden = 4 * config.n_embd
        if self.activation == "swiglu":
            # a gated MLP has three matrices; 2/3 of the width keeps the parameters of the 4x MLP (LLaMA's choice)
            hidden = 2 * hidden // 3
        self.c_fc = nn.Linear(config.n_embd, 2 * hidden if self.activation == "swiglu" else hidden, bias=config.bias)
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.c_proj.residual = True
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)  # (B, T, hidden), or (B, T, 2 * hidden) for swiglu
        if self.activation == "gelu":
            h = F.gelu(h, approximate="tanh")  # GPT-2's "gelu_new"
        elif self.activation == "relu":
            h = F.relu(h)
        elif self.activation == "relu2":
            h = F.relu(h).square()  # squared ReLU (Primer, So et al. 2021)
        else:
            gate, up = h.chunk(2, dim=-1)  # SwiGLU (Shazeer 2020, "GLU Variants Improve Transformer")
            h = F.silu(gate) * up  # (B, T, hidden)
        return self.dropout(self.c_proj(h))


class MoE(nn.Module):
    """A mixture of expert MLPs: a linear router sends each token to its top-k experts, whose outputs are summed
    weighted by the router's probabilities (Switch Transformer, Fedus et al. 2022; top-k > 1 as GShard)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.top_k = config.moe_top_k
        self.router = nn.Linear(config.n_embd, config.moe_experts, bias=False)
        self.experts = nn.ModuleList([MLP(config) for _ in range(config.moe_experts)])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The output (B, T, C) and the load-balancing loss, 1 when the experts share the tokens evenly."""
        B, T, C = x.size()
        x = x.reshape(B * T, C)  # (N, C): routing is per token
        probs = self.router(x).float().softmax(dim=-1)  # (N, E)
        gates, chosen = probs.topk(self.top_k, dim=-1)  # (N, k) each
        out = torch.zeros_like(x)  # (N, C)
        # the N * k assignments grouped by expert, in token order within each; one read of the group sizes is the
        # layer's only GPU-to-host sync (a nonzero per expert was one each)
        picked, weight = chosen.flatten(), gates.flatten().to(x.dtype)  # (N * k,) each
        sizes = picked.bincount(minlength=len(self.experts)).tolist()
        for expert, picks in zip(self.experts, picked.argsort(stable=True).split(sizes), strict=True):
            rows = picks // self.top_k  # the tokens sent to this expert
            out.index_add_(0, rows, expert(x[rows]) * weight[picks, None])
        # Switch's auxiliary loss E * sum_e f_e * P_e: f_e the share of assignments expert e got (no gradient),
        # P_e its mean router probability; minimised by a uniform spread of both
        E = len(self.experts)
        share = F.one_hot(chosen, E).sum(dim=(0, 1)).float() / chosen.numel()  # (E,)
        aux = E * (share * probs.mean(dim=0)).sum()
        return out.view(B, T, C), aux


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.post_norm = config.norm_position == "post"
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config)
        self.mlp = MoE(config) if config.moe_experts else MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The block's output (B, T, C) and its MoE load-balancing loss (None for a dense MLP)."""
        if self.post_norm:
            # post-norm, as the original Transformer (Vaswani et al. 2017); needs warmup more (Xiong et al. 2020)
            x = self.ln_1(x + self.attn(x, cache, layer, rope))
            y, aux = self._mlp(x)
            return self.ln_2(x + y), aux
        x = x + self.attn(self.ln_1(x), cache, layer, rope)  # pre-norm residual blocks (GPT-2)
        y, aux = self._mlp(self.ln_2(x))
        return x + y, aux

    def _mlp(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.mlp(x) if isinstance(self.mlp, MoE) else (self.mlp(x), None)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        # set from outside (the trainer's --activation-checkpointing), like compile and DDP: not part of the model
        self.checkpoint_blocks = False
        self.config = config
        modules = dict(wte=nn.Embedding(config.padded_vocab_size, config.n_embd))
        if config.position == "learned":
            modules["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        self.transformer = nn.ModuleDict(dict(
            **modules,
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=make_norm(config),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight  # tied, as GPT-2 (counted once)
        self.apply(self._init_weights)
        with torch.no_grad():  # padding rows stay zero: no token looks them up and the loss masks them
            self.transformer.wte.weight[config.vocab_size:] = 0
            self.lm_head.weight[config.vocab_size:] = 0

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            # GPT-2 scales the residual projections by 1/sqrt(2 * n_layer): two residual adds per block.
            std = 0.02 / math.sqrt(2 * self.config.n_layer) if getattr(module, "residual", False) else 0.02
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def _numel(self, name: str) -> int:
        return self.transformer[name].weight.numel() if name in self.transformer else 0

    def num_params(self) -> int:
        """Parameters, the tied embedding counted once."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward): 6 per weight plus attention's 12 * L * T * C
        (PaLM, Chowdhery et al. 2022, appendix B); lookups (position table, untied token table) and the experts
        a token is not sent to do no matmul work."""
        c = self.config
        n = self.num_params() - self._numel("wpe") - (0 if c.tie_embeddings else self._numel("wte"))
        if c.moe_experts:
            expert = sum(p.numel() for p in self.transformer.h[0].mlp.experts[0].parameters())
            n -= c.n_layer * (c.moe_experts - c.moe_top_k) * expert
        return 6 * n + 12 * c.n_layer * seq_len * c.n_embd

    def _trunk(self, idx: torch.Tensor, cache: KVCache | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Final-norm hidden states (B, T, n_embd) and the mean MoE load-balancing loss over layers (or None)."""
        B, T = idx.size()
        past = cache.pos if cache is not None else 0
        if past + T > self.config.block_size:
            raise ValueError(f"sequence of {past + T} tokens exceeds block_size {self.config.block_size}")
        pos = torch.arange(past, past + T, dtype=torch.long, device=idx.device)  # (T,) absolute positions
        x = self.transformer.wte(idx)  # (B, T, C)
        if "wpe" in self.transformer:
            x = x + self.transformer.wpe(pos)  # (B, T, C)
        rope = None
        if self.config.position == "rotary":
            rope = rotary(pos, self.config.n_embd // self.config.n_head, self.config.rope_theta)
        x = self.transformer.drop(x)
        auxes = []
        for i, block in enumerate(self.transformer.h):
            if self.checkpoint_blocks and self.training and cache is None:
                # keep only each block's input and recompute the rest in the backward pass: memory for compute
                x, aux = checkpoint(block, x, None, i, rope, use_reentrant=False)
            else:
                x, aux = block(x, cache, i, rope)
            if aux is not None:
                auxes.append(aux)
        if cache is not None:
            cache.pos += T
        # the mean over layers, so that the loss weight does not depend on depth
        return self.transformer.ln_f(x), (torch.stack(auxes).mean() if auxes else None)

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Final-norm hidden states (B, T, n_embd) of tokens `idx` (B, T), continuing `cache` if given."""
        return self._trunk(idx, cache)[0]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (..., vocab_size) of hidden states x (..., n_embd); the table's padding rows left out."""
        return self.lm_head(x)[..., :self.config.vocab_size]

    def decoding_head(self) -> torch.Tensor:
        """The output matrix (n_embd, vocab_size) for `hidden @ head` one token at a time. Decoding is a
        matrix-vector product bound by memory bandwidth; on CPUs this (in, out) layout streams about twice as fast
        as nn.Linear's (out, in), and it is the largest matrix."""
        return self.lm_head.weight[:self.config.vocab_size].t().contiguous()

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None
                ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(logits (B, T, vocab), None) without `targets`; (None, loss) with `targets` (B, T; -1 = ignore): the
        mean cross-entropy, computed with the output layer without keeping the logits (ghoul.cross_entropy). In
        training mode a mixture of experts adds `moe_aux_weight` times its load-balancing loss."""
        x, aux = self._trunk(idx)
        if targets is None:
            return self.logits(x), None
        loss = head_cross_entropy(x.reshape(-1, x.size(-1)), self.lm_head.weight, targets.reshape(-1),
                                  self.config.vocab_size)
        if aux is not None and self.training:  # a training regulariser: evaluation reports the LM loss alone
            loss = loss + self.config.moe_aux_weight * aux
        return None, loss

    @torch.inference_mode()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, eos_id: int | None = None, generator: Generators = None,
                 use_cache: bool = True) -> torch.Tensor:
        """Continue each row of `idx` (B, T) by up to `max_new_tokens`; returns prompt + new tokens.

        `temperature=0` is greedy. Rows that produced `eos_id` are padded with it; generation stops early once
        every row has. Contexts longer than `block_size` are cropped to the last `block_size` tokens.
        """
        finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        for next_id in self.sample_tokens(idx, max_new_tokens, temperature, top_k, top_p, generator, use_cache):
            if eos_id is not None:
                next_id = next_id.masked_fill(finished, eos_id)
                finished |= next_id == eos_id
            idx = torch.cat([idx, next_id[:, None]], dim=1)
            if eos_id is not None and bool(finished.all()):
                break
        return idx

    @torch.inference_mode()
    def sample_tokens(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                      top_p: float | None = None, generator: Generators = None, use_cache: bool = True
                      ) -> Iterator[torch.Tensor]:
        """The next token of each row of `idx` (B, T) as soon as it is sampled, `max_new_tokens` times (B,); a row
        depends only on its own tokens, so what a caller does with a finished row changes no other."""
        block = self.config.block_size
        head_t = self.decoding_head()  # (C, V)
        cache = None
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
            next_id = sample_next(x[:, -1, :] @ head_t, temperature, top_k, top_p, generator)  # (B,)
            yield next_id
            idx = torch.cat([idx, next_id[:, None]], dim=1)

