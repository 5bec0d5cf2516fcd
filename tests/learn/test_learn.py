"""The learning stage on a slice of the real horror stories: bigram, a small GPT that beats it, and a comparison."""

import json
import math
import tomllib
from dataclasses import fields

import pytest
import torch

from ghoul.cli import main
from ghoul.data.loader import ShardLoader
from ghoul.errors import GhoulError
from ghoul.learn.bigram import Bigram, BigramConfig, BigramModelConfig
from ghoul.learn.bigram import run as learn_bigram
from ghoul.learn.compare import TABLE_FILE, CompareConfig
from ghoul.learn.compare import run as compare
from ghoul.learn.gpt import LearnGPTConfig
from ghoul.learn.gpt import run as learn_gpt
from ghoul.train.config import LoopOptions
from ghoul.train.logger import LOG_FILE
from tests.conftest import REPO
from tests.train.interrupt_rank import interrupting_next

# The same slice, tokenizer kind, rows and validation batches for every run, so that val losses compare.
SLICE = dict(limit_docs=40, tokenizer_kind="char", batch_size=8, block_size=64, eval_iters=4, device="cpu",
             sample_tokens=40)
GPT_SIZE = dict(n_layer=2, n_head=2, n_embd=64)


@pytest.fixture
def horror(data):
    return str(data / "creepypasta" / "reddit_horror_stories.jsonl")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small matmuls on busy shared cores: one thread is the faster
    yield
    torch.set_num_threads(threads)


def test_bigram_starts_uniform_and_samples_from_its_table():
    model = Bigram(BigramModelConfig(vocab_size=11, block_size=8))
    idx = torch.randint(0, 11, (3, 8))
    logits, loss = model(idx, idx.roll(-1, 1))
    assert logits.shape == (3, 8, 11) and loss.item() == pytest.approx(math.log(11))
    with torch.no_grad():
        model.table.weight[:, 4] = 50.0  # every token is followed by token 4
    out = model.generate(idx, 5, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 13) and torch.equal(out[:, :8], idx) and (out[:, 8:] == 4).all()


def test_gpt_learns_more_than_the_bigram_on_the_same_tokens(horror, tmp_path, capsys):
    bigram = learn_bigram(BigramConfig(source_path=horror, output_dir=tmp_path / "bigram", steps=200,
                                       eval_every=0, **SLICE))
    assert (tmp_path / "bigram" / "tokenizer.json").is_file() and (tmp_path / "bigram" / LOG_FILE).is_file()
    capsys.readouterr()
    for command in (["generate", "--checkpoint", str(tmp_path / "bigram"), "--max-new-tokens", "2"],
                    ["export", "hf", str(tmp_path / "bigram"), str(tmp_path / "hf")],
                    ["export", "gguf", str(tmp_path / "bigram"), str(tmp_path / "bigram.gguf")]):
        assert main(command) == 2
        err = capsys.readouterr().err.strip()
        assert "holds a bigram model (ghoul learn bigram)" in err and len(err.splitlines()) == 1, err
    gpt = learn_gpt(LearnGPTConfig(source_path=horror, output_dir=tmp_path / "gpt", steps=200, eval_every=0,
                                   tokenizer=str(tmp_path / "bigram" / "tokenizer.json"), **SLICE, **GPT_SIZE))
    out = capsys.readouterr().out
    assert "--- sample ---" in out and gpt.sample and bigram.sample
    assert bigram.val_loss < math.log(100) - 1.0  # it learned (the char vocabulary has ~100 tokens)
    assert gpt.val_loss < bigram.val_loss - 0.05, (gpt.val_loss, bigram.val_loss)
    assert gpt.params > bigram.params / 10 and gpt.tokens_per_s > 0


def test_learn_gpt_cli_takes_the_architecture_switches(horror, tmp_path):
    argv = ["learn", "gpt", "--source-path", horror, "--output-dir", str(tmp_path / "run"), "--limit-docs", "10",
            "--tokenizer-kind", "bpe", "--vocab-size", "300", "--steps", "2", "--batch-size", "2", "--block-size",
            "32", "--eval-iters", "1", "--n-layer", "1", "--n-embd", "32", "--norm", "rmsnorm", "--position",
            "rotary", "--activation", "swiglu", "--no-tie-embeddings", "--qk-norm", "--moe-experts", "2",
            "--moe-top-k", "1", "--sample-tokens", "5", "--warmup-iters", "0", "--device", "cpu"]
    assert main(argv) == 0
    saved = json.loads((tmp_path / "run" / "step_000002" / "config.json").read_text())
    assert (saved["norm"], saved["position"], saved["activation"], saved["tie_embeddings"], saved["qk_norm"],
            saved["moe_experts"], saved["vocab_size"]) == ("rmsnorm", "rotary", "swiglu", False, True, 2, 300)
    assert main(argv) == 2  # the run exists: refused, nothing overwritten
    assert main(["learn", "gpt", "--position", "rotary", "--n-embd", "30", "--n-head", "2"]) == 2  # odd head size


