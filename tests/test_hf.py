"""Hugging Face interop: both directions give the same logits on the same weights; exports with own BPE tokenizers
and LLaMA-style models load with AutoModelForCausalLM and AutoTokenizer and give ghoul's ids, logits and greedy ids."""

import json
import shutil
from pathlib import Path

import pytest
import regex
import torch
import transformers

from ghoul.checkpoint import save_model_dir
from ghoul.cli import main
from ghoul.errors import GhoulError
from ghoul.hf import export_hf, load_hf_model
from ghoul.hf_tokenizer import HF_PATTERNS
from ghoul.model import GPT, GPTConfig
from ghoul.tokenizer.bpe import BPETokenizer
from ghoul.tokenizer.char import CharTokenizer


def hf_model(seed=0):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(vocab_size=1000, n_positions=64, n_embd=48, n_layer=3, n_head=4,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # random biases and gains, so a transposition or a mixed-up name cannot hide
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def test_from_hf_gives_same_logits(tmp_path):
    ref = hf_model()
    ref.save_pretrained(tmp_path / "hf")
    model = load_hf_model(tmp_path / "hf").eval()
    assert model.config.n_layer == 3 and model.config.block_size == 64
    idx = torch.randint(0, 1000, (2, 40))
    with torch.no_grad():
        expected = ref(idx).logits
        got, _ = model(idx)
    assert (got - expected).abs().max().item() < 1e-4


@pytest.mark.parametrize("padding", [1, 64])
def test_export_loads_in_transformers_with_same_logits(tmp_path, padding):
    torch.manual_seed(1)
    model = GPT(GPTConfig(vocab_size=1000, block_size=64, n_embd=48, n_layer=3, n_head=4,
                          vocab_padding=padding)).eval()
    assert model.lm_head.weight.size(0) == (1000 if padding == 1 else 1024)
    with torch.no_grad():
        model.lm_head.weight[1000:] = 1.0  # padding rows: the export must crop them
    save_model_dir(model, tmp_path / "ghoul")
    assert main(["export", "hf", str(tmp_path / "ghoul"), str(tmp_path / "hf")]) == 0
    ref = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    idx = torch.randint(0, 1000, (2, 50))
    with torch.no_grad():
        assert (ref(idx).logits - model(idx)[0]).abs().max().item() < 1e-4


def test_round_trip_through_hf_keeps_generation(tmp_path):
    torch.manual_seed(2)
    model = GPT(GPTConfig(vocab_size=1000, block_size=64, n_embd=48, n_layer=2, n_head=4)).eval()
    save_model_dir(model, tmp_path / "a")
    export_hf(tmp_path / "a", tmp_path / "hf")
    back = load_hf_model(tmp_path / "hf").eval()
    idx = torch.zeros((1, 1), dtype=torch.long)
    assert torch.equal(model.generate(idx, 20, temperature=0), back.generate(idx, 20, temperature=0))


def test_a_hugging_face_directory_given_as_a_checkpoint_is_named_for_what_it_is(tmp_path, capsys):
    save_model_dir(GPT(GPTConfig(vocab_size=1000, block_size=64, n_embd=48, n_layer=2, n_head=4)), tmp_path / "a")
    export_hf(tmp_path / "a", tmp_path / "hf")
    for command in (["generate", "--checkpoint", str(tmp_path / "hf"), "--max-new-tokens", "2"],
                    ["export", "gguf", str(tmp_path / "hf"), str(tmp_path / "m.gguf")]):
        assert main(command) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert "is a Hugging Face model directory (model_type 'gpt2')" in err and "exported from" in err


def test_exported_gpt2_tokenizer_files_load_in_transformers(tmp_path):
    torch.manual_seed(3)
    save_model_dir(GPT(GPTConfig.from_name("tiny")), tmp_path / "m", tokenizer="gpt2")
    export_hf(tmp_path / "m", tmp_path / "hf")
    tok = transformers.GPT2TokenizerFast.from_pretrained(tmp_path / "hf")
    assert tok("Hello world")["input_ids"] == [15496, 995]
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["eos_token_id"] == 50256


def test_from_hf_rejects_other_architectures(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(GhoulError, match="only GPT-2"):
        load_hf_model(tmp_path)


class FakeHub:
    """Stands in for huggingface_hub.HfApi (no network in tests); `fail` makes it act offline."""

    calls: list = []
    fail = False

    def create_repo(self, repo_id, exist_ok):
        if FakeHub.fail:
            raise ConnectionError("Failed to resolve 'huggingface.co'")
        FakeHub.calls.append(("create", repo_id))

    def upload_folder(self, folder_path, repo_id):
        FakeHub.calls.append(("upload", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))


def test_export_writes_a_model_card_and_pushes(tmp_path, monkeypatch, capsys):
    import sys
    import types

    torch.manual_seed(4)
    save_model_dir(GPT(GPTConfig.from_name("tiny")), tmp_path / "m", tokenizer="gpt2")
    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(HfApi=FakeHub))
    assert main(["export", "hf", str(tmp_path / "m"), str(tmp_path / "hf"), "--push", "me/ghoul-tiny"]) == 0
    files = ["README.md", "config.json", "generation_config.json", "merges.txt", "model.safetensors",
             "special_tokens_map.json", "tokenizer_config.json", "vocab.json"]
    assert FakeHub.calls == [("create", "me/ghoul-tiny"), ("upload", "me/ghoul-tiny", files)]
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "2 layers, 2 heads, width 16" in card and f"{GPT(GPTConfig.from_name('tiny')).num_params():,}" in card
    FakeHub.fail = True
    capsys.readouterr()
    assert main(["export", "hf", str(tmp_path / "m"), str(tmp_path / "hf2"), "--push", "me/ghoul-tiny"]) == 2
    err = capsys.readouterr().err
    assert "could not push" in err and "the folder is written" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "hf2" / "model.safetensors").is_file()
    # a repository id the Hub would refuse: said before the export, not after it as a failed log-in
    for bad in ("not a repo id!", "me/ghoul/tiny", "me/ghoul..tiny"):
        assert main(["export", "hf", str(tmp_path / "m"), str(tmp_path / "hf3"), "--push", bad]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [
            f"ghoul export hf: error: --push {bad!r} is no Hugging Face repository id: give NAME or OWNER/NAME "
            "(letters, digits, '-', '_' and '.')"]
    assert not (tmp_path / "hf3").exists()


def test_export_refuses_to_replace_what_is_not_an_earlier_export(tmp_path, capsys):
    torch.manual_seed(3)
    save_model_dir(GPT(GPTConfig(vocab_size=1000, block_size=64, n_embd=48, n_layer=2, n_head=4)), tmp_path / "m")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "notes.txt").write_text("mine")
    (tmp_path / "file.txt").write_text("mine")
    for out, message in [(tmp_path / "m", "holds the model being exported"),
                         (tmp_path, "holds the model being exported"),
                         (tmp_path / "notes", "not an earlier export"), (tmp_path / "file.txt", "is a file")]:
        assert main(["export", "hf", str(tmp_path / "m"), str(out)]) == 2
        assert message in capsys.readouterr().err
    assert (tmp_path / "notes" / "notes.txt").read_text() == (tmp_path / "file.txt").read_text() == "mine"
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    for _ in range(2):  # an earlier export is replaced whole, as the first write made it
        assert main(["export", "hf", str(tmp_path / "m"), str(tmp_path / "hf")]) == 0
    assert transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").config.n_layer == 2
    # ... but not with a file of the user's own in it, which the replacement would delete
    (tmp_path / "hf" / "NOTES.txt").write_text("mine")
    capsys.readouterr()
    exported = {p.name: p.read_bytes() for p in (tmp_path / "hf").iterdir()}
    assert main(["export", "hf", str(tmp_path / "m"), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"ghoul export hf: error: {tmp_path / 'hf'} is an earlier export that also holds NOTES.txt, which "
                   "the export would delete (it replaces the folder whole): move them away, or give a new directory"]
    assert {p.name: p.read_bytes() for p in (tmp_path / "hf").iterdir()} == exported


def test_export_of_a_damaged_checkpoint_is_a_one_line_error(tmp_path, capsys):
    save_model_dir(GPT(GPTConfig(vocab_size=1000, block_size=64, n_embd=48, n_layer=2, n_head=4)), tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a copy cut short
    assert main(["export", "hf", str(tmp_path / "m"), str(tmp_path / "hf")]) == 2
    assert "could not be read" in capsys.readouterr().err and not (tmp_path / "hf").exists()


LLAMA = dict(norm="rmsnorm", activation="swiglu", position="rotary", bias=False)


def perturbed(model: GPT, scale: float = 0.2) -> GPT:
    """`model` with noise on every weight, gains and padding rows included: a swapped or misnamed weight cannot hide,
    and greedy decoding does not settle on one repeated token as it does after a few training steps."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model.eval()


def check_export(tmp_path: Path, model: GPT, tok: BPETokenizer, stories: list[str], hf_class: str) -> Path:
    """Export `model` with `tok`: transformers loads it as `hf_class` and gives ghoul's ids, logits and greedy ids."""
    save_model_dir(model, tmp_path / "ghoul", tokenizer=tok)
    assert main(["export", "hf", str(tmp_path / "ghoul"), str(tmp_path / "hf")]) == 0
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert type(ref).__name__ == hf_class and hf_tok.eos_token_id == hf_tok.pad_token_id == tok.eot_id
    held_out = stories[300:]
    for feature in ("\n\n", "0123456789", "!?;:\"'()-", "’“”…é"):  # the held-out text holds all of these
        assert any(c in text for text in held_out for c in feature)
    for text in [*held_out, "Ünïcödé 👻 in the 1990s—\r\n\tI'M sure you'll SEE it 1234567...  \n\n  "]:
        ids = tok.encode(text)
        assert hf_tok(text)["input_ids"] == ids
        assert hf_tok.decode(ids) == text
    idx = torch.tensor([tok.encode(text)[:100] for text in held_out[:4]])
    with torch.no_grad():
        expected, got = model(idx)[0], ref(idx).logits
    # float32 keeps ~7 digits; both sides add the same products in another order (split or fused matmuls, rotary
    # tables computed apart), which moves the logits by ~1e-6 of their scale; a wrong weight moves them by O(1)
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()
    for text in held_out[:3]:
        prompt = torch.tensor([tok.encode(text)[:16]])
        ours = model.generate(prompt, 40, temperature=0, eos_id=tok.eot_id)
        theirs = ref.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=40, do_sample=False)
        assert theirs.tolist() == ours.tolist()
        assert ours.size(1) - 16 >= 32 and len(set(ours[0, 16:].tolist())) >= 8  # long and varied
    return tmp_path / "hf"


def test_gpt2_model_with_own_bpe_exports_exactly(tmp_path, stories, bpe):
    torch.manual_seed(5)
    model = perturbed(GPT(GPTConfig(vocab_size=500, vocab_padding=64, block_size=128, n_layer=2, n_head=4, n_embd=64)))
    out = check_export(tmp_path, model, bpe["gpt2"], stories, "GPT2LMHeadModel")
    shutil.copytree(out, tmp_path / "slow", ignore=shutil.ignore_patterns("tokenizer*"))
    gpt2_style = transformers.GPT2TokenizerFast.from_pretrained(tmp_path / "slow")  # from vocab.json, merges.txt
    assert gpt2_style(stories[-1])["input_ids"] == bpe["gpt2"].encode(stories[-1])
    assert "own byte-level BPE (500 tokens, gpt2 pattern)" in (out / "README.md").read_text()


@pytest.mark.parametrize("tie, qk_norm, hf_class", [(True, False, "LlamaForCausalLM"),
                                                    (False, False, "LlamaForCausalLM"),
                                                    (False, True, "Qwen3ForCausalLM")])
def test_llama_model_with_own_bpe_exports_exactly(tmp_path, stories, bpe, tie, qk_norm, hf_class):
    torch.manual_seed(6)
    model = perturbed(GPT(GPTConfig(vocab_size=500, vocab_padding=64, block_size=128, n_layer=2, n_head=4, n_embd=64,
                                    tie_embeddings=tie, qk_norm=qk_norm, rope_theta=500.0, layer_norm_eps=1e-6,
                                    **LLAMA)))
    out = check_export(tmp_path, model, bpe["gpt4"], stories, hf_class)
    assert not (out / "vocab.json").exists()  # GPT2Tokenizer would split these files with GPT-2's pattern
    assert main(["export", "hf", str(tmp_path / "ghoul"), str(out)]) == 0  # an earlier export is replaced


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
def test_hf_split_matches_ghouls_on_real_text(stories, pattern):
    from tokenizers import Regex, pre_tokenizers

    from ghoul.tokenizer.bpe import PATTERNS

    split = pre_tokenizers.Split(Regex(HF_PATTERNS[PATTERNS[pattern]]), behavior="isolated")
    for text in stories:
        assert [piece for piece, _ in split.pre_tokenize_str(text)] == regex.findall(PATTERNS[pattern], text)


@pytest.mark.parametrize("overrides, switch", [
    (dict(activation="relu2"), "activation = 'relu2'"),
    (dict(moe_experts=2), "moe_experts = 2"),
    ({**LLAMA, "activation": "relu2"}, "activation = 'relu2'"),
    ({**LLAMA, "norm_position": "post"}, "norm_position = 'post'"),
    ({**LLAMA, "position": "learned"}, "position = 'learned'"),
])
def test_export_refuses_other_architectures_in_one_line(tmp_path, capsys, overrides, switch):
    save_model_dir(GPT(GPTConfig(vocab_size=300, block_size=32, n_layer=1, n_head=2, n_embd=16, **overrides)),
        tmp_path / "m")
    assert main(["export", "hf", str(tmp_path / "m"), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert switch in err and "exportable are GPT-2" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "hf").exists()


def test_export_refuses_a_char_tokenizer_in_one_line(tmp_path, capsys, stories):
    tok = CharTokenizer.train(stories[:20])
    save_model_dir(GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16)),
        tmp_path / "m", tokenizer=tok)
    assert main(["export", "hf", str(tmp_path / "m"), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert "char tokenizer has no Hugging Face equivalent" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "hf").exists()
