"""Preferences from rankings: k-1 pairs per judged group, a split by group, and the pair loader of the training loop."""

from __future__ import annotations

import json

import pytest
import torch

from ghoul.cli import main
from ghoul.errors import GhoulError
from ghoul.feedback.preferences import PairLoader, encode_pair_side, pairs_from_rankings, split_by_group
from ghoul.files import append_jsonl, read_jsonl
from ghoul.tokenizer import load_tokenizer

STORIES = {i: dict(id=i, prompt="In the attic", text=f" story {i}") for i in range(8)}
RANKINGS = [dict(group=0, shown=[2, 0, 3, 1], chosen=3, skipped=False),
            dict(group=1, shown=[4, 5, 6, 7], chosen=None, skipped=True)]


def test_a_best_of_k_judgment_gives_k_minus_1_pairs():
    pairs = pairs_from_rankings(RANKINGS, STORIES)
    assert [(p["chosen_id"], p["rejected_id"]) for p in pairs] == [(3, 2), (3, 0), (3, 1)]
    assert pairs[0] == dict(prompt="In the attic", chosen=" story 3", rejected=" story 2", group=0, chosen_id=3,
                            rejected_id=2)


def test_the_split_keeps_groups_whole_and_is_reproducible():
    pairs = [dict(group=g, n=k) for g in range(10) for k in range(3)]
    split = split_by_group(pairs, 0.2, seed=1)
    val_groups = {p["group"] for p in split if p["split"] == "val"}
    train_groups = {p["group"] for p in split if p["split"] == "train"}
    assert len(val_groups) == 2 and not val_groups & train_groups
    assert split == split_by_group(pairs, 0.2, seed=1) and split != split_by_group(pairs, 0.2, seed=2)
    assert {p["split"] for p in split_by_group(pairs[:3] * 1, 0.5, 0)} == {"train"}  # one group: all training
    assert all(p["split"] == "train" for p in split_by_group(pairs, 0.0, 0))


def test_ghoul_preferences_writes_the_pairs(tmp_path, capsys):
    for s in STORIES.values():
        append_jsonl(tmp_path / "stories.jsonl", s)
    for r in RANKINGS + [dict(group=2, shown=[0, 1], chosen=0, skipped=False)]:
        append_jsonl(tmp_path / "rankings.jsonl", r)
    out = tmp_path / "preferences.jsonl"
    assert main(["preferences", "--rankings", str(tmp_path / "rankings.jsonl"), "--out", str(out),
                 "--val-fraction", "0.5"]) == 0
    records = read_jsonl(out)
    assert len(records) == 4 and {r["split"] for r in records} == {"train", "val"}
    assert set(records[0]) >= {"prompt", "chosen", "rejected", "group", "split"}
    assert "4 pairs" in capsys.readouterr().err


def test_bad_rankings_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(GhoulError, match="stories file lacks"):
        pairs_from_rankings([dict(group=0, shown=[0, 99], chosen=0)], STORIES)
    append_jsonl(tmp_path / "rankings.jsonl", RANKINGS[1])
    (tmp_path / "stories.jsonl").write_text("")
    assert main(["preferences", "--rankings", str(tmp_path / "rankings.jsonl")]) == 2
    assert "no judged group" in capsys.readouterr().err
    for i, record in enumerate([{"shown": [0, 1], "chosen": 0}, [0, 1], {"group": 0, "shown": [0, 1], "chosen": 7}]):
        bad = tmp_path / f"bad{i}.jsonl"
        bad.write_text(json.dumps(record) + "\n")
        for command in (["preferences", "--rankings", str(bad)], ["export", "winners", str(bad)]):
            assert main([*command, "--stories", str(tmp_path / "stories.jsonl"), "--out", str(tmp_path / "o")]) == 2
            err = capsys.readouterr().err
            assert "record 1: a judgment needs an integer 'group'" in err and err.count("\n") == 1
    for out in ("rankings.jsonl", "stories.jsonl"):  # an input given as the output stays as it was
        before = (tmp_path / out).read_text()
        assert main(["preferences", "--rankings", str(tmp_path / "rankings.jsonl"), "--out", str(tmp_path / out)]) == 2
        assert "is also an input" in capsys.readouterr().err and (tmp_path / out).read_text() == before


def test_pair_loader_batches_chosen_then_rejected_with_completion_masks():
    tok = load_tokenizer("gpt2")
    records = [dict(prompt="In the attic", chosen=f" yes {i}", rejected=f" no no {i}") for i in range(6)]
    loader = PairLoader(records, tok, batch_size=2, block_size=32, seed=0)
    tokens, mask = next(loader)
    assert tokens.shape[0] == 4 and tokens.shape == mask.shape
    prompt = tok.encode("In the attic")
    ids, start = encode_pair_side(tok, "In the attic", " yes 1", 32)
    assert ids == prompt + tok.encode(" yes 1") + [tok.eot_id] and start == len(prompt)
    for row, m in zip(tokens.tolist(), mask.tolist(), strict=True):
        assert row[:len(prompt)] == prompt and not any(m[:len(prompt)])
        completion = [t for t, keep in zip(row, m, strict=True) if keep]
        assert completion[-1] == tok.eot_id and tok.decode(completion[:-1]).startswith((" yes", " no"))
    # resuming from the state gives the same next batches
    state, expected = loader.state_dict(), [next(loader) for _ in range(3)]
    other = PairLoader(records, tok, batch_size=2, block_size=32, seed=0)
    other.load_state_dict(state)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(expected, [next(other) for _ in range(3)], strict=True))
    with pytest.raises(GhoulError, match="too few"):
        PairLoader(records, tok, batch_size=4, block_size=32, world_size=2)
