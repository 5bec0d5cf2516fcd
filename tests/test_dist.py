"""Where the code runs: the precision `--dtype auto` picks on CPUs, from the CPU's flags and the model's width;
the peak FLOP/s of GPUs by name; the process group torchrun's processes start, with its timeout."""

import os
import subprocess
import sys
from datetime import timedelta

import pytest
import torch

from ghoul import dist
from ghoul.dist import CPU_BF16_MIN_WIDTH, cpu_flags, fast_bfloat16, resolve_dtype
from ghoul.errors import GhoulError
from ghoul.model import PRESETS

LAPTOP = PRESETS.get("laptop", {}).get("n_embd", 128)  # the default run's model (6 layers, width 128)


@pytest.fixture
def cpu(monkeypatch):
    """Pretend the CPU has these flags, and oneDNN may or may not use its bfloat16 instructions."""
    def set_cpu(flags: set[str], onednn: bool = True) -> None:
        monkeypatch.setattr(dist, "cpu_flags", lambda: frozenset(flags))
        monkeypatch.setattr(dist, "onednn_bfloat16", lambda: onednn)
    return set_cpu


@pytest.mark.parametrize("flags, onednn, native", [
    ({"avx2", "avx512_f", "avx512_bf16"}, True, True),  # Zen 4, Cooper Lake
    ({"avx2", "avx512_f", "amx_bf16", "amx_tile"}, True, True),  # Sapphire Rapids
    ({"avx2", "avx512_f", "avx512_bf16"}, False, False),  # oneDNN held to AVX2 (ONEDNN_MAX_CPU_ISA)
    ({"avx2", "avx512_f"}, True, False),  # Skylake-X: oneDNN says yes, but it emulates bfloat16
    ({"avx2"}, False, False),  # AVX2 only
    (set(), False, False),  # flags unknown
])
def test_auto_precision_on_cpus_is_bfloat16_only_where_native(cpu, flags, onednn, native):
    cpu(flags, onednn)
    assert fast_bfloat16("cpu") == native
    assert resolve_dtype("auto", "cpu", LAPTOP) == ("bfloat16" if native else "float32")
    assert resolve_dtype("float32", "cpu", LAPTOP) == "float32" and resolve_dtype("bfloat16", "cpu") == "bfloat16"


@pytest.mark.parametrize("width, auto", [(LAPTOP, "bfloat16"), (CPU_BF16_MIN_WIDTH, "bfloat16"),
                                         (CPU_BF16_MIN_WIDTH - 1, "float32"), (None, "float32")])
def test_auto_precision_on_native_cpus_needs_a_wide_enough_model(cpu, width, auto):
    """Narrow models gain nothing from bfloat16 on a CPU (measured); a caller that gives no width keeps float32."""
    cpu({"avx2", "avx512_f", "avx512_bf16"})
    assert resolve_dtype("auto", "cpu", width) == auto


def test_default_model_is_wide_enough_for_bfloat16_on_native_cpus():
    assert LAPTOP >= CPU_BF16_MIN_WIDTH and PRESETS["tiny"]["n_embd"] < CPU_BF16_MIN_WIDTH


def test_auto_precision_is_float32_on_mps_whatever_the_width(cpu):
    cpu({"avx512_bf16"})
    assert resolve_dtype("auto", "mps", 4096) == "float32"


@pytest.mark.parametrize("device, distributed, dtype, fixed, steps, compiler, auto", [
    ("cpu", False, "bfloat16", True, 1280, True, True),  # the default run's pretraining on a native-bfloat16 CPU
    ("cpu", False, "bfloat16", True, 500, True, True),
    ("cpu", False, "bfloat16", True, 499, True, False),  # too short to repay a compile (the learning stage: 300)
    ("cpu", False, "float32", True, 1280, True, False),  # measured no faster
    ("cpu", False, "bfloat16", False, 1280, True, False),  # shapes that change would compile at each new one
    ("cpu", False, "bfloat16", True, 1280, False, False),  # inductor has nothing to build its code with
    ("cpu", True, "bfloat16", True, 1280, True, False),  # several CPU processes: not measured
    ("cuda", False, "bfloat16", True, 1280, True, False),  # GPUs compile when asked to
])
def test_auto_compile_only_where_it_measured_faster(monkeypatch, device, distributed, dtype, fixed, steps, compiler,
                                                    auto):
    import torch._inductor.cpp_builder as cpp_builder

    def no_compiler():
        raise torch._inductor.exc.InvalidCxxCompiler

    if not compiler:
        monkeypatch.setattr(cpp_builder, "get_cpp_compiler", no_compiler)
    d = dist.DistInfo(device=device, distributed=distributed)
    assert dist.resolve_compile(None, d, dtype, fixed, steps) is (auto and dist.cpp_compiler_found())
    assert dist.resolve_compile(True, d, dtype, fixed, 1) is True  # --compile and --no-compile hold as given
    assert dist.resolve_compile(False, d, dtype, fixed, 10**6) is False


