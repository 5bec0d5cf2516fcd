"""The training engine on the CPU: learning, exact resume, fine-tuning, checkpoints, and refusals."""

import json
import math
import re
import time

import pytest
import torch
import transformers
from torch._dynamo.utils import counters

from ghoul.checkpoint import load_model_dir, load_training_checkpoint, save_training_checkpoint
from ghoul.cli import main
from ghoul.config import build
from ghoul.dist import DistInfo, cpp_compiler_found, resolve_dtype
from ghoul.errors import GhoulError
from ghoul.files import read_jsonl
from ghoul.hf import export_hf
from ghoul.layout import step_dirs
from ghoul.model import GPT, GPTConfig
from ghoul.tokenizer import load_tokenizer
from ghoul.train import loop
from ghoul.train.loop import compile_blocks, train
from ghoul.train.stages import FinetuneConfig, run
from tests.train.conftest import config, log, val_bytes_per_token


def test_pretrain_lowers_val_loss_and_writes_a_run(fineweb_shards, tmp_path, capsys):
    result = run(config(fineweb_shards, tmp_path / "run", max_steps=40, eval_every=20, warmdown_iters=10,
                        sample_every=20, checkpoint_every=20))
    records = log(tmp_path / "run")
    val = [r["val_loss"] for r in records if "val_loss" in r]
    assert abs(val[0] - math.log(50257)) < 0.2  # at step 0: near uniform
    assert val[-1] < val[0] - 1.0 and result.val_loss == val[-1]
    bpt = val_bytes_per_token(fineweb_shards, 2 * 4 * 64)  # eval_iters x batch_size x seq_len targets
    for r in (r for r in records if "val_loss" in r):
        assert r["val_bytes_per_token"] == pytest.approx(bpt) and r["val_tokens"] == 2 * 4 * 64
        assert r["val_bpb"] == pytest.approx(r["val_loss"] / math.log(2) / bpt)
    assert result.val_bpb == records[-1]["val_bpb"]
    assert f"val loss {result.val_loss:.4f} ({result.val_bpb:.4f} bits per byte, 512 validation tokens)" in \
        capsys.readouterr().out
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 41))
    assert {"loss", "lr", "tokens", "tokens_per_s", "grad_norm", "elapsed"} <= set(records[-1])
    assert records[-1]["lr"] == pytest.approx(3e-3 / 10)  # the last step of the warmdown
    assert [p.name for p in step_dirs(tmp_path / "run")] == ["step_000020", "step_000040"]
    assert (tmp_path / "run" / "latest").read_text().strip() == "step_000040"
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").open()]
    assert [s["step"] for s in samples] == [0, 20, 40] and samples[-1]["text"]
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["max_steps"] == 40 and saved["dataset"] == str(fineweb_shards)
    assert saved["dtype"] == "float32"  # the default, auto, as this CPU resolved it


def test_throughput_covers_the_steps_since_the_last_record(fineweb_shards, tmp_path, monkeypatch):
    # a slow checkpoint between two records: its time is left out of the interval, as evaluation's is
    saving = []

    def slow_save(*args, **kwargs):
        started = time.perf_counter()
        time.sleep(1.0)
        path = save_training_checkpoint(*args, **kwargs)
        saving.append(time.perf_counter() - started)
        return path

    monkeypatch.setattr(loop, "save_training_checkpoint", slow_save)
    run(config(fineweb_shards, tmp_path / "run", max_steps=12, log_every=4, eval_every=0, checkpoint_every=10))
    records = [r for r in log(tmp_path / "run") if "loss" in r]
    assert [r["step"] for r in records] == [4, 8, 12] and records[-1]["tokens"] == 12 * 4 * 64
    before, last = records[1], records[2]  # the first interval includes the model's first steps
    wall = last["elapsed"] - before["elapsed"] - saving[0]  # the checkpoint at step 10
    assert last["tokens_per_s"] == pytest.approx((last["tokens"] - before["tokens"]) / wall, rel=0.2)


