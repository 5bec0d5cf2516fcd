"""`ghoul report RUN_DIR`: what a pipeline run did and how well, as a self-contained `report.html` and `report.md`.

It only reads the run directory's files (logs, evaluations, stories, judgments), so it is cheap to rerun.
"""

from __future__ import annotations

import base64
import html
import io
import json
import platform
import statistics
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from ghoul import __version__
from ghoul.config import option
from ghoul.errors import GhoulError
from ghoul.eval.curves import CHANCE, REFERENCES, val_tokens
from ghoul.feedback.judges import judge_measures
from ghoul.feedback.records import FEEDBACK_DIR, FINAL_DIRS, FeedbackRun, load_rankings, load_stories
from ghoul.files import atomic_write_text, read_json, read_jsonl
from ghoul.layout import CONFIG_FILE, PIPELINE_FILE

STAGES = ("pretrain", "finetune", "preference")
# where the pipeline's `ghoul rlhf` trains the preference stage, by method
PREFERENCE_DIRS = tuple(f"{FEEDBACK_DIR}/{name}" for name in FINAL_DIRS.values())
REFERENCE_LINES = ("gpt2-124m", "gpt3-125m", "gpt2-xl")
FIGURE_SIZE = (9, 3.6)  # inches, at 100 dpi
EVALUATION = "evaluation"  # the loss plot's label of a stage's evaluation, on every held-out token
LM_LOSS = "loss (nats/token)"  # the y-axis of a language model's loss where the log has no bits per byte
# ... and of the losses that are no language model's: DPO's is per pair, PPO's and GRPO's the policy's objective
OTHER_LOSSES = {"dpo": "DPO loss (nats/pair)", "ppo": "PPO policy loss", "grpo": "GRPO policy loss"}


@dataclass
class ReportConfig:
    run_dir: Path = option(help="the pipeline's run directory", positional=True)


