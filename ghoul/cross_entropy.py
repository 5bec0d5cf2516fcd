"""The output layer and the next-token cross-entropy in one autograd function, so the logits are never kept.

The usual path (`F.cross_entropy(x @ W.T, y)`) writes the logits, a log-softmax of the same size, a zero-filled
gradient and then the softmax gradient: four passes over N x V numbers, with V = 50,257 the largest tensors of a
GPT-2 step. Here the gradient of the logits is computed in place during the forward pass (softmax minus one-hot,
already divided by the token count, from the exponentials the loss needs anyway), so the step writes one N x V
tensor, in place. On CPUs, where those passes are memory-bound, this is what makes the training step faster than
`transformers`' (benchmarks/RESULTS.md).
The idea is that of Liger Kernel's fused linear cross-entropy (Hsu et al. 2024), without the chunking.
"""

from __future__ import annotations

import torch


class _HeadCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, vocab_size: int,
                dtype: torch.dtype, grad_needed: bool) -> torch.Tensor:
        xc, wc = x.to(dtype), weight.to(dtype)
        logits = (xc @ wc.t()).float()  # (N, Vp); float32 for the softmax over 50k classes (a copy under bf16)
        if vocab_size < logits.size(1):
            logits[:, vocab_size:] = float("-inf")  # padding rows of the table are never predicted
        valid = targets != -1  # -1: ignore, as the rest of ghoul
        safe = targets.clamp(min=0)[:, None]  # (N, 1)
        count = valid.sum()
        target_logits = logits.gather(1, safe).squeeze(1)  # (N,), before the logits are overwritten
        # the log-sum-exp and the softmax from one exponential, in place of the logits: (N, Vp) unnormalised
        top = logits.amax(dim=1, keepdim=True)  # (N, 1)
        probs = logits.sub_(top).exp_()
        total = probs.sum(dim=1, keepdim=True)  # (N, 1)
        loss = ((top + total.log()).squeeze(1) - target_logits).mul(valid).sum() / count
        if grad_needed:
            weights = valid.float()[:, None] / count  # d(mean loss) / d(each row's loss); 0 for ignored rows
            grad = probs.mul_(weights / total)  # the softmax, weighted
            grad.scatter_add_(1, safe, -weights)  # minus the one-hot of the target
            ctx.save_for_backward(grad.to(dtype), xc, wc)  # bf16 under autocast: backward matmuls as autocast's
            ctx.dtypes = x.dtype, weight.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        grad, xc, wc = ctx.saved_tensors
        x_dtype, w_dtype = ctx.dtypes
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = (grad @ wc).to(x_dtype) * grad_loss  # (N, C)
        if ctx.needs_input_grad[1]:
            grad_w = (grad.t() @ (xc * grad_loss.to(xc.dtype))).to(w_dtype)  # (Vp, C): the scalar on the small side
        return grad_x, grad_w, None, None, None, None


def head_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                       vocab_size: int | None = None) -> torch.Tensor:
    """Mean cross-entropy of the logits `x @ weight.T` against `targets`, ignoring targets of -1.

    x (N, C) hidden states, weight (Vp, C) the output layer, targets (N,). Rows of `weight` from `vocab_size` on are
    padding and get no probability. Under autocast the matmuls run in its dtype and the softmax in float32, as they
    would with `F.cross_entropy(logits.float(), targets)`.
    """
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
    # only where autograd will call backward: ctx.needs_input_grad says requires_grad even under no_grad (evaluation),
    # and the forward runs with gradients off, so the grad mode is read here
    grad_needed = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    with torch.autocast(device, enabled=False):  # the casts are explicit inside
        return _HeadCrossEntropy.apply(x, weight, targets, vocab_size or weight.size(0), dtype, grad_needed)
