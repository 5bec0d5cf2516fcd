"""The command line: help, generate end to end, and one-line errors with exit code 2."""

import json
import subprocess
import sys

import torch

from ghoul.cli import main
from ghoul.model import GPT, GPTConfig


def test_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "generate" in out and "export hf" in out


def test_python_m_ghoul_runs():
    result = subprocess.run([sys.executable, "-m", "ghoul", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "generate" in result.stdout


def test_generate_writes_reproducible_samples(tmp_path, capsys):
    args = ["generate", "--prompt", "The house was", "--num-samples", "3", "--max-new-tokens", "12", "--seed", "5",
            "--device", "cpu"]
    assert main(args + ["--out", str(tmp_path / "a.jsonl")]) == 0
    assert main(args + ["--out", str(tmp_path / "b.jsonl")]) == 0
    a = [json.loads(line) for line in (tmp_path / "a.jsonl").open()]
    assert a == [json.loads(line) for line in (tmp_path / "b.jsonl").open()]
    assert len(a) == 3 and a[0]["prompt"] == "The house was" and a[0]["seed"] == 5
    assert a[0]["sampling"]["max_new_tokens"] == 12 and a[0]["text"]
    assert "--- sample 2 ---" in capsys.readouterr().out


def test_generate_from_checkpoint_greedy(tmp_path, capsys):
    torch.manual_seed(0)
    GPT(GPTConfig.from_name("tiny")).save_pretrained(tmp_path / "m")
    assert main(["generate", "--checkpoint", str(tmp_path / "m"), "--temperature", "0", "--max-new-tokens", "5",
                 "--num-samples", "2", "--out", str(tmp_path / "s.jsonl")]) == 0
    texts = [json.loads(line)["text"] for line in (tmp_path / "s.jsonl").open()]
    assert texts[0] == texts[1]  # greedy: every sample the same


def run_error(args, capsys):
    code = main(args)
    err = capsys.readouterr().err.strip()
    return code, err


def test_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{")
    cases = [
        (["generate", "--checkpoint", str(tmp_path / "missing")], "does not exist"),
        (["generate", "--checkpoint", str(tmp_path / "broken")], "not valid JSON"),
        (["generate", "--model", "gpt7"], "unknown model preset 'gpt7'"),
        (["generate", "--prompt", "word " * 200], "the prompt is 201 tokens but the model's context is 128"),
        (["generate", "--top-p", "1.5"], "--top-p must be in (0, 1]"),
        (["generate", "--config", str(tmp_path / "none.toml")], "does not exist"),
        (["frobnicate"], "unknown command 'frobnicate'"),
    ]
    for args, message in cases:
        code, err = run_error(args, capsys)
        assert code == 2, args
        assert message in err and len(err.splitlines()) == 1, err


def test_config_file_and_flags_override(tmp_path, capsys):
    (tmp_path / "gen.toml").write_text('prompt = "Deep in the woods"\nmax-new-tokens = 3\nnum_samples = 2\n')
    out = tmp_path / "s.jsonl"
    assert main(["generate", "--config", str(tmp_path / "gen.toml"), "--num-samples", "1", "--out", str(out)]) == 0
    records = [json.loads(line) for line in out.open()]
    assert len(records) == 1 and records[0]["prompt"] == "Deep in the woods"
    assert records[0]["sampling"]["max_new_tokens"] == 3
    (tmp_path / "bad.toml").write_text("tempreature = 0.5\n")
    code, err = run_error(["generate", "--config", str(tmp_path / "bad.toml")], capsys)
    assert code == 2 and "unknown key 'tempreature'" in err


def test_command_reference_is_in_sync_with_the_parser():
    from pathlib import Path

    from ghoul.cli import COMMANDS, cli_reference

    reference = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    assert reference == cli_reference(), "docs/cli.md is stale: regenerate it with `ghoul --reference > docs/cli.md`"
    assert all(f"## ghoul {c.name}\n" in reference for c in COMMANDS)


def test_commands_that_compute_allow_tf32(capsys):
    """float32 matmuls on a GPU use TF32 in every command that computes with torch, not in training alone."""
    cuda, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    before = cuda.allow_tf32, cudnn.allow_tf32
    cuda.allow_tf32 = cudnn.allow_tf32 = False
    try:
        assert main(["plan"]) == 0
        assert cuda.allow_tf32 and cudnn.allow_tf32
    finally:
        cuda.allow_tf32, cudnn.allow_tf32 = before