def stage_summary(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Per training stage: steps, tokens, time, throughput, final losses, and its evaluation if any."""
    out = {}
    for name in STAGES:
        subs = PREFERENCE_DIRS if name == "preference" else (name,)
        logs = ((sub, read_jsonl(run_dir / sub / "log.jsonl", missing_ok=True)) for sub in subs)
        sub, log = next(((sub, log) for sub, log in logs if log), (name, []))
        steps = [r for r in log if "loss" in r]
        if not steps:
            continue
        rates = [r["tokens_per_s"] for r in steps if "tokens_per_s" in r]  # on-policy RL logs rewards, not tokens
        mfu = [r["mfu"] for r in steps if "mfu" in r]  # these two are logged on GPUs only
        memory = [r["peak_memory_gib"] for r in steps if "peak_memory_gib" in r]
        out[name] = {"steps": steps[-1]["step"], "tokens": steps[-1].get("tokens"), "seconds": steps[-1]["elapsed"],
                     "tokens_per_s": statistics.median(rates) if rates else None, "loss": steps[-1]["loss"],
                     "mfu": statistics.median(mfu) if mfu else None, "peak_memory_gib": max(memory, default=None),
                     "log": log, "eval": read_json(run_dir / "eval" / f"{name}.json", {}),
                     "loss_label": OTHER_LOSSES.get(Path(sub).name, LM_LOSS)}
    return out


def judge_summary(run_dir: Path) -> dict[str, Any] | None:
    """How the judge chose: groups judged and skipped, which shown position won, agreement with the length baseline."""
    feedback = FeedbackRun(run_dir / FEEDBACK_DIR)
    rankings = load_rankings(feedback.rankings) if feedback.rankings.is_file() else []
    if not rankings:
        return None
    stories = load_stories(feedback.stories) if feedback.stories.is_file() else {}
    by_id = {i: s["text"] for i, s in stories.items()}
    judged = [r for r in rankings if r["chosen"] is not None]
    positions = Counter(r["shown"].index(r["chosen"]) + 1 for r in judged)
    longest = [max(r["shown"], key=lambda i: len(by_id.get(i, ""))) == r["chosen"] for r in judged if by_id]
    k = len(rankings[0]["shown"])
    return {"judge": rankings[0].get("judge", "unknown"), "groups": len(rankings), "judged": len(judged),
            "skipped": len(rankings) - len(judged), "group_size": k,
            "position_wins": {p: positions.get(p, 0) for p in range(1, k + 1)},
            "agrees_with_length": sum(longest) / len(longest) if longest else None, "chance": 1 / k}


def judge_sentence(j: dict[str, Any], name: str) -> str:
    """The judge summary in words; `name` is the judge's name as the format marks code."""
    wins = ", ".join(f"position {p}: {n}" for p, n in j["position_wins"].items())
    return (f"Judge {name} ({judge_measures(j['judge'])}): {j['judged']} groups of {j['group_size']} judged, "
            f"{j['skipped']} skipped. Wins by position shown: {wins}. Agreement with the length baseline: "
            f"{_fmt(j['agrees_with_length'], '.0%')} (a random judge agrees {j['chance']:.0%} of the time).")


def winrate_sentence(w: dict[str, Any]) -> str:
    n = w["wins_a"] + w["wins_b"]
    skipped = f"; {w['skipped']} pairs skipped" if w["skipped"] else ""
    skipped += f"; {w['ties']} ties (the same story from both)" if w.get("ties") else ""  # older runs: none recorded
    return (f"The {w['a']} model beats the {w['b']} model in {w['wins_a']} of {n} pairs of stories for the same "
            f"prompts and seeds, judged by {w['judge']}: win-rate {_fmt(w['win_rate'], '.1%')}, 95% Wilson interval "
            f"[{w['low']:.1%}, {w['high']:.1%}]{skipped}. An interval that holds 50% means no measurable difference. "
            + circularity(w))


def circularity(w: dict[str, Any]) -> str:
    """Whether the win-rate's judge is the one whose picks were trained on, in words."""
    trained_on = w.get("training_judge", w["judge"])  # runs before --winrate-judge used the training judge
    if trained_on == w["judge"]:
        return (f"The stories trained on were picked by the same judge, so this figure is circular: it shows that the "
                f"preference stage learned what {w['judge']} rewards ({judge_measures(w['judge'])}), not that the "
                "stories got better. Give --winrate-judge another judge (a person: web; an LLM: openai:MODEL) for an "
                "independent figure.")
    return (f"The stories trained on were picked by {trained_on}; this figure comes from another judge, "
            f"{w['judge']} ({judge_measures(w['judge'])}).")


def samples_table(run_dir: Path) -> tuple[list[str], dict[str, list[str]]]:
    """Prompts, and for each stage its stories for those prompts (same seeds)."""
    rows = {name: read_jsonl(run_dir / "samples" / f"{name}.jsonl", missing_ok=True) for name in STAGES}
    prompts = [r["prompt"] for r in next((r for r in rows.values() if r), [])]
    return prompts, {name: [r["text"] for r in records] for name, records in rows.items() if records}


def _png(fig: Figure) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def loss_curves(log: list[dict[str, Any]], evaluation: dict[str, Any] | None = None,
                loss_label: str = LM_LOSS) -> tuple[str, dict[str, list[tuple[int, float]]]]:
    """The y-axis label and the (step, value) curves of one stage's loss plot: validation bits per byte, which compare
    across tokenizers, when the log has them (the training batches' bytes are not counted, so no training curve),
    with the stage's `evaluation` as a point of its own at its last step; otherwise, as older runs and pair losses
    log, training and validation loss, named by `loss_label`."""
    bpb = [(r["step"], r["val_bpb"]) for r in log if "val_bpb" in r]
    if bpb:
        sampled = val_tokens(log)
        curves = {"validation" + (f" in training ({sampled:,} tok.)" if sampled else ""): bpb}
        if evaluation and evaluation.get("val_bpb") is not None:
            tokens = evaluation.get("val_tokens")
            curves[EVALUATION + (f" ({tokens:,} tok.)" if tokens else "")] = [(bpb[-1][0], evaluation["val_bpb"])]
        return "validation loss (bits/byte)", curves
    return loss_label, {"train": [(r["step"], r["loss"]) for r in log if "loss" in r],
                        "validation": [(r["step"], r["val_loss"]) for r in log if "val_loss" in r]}


def stage_notes(stages: dict[str, dict[str, Any]]) -> list[str]:
    """The sentences under the stage table: the stages a run has not made (a pipeline stopped before them, which the
    report would otherwise present as complete), and why the curves and the table's figures differ."""
    missing = [name for name in STAGES if name not in stages]
    unmade = (f"The {' and '.join(missing)} stage{'s have' if len(missing) > 1 else ' has'} not run yet: the run "
              "stopped before; the same `ghoul pipeline` command goes on from where it stopped.") if missing else None
    return [note for note in (unmade, validation_note(stages)) if note]


def validation_note(stages: dict[str, dict[str, Any]]) -> str | None:
    """Why the curves end elsewhere than the table's figures: the evaluation reads every held-out token, the
    training log's validation only its first batches, so the two differ by that sample."""
    pairs = [(val_tokens(s["log"]), s["eval"].get("val_tokens")) for s in stages.values()]
    sampled, evaluated = next(((a, b) for a, b in pairs if a and b and a != b), (None, None))
    if sampled is None:
        return None
    return (f"The table's val loss and val bpb are the evaluation after each stage, on {evaluated:,} held-out tokens "
            f"(the {EVALUATION} points in the plot). The curves were measured during training on the first "
            f"{sampled:,} held-out tokens, the same every time: they show the trend, and their level differs from "
            "the evaluation's by that sample.")


def loss_figure(stages: dict[str, dict[str, Any]]) -> bytes:
    fig = Figure(figsize=FIGURE_SIZE, dpi=100)
    for i, (name, s) in enumerate(stages.items()):
        ax = fig.add_subplot(1, len(stages), i + 1)
        ylabel, curves = loss_curves(s["log"], s["eval"], s["loss_label"])
        for label, points in curves.items():
            if points:
                style = "-" if label == "train" else "D" if label.startswith(EVALUATION) else "o-"
                ax.plot(*zip(*points, strict=True), style, label=label)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")  # three panels side by side: a smaller legend hides less of the curves
    return _png(fig)


def hellaswag_figure(stages: dict[str, dict[str, Any]]) -> bytes:
    fig = Figure(figsize=FIGURE_SIZE, dpi=100)
    ax = fig.add_subplot()
    names = [n for n, s in stages.items() if s["eval"].get("hellaswag_acc") is not None]
    ax.bar(names, [stages[n]["eval"]["hellaswag_acc"] * 100 for n in names], color="tab:blue", width=0.5)
    for ref, color in zip(REFERENCE_LINES, ("tab:red", "tab:green", "tab:purple"), strict=True):
        value = REFERENCES[ref].hellaswag * 100
        ax.axhline(value, linestyle="--", color=color, label=f"{REFERENCES[ref].label} ({value:.1f}%)")
    ax.axhline(CHANCE * 100, linestyle=":", color="gray", label="chance (25%)")
    ax.set_ylabel("HellaSwag acc_norm (%)")
    ax.set_ylim(0, 60)
    ax.legend(fontsize="small", loc="upper left")
    ax.set_title("HellaSwag after each stage, against GPT-2 and GPT-3")
    return _png(fig)


def environment() -> dict[str, str]:
    import torch  # torch only here: `ghoul report` starts without it

    from ghoul.dist import default_device  # imports torch

    return {"ghoul": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "device": default_device(), "world size": "1", "machine": f"{platform.machine()}, {platform.system()}",
            "written": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}


def _fmt(value: Any, spec: str = ".4f") -> str:
    return "—" if value is None else format(value, spec)


def stage_table(stages: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The stages table's header and rows, shared by both formats; MFU and peak memory only when a stage logged them."""
    gpu = any(s["mfu"] is not None or s["peak_memory_gib"] is not None for s in stages.values())
    header = ["stage", "steps", "tokens", "time (s)", "tokens/s", *(["MFU", "peak memory (GiB)"] if gpu else []),
              "train loss", "val loss", "val bpb", "HellaSwag acc_norm"]
    rows = []
    for name, s in stages.items():
        e = s["eval"]
        rows.append([name, str(s["steps"]), _fmt(s["tokens"], ","), f"{s['seconds']:.0f}",
                     _fmt(s["tokens_per_s"], ",.0f"),
                     *([_fmt(s["mfu"], ".1%"), _fmt(s["peak_memory_gib"], ".1f")] if gpu else []),
                     f"{s['loss']:.4f}", _fmt(e.get("val_loss")), _fmt(e.get("val_bpb")),
                     f"{_fmt(e.get('hellaswag_acc'), '.1%')} (n={e.get('hellaswag_n', 0)})"])
    return header, rows


def render_markdown(title: str, run_dir: Path, stages: dict, judge: dict | None, winrate: dict | None,
                    prompts: list[str], samples: dict, config: dict, env: dict) -> str:
    header, rows = stage_table(stages)
    lines = [f"# {title}", "", "## Stages", ""]
    lines += ["| " + " | ".join(row) + " |" for row in (header, ["---"] * len(header), *rows)]
    lines += ["", *(line for note in stage_notes(stages) for line in (note, "")), "![losses](loss.png)", "",
              "![HellaSwag](hellaswag.png)", ""]
    refs = ", ".join(f"{REFERENCES[r].label} {REFERENCES[r].hellaswag:.1%}" for r in REFERENCE_LINES)
    lines += [f"References (HellaSwag acc_norm, zero-shot): {refs}; chance 25%.", ""]
    if judge:
        lines += ["## The judge", "", judge_sentence(judge, f"`{judge['judge']}`"), ""]
    if winrate:
        lines += ["## Win-rate", "", winrate_sentence(winrate), ""]
    if samples:
        lines += ["## Stories for the same prompts and seeds", ""]
        for i, prompt in enumerate(prompts):
            lines += [f"### {prompt}", ""]
            for name, texts in samples.items():
                # the story as it reads: the prompt, then its continuation, which usually starts with a space
                story = " ".join((prompt + texts[i]).split()) if i < len(texts) else ""
                lines += [f"**{name}**: {story}", ""]
    final = next((d for d in (*PREFERENCE_DIRS, "finetune", "pretrain") if (run_dir / d / "latest").is_file()), None)
    if final:  # the last stage that saved a model
        lines += [f"Run the final model in llama.cpp or Ollama: `ghoul export gguf {run_dir / final} model.gguf`", ""]
    lines += ["## Config", "", "```json", json.dumps(config, indent=2), "```", "", "## Environment", ""]
    lines += [f"- {k}: {v}" for k, v in env.items()]
    return "\n".join(lines) + "\n"


def render_html(title: str, stages: dict, judge: dict | None, winrate: dict | None, prompts: list[str],
                samples: dict, config: dict, env: dict, images: dict[str, bytes]) -> str:
    """A self-contained page: the plots are embedded, nothing is fetched."""
    esc = html.escape

    def img(name: str) -> str:
        return f'<img alt="{name}" src="data:image/png;base64,{base64.b64encode(images[name]).decode()}">'

    header, rows = stage_table(stages)
    table = "".join("<tr>" + "".join(f"<{tag}>{esc(cell)}</{tag}>" for cell in row) + "</tr>"
                    for tag, row in [("th", header), *(("td", row) for row in rows)])
    parts = [f"<h1>{esc(title)}</h1>", "<h2>Stages</h2>", f"<table>{table}</table>",
             *(f"<p>{esc(note)}</p>" for note in stage_notes(stages)), img("loss.png"), img("hellaswag.png")]
    if judge:  # the sentence holds no user text but the judge's name, escaped here
        name = f"<code>{esc(judge['judge'])}</code>"
        parts += ["<h2>The judge</h2>", f"<p>{judge_sentence(judge, name)}</p>"]
    if winrate:
        parts += ["<h2>Win-rate</h2>", f"<p>{esc(winrate_sentence(winrate))}</p>"]
    if samples:
        head = "".join(f"<th>{esc(n)}</th>" for n in samples)
        body = "".join(f"<tr><td><b>{esc(p)}</b></td>" + "".join(
            f"<td>{esc(t[i]) if i < len(t) else ''}</td>" for t in samples.values()) + "</tr>"
            for i, p in enumerate(prompts))
        parts += ["<h2>Stories for the same prompts and seeds</h2>",
                  f"<table class=stories><tr><th>prompt</th>{head}</tr>{body}</table>"]
    env_rows = "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in env.items())
    parts += ["<h2>Environment</h2>", f"<table>{env_rows}</table>", "<h2>Config</h2>",
              f"<pre>{esc(json.dumps(config, indent=2))}</pre>"]
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.35em .6em;"
             "vertical-align:top;text-align:left}th{background:#f3f3f3}img{max-width:100%}"
             ".stories td{font-family:Georgia,serif;font-size:.92em;white-space:pre-wrap}"
             "pre{background:#f7f7f7;padding:1em;overflow:auto}h1{border-bottom:2px solid #333}")
    return (f"<!doctype html><html><head><meta charset=utf-8><title>{esc(title)}</title><style>{style}</style>"
            f"</head><body>{''.join(parts)}</body></html>\n")


def write_report(run_dir: str | Path) -> Path:
    """Write RUN_DIR/report.html and report.md (with loss.png and hellaswag.png beside them)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        state = "is a file" if run_dir.exists() else "does not exist"
        raise GhoulError(f"{run_dir} {state}: give the run directory of `ghoul pipeline`")
    if (run_dir / CONFIG_FILE).is_file():  # the pipeline keeps its options in pipeline.json, its stages below
        raise GhoulError(f"{run_dir} is the run of one command or a model, not a `ghoul pipeline` run: give a "
                         f"pipeline's run directory (`ghoul eval checkpoints {run_dir}` plots a training run)")
    stages = stage_summary(run_dir)
    if not stages:
        raise GhoulError(f"{run_dir} holds no training logs: give the run directory of `ghoul pipeline`")
    judge = judge_summary(run_dir)
    winrate = read_json(run_dir / "eval" / "winrate.json")  # the pipeline's win-rate of preference over finetune
    prompts, samples = samples_table(run_dir)
    config, env = read_json(run_dir / PIPELINE_FILE, {}), environment()
    images = {"loss.png": loss_figure(stages), "hellaswag.png": hellaswag_figure(stages)}
    for name, data in images.items():
        (run_dir / name).write_bytes(data)
    title = f"ghoul run report: {run_dir.name}"
    atomic_write_text(run_dir / "report.md",
                      render_markdown(title, run_dir, stages, judge, winrate, prompts, samples, config, env))
    atomic_write_text(run_dir / "report.html",
                      render_html(title, stages, judge, winrate, prompts, samples, config, env, images))
    return run_dir / "report.html"


def run(cfg: ReportConfig) -> Path:
    path = write_report(cfg.run_dir)
    print(f"wrote {path} and {path.with_suffix('.md')}")
    return path
