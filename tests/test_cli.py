"""The command line: help, generate end to end, and one-line errors with exit code 2."""

import json
import subprocess
import sys

import pytest
import torch

from ghoul.checkpoint import save_model_dir
from ghoul.cli import main
from ghoul.model import GPT, GPTConfig


def test_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "generate" in out and "export hf" in out


def test_a_command_of_two_words_is_found_from_its_first(capsys):
    """`ghoul eval --help` lists eval's commands (it was "unknown command 'eval --help'", under a list naming eval)."""
    for flag in ("--help", "-h"):
        assert main(["eval", flag]) == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: ghoul eval COMMAND [options]   (ghoul eval COMMAND --help for its options)")
        assert "  eval loss         validation loss of a checkpoint on token shards" in out and "generate" not in out
    assert main(["export"]) == 2
    assert capsys.readouterr().err == ("ghoul export: error: give one of its commands: gguf, hf, winners (see ghoul "
                                       "export --help)\n")
    assert main(["reward", "tran"]) == 2
    assert capsys.readouterr().err == ("ghoul: error: unknown command 'reward tran'; reward commands: score, train "
                                       "(see ghoul reward --help)\n")


def test_python_m_ghoul_runs():
    result = subprocess.run([sys.executable, "-m", "ghoul", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "generate" in result.stdout



CTRL_C_AT_SHUTDOWN = """
import atexit, os, signal
from ghoul import cli

cli.main = lambda: 130  # a command stopped by Ctrl-C
atexit.register(lambda: os.kill(os.getpid(), signal.SIGINT))  # a second Ctrl-C while the interpreter shuts down
cli.entry()
"""


def test_a_second_ctrl_c_while_exiting_prints_no_traceback():
    done = subprocess.run([sys.executable, "-c", CTRL_C_AT_SHUTDOWN], capture_output=True, text=True)
    assert done.returncode == 130 and done.stderr == "", done.stderr

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
    save_model_dir(GPT(GPTConfig.from_name("tiny")), tmp_path / "m")
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
        (["generate", "--prompt", "word " * 200], "the prompt is 201 tokens but the model's context is 128"),
        (["generate", "--top-p", "1.5"], "--top-p must be in (0, 1]"),
        (["generate", "--config", str(tmp_path / "none.toml")], "does not exist"),
        (["frobnicate"], "unknown command 'frobnicate'"),
    ]
    for args, message in cases:
        code, err = run_error(args, capsys)
        assert code == 2, args
        assert message in err and len(err.splitlines()) == 1, err
    with pytest.raises(SystemExit) as e:  # argparse's own usage error, with the presets to choose from
        main(["generate", "--model", "gpt7"])
    assert e.value.code == 2 and "invalid choice: 'gpt7' (choose from 'tiny', 'small'" in capsys.readouterr().err


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


def test_config_values_of_the_wrong_type_are_one_line_errors(tmp_path, capsys):
    cases = [
        ('max_new_tokens = "5"', "key 'max_new_tokens' must be an integer, not \"5\""),
        ("num_samples = 2.5", "key 'num_samples' must be an integer, not 2.5"),
        ("top-k = true", "key 'top-k' must be an integer, not true"),
        ("temperature = \"hot\"", "key 'temperature' must be a number, not \"hot\""),
        ("prompt = 5", "key 'prompt' must be a string, not 5"),
        ("print_samples = 1", "key 'print_samples' must be true or false, not 1"),
        ("out = [\"a.jsonl\"]", "key 'out' must be a path (a string), not [\"a.jsonl\"]"),
    ]
    for line, message in cases:
        (tmp_path / "gen.toml").write_text(line + "\n")
        code, err = run_error(["generate", "--config", str(tmp_path / "gen.toml")], capsys)
        assert code == 2, line
        assert f"{tmp_path / 'gen.toml'}: {message}" in err and len(err.splitlines()) == 1, err
    (tmp_path / "tok.toml").write_text('input = ["a.txt", 3]\n')
    code, err = run_error(["tokenizer", "train", "--config", str(tmp_path / "tok.toml")], capsys)
    assert code == 2 and "key 'input' must be a list of paths (strings), not [\"a.txt\", 3]" in err, err


def test_unreadable_config_files_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "binary.toml").write_bytes(b"\xff\xfe\x00\x01prompt")
    (tmp_path / "folder.toml").mkdir()
    cases = [("binary.toml", "is not UTF-8 text"), ("folder.toml", "is a directory: give the path of a TOML file")]
    for name, message in cases:
        code, err = run_error(["generate", "--config", str(tmp_path / name)], capsys)
        assert code == 2 and message in err and len(err.splitlines()) == 1, err