def test_learn_takes_the_trainers_dtype_and_compile_options(horror, tmp_path):
    """--dtype and --compile are the trainer's own options (one declaration: default, help, choices), passed on."""
    ours, theirs = ({f.name: f for f in fields(c)} for c in (LearnGPTConfig, LoopOptions))
    for name in ("dtype", "compile"):
        assert (ours[name].default, ours[name].metadata) == (theirs[name].default, theirs[name].metadata)
    tc = LearnGPTConfig(dtype="bfloat16", compile=True).train_config(tmp_path / "data", tmp_path / "run")
    assert (tc.loop.dtype, tc.loop.compile) == ("bfloat16", True)
    argv = ["learn", "gpt", "--source-path", horror, "--output-dir", str(tmp_path / "run"), "--limit-docs", "10",
            "--tokenizer-kind", "char", "--steps", "2", "--batch-size", "2", "--block-size", "32", "--eval-iters",
            "1", "--n-layer", "1", "--n-embd", "32", "--sample-tokens", "0", "--warmup-iters", "0", "--device", "cpu",
            "--dtype", "bfloat16"]
    assert main(argv) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["dtype"] == "bfloat16"


def test_compare_writes_one_table_of_the_variants(horror, tmp_path, capsys):
    variants = tmp_path / "variants.toml"
    variants.write_text('[baseline]\n\n[rms-relu2]\nnorm = "rmsnorm"\nactivation = "relu2"\n\n'
                        '[moe]\nmoe_experts = 2\n')
    rows = compare(CompareConfig(source_path=horror, output_dir=tmp_path / "cmp", variants=variants, steps=3,
                                 warmup_iters=0, **{**SLICE, "sample_tokens": 0}, n_layer=1, n_head=2, n_embd=32))
    assert [name for name, _, _ in rows] == ["baseline", "rms-relu2", "moe"]
    table = (tmp_path / "cmp" / TABLE_FILE).read_text()
    assert "| variant | changes | params | val loss | val bpb | tokens/s |" in table
    for name, _, result in rows:
        assert f"| {name} |" in table and f"{result.params:,}" in table
        # characters of English text are mostly one byte each: bits per byte close to bits per token
        assert result.val_bpb == pytest.approx(result.val_loss / math.log(2), rel=0.05)
        assert f"| {result.val_loss:.4f} | {result.val_bpb:.4f} |" in table
    assert "norm=rmsnorm, activation=relu2" in table
    assert rows[2][2].params > rows[0][2].params  # two experts hold more weights than one MLP
    assert "| baseline |" in capsys.readouterr().out