def test_evaluations_run_at_their_own_steps_between_logged_ones(fineweb_shards, tmp_path):
    """--eval-every counts steps, not log records: every 3 steps with a record every 4."""
    run(config(fineweb_shards, tmp_path / "run", max_steps=10, log_every=4, eval_every=3))
    records = log(tmp_path / "run")
    assert [r["step"] for r in records if "loss" in r] == [4, 8, 10]
    evaluated = [(r["step"], r.get("tokens")) for r in records if "val_loss" in r]
    assert [s for s, _ in evaluated] == [0, 3, 6, 9, 10]
    assert [t for s, t in evaluated if s in (3, 6, 9)] == [3 * 4 * 64, 6 * 4 * 64, 9 * 4 * 64]


def test_resumed_run_equals_uninterrupted_run(fineweb_shards, tmp_path):
    cfg = dict(max_steps=8, checkpoint_every=4, total_batch_size=512, batch_size=4, seq_len=64,
               warmup_iters=2, warmdown_iters=3, dropout_free=None)
    cfg.pop("dropout_free")
    run(config(fineweb_shards, tmp_path / "a", **cfg))
    run(config(fineweb_shards, tmp_path / "b", **cfg))
    # a crash after step 4's checkpoint: resume from it and train the rest again
    assert main(["pretrain", "--dataset", str(fineweb_shards), "--output-dir", str(tmp_path / "b"), "--model", "tiny",
                 "--batch-size", "4", "--seq-len", "64", "--max-steps", "8", "--learning-rate", "3e-3",
                 "--eval-every", "4", "--eval-iters", "2", "--checkpoint-every", "4", "--total-batch-size", "512",
                 "--warmup-iters", "2", "--warmdown-iters", "3", "--device", "cpu",
                 "--resume", str(tmp_path / "b" / "step_000004")]) == 0
    a, b = log(tmp_path / "a"), log(tmp_path / "b")
    assert [r["step"] for r in b if "loss" in r] == list(range(1, 9))  # the log was cut back to step 4
    assert [r["loss"] for r in a if "loss" in r] == [r["loss"] for r in b if "loss" in r]  # bitwise equal
    wa = load_model_dir(tmp_path / "a").state_dict()
    wb = load_model_dir(tmp_path / "b").state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    state, _, _ = load_training_checkpoint(tmp_path / "b")
    assert state["step"] == 8 and state["loader"]["position"] == 8 * 512


def test_finetune_continues_on_another_dataset(fineweb_shards, horror_shards, tmp_path):
    run(config(fineweb_shards, tmp_path / "pre", max_steps=4, eval_every=0))
    result = run(build(FinetuneConfig, dataset=str(horror_shards), output_dir=tmp_path / "ft",
                       base_model=tmp_path / "pre", batch_size=4, seq_len=64, max_steps=6, warmdown_iters=2,
                       learning_rate=3e-3, eval_every=3, eval_iters=2, device="cpu"))
    records = log(tmp_path / "ft")
    assert records[0]["step"] == 0 and "val_loss" in records[0]
    assert result.val_loss < records[0]["val_loss"]
    base = load_model_dir(tmp_path / "pre")
    tuned = load_model_dir(tmp_path / "ft")
    assert not torch.equal(base.transformer.wte.weight, tuned.transformer.wte.weight)
    # resumed with another base model: refused, not silently trained on from the run's own
    with pytest.raises(GhoulError, match=re.escape(f"{tmp_path / 'ft'} holds a run made with --base-model "
                                                   f"'{tmp_path / 'pre'}', not '{tmp_path / 'other'}'")):
        run(build(FinetuneConfig, dataset=str(horror_shards), output_dir=tmp_path / "ft", base_model=tmp_path / "other",
                  batch_size=4, seq_len=64, max_steps=8, warmdown_iters=2, device="cpu", resume="latest"))


def test_checkpoint_loads_in_transformers(fineweb_shards, tmp_path):
    run(config(fineweb_shards, tmp_path / "run", max_steps=2, eval_every=0))
    model = load_model_dir(tmp_path / "run" / "step_000002").eval()
    export_hf(tmp_path / "run" / "step_000002", tmp_path / "hf")
    ref = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    idx = torch.randint(0, 50257, (1, 32))
    with torch.no_grad():
        assert (ref(idx).logits - model(idx)[0]).abs().max() < 1e-4


