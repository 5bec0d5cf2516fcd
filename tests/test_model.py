"""The GPT-2 model: parameter counts, initial loss, shapes, masking, and the meta device."""

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ghoul.checkpoint import load_model_dir, save_model_dir
from ghoul.errors import GhoulError
from ghoul.model import GPT, PRESETS, GPTConfig, RMSNorm
from tests.ops import OpNames

# OpenAI's GPT-2 sizes (tied matrix counted once), and the CPU presets.
EXPECTED = {"gpt2": 124_439_808, "gpt2-medium": 354_823_168, "gpt2-large": 774_030_080, "gpt2-xl": 1_557_611_200}


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_parameter_counts(name):
    with torch.device("meta"):  # no memory: __init__ does no data-dependent work
        model = GPT(GPTConfig.from_name(name))
    n = model.num_params()
    if name in EXPECTED:
        assert n == EXPECTED[name]
    elif name == "tiny":
        assert 0.5e6 < n < 1.5e6
    elif name == "laptop":  # no biases, RMSNorm gains, QK-norm gains: ghoul.plan's count, tested there
        assert n == 7_613_824  # 1,705,216 with the default run's 4,096-token vocabulary (README)
        with torch.device("meta"):
            assert GPT(GPTConfig.from_name(name, vocab_size=4096, vocab_padding=64)).num_params() == 1_705_216
        return
    else:
        assert 10e6 <= n <= 31e6
    c = model.config  # the closed form: embeddings + 12 C^2 + 13 C per layer + final norm
    formula = c.vocab_size * c.n_embd + c.block_size * c.n_embd + c.n_layer * (12 * c.n_embd**2 + 13 * c.n_embd)
    assert n == formula + 2 * c.n_embd


def test_unknown_preset_and_bad_config():
    with pytest.raises(GhoulError, match="unknown model preset 'gpt5'.*gpt2-xl"):
        GPTConfig.from_name("gpt5")
    with pytest.raises(GhoulError, match="divisible"):
        GPTConfig(n_embd=10, n_head=3)


def test_initial_loss_near_uniform():
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name("tiny"))
    idx = torch.randint(0, 50257, (4, 64))
    logits, loss = model(idx, idx.roll(-1, 1))
    assert logits is None  # with targets the logits are not kept
    assert model(idx)[0].shape == (4, 64, 50257)
    assert abs(loss.item() - math.log(50257)) < 0.1


def test_no_targets_gives_no_loss_and_ignore_index_skips():
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name("tiny"))
    idx = torch.randint(0, 50257, (2, 16))
    assert model(idx)[1] is None
    targets = idx.roll(-1, 1)
    masked = targets.clone()
    masked[:, :8] = -1
    loss = model(idx, masked)[1]
    logits = model(idx)[0]
    expected = torch.nn.functional.cross_entropy(logits[:, 8:].reshape(-1, 50257), targets[:, 8:].reshape(-1))
    assert torch.allclose(loss, expected, atol=1e-6)


def test_causality_future_tokens_do_not_change_past_logits():
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name("tiny")).eval()
    idx = torch.randint(0, 50257, (1, 20))
    other = idx.clone()
    other[0, 10:] = torch.randint(0, 50257, (10,))
    a, _ = model(idx)
    b, _ = model(other)
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-6)
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_residual_projections_scaled_at_init():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=8, n_head=4, n_embd=256, vocab_size=1000, block_size=64))
    std_proj = model.transformer.h[0].attn.c_proj.weight.std().item()
    std_fc = model.transformer.h[0].mlp.c_fc.weight.std().item()
    assert abs(std_fc - 0.02) < 0.002
    assert abs(std_proj - 0.02 / math.sqrt(16)) < 0.001
    assert model.lm_head.weight is model.transformer.wte.weight


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name("tiny"))
    idx = torch.randint(0, 50257, (2, 16))
    model(idx, idx.roll(-1, 1))[1].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


# ---- architecture switches (the learning stage) ----------------------------------------------------------------

VARIANTS = {
    "rmsnorm": dict(norm="rmsnorm"),
    "post-norm": dict(norm_position="post"),
    "relu": dict(activation="relu"),
    "relu2": dict(activation="relu2"),
    "swiglu": dict(activation="swiglu"),
    "rotary": dict(position="rotary"),
    "no-position": dict(position="none"),
    "untied": dict(tie_embeddings=False),
    "qk-norm": dict(qk_norm=True),
    "moe-top1": dict(moe_experts=4, moe_top_k=1),
    "moe-top2": dict(moe_experts=4, moe_top_k=2),
    "modern": dict(norm="rmsnorm", position="rotary", activation="swiglu", qk_norm=True, tie_embeddings=False),
}