def test_omitted_optional_positional_takes_its_default(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # `ghoul export winners` reads rankings.jsonl from here when not given one
    (tmp_path / "stories.jsonl").write_text('{"id": 1, "prompt": "The door ", "text": "opened."}\n')
    (tmp_path / "rankings.jsonl").write_text('{"group": 0, "shown": [1], "chosen": 1}\n')
    assert main(["export", "winners", "--out", "w.jsonl"]) == 0
    assert json.loads((tmp_path / "w.jsonl").read_text()) == {"id": 1, "group": 0, "text": "The door opened."}
    (tmp_path / "rankings.jsonl").rename(tmp_path / "judged.jsonl")  # a --config file gives it when the flag does not
    (tmp_path / "w.toml").write_text('rankings = "judged.jsonl"\n')
    assert main(["export", "winners", "--config", "w.toml", "--out", "w2.jsonl"]) == 0
    assert (tmp_path / "w2.jsonl").read_text() == (tmp_path / "w.jsonl").read_text()


def test_bad_int_flag_names_the_type(capsys):
    with pytest.raises(SystemExit) as e:
        main(["generate", "--num-samples", "abc"])
    assert e.value.code == 2
    assert "argument --num-samples: invalid int value: 'abc'" in capsys.readouterr().err


def test_os_errors_on_user_paths_are_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "in.txt").write_text("the house was dark\n")
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("")
    train = ["tokenizer", "train", "--input", str(tmp_path / "in.txt"), "--kind", "char", "--no-progress", "--out"]
    cases = [  # (--out, the start of the message, its end)
        (tmp_path / "folder", f"--out {tmp_path / 'folder'} is a directory", "give the path of a file"),  # up front
        (tmp_path / "file" / "tok.json", "File exists: ", str(tmp_path / "file")),
    ]
    for out, start, end in cases:
        code, err = run_error(train + [str(out)], capsys)
        assert code == 2 and err.startswith(f"ghoul tokenizer train: error: {start}") and err.endswith(end), err
        assert len(err.splitlines()) == 1, err

    def fail(cfg):
        raise OSError("no filename: not about a path the user gave")

    monkeypatch.setattr("ghoul.tokenizer.cli.train", fail)
    with pytest.raises(OSError, match="no filename"):
        main(train + [str(tmp_path / "tok.json")])


def test_a_missing_optional_package_names_its_extra(monkeypatch, capsys):
    for module in ("ghoul.web.playground", "ghoul.web.server"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if `pip install -e .` without [feedback]
    code, err = run_error(["serve"], capsys)
    assert code == 2 and err == "ghoul serve: error: this command needs fastapi: pip install 'ghoul[feedback]'", err


@pytest.mark.parametrize("args", [["rank", "--judge", "web", "--port", "99999"], ["serve", "--port", "-1"],
                                  ["rlhf", "--base-model", "m", "--judge", "web", "--port", "70000"]])
def test_ports_out_of_range_are_refused_when_the_options_are_read(args, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    save_model_dir(GPT(GPTConfig.from_name("tiny")), tmp_path / "m")
    code, err = run_error(args, capsys)
    assert code == 2 and "--port must be in 0..65535" in err and not (tmp_path / "runs").exists(), err


@pytest.mark.parametrize("args, message", [
    (["preferences", "--rankings", "{f}"], "{f}, line 1: not UTF-8 text (invalid start byte at byte 0), so not a "
                                           "JSON-lines file"),
    (["generate", "--prompts-file", "{f}"], "prompts file {f} is not UTF-8 text (invalid start byte at byte 0): give "
                                            "a text file, one prompt per line"),
    (["eval", "hellaswag", "--checkpoint", "m", "--data-path", "{f}"],
     "HellaSwag file {f} is not UTF-8 text (invalid start byte at byte 0): give the path of the official "
     "hellaswag_val.jsonl"),
])
def test_a_file_that_is_not_utf8_text_is_a_one_line_error_naming_it(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_model_dir(GPT(GPTConfig.from_name("tiny")), tmp_path / "m")
    binary = tmp_path / "given.jsonl"
    binary.write_bytes(bytes(range(128, 256)) * 4)  # say, a zip given by mistake
    code, err = run_error([a.format(f=binary) for a in args], capsys)
    assert code == 2 and message.format(f=binary) in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("args, what", [
    (["rank", "--stories", "{dir}", "--judge", "length", "--out", "{out}/r.jsonl"], "stories file"),
    (["tokenizer", "train", "--input", "{dir}", "--vocab-size", "300", "--out", "{out}/t.json"], "input file"),
    (["preferences", "--rankings", "{dir}", "--out", "{out}/p.jsonl"], "rankings file"),
])
def test_a_folder_given_for_an_input_file_is_named_a_folder(tmp_path, capsys, args, what):
    """Not 'does not exist: make it with ...', which would send the user to remake what is there."""
    folder = tmp_path / "folder"
    folder.mkdir()
    assert main([a.format(dir=folder, out=tmp_path) for a in args]) == 2
    assert f"{what} {folder} is a directory, not a file" in capsys.readouterr().err