def test_cpu_flags_come_from_proc_cpuinfo_without_torch_capabilities(monkeypatch, tmp_path):
    monkeypatch.delattr(torch.cpu, "get_capabilities", raising=False)
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\n"
                    "processor\t: 1\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert cpu_flags(str(info)) == {"fpu", "avx2", "avx512f", "avx512_bf16"}
    assert cpu_flags(str(tmp_path / "missing")) == frozenset()


def test_avx2_only_cpu_trains_in_float32():
    """The setting that makes this CPU (if it has native bfloat16) work as one with AVX2 only: auto is float32."""
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "1"}
    code = "from ghoul.dist import fast_bfloat16, resolve_dtype; print(fast_bfloat16('cpu'), " \
           "resolve_dtype('auto', 'cpu', 768))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "float32"]


@pytest.mark.parametrize("name, tflops", [
    # names as torch.cuda.get_device_name() gives them; figures: dense BF16 of the vendors' data sheets
    ("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756), ("NVIDIA H100 NVL", 835),
    ("NVIDIA H200", 989), ("NVIDIA H200 NVL", 835),
    ("NVIDIA A100-SXM4-80GB", 312), ("NVIDIA A100-PCIE-40GB", 312), ("NVIDIA A100 80GB PCIe", 312),
    ("NVIDIA L40S", 362), ("NVIDIA L40", 181), ("NVIDIA L4", 121), ("NVIDIA A10G", 125), ("NVIDIA A10", 125),
    ("NVIDIA GeForce RTX 4090", 165), ("NVIDIA GeForce RTX 3090", 71), ("NVIDIA RTX A6000", 155),
    ("NVIDIA GH200 480GB", 989), ("Tesla T4", None), ("NVIDIA RTX A4000", None),  # unknown: no MFU, not a guess
    ("NVIDIA H100 80GB HBM3 MIG 3g.40gb", None),  # a slice of a GPU: not the whole chip's peak
])
def test_peak_flops_match_the_specific_name_first(monkeypatch, name, tflops):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: name)
    peak = dist.peak_flops("cuda:0", "bfloat16")
    assert (peak is None) if tflops is None else peak == pytest.approx(tflops * 1e12, rel=0.002), (name, peak)
    assert dist.peak_flops("cuda:0", "float32") == (None if peak is None else peak / 2)
    assert dist.peak_flops("cpu") is None


class Started(Exception):
    """Raised by the fake init_process_group: the test has seen what it needed."""


@pytest.fixture
def torchrun_env(monkeypatch):
    """This process as torchrun's only rank; init_process_group records its arguments and stops the caller."""
    for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
        monkeypatch.setenv(name, value)
    calls: list[dict] = []

    def init(**kwargs) -> None:
        calls.append(kwargs)
        raise Started
    monkeypatch.setattr(torch.distributed, "init_process_group", init)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    return calls


def test_torchrun_with_one_process_starts_the_process_group(torchrun_env, monkeypatch):
    """One rank under torchrun runs what eight do (the device check's NCCL/DDP stage on one GPU): a process group."""
    with pytest.raises(Started):
        dist.setup("cpu", timeout_minutes=7)
    assert torchrun_env == [{"backend": "gloo", "timeout": timedelta(minutes=7)}]
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda **kwargs: None)
    assert dist.setup("cpu").distributed
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name)
    assert not dist.setup("cpu").distributed  # no torchrun: one process, no process group


def test_more_torchrun_processes_than_gpus_is_a_one_line_error(torchrun_env, monkeypatch):
    """torchrun's local rank past the GPUs this process sees: named with the fix, not CUDA's "invalid ordinal"."""
    monkeypatch.setenv("LOCAL_RANK", "2")
    monkeypatch.setattr(dist, "resolve_device", lambda device: "cuda")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(GhoulError, match=r"torchrun started local rank 2, but this process sees 2 CUDA GPU\(s\): "
                                         r"start at most that many processes per node \(--nproc_per_node\)"):
        dist.setup("cuda")
    assert torchrun_env == []  # before any process group


def test_dist_timeout_option_reaches_init_process_group(torchrun_env, tmp_path):
    from ghoul.cli import main

    with pytest.raises(Started):
        main(["pretrain", "--dataset", str(tmp_path), "--output-dir", str(tmp_path / "run"), "--device", "cpu",
              "--dist-timeout-minutes", "45"])
    assert torchrun_env[-1]["timeout"] == timedelta(minutes=45)
    with pytest.raises(Started):  # the default: longer than NCCL's 10 minutes, for slow checkpoint writes
        main(["pretrain", "--dataset", str(tmp_path), "--output-dir", str(tmp_path / "run"), "--device", "cpu"])
    assert torchrun_env[-1]["timeout"] == timedelta(minutes=30)
    assert main(["pretrain", "--dataset", str(tmp_path), "--dist-timeout-minutes", "0"]) == 2