def test_muon_trains(fineweb_shards, tmp_path):
    run(config(fineweb_shards, tmp_path / "run", optimizer="muon", max_steps=12, eval_every=12, muon_lr=0.02))
    val = [r["val_loss"] for r in log(tmp_path / "run") if "val_loss" in r]
    assert val[-1] < val[0] - 0.3


def test_refuses_to_overwrite_a_run(fineweb_shards, tmp_path, capsys):
    run(config(fineweb_shards, tmp_path / "run", max_steps=1, eval_every=0))
    args = ["pretrain", "--dataset", str(fineweb_shards), "--output-dir", str(tmp_path / "run"), "--max-steps", "1"]
    assert main(args) == 2
    assert "already holds a run: pass --resume" in capsys.readouterr().err


def test_a_folder_of_other_files_or_the_data_is_not_trained_into(fineweb_shards, tmp_path, capsys):
    # a config.json of the user's own (or another command's) would be replaced by the run's
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"my": "settings"}\n')
    args = ["pretrain", "--dataset", str(fineweb_shards), "--max-steps", "1", "--eval-every", "0"]
    assert main([*args, "--output-dir", str(mine)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"ghoul pretrain: error: {mine} holds a config.json that no training run wrote (another "
                   "command's, or your own): give another --output-dir"]
    assert (mine / "config.json").read_text() == '{"my": "settings"}\n'
    assert sorted(mine.iterdir()) == [mine / "config.json"]
    # the shards' own folder as the run directory: its log and checkpoints would lie among the shards
    before = sorted(fineweb_shards.iterdir())
    assert main([*args, "--output-dir", str(fineweb_shards)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"ghoul pretrain: error: --output-dir {fineweb_shards} is the --dataset: give the run a directory of its own"]
    assert sorted(fineweb_shards.iterdir()) == before
    # a run's own config.json is no obstacle to continuing it
    run(config(fineweb_shards, tmp_path / "run", max_steps=1, eval_every=0))
    assert main([*args, "--output-dir", str(tmp_path / "run"), "--max-steps", "2", "--resume"]) == 0


def test_a_checkpoint_of_another_run_is_not_joined_to_a_run(fineweb_shards, tmp_path, capsys):
    # it set this run's later checkpoints aside and went on from the other run's weights, in this run's log
    run(config(fineweb_shards, tmp_path / "p1", max_steps=4, checkpoint_every=2, eval_every=0))
    run(config(fineweb_shards, tmp_path / "p2", max_steps=2, eval_every=0))
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "p1").rglob("*"))
    capsys.readouterr()
    args = ["pretrain", "--dataset", str(fineweb_shards), "--model", "tiny", "--max-steps", "3", "--eval-every", "0",
            "--resume", str(tmp_path / "p2" / "step_000002")]
    assert main([*args, "--output-dir", str(tmp_path / "p1")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    other, this = tmp_path / "p2" / "step_000002", tmp_path / "p1"
    assert err == [f"ghoul pretrain: error: {other} is not a checkpoint of {this}, which holds a run of its own: "
                   f"resume {this} from one of its own checkpoints, or start from {other} in a new --output-dir"], err
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "p1").rglob("*")) == before
    # a branch of the other run in a directory of its own, and a run's own earlier checkpoint, go on as before
    assert main([*args, "--output-dir", str(tmp_path / "p3")]) == 0
    assert main([*args[:-1], str(tmp_path / "p1" / "step_000002"), "--output-dir", str(tmp_path / "p1")]) == 0


