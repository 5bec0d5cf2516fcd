"""Hugging Face interop: both directions give the same logits on the same weights."""

import json
from pathlib import Path

import pytest
import torch
import transformers

from ghoul.cli import main
from ghoul.errors import GhoulError
from ghoul.hf import export_hf
from ghoul.model import GPT, GPTConfig


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
    model = GPT.from_hf(tmp_path / "hf").eval()
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
    model.save_pretrained(tmp_path / "ghoul")
    assert main(["export", "hf", str(tmp_path / "ghoul"), str(tmp_path / "hf")]) == 0
    ref = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    idx = torch.randint(0, 1000, (2, 50))
    with torch.no_grad():
        assert (ref(idx).logits - model(idx)[0]).abs().max().item() < 1e-4


def test_round_trip_through_hf_keeps_generation(tmp_path):
    torch.manual_seed(2)
    model = GPT(GPTConfig(vocab_size=1000, block_size=64, n_embd=48, n_layer=2, n_head=4)).eval()
    model.save_pretrained(tmp_path / "a")
    export_hf(tmp_path / "a", tmp_path / "hf")
    back = GPT.from_hf(tmp_path / "hf").eval()
    idx = torch.zeros((1, 1), dtype=torch.long)
    assert torch.equal(model.generate(idx, 20, temperature=0), back.generate(idx, 20, temperature=0))


def test_exported_gpt2_tokenizer_files_load_in_transformers(tmp_path):
    torch.manual_seed(3)
    GPT(GPTConfig.from_name("tiny")).save_pretrained(tmp_path / "m", tokenizer="gpt2")
    export_hf(tmp_path / "m", tmp_path / "hf")
    tok = transformers.GPT2TokenizerFast.from_pretrained(tmp_path / "hf")
    assert tok("Hello world")["input_ids"] == [15496, 995]
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["eos_token_id"] == 50256


def test_from_hf_rejects_other_architectures(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(GhoulError, match="only GPT-2"):
        GPT.from_hf(tmp_path)


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
    GPT(GPTConfig.from_name("tiny")).save_pretrained(tmp_path / "m", tokenizer="gpt2")
    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(HfApi=FakeHub))
    assert main(["export", "hf", str(tmp_path / "m"), str(tmp_path / "hf"), "--push", "me/ghoul-tiny"]) == 0
    files = ["README.md", "config.json", "merges.txt", "model.safetensors", "vocab.json"]
    assert FakeHub.calls == [("create", "me/ghoul-tiny"), ("upload", "me/ghoul-tiny", files)]
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "2 layers, 2 heads, width 16" in card and f"{GPT(GPTConfig.from_name('tiny')).num_params():,}" in card
    FakeHub.fail = True
    capsys.readouterr()
    assert main(["export", "hf", str(tmp_path / "m"), str(tmp_path / "hf2"), "--push", "me/ghoul-tiny"]) == 2
    err = capsys.readouterr().err
    assert "could not push" in err and "the folder is written" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "hf2" / "model.safetensors").is_file()


def test_export_refuses_to_replace_what_is_not_an_earlier_export(tmp_path, capsys):
    torch.manual_seed(3)
    GPT(GPTConfig(vocab_size=1000, block_size=64, n_embd=48, n_layer=2, n_head=4)).save_pretrained(tmp_path / "m")
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


def test_export_of_a_damaged_checkpoint_is_a_one_line_error(tmp_path, capsys):
    GPT(GPTConfig(vocab_size=1000, block_size=64, n_embd=48, n_layer=2, n_head=4)).save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a copy cut short
    assert main(["export", "hf", str(tmp_path / "m"), str(tmp_path / "hf")]) == 2
    assert "could not be read" in capsys.readouterr().err and not (tmp_path / "hf").exists()
