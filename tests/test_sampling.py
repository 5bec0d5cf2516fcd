"""Sampling: the KV cache, seeds, top-k/top-p, stop tokens and cropping."""

import pytest
import torch

from ghoul.errors import GhoulError
from ghoul.model import GPT, GPTConfig
from ghoul.sampling import sample_next


def tiny_model(block_size=128, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=97, block_size=block_size)).eval()


def test_cached_greedy_equals_uncached_greedy():
    model = tiny_model()
    idx = torch.randint(0, 97, (3, 7), generator=torch.Generator().manual_seed(1))
    cached = model.generate(idx, 40, temperature=0)
    plain = model.generate(idx, 40, temperature=0, use_cache=False)
    assert cached.shape == (3, 47)
    assert torch.equal(cached, plain)
    assert torch.equal(cached[:, :7], idx)


def test_cache_matches_full_forward_logits():
    model = tiny_model()
    idx = torch.randint(0, 97, (2, 12))
    from ghoul.model import KVCache

    cache = KVCache(model.config, 2, 12, "cpu", torch.float32)
    h = [model.hidden_states(idx[:, :5], cache)] + [model.hidden_states(idx[:, t:t + 1], cache) for t in range(5, 12)]
    assert torch.allclose(torch.cat(h, 1), model.hidden_states(idx), atol=1e-5)


def test_contexts_longer_than_block_size_are_cropped_identically():
    model = tiny_model(block_size=16)
    idx = torch.randint(0, 97, (2, 10))
    cached = model.generate(idx, 30, temperature=0)
    plain = model.generate(idx, 30, temperature=0, use_cache=False)
    assert cached.shape == (2, 40)
    assert torch.equal(cached, plain)


def test_same_seed_same_samples_other_seed_differs():
    model = tiny_model()
    idx = torch.zeros((4, 1), dtype=torch.long)

    def draw(seed):
        return model.generate(idx, 30, temperature=1.0, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(draw(7), draw(7))
    assert not torch.equal(draw(7), draw(8))
    assert not torch.equal(draw(7)[0], draw(7)[1])  # rows of one batch are different samples


def test_top_k_only_samples_the_k_best():
    logits = torch.tensor([[0.0, 5.0, 1.0, 4.0, 3.0, -2.0]]).repeat(500, 1)
    ids = sample_next(logits, temperature=5.0, top_k=2, generator=torch.Generator().manual_seed(0))
    assert set(ids.tolist()) == {1, 3}
    assert sample_next(logits[:1], temperature=0).item() == 1


def test_top_p_keeps_the_smallest_set_holding_p():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log()[None].repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    assert set(sample_next(logits, top_p=0.75, generator=g).tolist()) == {0, 1}  # 0.5 < 0.75 <= 0.8
    assert set(sample_next(logits, top_p=0.5, generator=g).tolist()) == {0}
    counts = torch.bincount(sample_next(logits, top_p=0.9, generator=g), minlength=4).float() / 2000
    assert counts[3] == 0 and abs(counts[0] - 0.5 / 0.95) < 0.05  # renormalised over the kept tokens


def test_stop_token_pads_finished_rows_and_stops_early():
    model = tiny_model()
    idx = torch.zeros((2, 3), dtype=torch.long)
    greedy = model.generate(idx, 20, temperature=0)
    eos = greedy[0, 5].item()  # a token greedy decoding produces in row 0
    out = model.generate(idx, 20, temperature=0, eos_id=eos)
    first = (out[0, 3:] == eos).nonzero()[0].item() + 3
    assert torch.equal(out[0, :first + 1], greedy[0, :first + 1])
    assert (out[0, first:] == eos).all()


# Every architecture switch keeps the cache exact: rotary keys are rotated to their absolute positions (cache.pos
# offset) before they are cached, and the MoE routes each new token as the full forward would.
CACHE_VARIANTS = {
    "rotary": dict(position="rotary"),
    "moe": dict(moe_experts=4, moe_top_k=2),
    "rmsnorm": dict(norm="rmsnorm"),
    "no-position": dict(position="none"),
    "everything": dict(position="rotary", moe_experts=3, moe_top_k=1, norm="rmsnorm", norm_position="post",
                       activation="swiglu", qk_norm=True, tie_embeddings=False),
}


@pytest.mark.parametrize("name", list(CACHE_VARIANTS))
def test_cache_equals_no_cache_for_every_variant(name):
    torch.manual_seed(0)
    config = GPTConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=97, block_size=16, **CACHE_VARIANTS[name])
    model = GPT(config).eval()
    idx = torch.randint(0, 97, (3, 6), generator=torch.Generator().manual_seed(1))
    cached = model.generate(idx, 30, temperature=0)  # past block_size: the cache is refilled from a crop
    assert cached.shape == (3, 36)
    assert torch.equal(cached, model.generate(idx, 30, temperature=0, use_cache=False))
    from ghoul.model import KVCache

    cache = KVCache(config, 3, 12, "cpu", torch.float32)
    full = torch.randint(0, 97, (3, 12))
    steps = [model.hidden_states(full[:, :4], cache)] + [model.hidden_states(full[:, t:t + 1], cache)
                                                         for t in range(4, 12)]
    assert torch.allclose(torch.cat(steps, 1), model.hidden_states(full), atol=1e-5)


def test_a_diverged_model_is_a_clear_error_not_torchs():
    """NaN weights (a run that diverged) give NaN probabilities: named as such, not multinomial's RuntimeError."""
    model = tiny_model()
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))
    with pytest.raises(GhoulError, match="next-token probabilities are not finite .*: its weights have diverged"):
        model.generate(torch.zeros((1, 1), dtype=torch.long), 4, temperature=1.0)
