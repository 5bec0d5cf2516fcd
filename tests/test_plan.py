"""`ghoul plan`: its parameter and FLOP formulas against the model itself, its memory against what a training step
really holds, the reference run, and refusals."""

import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ghoul import dist
from ghoul.cli import main
from ghoul.dist import GPUS
from ghoul.model import GPT, PRESETS, GPTConfig, vocab_padding
from ghoul.optim.build import build_optimizers, split_params
from ghoul.plan import GiB, PlanConfig, estimate, flops_per_token, param_counts
from ghoul.train.loop import lm_loss

REFERENCE = ["--model", "gpt2-xl", "--gpus", "8", "--gpu", "h100", "--total-batch-size", "491520",
             "--batch-size", "12", "--seq-len", "1024", "--max-steps", "15258"]


@pytest.mark.parametrize("padding", [1, 64])
@pytest.mark.parametrize("name", list(PRESETS))
def test_formulas_match_the_model(name, padding):
    config = GPTConfig.from_name(name, vocab_padding=padding)
    with torch.device("meta"):  # no memory, no initialisation cost, even for gpt2-xl
        model = GPT(config)
    counts = param_counts(config)
    assert counts["total"] == model.num_params()
    groups = split_params(model)  # the roles the optimizers see: Muon's matrices, AdamW's rest
    for role in ("matrices", "embeddings", "gains"):
        assert counts[role] == sum(p.numel() for p in groups[role]), role
    for seq_len in (1, config.block_size // 2, config.block_size):
        assert flops_per_token(config, seq_len) == model.flops_per_token(seq_len)


def test_reference_run():
    cfg = PlanConfig(price_per_gpu_hour=2.5)  # the defaults are the reference run: gpt2-xl on 8 H100s
    e = estimate(cfg)
    assert estimate(PlanConfig(pad_vocab=False))["params"]["total"] == 1_557_611_200  # OpenAI's GPT-2 1.5B
    n = 1_557_611_200 + (50_304 - 50_257) * 1600  # as `ghoul pretrain` builds it: 50,304 rows of the token table
    assert e["params"]["total"] == n
    assert e["grad_accum_steps"] == 491_520 // (12 * 1024 * 8) == 5
    fpt = 6 * (n - 1024 * 1600) + 12 * 48 * 1024 * 1600  # the position table is a lookup, no matmul
    assert e["flops_per_token"] == fpt
    direct = fpt * 15_258 * 491_520 / (8 * 989e12 * 0.45) / 3600
    assert e["hours"] == pytest.approx(direct)
    assert 4 < e["hours"] < 9  # llm.c's GPT-2 1.5B: 32 B tokens in about 24 h on 8 H100s, this is 7.5 B tokens
    assert e["cost"] == pytest.approx(direct * 8 * 2.5)
    # the requirement: micro-batch 12 x 1024 fits an 80 GB GPU, checkpointing or not
    assert e["fits"] and 55 * GiB < e["memory_total"] < 78 * GiB
    saved = estimate(PlanConfig(activation_checkpointing=True))
    assert saved["fits"] and saved["memory_total"] < e["memory_total"] - 20 * GiB


def test_memory_terms():
    one, many = estimate(PlanConfig(gpus=1, total_batch_size=12 * 1024)), estimate(PlanConfig())
    assert one["memory"] == many["memory"]  # DDP's buckets hold the gradients themselves: no copy per GPU
    n = one["params"]["total"]
    assert one["memory"]["optimizer state"] == 8 * n
    muon = estimate(PlanConfig(optimizer="muon"))
    assert muon["memory"]["optimizer state"] == 8 * n - 4 * muon["params"]["matrices"]
    fp32 = estimate(PlanConfig(dtype="float32"))
    assert fp32["memory"]["autocast weight copies"] == 0 and fp32["hours"] == pytest.approx(2 * many["hours"])
    assert fp32["memory"]["activations"] > many["memory"]["activations"]
    assert many["memory"]["logits"] == (4 + 2) * 12 * 1024 * 50304  # float32 logits + the bfloat16 gradient kept
    assert fp32["memory"]["logits"] == 4 * 12 * 1024 * 50304
    assert not estimate(PlanConfig(gpu="4090"))["fits"]
    assert estimate(PlanConfig(gpu="h200"))["hours"] == pytest.approx(many["hours"])


class LiveTensorBytes(TorchDispatchMode):
    """The bytes of the tensors alive, each storage counted from the operation that made it to its release, and
    their peak: on the CPU, what torch.cuda.max_memory_allocated reports on a GPU."""

    def __init__(self) -> None:
        super().__init__()
        self.storages: dict[int, weakref.ref] = {}
        self.live = self.peak = 0

    def add(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key, size = storage._cdata, storage.nbytes()
        if key in self.storages:  # a view, or an operation that returned its input
            return

        def release(_: weakref.ref) -> None:
            self.storages.pop(key, None)
            self.live -= size
        self.storages[key] = weakref.ref(storage, release)
        self.live += size
        self.peak = max(self.peak, self.live)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.add(t)
        return out


@pytest.mark.parametrize("preset,batch,seq_len,dtype,optimizer,checkpointing", [
    ("small", 4, 256, "float32", "adamw", False),
    ("small", 4, 256, "float32", "adamw", True),
    ("small", 4, 256, "float32", "muon", False),
    ("tiny", 8, 128, "bfloat16", "adamw", False),  # autocast's weight copies and the bfloat16 logits gradient
])
def test_memory_estimate_against_a_training_step(preset, batch, seq_len, dtype, optimizer, checkpointing):
    """The plan's total against the peak of the tensors a training step holds, measured on the CPU as the trainer
    runs it (fused AdamW or Muon, the fused output layer and loss, autocast): never more than 2% below (a plan that
    says a run fits must be right), at most 20% above (the plan counts every gradient alongside every activation;
    backward frees activations as gradients arrive)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name(preset, vocab_padding=vocab_padding(True)))
    model.checkpoint_blocks = checkpointing
    optimizers = build_optimizers(model, optimizer, 1e-4, 0.1)
    x = torch.randint(0, model.config.vocab_size, (batch, seq_len))

    def step() -> None:
        with dist.autocast("cpu", dtype):
            loss = lm_loss(model, x, torch.roll(x, -1, 1))
        loss.backward()
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)

    step()  # the optimizer's state exists from the first step on
    memory = LiveTensorBytes()
    with memory:
        for t in [*model.parameters(), *(v for opt in optimizers for s in opt.state.values() for v in s.values())]:
            if isinstance(t, torch.Tensor):
                memory.add(t)
        step()
    planned = estimate(PlanConfig(model=preset, gpus=1, total_batch_size=batch * seq_len, batch_size=batch,
                                  seq_len=seq_len, max_steps=1, dtype=dtype, optimizer=optimizer,
                                  activation_checkpointing=checkpointing))["memory_total"]
    assert 0.98 * memory.peak <= planned <= 1.2 * memory.peak, (planned / GiB, memory.peak / GiB)


def test_cli_prints_the_plan(capsys):
    assert main(["plan", *REFERENCE, "--activation-checkpointing", "--price-per-gpu-hour", "2.5",
                 "--no-pad-vocab"]) == 0
    out = capsys.readouterr().out
    assert "1,557,611,200 parameters" in out and "5 accumulation steps" in out and "fits" in out
    assert "hours" in out and "cost" in out


@pytest.mark.parametrize("args, message", [
    (["--batch-size", "7"], "not a multiple"),
    (["--gpu", "tpu"], "unknown gpu"),
    (["--model", "gpt5"], "unknown model"),
    (["--seq-len", "2048"], "exceeds"),
    (["--mfu", "1.5"], "--mfu"),
])
def test_refusals_are_one_line(args, message, capsys):
    assert main(["plan", *REFERENCE, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("ghoul plan: error:")


def test_gpu_table_has_the_kinds_the_planner_offers():
    for name in ("h100", "h200", "a100-40gb", "a100-80gb", "l4", "a10g", "4090", "3090"):
        assert GPUS[name].memory_gb > 0 and GPUS[name].bf16_flops > 0