def test_qk_norm_keeps_the_fused_kernel_under_bfloat16_autocast():
    """Under autocast q and k arrive in bfloat16: their norm must run rms_norm's fused kernel like the float32 norms
    of the residual stream, not the unfused path (and its warning) that a float32 gain sends it to."""
    model = GPT(small(**VARIANTS["modern"]))
    idx = torch.randint(0, 97, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.profiler.profile() as prof:
        model(idx)
    fused = sum(e.count for e in prof.key_averages() if e.key == "aten::_fused_rms_norm")
    assert fused == 2 * 2 + 1 + 2 * 2  # two per block, the final one, and q's and k's in each block


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("transposed", [False, True])
def test_rms_norm_gradients_match_the_definition(dtype, transposed):
    """RMSNorm's gradients, taken by hand on the CPU, against autograd through its definition x / rms(x) * w in
    float64: for the residual stream's norm and for QK-norm's, whose input is a transposed (non-contiguous) view,
    in float32 and in bfloat16 (autocast's q and k) as close as the rounding of bfloat16 allows."""
    torch.manual_seed(0)
    norm = RMSNorm(32, eps=1e-5)
    norm.weight.data = torch.rand(32) + 0.5
    x0, grad = torch.randn(2, 16, 4, 32), torch.randn(2, 4, 16, 32)
    view = (lambda t: t.transpose(1, 2)) if transposed else (lambda t: t.transpose(1, 2).contiguous())
    x = x0.clone().to(dtype).requires_grad_()
    norm(view(x)).backward(grad.to(dtype))
    x64, w64 = x0.double().requires_grad_(), norm.weight.detach().double().requires_grad_()
    h = view(x64)
    (h * (h.square().mean(-1, keepdim=True) + 1e-5).rsqrt() * w64).backward(grad.double())
    assert x.grad.dtype == dtype and norm.weight.grad.dtype == torch.float32
    tolerance = 1e-6 if dtype == torch.float32 else 5e-3  # relative, of the whole gradient
    for ours, exact in ((x.grad, x64.grad), (norm.weight.grad, w64.grad)):
        assert ((ours.double() - exact).norm() / exact.norm()).item() < tolerance


class AttentionDtypes(TorchDispatchMode):
    """The dtypes SDPA's kernels receive, forward and backward."""

    def __init__(self) -> None:
        super().__init__()
        self.dtypes: set[torch.dtype] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if "scaled_dot_product" in str(func):
            self.dtypes.add(args[0].dtype)
        return func(*args, **(kwargs or {}))


def test_cpu_attention_trains_in_float32_under_bfloat16_autocast():
    """The CPU flash kernel's backward is about 3x slower in bfloat16: a training forward under bfloat16 autocast runs
    attention in float32 (and hands bfloat16 on), while inference keeps bfloat16."""
    torch.manual_seed(0)
    model = GPT(small(**VARIANTS["modern"]))
    idx = torch.randint(0, 97, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16), AttentionDtypes() as training:
        loss = model(idx, idx.roll(-1, 1))[1]
        loss.backward()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), AttentionDtypes() as inference:
        model(idx)
    assert training.dtypes == {torch.float32}
    assert inference.dtypes == {torch.bfloat16}
    assert all(p.grad is not None for p in model.parameters())


def small(**overrides):
    return GPTConfig(**{**dict(n_layer=2, n_head=2, n_embd=32, vocab_size=97, block_size=32), **overrides})


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_shapes_and_gradients_reach_every_parameter(name):
    torch.manual_seed(0)
    model = GPT(small(**VARIANTS[name]))
    idx = torch.randint(0, 97, (4, 16))
    loss = model(idx, idx.roll(-1, 1))[1]
    assert model(idx)[0].shape == (4, 16, 97)
    assert abs(loss.item() - math.log(97)) < 0.3  # an untrained model of any variant is near uniform
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert no_grad == []
    assert model.hidden_states(idx).shape == (4, 16, 32)


