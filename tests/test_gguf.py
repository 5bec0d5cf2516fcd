"""`ghoul export gguf`: models trained briefly on real stories, run in llama.cpp (llama-cpp-python), give ghoul's
token ids, last-position logits and greedy continuations; bad input is a one-line error that leaves nothing behind."""

from pathlib import Path

import numpy as np
import pytest
import torch

from ghoul.checkpoint import load_model_dir, save_model_dir
from ghoul.cli import main
from ghoul.gguf import export_gguf
from ghoul.model import GPT, GPTConfig
from ghoul.tokenizer import load_tokenizer

llama_cpp = pytest.importorskip("llama_cpp")

LLAMA = dict(norm="rmsnorm", activation="swiglu", position="rotary", bias=False)
GGML_F32 = 0  # ggml_type of a float32 KV cache: llama.cpp's default f16 cache would round every key and value
GREEDY = 40  # new tokens compared
WINDOW = 64  # training sequence length


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: the models are tiny, and the machine may be shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def trained(config: GPTConfig, ids: list[int], steps: int, seed: int, noise: float = 0.0) -> GPT:
    """`config` trained with AdamW on windows of the token sequence `ids` until it has about learnt them by heart:
    its greedy continuation of a piece of them then recites varied text, where a few steps on much text give one
    token over and over. A GPT-2-sized vocabulary learns too slowly for that in a test's time: `noise` on every
    weight then makes its greedy text varied (the text no longer reads, but every token must still match)."""
    torch.manual_seed(seed)
    model = GPT(config)
    data = torch.tensor(ids)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        starts = torch.randint(0, len(data) - WINDOW - 1, (8,)).tolist()
        x = torch.stack([data[s:s + WINDOW] for s in starts])  # (8, WINDOW)
        y = torch.stack([data[s + 1:s + WINDOW + 1] for s in starts])
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * noise)
    return model.eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory, stories, bpe) -> dict[str, Path]:
    """Model directories, each trained on the first story: GPT-2's tokenizer and architecture (an untied head, which
    llama.cpp's gpt2 graph takes and Hugging Face's does not); the default run's switches (the `laptop` preset's:
    LLaMA's with QK-norm, llama.cpp's qwen3) with an own BPE; LLaMA's without QK-norm, with an untied head and
    GPT-4's split."""
    root = tmp_path_factory.mktemp("gguf_models")
    small = dict(vocab_size=500, vocab_padding=64, block_size=128, n_layer=2, n_head=2, n_embd=64)
    configs = {
        "gpt2": (GPTConfig(vocab_size=50257, vocab_padding=64, block_size=128, n_layer=2, n_head=2, n_embd=32,
                           tie_embeddings=False), load_tokenizer("gpt2"), 30, 0.2),
        "qwen3": (GPTConfig(**small, qk_norm=True, **LLAMA), bpe["gpt2"], 120, 0.0),
        "llama": (GPTConfig(**small, tie_embeddings=False, rope_theta=500.0, **LLAMA), bpe["gpt4"], 120, 0.0),
    }
    for seed, (name, (config, tok, steps, noise)) in enumerate(configs.items()):
        save_model_dir(trained(config, tok.encode(stories[0]), steps, seed, noise), root / name, tokenizer=tok)
    return {name: root / name for name in configs}


def llama(path: Path, n_ctx: int, vocab_only: bool = False) -> "llama_cpp.Llama":
    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=1, n_batch=n_ctx, logits_all=True,
                           type_k=GGML_F32, type_v=GGML_F32, flash_attn=False, vocab_only=vocab_only, verbose=False)


def llama_cpp_greedy(llm: "llama_cpp.Llama", prompt: list[int], n: int) -> tuple[np.ndarray, list[int]]:
    """llama.cpp's logits at the prompt's last position, and its `n` greedy tokens after the prompt."""
    llm.reset()
    llm.eval(prompt)
    first = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
    new = []
    for _ in range(n):
        new.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([new[-1]])
    return first, new


