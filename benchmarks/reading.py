"""How readable a run's stories are under several sampling settings: the share of words that are not words of the
run's own text (a small model's misspellings and made-up words) and the share of repeated word 4-grams within a
story (what too cold a sampling turns into). A measure of quality, not of speed: it is no case of the suite.

Run: python -m benchmarks.reading RUN [--stage finetune|pretrain|rlhf/finetune] [--samples 120]
[--settings 1.0,200,- 0.8,-,0.9 ...], where RUN is a `ghoul pipeline --output-dir` and each setting is
temperature,top_k,top_p ("-" for none).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from ghoul.files import read_jsonl
from ghoul.generate import GenerateConfig, run

WORD = re.compile(r"[A-Za-z]+")
SETTINGS = ["1.0,200,-", "1.0,-,-", "0.9,-,0.95", "0.8,-,0.95", "0.8,-,0.9", "0.8,50,-", "0.7,-,0.9", "0.6,-,0.95"]


def setting(text: str) -> tuple[float, int | None, float | None]:
    temperature, top_k, top_p = text.split(",")
    return float(temperature), None if top_k == "-" else int(top_k), None if top_p == "-" else float(top_p)


def repeated_share(words: list[str]) -> float:
    grams = [tuple(words[i:i + 4]) for i in range(len(words) - 3)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a `ghoul pipeline` output directory")
    parser.add_argument("--stage", default="finetune", help="the model directory in RUN to sample (default: finetune; "
                        "pretrain, or rlhf/finetune for the preference stage)")
    parser.add_argument("--samples", type=int, default=120, help="stories per setting, spread over the prompts")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--settings", nargs="+", default=SETTINGS, help="temperature,top_k,top_p each")
    args = parser.parse_args()
    lexicon = {w.lower() for path in sorted((args.run / "data" / "text").glob("*.jsonl"))
               for r in read_jsonl(path) for w in WORD.findall(r["text"])}
    print("| sampling | made-up words (not in the run's text) | repeated word 4-grams (worst story) | words per story |"
          "\n| --- | ---: | ---: | ---: |")
    for text in args.settings:
        temperature, top_k, top_p = setting(text)
        stories = run(GenerateConfig(checkpoint=args.run / args.stage, prompts_file=args.run / "prompts.txt",
                                     num_samples=args.samples, max_new_tokens=args.max_new_tokens, seed=args.seed,
                                     temperature=temperature, top_k=top_k, top_p=top_p, print_samples=False))
        words = [[w.lower() for w in WORD.findall(s["text"])] for s in stories]
        flat = [w for ws in words for w in ws]
        repeats = [repeated_share(ws) for ws in words]
        name = ", ".join([f"temperature {temperature:g}", *([f"top-k {top_k}"] if top_k else []),
                          *([f"top-p {top_p:g}"] if top_p else [])])
        print(f"| {name} | {sum(w not in lexicon for w in flat) / len(flat):.2%} | {sum(repeats) / len(repeats):.2%} "
              f"({max(repeats):.0%}) | {len(flat) / len(words):.0f} |", flush=True)


if __name__ == "__main__":
    main()