def test_variant_structure():
    assert "transformer.wpe.weight" not in GPT(small(position="none")).state_dict()
    assert "transformer.wpe.weight" not in GPT(small(position="rotary")).state_dict()
    tied, untied = GPT(small()), GPT(small(tie_embeddings=False))
    assert untied.lm_head.weight is not untied.transformer.wte.weight
    assert untied.num_params() == tied.num_params() + 97 * 32
    rms = GPT(small(norm="rmsnorm"))
    assert isinstance(rms.transformer.ln_f, torch.nn.RMSNorm) and not hasattr(rms.transformer.ln_f, "bias")
    # SwiGLU at 2/3 of the width keeps the MLP's weight count (48 * 4 * 2 / 3 = 128 wide)
    def mlp_weights(**kw):
        mlp = GPT(small(n_embd=48, **kw)).transformer.h[0].mlp
        return mlp.c_fc.weight.numel() + mlp.c_proj.weight.numel()

    assert mlp_weights(activation="swiglu") == mlp_weights() == 8 * 48 * 48
    moe = GPT(small(moe_experts=4, moe_top_k=1))
    assert "transformer.h.0.mlp.experts.3.c_fc.weight" in moe.state_dict()
    # only the experts a token is sent to do work: top-1 of 4 costs what the dense model costs, plus the router
    assert moe.flops_per_token(32) == tied.flops_per_token(32) + 6 * 2 * 4 * 32


def test_defaults_are_gpt2():
    c = GPTConfig()
    assert (c.norm, c.norm_position, c.activation, c.position, c.tie_embeddings, c.qk_norm, c.moe_experts) == (
        "layernorm", "pre", "gelu", "learned", True, False, 0)
    # old config.json files (no architecture keys) load as GPT-2
    assert GPTConfig.from_dict(dict(n_layer=2, n_head=2, n_embd=16, ghoul_version="0.0")) == GPTConfig(
        n_layer=2, n_head=2, n_embd=16)


@pytest.mark.parametrize("bad, match", [
    (dict(norm="batchnorm"), "norm must be one of layernorm, rmsnorm"),
    (dict(activation="tanh"), "activation must be one of"),
    (dict(position="alibi"), "position must be one of"),
    (dict(norm_position="middle"), "norm_position must be one of"),
    (dict(position="rotary", n_embd=30, n_head=2), "must be even"),
    (dict(moe_experts=2, moe_top_k=3), "moe_top_k in 1..moe_experts"),
    (dict(moe_aux_weight=-1.0), "moe_aux_weight"),
    (dict(n_head=0), "model n_head must be positive, got 0"),  # not a ZeroDivisionError in the divisibility check
    (dict(n_embd=30, n_head=4), "must be divisible by n_head"),
])
def test_bad_architecture_options_are_refused(bad, match):
    with pytest.raises(GhoulError, match=match):
        small(**bad)


def test_moe_load_balancing_loss_is_positive_differentiable_and_one_when_uniform():
    torch.manual_seed(0)
    model = GPT(small(moe_experts=4, moe_top_k=2, moe_aux_weight=0.5))
    moe = model.transformer.h[0].mlp
    x = torch.randn(2, 8, 32)
    _, aux = moe(x)
    assert aux.item() > 0
    aux.backward()
    assert moe.router.weight.grad.abs().sum() > 0
    with torch.no_grad():
        moe.router.weight.zero_()  # every expert equally likely: E * sum_e f_e / E = 1, however the ties fall
    assert moe(x)[1].item() == pytest.approx(1.0)
    # training mode adds weight * the mean over layers; evaluation reports the language-model loss alone
    idx = torch.randint(0, 97, (2, 16))
    train_loss = model.train()(idx, idx.roll(-1, 1))[1]
    eval_loss = model.eval()(idx, idx.roll(-1, 1))[1]
    _, aux_mean = model._trunk(idx)
    assert train_loss.item() == pytest.approx(eval_loss.item() + 0.5 * aux_mean.item(), abs=1e-5)


