"""`ghoul learn compare`: train a few GPT variants on the same tokens for the same number of steps and print one
table (variant, parameters, final val loss and bits per byte, tokens/s), also written as `comparison.md`."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ghoul.config import check_keys, option, read_toml
from ghoul.errors import GhoulError
from ghoul.files import atomic_write_text
from ghoul.learn.common import DATA_DIR, LearnResult, check_fresh, prepare_text, train_model
from ghoul.learn.gpt import FIXED, LearnGPTConfig, model_config
from ghoul.model import GPT, GPTConfig
from ghoul.tokenizer import TOKENIZER_FILE

TABLE_FILE = "comparison.md"
BUILT_IN_VARIANTS = Path(__file__).with_name("variants.toml")  # packaged: found from any directory


@dataclass
class CompareConfig(LearnGPTConfig):
    variants: Path | None = option(None, "TOML file: one [table] per variant, its keys GPTConfig fields overriding "
                                   "the flags (default: the variants that ship with ghoul, ghoul/learn/variants.toml)",
                                   metavar="FILE")
    output_dir: Path = option(Path("runs/learn-compare"), "output directory: shared token shards, one run per "
                                                          "variant, comparison.md")
    steps: int = option(300, "optimizer steps of every variant")
    sample_tokens: int = option(0, "tokens of a sample printed after each variant (0: none)")


def read_variants(path: Path, base: LearnGPTConfig) -> dict[str, dict[str, Any]]:
    """Variant name -> GPTConfig overrides, each checked by building its config now (before any training)."""
    data = read_toml(path, "variants file")  # one [table] per variant
    allowed = sorted(f.name for f in fields(GPTConfig) if f.name not in FIXED)
    for name, overrides in data.items():
        if not isinstance(overrides, dict):
            raise GhoulError(f"{path}: '{name}' must be a [table] of GPTConfig overrides, not a value")
        if not re.fullmatch(r"[\w.-]+", name) or not name.strip("."):  # each variant trains in output_dir/name
            raise GhoulError(f"{path}: variant name '{name}' is no directory name: use letters, digits, '_', '-', "
                             "'.' (not only dots)")
        if name in (DATA_DIR, TOKENIZER_FILE, TABLE_FILE):
            raise GhoulError(f"{path}: variant name '{name}' is taken by the shared {name} in the output directory: "
                             "give the variant another name")
        unknown = set(overrides) - set(allowed)
        if unknown:
            raise GhoulError(f"{path} [{name}]: unknown key(s) {', '.join(sorted(unknown))}; every variant trains "
                             f"on the same tokens, so its keys are among: {', '.join(allowed)}")
        data[name] = check_keys(overrides, GPTConfig, f"{path} [{name}]")  # TOML types: "4" is no n_head
        try:
            model_config(base, 1, data[name])
        except (GhoulError, TypeError) as e:
            raise GhoulError(f"{path} [{name}]: {e}") from None
    if not data:
        raise GhoulError(f"{path} holds no variants: add one [table] per variant (an empty one is the baseline)")
    return data


def markdown_table(rows: list[tuple[str, dict[str, Any], LearnResult]]) -> str:
    lines = ["| variant | changes | params | val loss | val bpb | tokens/s |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for name, overrides, r in rows:
        changes = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "-"
        val, bpb = ("-" if v is None else f"{v:.4f}" for v in (r.val_loss, r.val_bpb))
        lines.append(f"| {name} | {changes} | {r.params:,} | {val} | {bpb} | {r.tokens_per_s:,.0f} |")
    return "\n".join(lines) + "\n"


def run(cfg: CompareConfig) -> list[tuple[str, dict[str, Any], LearnResult]]:
    """Train every variant of `cfg.variants` on the same shards, seed and steps; print and write the table."""
    variants = read_variants(Path(cfg.variants or BUILT_IN_VARIANTS), cfg)
    for name in variants:
        check_fresh(cfg.output_dir / name)
    data_dir, tokenizer = prepare_text(cfg, cfg.output_dir)
    rows = []
    for name, overrides in variants.items():
        print(f"=== {name}: {overrides or 'the flags as given'}")
        result = train_model(cfg, lambda vocab, o=overrides: GPT(model_config(cfg, vocab, o)), tokenizer, data_dir,
                             cfg.output_dir / name)
        rows.append((name, overrides, result))
    tokens = cfg.steps * cfg.batch_size * cfg.block_size
    table = markdown_table(rows)
    header = (f"# Architecture comparison\n\n{len(rows)} variants, each trained for {cfg.steps} steps "
              f"({tokens:,} tokens) on {data_dir} with a {tokenizer.vocab_size:,}-token {tokenizer.name} tokenizer; "
              f"base: {cfg.n_layer} layers, {cfg.n_head} heads, width {cfg.n_embd}, {cfg.optimizer} at "
              f"learning rate {cfg.learning_rate}.\n\n")
    atomic_write_text(cfg.output_dir / TABLE_FILE, header + table)
    print(f"\n{table}\nwrote {cfg.output_dir / TABLE_FILE}")
    return rows