def test_compare_trains_the_variants_that_ship_with_ghoul_from_any_directory(horror, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the repository: the default variants are found in the package
    rows = compare(CompareConfig(source_path=horror, output_dir=tmp_path / "cmp", steps=1, warmup_iters=0,
                                 **{**SLICE, "sample_tokens": 0}, n_layer=1, n_head=2, n_embd=32))
    shipped = tomllib.loads((REPO / "ghoul" / "learn" / "variants.toml").read_text())
    assert [name for name, _, _ in rows] == list(shipped) and "baseline" in shipped

@pytest.mark.parametrize("toml, match", [
    ('[a]\nvocab_size = 10\n', "unknown key"),
    ('[a]\nnorm = "batchnorm"\n', r"\[a\]: model norm must be one of"),
    ('a = 1\n', "must be a \\[table\\]"),
    ('', "holds no variants"),
    ('["a/b"]\n', "variant name 'a/b' is no directory name"),
    ('[".."]\n', r"variant name '\.\.' is no directory name"),  # it would train into output_dir's parent
    # the names of the comparison's own files: it trained into the shared token shards, or failed only at the table
    ('[data]\n', "variant name 'data' is taken by the shared data in the output directory"),
    ('["comparison.md"]\n', r"variant name 'comparison\.md' is taken by the shared comparison\.md"),
    ('["tokenizer.json"]\n', r"variant name 'tokenizer\.json' is taken"),
    ('[a]\nbias = "no"\n', r"\[a\]: key 'bias' must be true or false, not \"no\""),  # a string is true in Python
    ('[a]\nn_head = "4"\n', r"\[a\]: key 'n_head' must be an integer"),
])
def test_compare_refuses_bad_variant_files_before_training(tmp_path, toml, match):
    variants = tmp_path / "v.toml"
    variants.write_text(toml)
    with pytest.raises(GhoulError, match=match):
        compare(CompareConfig(source_path="unused", output_dir=tmp_path / "cmp", variants=variants))


@pytest.mark.parametrize("args, message", [
    (["--learning-rate", "-1"], "--learning-rate must be positive"),
    (["--steps", "2", "--warmup-iters", "5"], "--warmup-iters (5) + --warmdown-iters (0, a fifth of --steps) exceed "
                                              "--steps (2)")])
def test_training_settings_are_checked_before_the_tokenizer_and_data(tmp_path, capsys, args, message):
    out = tmp_path / "bigram"
    assert main(["learn", "bigram", "--source-path", str(tmp_path / "unused.txt"), "--output-dir", str(out),
                 *args]) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_an_output_directory_named_data_is_not_taken_for_the_shards_inside_it(horror, tmp_path, monkeypatch):
    # the shards lie in OUT/data: an --output-dir named like that folder is no --dataset given as --output-dir
    monkeypatch.chdir(tmp_path)
    assert main(["learn", "bigram", "--source-path", horror, "--output-dir", "data", "--limit-docs", "20",
                 "--tokenizer-kind", "char", "--steps", "2", "--batch-size", "2", "--block-size", "16",
                 "--sample-tokens", "0", "--device", "cpu"]) == 0
    assert (tmp_path / "data" / "data" / "meta.json").is_file() and (tmp_path / "data" / "log.jsonl").is_file()


@pytest.mark.parametrize("args", [["--optimizer", "muon"], ["--muon-lr", "0.01"]])
def test_the_bigram_offers_no_optimizer(tmp_path, capsys, args):
    # its one table is a lookup, not a hidden matrix Muon could train: it trains with AdamW, so --help offers no choice
    with pytest.raises(SystemExit) as e:
        main(["learn", "bigram", "--help"])
    assert e.value.code == 0 and args[0] not in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["learn", "bigram", "--source-path", str(tmp_path / "unused.txt"), "--output-dir", str(tmp_path / "b"),
              *args])
    assert e.value.code == 2 and f"unrecognized arguments: {' '.join(args)}" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_an_interrupted_learning_run_says_it_is_trained_again_not_resumed(horror, tmp_path, monkeypatch, capsys):
    """learn has no --resume (a rerun into the same directory is refused): a Ctrl-C says what to do instead."""
    monkeypatch.setattr(ShardLoader, "__next__", interrupting_next({3}, "train"))
    assert main(["learn", "bigram", "--source-path", horror, "--output-dir", str(tmp_path / "b"), "--limit-docs", "40",
                 "--tokenizer-kind", "char", "--steps", "6", "--device", "cpu"]) == 130
    said = capsys.readouterr().out
    assert "interrupted after step 3: saved" in said and "learn runs are not continued: train again into another " \
        "--output-dir" in said and "--resume" not in said


def test_too_little_text_for_one_step_names_the_learning_stages_flags(horror, tmp_path, capsys):
    assert main(["learn", "bigram", "--source-path", horror, "--output-dir", str(tmp_path / "b"), "--limit-docs", "3",
                 "--tokenizer-kind", "char", "--steps", "6", "--batch-size", "64", "--block-size", "512",
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "tokens are too few for one step" in err and err.endswith("lower --batch-size or --block-size, or give "
                                                                     "more text"), err


def test_a_bigram_table_too_large_to_train_is_refused_before_any_work(tmp_path, capsys):
    """GPT-2's vocabulary makes a 50,257^2 table, 38 GiB with AdamW's state: it was killed for memory."""
    out = tmp_path / "b"
    assert main(["learn", "bigram", "--source-path", str(tmp_path / "unused.txt"), "--tokenizer", "gpt2",
                 "--output-dir", str(out)]) == 2
    assert "a bigram over 50,257 tokens is a 50,257 x 50,257 table, 38 GiB to train" in capsys.readouterr().err
    assert not out.exists()


def test_vocab_size_is_refused_where_no_bpe_is_trained(tmp_path, capsys):
    for given in (["--tokenizer-kind", "char"], ["--tokenizer", str(tmp_path / "tokenizer.json")]):
        assert main(["learn", "bigram", *given, "--vocab-size", "300", "--output-dir", str(tmp_path / "run")]) == 2
        assert "--vocab-size is only read with --tokenizer-kind bpe and no --tokenizer" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_sample_prompt_the_tokenizer_cannot_take_fails_before_training(horror, tmp_path):
    out = tmp_path / "gpt"
    with pytest.raises(GhoulError, match="'€' .* is not in the char tokenizer's vocabulary"):
        learn_gpt(LearnGPTConfig(source_path=horror, output_dir=out, steps=2, warmup_iters=0,
                                 **{**SLICE, "sample_prompt": "€uro"}, **GPT_SIZE))
    assert not (out / LOG_FILE).exists() and not list(out.glob("step_*"))  # nothing trained: a rerun may start
