"""The benchmark suite: every case, ghoul against its peer in the same process run, into results.json and RESULTS.md.

Run: python -m benchmarks [--quick] [--only NAME ...]. `--quick` is a smoke run (small sizes, one repeat); its
figures are noisier. With `--only`, the other cases keep their previous results. The Notes section of RESULTS.md,
between the notes markers, is kept when the file is rewritten.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import transformers

from benchmarks import bench_bpe, bench_generate, bench_gguf, bench_hellaswag, bench_prepare, bench_train
from benchmarks.timing import Unsupported, describe
from ghoul.files import atomic_write_text

HERE = Path(__file__).resolve().parent
NOTES = re.compile(r"<!-- notes -->\n(.*?)<!-- /notes -->", re.S)

# name -> (run function, full-size arguments, --quick arguments)
CASES: dict[str, tuple[Callable[..., dict], dict, dict]] = {
    "train-small": (bench_train.run, dict(preset="small", batch=4, seq_len=256, repeats=5),
                    dict(preset="small", batch=2, seq_len=64, repeats=1, warmup=1)),
    "train-gpt2": (bench_train.run, dict(preset="gpt2", batch=2, seq_len=256, repeats=3),
                   dict(preset="gpt2", batch=1, seq_len=64, repeats=1, warmup=1)),
    # ghoul against its own float32 eager step; bfloat16 is skipped where the device only emulates it
    "train-small-bfloat16": (partial(bench_train.run_own, "bfloat16"), dict(preset="small", batch=4, seq_len=256),
                             dict(preset="small", batch=2, seq_len=64, repeats=1, warmup=1)),
    "train-small-compile": (partial(bench_train.run_own, "compile"), dict(preset="small", batch=4, seq_len=256),
                            dict(preset="small", batch=2, seq_len=64, repeats=1, warmup=1)),
    # the default run's step (laptop preset, batch 16 x 256) on the CPU against its matrix products alone
    "cpu-default": (bench_train.run_default, dict(repeats=5), dict(batch=2, seq_len=64, repeats=1, warmup=1)),
    # the same at width 384, where issue 17 set its targets: the products take more of the step there
    "cpu-default-384": (bench_train.run_default, dict(repeats=5, width=384),
                        dict(batch=2, seq_len=64, repeats=1, warmup=1, width=384)),
    # the quick run keeps 16 + 128 tokens: generation is fast, and the figure stays comparable to the full one
    "generate": (bench_generate.run, dict(preset="small", prompt_tokens=16, new_tokens=128, repeats=3),
                 dict(preset="small", prompt_tokens=16, new_tokens=128, repeats=1)),
    # the default model as a GGUF: file sizes per dtype, and llama.cpp's greedy tokens/s against ghoul's cached sampling
    "gguf": (bench_gguf.run, dict(preset="laptop", vocab_size=4096, prompt_tokens=16, new_tokens=128, repeats=3),
             dict(preset="laptop", vocab_size=512, prompt_tokens=16, new_tokens=64, repeats=1)),
    "prepare": (bench_prepare.run, dict(repeat=20, repeats=3), dict(repeat=2, repeats=1, warmup=0)),
    "hellaswag": (bench_hellaswag.run, dict(preset="small", examples=32, batch_size=16, repeats=3),
                  dict(preset="small", examples=8, batch_size=8, repeats=1)),
    "bpe-tinyshakespeare": (bench_bpe.run, dict(corpus="tinyshakespeare", vocab_size=4096, repeats=1),
                            dict(corpus="tinyshakespeare", vocab_size=512, repeats=1)),
    "bpe-reddit-horror": (bench_bpe.run, dict(corpus="reddit-horror", vocab_size=4096, repeats=1),
                          dict(corpus="reddit-horror", vocab_size=512, repeats=1)),
}


def machine() -> dict:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "gpu": gpu,
            "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()}


def run_case(name: str, quick: bool) -> dict:
    fn, full, small = CASES[name]
    kwargs = small if quick else full
    start = time.perf_counter()
    try:
        r = fn(**kwargs)
    except Unsupported as e:
        r = {"case": name, "skipped": str(e)}
    except (ValueError, OSError, SystemExit, AssertionError) as e:  # a missing data folder, an emulated dtype
        r = {"case": name, "error": f"{type(e).__name__}: {e}"}
    r["case"], r["mode"], r["seconds"] = name, "quick" if quick else "full", time.perf_counter() - start
    return r


def _cell(s: dict, unit: str) -> str:
    return f"{s['rate']:,.1f} {unit}"


def markdown(results: list[dict], info: dict, notes: str) -> str:
    """RESULTS.md: header, one table row per case, how to reproduce each, and the kept notes."""
    lines = ["# Benchmarks", "",
             f"Written by `python -m benchmarks` on {info['date']}. Machine: {info['cpu']}, {info['cores']} cores "
             f"({info['threads']} torch threads){', GPU ' + info['gpu'] if info['gpu'] else ', no GPU'}; torch "
             f"{info['torch']}, transformers {info['transformers']}, Python {info['python']}.", "",
             "Each case times ghoul and its peer in the same process run (warm-up, then the median of the repeats); "
             "the ratio is ghoul's rate over the peer's, so above 1 means ghoul is faster. Rows marked quick come "
             "from `--quick` (small sizes, one repeat): smoke figures, noisier than full ones.", "",
             "| case | mode | what | ghoul | peer | ratio |", "| --- | --- | --- | --- | --- | --- |"]
    for r in results:
        if "error" in r or "skipped" in r:
            why = f"failed: {r['error']}" if "error" in r else f"skipped: {r['skipped']}"
            lines.append(f"| {r['case']} | {r['mode']} | {why} | | | |")
            continue
        lines.append(f"| {r['case']} | {r['mode']} | {r['what']} | {r['ours']['name']}: "
                     f"{_cell(r['ours'], r['unit'])} | {r['peer']['name']}: {_cell(r['peer'], r['unit'])} | "
                     f"**{r['ratio']:.2f}x** |")
    lines += ["", "## How to reproduce", "", "Every case alone, at the size it was measured (the suite: "
              "`python -m benchmarks [--quick] [--only CASE ...]`):", ""]
    lines += [f"- {r['case']}: `{r['reproduce']}`" for r in results if "reproduce" in r]
    details = [f"- {r['case']}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in r["details"].items())
               for r in results if r.get("details")]
    lines += ["", "## Details", "", *details, "", "## Notes", "", "<!-- notes -->", notes.rstrip("\n"),
              "<!-- /notes -->", ""]
    return "\n".join(lines)


def _fmt(v: object) -> str:
    return f"{v:,.3g}" if isinstance(v, float) else str(v)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat: a smoke run")
    parser.add_argument("--only", nargs="+", choices=list(CASES), metavar="NAME",
                        help=f"run only these cases: {', '.join(CASES)}")
    parser.add_argument("--out", type=Path, default=HERE, help="folder for results.json and RESULTS.md")
    args = parser.parse_args(argv)
    json_path, md_path = args.out / "results.json", args.out / "RESULTS.md"
    previous = json.loads(json_path.read_text(encoding="utf-8"))["results"] if json_path.is_file() else []
    fresh = {}
    for name in args.only or CASES:
        print(f"--- {name}", flush=True)
        fresh[name] = run_case(name, args.quick)
        r = fresh[name]
        print(f"{name} failed: {r['error']}" if "error" in r else f"{name} skipped: {r['skipped']}"
              if "skipped" in r else describe(r), flush=True)
    # with --only, the cases not run keep their last results, in the suite's order
    kept = {r["case"]: r for r in previous if r.get("case") in CASES}
    results = [fresh.get(name) or kept[name] for name in CASES if name in fresh or name in kept]
    info = {"date": datetime.date.today().isoformat(), **machine()}
    atomic_write_text(json_path, json.dumps({"machine": info, "results": results}, indent=2) + "\n")
    old = md_path.read_text(encoding="utf-8") if md_path.is_file() else ""
    notes = m.group(1) if (m := NOTES.search(old)) else ""
    atomic_write_text(md_path, markdown(results, info, notes))
    print(f"wrote {json_path} and {md_path}")
    return 1 if any("error" in r for r in fresh.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