def check_in_llama_cpp(model_dir: Path, out: Path, story: str, dtype: str, tolerance: float,
                       greedy: str | None) -> None:
    """Export `model_dir` as `dtype`: for prompts from `story`, llama.cpp gives ghoul's token ids, logits within
    `tolerance` of the largest logit, and ghoul's greedy continuation of GREEDY tokens: all of it ("exact"), or
    ("near") every token but where ghoul's two best logits are closer than the tolerance allows llama.cpp to tell."""
    assert main(["export", "gguf", str(model_dir), str(out), "--dtype", dtype]) == 0
    model, tok = load_model_dir(model_dir).eval(), load_tokenizer(model_dir)
    llm = llama(out, model.config.block_size)
    assert llm.n_vocab() == model.config.vocab_size
    for start in (0, 200, 400):
        text = story[start:start + 80]
        prompt = tok.encode(text)
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == prompt
        theirs, new = llama_cpp_greedy(llm, prompt, GREEDY)
        with torch.no_grad():
            ours = model(torch.tensor([prompt]))[0][0, -1].numpy()
        assert np.abs(theirs - ours).max() <= tolerance * np.abs(ours).max()
        if greedy is None:
            continue
        expected = model.generate(torch.tensor([prompt]), GREEDY, temperature=0)[0, len(prompt):].tolist()
        assert len(set(expected)) >= 8  # varied text, not one token over and over
        if greedy == "exact":
            assert new == expected
        else:
            check_greedy_near_ties(llm, model, prompt, expected, tolerance)


def check_greedy_near_ties(llm: "llama_cpp.Llama", model: GPT, prompt: list[int], expected: list[int],
                           tolerance: float) -> None:
    """llama.cpp, fed ghoul's greedy tokens, picks each of them itself but where ghoul's two best logits lie within
    twice the logits' tolerance (either may win there), and at least 32 of them."""
    llm.reset()
    llm.eval(prompt + expected)
    theirs = np.array(llm.scores[len(prompt) - 1:len(prompt) + len(expected) - 1])  # (GREEDY, vocab)
    with torch.no_grad():
        ours = model(torch.tensor([prompt + expected]))[0][0, len(prompt) - 1:-1].numpy()  # (GREEDY, vocab)
    assert np.abs(theirs - ours).max() <= tolerance * np.abs(ours).max()
    best_two = np.sort(ours, axis=-1)[:, -2:]
    near_tie = best_two[:, 1] - best_two[:, 0] <= 2 * tolerance * np.abs(ours).max()
    agree = theirs.argmax(axis=-1) == np.array(expected)
    assert np.all(agree | near_tie) and agree.sum() >= 32


# Tolerances, relative to the largest logit, about 10 to 50 times what these models show. In float32 both sides add the
# same products in another order (seen: 3e-7). llama.cpp's gpt2 graph also computes GELU through a float16 table
# (ggml-cpu/vec.h, GGML_GELU_FP16), whose rounding of its input and output (2^-11 relative) reaches the logits at
# ~3e-4, enough to swap two of GPT-2's 50,257 candidates that are as close: its greedy check allows that ("near").
# f16 rounds every weight and every matmul input to 11 bits (seen: 4e-4); q8_0's 8-bit blocks round each weight to
# 1/254 of its block's largest (seen: 8e-3). A transposed or misnamed weight moves the logits by O(1) of their scale.
@pytest.mark.parametrize("name, dtype, tolerance, greedy", [
    ("gpt2", "f32", 3e-3, "near"),
    ("qwen3", "f32", 1e-5, "exact"),
    ("llama", "f32", 1e-5, "exact"),
    ("qwen3", "f16", 5e-3, None),
    ("qwen3", "q8_0", 5e-2, None),
])
def test_export_runs_in_llama_cpp_as_in_ghoul(tmp_path, models, stories, name, dtype, tolerance, greedy):
    check_in_llama_cpp(models[name], tmp_path / f"{name}.gguf", stories[0], dtype, tolerance, greedy)


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
def test_llama_cpp_tokenizes_real_text_as_ghoul(tmp_path, stories, bpe, pattern):
    tok = bpe[pattern]
    save_model_dir(GPT(GPTConfig(vocab_size=500, block_size=32, n_layer=1, n_head=2, n_embd=32, **LLAMA)),
        tmp_path / "m", tokenizer=tok)
    export_gguf(tmp_path / "m", tmp_path / "m.gguf", "f32")
    llm = llama(tmp_path / "m.gguf", 32, vocab_only=True)
    for text in [*stories[300:], "Ünïcödé 👻 in the 1990s—\r\n\tI'M sure you'll SEE it 1234567...  \n\n  "]:
        ids = tok.encode(text)
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == ids
        assert llm.detokenize(ids).decode() == text


