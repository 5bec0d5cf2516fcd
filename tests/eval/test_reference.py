"""Correctness against a reference: a random `transformers` GPT-2 scored one ending at a time by the plainest code,
and the same weights scored by ghoul's batched evaluator, must agree on every prediction and every loss."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import transformers
from torch.nn import functional as F

from ghoul.eval.hellaswag import ending_losses, evaluate_hellaswag, load_hellaswag, render_example
from ghoul.hf import load_hf_model
from ghoul.tokenizer import load_tokenizer

N_EXAMPLES = 24
BLOCK = 48  # short enough that some contexts are cropped


def reference_losses(model: transformers.GPT2LMHeadModel, tokenizer, example: dict) -> list[float]:
    """Mean loss of each ending given the context: one row at a time, no padding, no masks."""
    ctx = tokenizer.encode(example["ctx"])
    losses = []
    for ending in example["endings"]:
        end = tokenizer.encode(" " + ending)
        tokens = (ctx + end)[-BLOCK:]  # keep the most recent tokens
        with torch.no_grad():
            logits = model(torch.tensor([tokens])).logits[0]  # (T, V)
        # logits at position t predict token t + 1; the ending is the last len(end) tokens
        pred = logits[len(tokens) - len(end) - 1:-1]
        losses.append(F.cross_entropy(pred, torch.tensor(end)).item())
    return losses


def test_batched_evaluator_matches_one_at_a_time_reference(tmp_path: Path, hellaswag_full: Path, data: Path) -> None:
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=BLOCK, vocab_size=50257)
    hf = transformers.GPT2LMHeadModel(config).eval()
    hf.save_pretrained(tmp_path / "hf")
    model = load_hf_model(tmp_path / "hf").eval()
    # the reference tokenizes with Hugging Face's own GPT-2 BPE, built from OpenAI's files in the data folder
    (tmp_path / "tok").mkdir()
    shutil.copy(data / "gpt2_tokenizer" / "encoder.json", tmp_path / "tok" / "vocab.json")
    shutil.copy(data / "gpt2_tokenizer" / "vocab.bpe", tmp_path / "tok" / "merges.txt")
    hf_tok = transformers.GPT2TokenizerFast.from_pretrained(tmp_path / "tok")
    assert hf_tok.encode("Hello world") == [15496, 995]
    examples = load_hellaswag(hellaswag_full, limit=N_EXAMPLES)
    expected = torch.tensor([reference_losses(hf, hf_tok, ex) for ex in examples])  # (N, 4)

    tokenizer = load_tokenizer("gpt2")
    rows = [row for ex in examples for row in render_example(tokenizer, ex, BLOCK)]
    assert any(len(tokens) == BLOCK for tokens, _ in rows)  # cropping is exercised
    got = ending_losses(model, rows, "cpu")[1].view(N_EXAMPLES, 4)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)

    result = evaluate_hellaswag(model, tokenizer, examples, "cpu", batch_size=8)
    assert [r["pred_norm"] for r in result["examples"]] == expected.argmin(dim=1).tolist()
    labels = torch.tensor([ex["label"] for ex in examples])
    assert result["acc_norm"] == int((expected.argmin(dim=1) == labels).sum()) / N_EXAMPLES