def test_moe_routes_as_a_loop_over_experts_without_a_sync_per_expert():
    """Each expert gets the tokens that picked it, weighted by their gates: the output and gradients of a plain loop
    over the experts, bit for bit, without its `nonzero` per expert (each a GPU-to-host sync)."""
    torch.manual_seed(0)
    moe = GPT(small(moe_experts=4, moe_top_k=2)).transformer.h[0].mlp
    x = torch.randn(2, 8, 32, requires_grad=True)

    def by_loop(x):
        flat = x.reshape(-1, 32)
        gates, chosen = moe.router(flat).float().softmax(dim=-1).topk(2, dim=-1)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(moe.experts):
            rows, slot = (chosen == e).nonzero(as_tuple=True)
            out.index_add_(0, rows, expert(flat[rows]) * gates[rows, slot, None])
        return out.view_as(x)

    weights = torch.randn(2, 8, 32)
    results = []
    for forward in (lambda x: moe(x)[0], by_loop):
        with OpNames() as ops:
            out = forward(x)
        grads = torch.autograd.grad((out * weights).sum(), [x, *moe.parameters()])
        results.append((out, grads, ops.names))
    (ours, our_grads, our_ops), (loop, loop_grads, loop_ops) = results
    assert torch.equal(ours, loop)
    assert all(torch.equal(a, b) for a, b in zip(our_grads, loop_grads, strict=True))
    assert sum("nonzero" in name for name in loop_ops) == 4 and not any("nonzero" in name for name in our_ops)


def test_variant_checkpoints_round_trip_and_export_refuses(tmp_path):
    from ghoul.hf import export_hf

    torch.manual_seed(0)
    for name in ("untied", "modern", "moe-top2"):
        model = GPT(small(**VARIANTS[name])).eval()
        save_model_dir(model, tmp_path / name)
        loaded = load_model_dir(tmp_path / name).eval()
        idx = torch.randint(0, 97, (1, 10))
        assert torch.equal(model(idx)[0], loaded(idx)[0])
        assert (loaded.lm_head.weight is loaded.transformer.wte.weight) == model.config.tie_embeddings
        with pytest.raises(GhoulError, match="no Hugging Face GPT-2 equivalent"):
            export_hf(tmp_path / name, tmp_path / f"{name}-hf")


@pytest.mark.parametrize("overrides", [dict(dropout=0.1), dict(moe_experts=4, moe_top_k=2, position="rotary")])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(overrides):
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=3, n_head=2, n_embd=32, vocab_size=97, block_size=32, **overrides))
    idx = torch.randint(0, 97, (2, 32))

    saved = []

    def grads(checkpointed: bool):
        model.zero_grad()
        model.checkpoint_blocks = checkpointed
        torch.manual_seed(1)  # the same dropout masks: checkpointing replays the RNG state when it recomputes
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            loss = model(idx, idx.roll(-1, 1))[1]
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    (plain_loss, plain) = grads(False)
    plain_saved, saved[:] = sum(saved), []
    ckpt_loss, ckpt = grads(True)
    assert sum(saved) < plain_saved / 2  # the forward keeps far fewer activations for the backward
    assert torch.allclose(plain_loss, ckpt_loss, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain, ckpt, strict=True))


def test_padded_vocabulary_is_storage_only(tmp_path):
    """--pad-vocab rounds the tables up to a multiple of 64; the model still predicts exactly vocab_size tokens."""
    torch.manual_seed(0)
    config = small(vocab_size=97)
    padded = GPT(GPTConfig(**{**config.__dict__, "vocab_padding": 64}))
    assert padded.config.padded_vocab_size == 128 and padded.transformer.wte.weight.shape == (128, 32)
    assert padded.lm_head.weight[97:].abs().max() == 0  # padding rows start at zero
    plain = GPT(config)  # the same weights without the padding rows
    plain.load_state_dict({k: v[:97] if k in ("transformer.wte.weight", "lm_head.weight") else v
                           for k, v in padded.state_dict().items()})
    with torch.no_grad():
        padded.lm_head.weight[97:] = 5.0  # huge logits if they leaked into the softmax or the sampler
    idx = torch.randint(0, 97, (3, 16))
    assert padded(idx)[0].shape == (3, 16, 97)
    assert torch.allclose(padded(idx)[0], plain(idx)[0], atol=1e-5)
    assert torch.allclose(padded(idx, idx.roll(-1, 1))[1], plain(idx, idx.roll(-1, 1))[1], atol=1e-5)
    out = padded.generate(idx[:, :4], 40, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert out.max() < 97
    assert torch.equal(padded.generate(idx[:, :4], 12, temperature=0), plain.generate(idx[:, :4], 12, temperature=0))
    save_model_dir(padded, tmp_path / "m")
    back = load_model_dir(tmp_path / "m")
    assert back.config.vocab_padding == 64 and torch.equal(back.lm_head.weight, padded.lm_head.weight)