def test_modelfile_is_written_beside_the_gguf(tmp_path, models, capsys):
    out = tmp_path / "export" / "ghoul.gguf"
    assert main(["export", "gguf", str(models["qwen3"]), str(out), "--dtype", "q8_0"]) == 0
    size = out.stat().st_size  # a small model's file is said in KiB, not as 0.0 MiB
    assert size < 2**20 and f"wrote {out} ({size / 2**10:,.1f} KiB, q8_0)" in capsys.readouterr().out
    lines = (out.parent / "Modelfile").read_text().splitlines()
    assert lines[0] == "FROM ./ghoul.gguf"
    assert 'PARAMETER stop "<|endoftext|>"' in lines and "PARAMETER num_ctx 128" in lines
    # ghoul's reading sampling, without the top-p and repeat penalty that Ollama adds by default
    assert {"PARAMETER temperature 0.8", "PARAMETER top_k 50", "PARAMETER top_p 1.0", "PARAMETER repeat_penalty 1.0"
            } <= set(lines)
    assert sorted(p.name for p in out.parent.iterdir()) == ["Modelfile", "ghoul.gguf"]
    assert main(["export", "gguf", str(models["qwen3"]), str(out), "--dtype", "q8_0"]) == 0  # again: the same file
    # a Modelfile of the user's (edited, or another model's) is never replaced
    edited = (out.parent / "Modelfile").read_text() + 'SYSTEM """You tell horror stories."""\n'
    (out.parent / "Modelfile").write_text(edited)
    assert main(["export", "gguf", str(models["qwen3"]), str(out.parent / "other.gguf")]) == 2
    assert (out.parent / "Modelfile").read_text() == edited and not (out.parent / "other.gguf").exists()


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    return err


@pytest.mark.parametrize("overrides, switch", [
    (dict(activation="relu2"), "activation = 'relu2'"),
    (dict(moe_experts=2), "moe_experts = 2"),
    ({**LLAMA, "norm_position": "post"}, "norm_position = 'post'"),
    ({**LLAMA, "norm": "layernorm"}, "norm = 'layernorm'"),
])
def test_unsupported_switch_is_refused_in_one_line(tmp_path, capsys, overrides, switch):
    save_model_dir(GPT(GPTConfig(vocab_size=50257, block_size=32, n_layer=1, n_head=2, n_embd=16, **overrides)),
        tmp_path / "m")
    err = one_line_error(capsys, ["export", "gguf", str(tmp_path / "m"), str(tmp_path / "out" / "m.gguf")])
    assert switch in err and "no llama.cpp equivalent" in err
    assert not (tmp_path / "out").exists()


def test_bad_paths_are_one_line_errors_and_leave_nothing(tmp_path, capsys, models):
    out = tmp_path / "out"
    out.mkdir()
    err = one_line_error(capsys, ["export", "gguf", str(tmp_path / "missing"), str(out / "m.gguf")])
    assert "does not exist" in err
    err = one_line_error(capsys, ["export", "gguf", str(models["qwen3"]), str(out)])
    assert "is a directory" in err
    for inside in ("model.safetensors", "config.json", "tokenizer.json", "m.gguf"):  # each would damage the model
        err = one_line_error(capsys, ["export", "gguf", str(models["qwen3"]), str(models["qwen3"] / inside)])
        assert "an input: writing there would change it" in err
    assert list(out.iterdir()) == []
    assert sorted(p.name for p in models["qwen3"].iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    notes = tmp_path / "story.gguf"  # a user's file of another kind under the name given: never replaced
    notes.write_text("The well behind the house\n")
    err = one_line_error(capsys, ["export", "gguf", str(models["qwen3"]), str(notes)])
    assert f"{notes} exists and is not a GGUF file" in err and notes.read_text() == "The well behind the house\n"
    assert not (tmp_path / "Modelfile").exists()


def test_missing_gguf_package_names_the_extra(tmp_path, capsys, monkeypatch, models):
    import sys

    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` now fails as when it is not installed
    err = one_line_error(capsys, ["export", "gguf", str(models["qwen3"]), str(tmp_path / "m.gguf")])
    assert "pip install 'ghoul[gguf]'" in err
    assert list(tmp_path.iterdir()) == []
