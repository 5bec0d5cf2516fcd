"""Muon: orthogonalised updates, and the parameter groups each optimizer gets."""

import torch

from ghoul.model import GPT, GPTConfig
from ghoul.optim.build import build_optimizers, split_params
from ghoul.optim.muon import Muon, newton_schulz


def test_newton_schulz_is_orthogonal_within_tolerance():
    torch.manual_seed(0)
    for shape in [(64, 256), (256, 64), (96, 384)]:  # hidden matrices of a GPT are 1:3 or 1:4
        g = torch.randn(shape) * 3
        u = newton_schulz(g)
        s = torch.linalg.svdvals(u)
        assert s.min() > 0.6 and s.max() < 1.25  # the quintic lands singular values in about [0.7, 1.2]
        exact = torch.linalg.svd(g, full_matrices=False)
        polar = exact.U @ exact.Vh  # the orthogonal factor Muon approximates
        cos = (u * polar).sum() / (u.norm() * polar.norm())
        assert cos > 0.97


def test_muon_update_is_orthogonal_and_scaled():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(32, 128))
    before = w.detach().clone()
    opt = Muon([w], lr=0.1, momentum=0.0, nesterov=False)
    w.grad = torch.randn(32, 128)
    opt.step()
    update = (before - w.detach()) / 0.1
    s = torch.linalg.svdvals(update)
    assert s.min() > 0.6 and s.max() < 1.25


def test_parameter_groups():
    model = GPT(GPTConfig.from_name("tiny"))
    groups = split_params(model)
    n = sum(p.numel() for g in groups.values() for p in g)
    assert n == model.num_params()  # every parameter once, the tied head included once
    assert all(p.ndim == 2 for p in groups["matrices"]) and all(p.ndim == 1 for p in groups["gains"])
    assert model.transformer.wte.weight in groups["embeddings"]
    adamw = build_optimizers(model, "adamw", 1e-3, 0.1)
    assert [g["weight_decay"] for g in adamw[0].param_groups] == [0.1, 0.0]
    adam, muon = build_optimizers(model, "muon", 1e-3, 0.0, muon_lr=0.02)
    assert isinstance(muon, Muon) and muon.param_groups[0]["initial_lr"] == 0.02
    assert len(muon.param_groups[0]["params"]) == 4 * model.config.n_layer
