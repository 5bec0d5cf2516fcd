"""The fused output layer + cross-entropy against the plain `F.cross_entropy(x @ W.T, y)` it replaces, on the CPU
and, where there is one, on the GPU (`python -m benchmarks.device_check` runs these there)."""

import pytest
import torch
import torch.nn.functional as F

from ghoul.cross_entropy import head_cross_entropy
from tests.ops import OpNames

N, C, V = 24, 16, 37


@pytest.fixture(params=["cpu", *(["cuda"] if torch.cuda.is_available() else [])])
def device(request):
    return request.param


def inputs(device="cpu", padding: int = 0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, generator=g)
    w = torch.randn(V + padding, C, generator=g).mul_(0.5)
    y = torch.randint(0, V, (N,), generator=g)
    y[::5] = -1  # ignored positions
    return x.to(device).requires_grad_(), w.to(device).requires_grad_(), y.to(device)


def reference(x, w, y, vocab=V):
    return F.cross_entropy((x @ w[:vocab].t()).float(), y, ignore_index=-1)


def grads(loss, *tensors):
    return torch.autograd.grad(loss, tensors)


def test_loss_and_gradients_equal_the_plain_cross_entropy(device):
    x, w, y = inputs(device)
    fused, plain = head_cross_entropy(x, w, y), reference(x, w, y)
    assert torch.allclose(fused, plain, atol=1e-6)
    for a, b in zip(grads(fused, x, w), grads(plain, x, w), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_padding_rows_get_no_probability_and_no_gradient(device):
    x, w, y = inputs(device, padding=11)
    with torch.no_grad():
        w[V:] = 10.0  # large logits: without the mask they would take nearly all the probability
    fused = head_cross_entropy(x, w, y, vocab_size=V)
    assert torch.allclose(fused, reference(x, w, y), atol=1e-6)
    grad_x, grad_w = grads(fused, x, w)
    assert torch.allclose(grad_x, grads(reference(x, w, y), x)[0], atol=1e-6)
    assert grad_w[V:].abs().max() == 0 and grad_w[:V].abs().max() > 0


def test_upstream_gradient_scales_and_frozen_head_gets_none():
    x, w, y = inputs()
    w.requires_grad_(False)
    (grad_x,) = grads(3.0 * head_cross_entropy(x, w, y), x)
    assert torch.allclose(grad_x, 3.0 * grads(reference(x, w, y), x)[0], atol=1e-6)


def test_without_gradients_only_the_loss_is_computed():
    x, w, y = inputs()
    with torch.no_grad():
        assert torch.allclose(head_cross_entropy(x, w, y), reference(x, w, y), atol=1e-6)


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_no_gradient_is_computed_when_autograd_will_not_use_it(mode):
    """Evaluation (inputs that require gradients, under no_grad) computes the loss alone: the gradient of the logits,
    a full-vocabulary pass, is made only in training. `mul_` scales the softmax by each row's weight and `scatter_add_`
    subtracts the one-hot of the targets from it."""
    x, w, y = inputs()
    with OpNames() as training:
        head_cross_entropy(x, w, y)
    with mode(), OpNames() as evaluation:
        head_cross_entropy(x, w, y)
    gradient_ops = {"aten.mul_.Tensor", "aten.scatter_add_.default"}
    assert gradient_ops <= set(training.names)
    assert not gradient_ops & set(evaluation.names)


def test_bfloat16_autocast_matches_the_autocast_reference(device):
    x, w, y = inputs(device)
    with torch.autocast(device, dtype=torch.bfloat16):
        fused, plain = head_cross_entropy(x, w, y), reference(x, w, y)
    assert fused.dtype == torch.float32 and torch.allclose(fused, plain, atol=1e-3)
    for a, b, t in zip(grads(fused, x, w), grads(plain, x, w), (x, w), strict=True):
        assert a.dtype == t.dtype == torch.float32  # gradients come back in the parameters' dtype
        assert torch.allclose(a, b, atol=2e-3, rtol=2e-2)


def test_all_targets_ignored_gives_nan_as_the_plain_loss():
    x, w, y = inputs()
    y[:] = -1
    assert head_cross_entropy(x, w, y).isnan() and reference(x, w, y).isnan()


@pytest.mark.parametrize("padding", [0, 11])
def test_compiled_equals_eager(device, padding):
    x, w, y = inputs(device, padding)
    compiled = torch.compile(head_cross_entropy)
    fused = compiled(x, w, y, V)
    assert torch.allclose(fused, reference(x, w, y), atol=1e-6)
    for a, b in zip(grads(fused, x, w), grads(reference(x, w, y), x, w), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