@pytest.mark.parametrize("args, message", [
    (["--total-batch-size", "1000", "--batch-size", "4", "--seq-len", "64"], "not a multiple of"),
    (["--batch-size", "2048", "--seq-len", "128"], "too few for one step"),
    (["--seq-len", "4096"], "exceeds the model's block size"),
    (["--warmup-iters", "5", "--warmdown-iters", "5", "--max-steps", "8"], "exceed --max-steps"),
    (["--optimizer", "adamw", "--muon-lr", "0.05"], "--muon-lr is only read with --optimizer muon"),
    (["--schedule", "cosine", "--warmdown-iters", "2"], "--warmdown-iters is only read with --schedule trapezoid"),
])
def test_usage_errors(fineweb_shards, tmp_path, capsys, args, message):
    code = main(["pretrain", "--dataset", str(fineweb_shards), "--output-dir", str(tmp_path / "r"), "--device", "cpu",
                 *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_a_stage_default_for_another_schedule_is_not_refused(tmp_path):
    # fine-tuning's own warmdown default neither counts nor is refused under the cosine schedule
    cfg = build(FinetuneConfig, dataset=str(tmp_path), base_model=tmp_path, schedule="cosine", max_steps=5)
    assert (cfg.optim.schedule, cfg.optim.warmdown_iters) == ("cosine", 10)
    with pytest.raises(GhoulError, match="--warmdown-iters is only read with --schedule trapezoid"):
        build(FinetuneConfig, dataset=str(tmp_path), base_model=tmp_path, schedule="cosine", warmdown_iters=3)


def test_missing_dataset_and_base_model(tmp_path, capsys):
    assert main(["pretrain", "--dataset", str(tmp_path / "none"), "--output-dir", str(tmp_path / "r")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["finetune", "--dataset", str(tmp_path)]) == 2
    assert "--base-model is required" in capsys.readouterr().err


def tiny_setup(shards, out):
    cfg = config(shards, out, max_steps=6, checkpoint_every=2, eval_every=0)
    torch.manual_seed(0)
    return cfg, GPT(GPTConfig.from_name("tiny")), load_tokenizer("gpt2"), DistInfo()


def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(fineweb_shards, tmp_path):
    cfg, model, tok, d = tiny_setup(fineweb_shards, tmp_path / "run")
    calls = []

    def loss_fn(m, x, y):
        calls.append(1)
        loss = m(x, y)[1]
        return loss * float("nan") if len(calls) == 3 else loss

    with pytest.raises(GhoulError, match="loss became nan at step 3; the last good checkpoint is step_000002"):
        train(cfg, model, tok, d, loss_fn=loss_fn)
    assert [p.name for p in step_dirs(tmp_path / "run")] == ["step_000002"]


def test_hellaswag_during_training_is_logged(fineweb_shards, data, tmp_path):
    run(config(fineweb_shards, tmp_path / "run", max_steps=4, eval_every=0, hellaswag_every=2, hellaswag_limit=12,
               hellaswag_path=data / "hellaswag" / "hellaswag_val_first100.jsonl"))
    points = [(r["step"], r["hellaswag_acc"]) for r in log(tmp_path / "run") if "hellaswag_acc" in r]
    assert [s for s, _ in points] == [0, 2, 4]
    assert all(0.0 <= acc <= 1.0 and acc * 12 == round(acc * 12) for _, acc in points)  # a count out of 12


def test_pretraining_takes_the_architecture_switches(fineweb_shards, tmp_path):
    run(config(fineweb_shards, tmp_path / "run", max_steps=2, eval_every=0, norm="rmsnorm", activation="swiglu",
               position="rotary", qk_norm=True))
    saved = json.loads((tmp_path / "run" / "step_000002" / "config.json").read_text())
    assert (saved["norm"], saved["activation"], saved["position"], saved["qk_norm"]) == ("rmsnorm", "swiglu",
                                                                                         "rotary", True)
    model = load_model_dir(tmp_path / "run")
    assert "wpe" not in model.transformer  # rotary positions need no table


def test_vocabulary_is_padded_unless_asked_not_to(fineweb_shards, tmp_path):
    run(config(fineweb_shards, tmp_path / "padded", max_steps=2, eval_every=0))
    run(config(fineweb_shards, tmp_path / "exact", max_steps=2, eval_every=0, pad_vocab=False))
    padded, exact = load_model_dir(tmp_path / "padded"), load_model_dir(tmp_path / "exact")
    assert padded.config.vocab_size == exact.config.vocab_size == 50257
    assert padded.transformer.wte.weight.size(0) == 50304 and exact.transformer.wte.weight.size(0) == 50257
    assert padded.lm_head.weight[50257:].abs().max() == 0  # never predicted, so never trained


def test_activation_checkpointing_trains_the_same(fineweb_shards, tmp_path):
    run(config(fineweb_shards, tmp_path / "plain", max_steps=3, eval_every=0))
    run(config(fineweb_shards, tmp_path / "ckpt", max_steps=3, eval_every=0, activation_checkpointing=True))
    plain, ckpt = ([r["loss"] for r in log(tmp_path / name) if "loss" in r] for name in ("plain", "ckpt"))
    assert max(abs(a - b) for a, b in zip(plain, ckpt, strict=True)) < 1e-5


def test_compiled_training_matches_eager(fineweb_shards, tmp_path):
    run(config(fineweb_shards, tmp_path / "eager", max_steps=3, eval_every=0))
    run(config(fineweb_shards, tmp_path / "compiled", max_steps=3, eval_every=0, compile=True))
    eager, compiled = log(tmp_path / "eager"), log(tmp_path / "compiled")
    assert [r["step"] for r in compiled] == [1, 2, 3]
    for a, b in zip(eager, compiled, strict=True):  # other kernels, other float32 rounding: close, not bitwise
        assert abs(a["loss"] - b["loss"]) < 1e-4
    # the checkpoint is the plain model's: it loads without any wrapper's prefixes
    assert set(load_model_dir(tmp_path / "compiled").state_dict()) == set(load_model_dir(
        tmp_path / "eager").state_dict())


def test_compile_compiles_one_block_for_all_and_samples_eagerly(fineweb_shards, tmp_path):
    # the blocks share one compiled graph; sampling's growing cache would compile 16 more without its eager stance
    torch._dynamo.reset()
    counters.clear()
    run(config(fineweb_shards, tmp_path / "run", max_steps=2, eval_every=0, compile=True, sample_every=1,
               sample_tokens=8))
    assert counters["stats"]["unique_graphs"] == 1
    assert [r["step"] for r in read_jsonl(tmp_path / "run" / "samples.jsonl")] == [0, 1, 2]



def test_each_model_compiled_in_a_process_gets_its_own_compiled_blocks():
    """learn compare's variants and a benchmark's presets compile one model after another: each must compile anew,
    not recompile the one before it, which past torch's recompile limit (8, here 1) would run the blocks eagerly."""
    counters.clear()
    with torch._dynamo.config.patch(recompile_limit=1):
        for heads, batch in ((2, 4), (4, 2)):
            model = compile_blocks(GPT(GPTConfig.from_name("tiny", n_layer=1, n_head=heads, n_embd=32,
                                                           vocab_size=64, block_size=16)))
            with torch.no_grad():
                model(torch.zeros(batch, 16, dtype=torch.long))
    assert counters["stats"]["unique_graphs"] == 2 and not counters["unimplemented"]

def test_bfloat16_autocast_trains_like_float32(fineweb_shards, tmp_path):
    run(config(fineweb_shards, tmp_path / "f32", max_steps=3, eval_every=3))
    # compiled, as bfloat16 runs on the CPU are by default from AUTO_COMPILE_MIN_STEPS on (dist.resolve_compile)
    run(config(fineweb_shards, tmp_path / "bf16", max_steps=3, eval_every=3, dtype="bfloat16",
               compile=cpp_compiler_found()))
    f32, bf16 = log(tmp_path / "f32"), log(tmp_path / "bf16")
    for a, b in zip(f32, bf16, strict=True):  # 1e-4 apart here; each step moves the loss by 0.02-0.04
        for key in ("loss", "val_loss"):
            if key in a:
                assert abs(a[key] - b[key]) < 2e-3, (a["step"], key, a[key], b[key])
    model = load_model_dir(tmp_path / "bf16")
    assert model.lm_head.weight.dtype == torch.float32  # autocast computes in bf16, the weights stay float32
    compiled = {d: json.loads((tmp_path / d / "config.json").read_text())["compile"] for d in ("f32", "bf16")}
    assert compiled == {"f32": False, "bf16": cpp_compiler_found()}  # a 3-step run is left eager by auto


@pytest.mark.parametrize("device,capability,auto", [("cpu", None, "float32"), ("cuda", (9, 0), "bfloat16"),
                                                    ("cuda", (8, 0), "bfloat16"), ("cuda", (7, 5), "float32")])
def test_auto_precision_is_bfloat16_on_gpus_that_run_it(monkeypatch, device, capability, auto):
    """Ampere (8.0) and newer have bfloat16 tensor cores; a V100 or T4 would emulate it, slower than TF32."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert resolve_dtype("auto", device) == auto
    assert resolve_dtype("float32", device) == "float32" and resolve_dtype("bfloat16", device) == "bfloat16"


@pytest.mark.parametrize("flags, message", [
    (["--total-batch-size", "0"], "--total-batch-size must be at least 1, got 0"),
    (["--seq-len", "0"], "--seq-len must be at least 1, got 0"),
    (["--beta1", "1.5"], "--beta1 must be in [0, 1), got 1.5"),
    (["--grad-clip", "-1"], "--grad-clip must be >= 0, got -1.0"),
    (["--weight-decay", "-0.1"], "--weight-decay must be >= 0, got -0.1"),
    (["--muon-lr", "0"], "--muon-lr must be positive, got 0.0"),
    (["--device", "tpu"], "unknown --device 'tpu'"),
])
def test_bad_training_settings_are_one_line_errors(tmp_path, capsys, flags, message):
    assert main(["pretrain", "--dataset", str(tmp_path), "--output-dir", str(tmp_path / "run"), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not (tmp_path / "run").exists()


def test_resolve_device_checks_the_machine(monkeypatch):
    from ghoul.dist import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    for device, message in [("cuda", "no CUDA GPU"), ("cuda:1", "no CUDA GPU"), ("mps", "MPS is not available"),
                            ("xla", "ghoul runs on cpu, cuda and mps"), ("gpu", "unknown --device 'gpu'")]:
        with pytest.raises(GhoulError, match=message):
            resolve_device(device)


def test_a_damaged_or_mismatched_checkpoint_is_a_one_line_error_on_resume(fineweb_shards, tmp_path, capsys):
    run(config(fineweb_shards, tmp_path / "run", max_steps=2, eval_every=0, checkpoint_every=1))
    resume = ["pretrain", "--dataset", str(fineweb_shards), "--output-dir", str(tmp_path / "run"), "--model", "tiny",
              "--batch-size", "4", "--seq-len", "64", "--max-steps", "4", "--device", "cpu", "--resume"]
    step = tmp_path / "run" / "step_000002"
    assert main([*resume, str(step), "--max-steps", "2"]) == 2  # later flags win: 2 steps, all done
    assert "is at step 2, and --max-steps is 2: nothing to train" in capsys.readouterr().err
    assert main([*resume, str(step), "--optimizer", "muon"]) == 2  # trained with AdamW
    assert "was saved with other optimizer settings" in capsys.readouterr().err
    optimizer = step / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:500])  # a copy cut short
    (step.parent / "step_000001" / "trainer_state.json").write_text('{"step": 1,')
    for damaged in (step, step.parent / "step_000001"):
        assert main([*resume, str(damaged)]) == 2
        err = capsys.readouterr().err
        assert f"{damaged} is damaged" in err and "resume from an earlier checkpoint" in err, err
        assert len(err.strip().splitlines()) == 1, err


def test_a_finetune_offers_no_architecture_switches_it_would_ignore(tmp_path, capsys):
    """The model comes whole from its directory: `ghoul finetune` has no model options, so argparse refuses them."""
    args = ["finetune", "--dataset", str(tmp_path), "--base-model", str(tmp_path / "m")]
    with pytest.raises(SystemExit) as e:
        main([*args, "--activation", "swiglu", "--position", "rotary"])
    assert e.value.code == 2
    assert "unrecognized arguments: --activation swiglu --position rotary" in capsys.readouterr().err
