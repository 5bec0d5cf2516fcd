"""The GPT-2 model: parameter counts, initial loss, shapes, masking, and the meta device."""

import math

import pytest
import torch

from ghoul.errors import GhoulError
from ghoul.model import GPT, PRESETS, GPTConfig

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
    assert logits.shape == (4, 64, 50257)
    assert abs(loss.item() - math.log(50257)) < 0.1


def test_no_targets_gives_no_loss_and_ignore_index_skips():
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name("tiny"))
    idx = torch.randint(0, 50257, (2, 16))
    assert model(idx)[1] is None
    targets = idx.roll(-1, 1)
    masked = targets.clone()
    masked[:, :8] = -1
    logits, loss = model(idx, masked)
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
