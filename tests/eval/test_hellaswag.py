"""HellaSwag: reading the official file, rendering rows, batch-size invariance, chance on a random model, the CLI,
bad input, the download (its checksum, concurrent fetches, one per node under torchrun), and two gloo ranks giving the
one-process answer."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from ghoul.checkpoint import load_model_and_tokenizer as load_checkpoint
from ghoul.checkpoint import save_model_dir
from ghoul.cli import main
from ghoul.download import download
from ghoul.errors import GhoulError
from ghoul.eval.hellaswag import (
    default_data_path,
    ending_losses,
    evaluate_hellaswag,
    load_hellaswag,
    render_example,
)
from ghoul.model import GPT, GPTConfig
from ghoul.tokenizer import load_tokenizer
from ghoul.tokenizer.char import CharTokenizer


def test_load_reads_the_official_schema(hellaswag_full: Path, hellaswag_100: Path) -> None:
    examples = load_hellaswag(hellaswag_100)
    assert len(examples) == 100
    assert [e["index"] for e in examples] == list(range(100))
    assert all(len(e["endings"]) == 4 and 0 <= e["label"] <= 3 for e in examples)
    first_line = json.loads(hellaswag_full.read_text(encoding="utf-8").split("\n", 1)[0])
    head = load_hellaswag(hellaswag_full, limit=7)
    assert len(head) == 7
    assert head[0]["ctx"] == first_line["ctx"] and head[0]["label"] == first_line["label"]


def test_render_uses_space_before_ending_and_crops_context_from_the_left(hellaswag_100: Path) -> None:
    tokenizer = load_tokenizer("gpt2")
    example = load_hellaswag(hellaswag_100, limit=1)[0]
    ctx = tokenizer.encode(example["ctx"])
    ends = [tokenizer.encode(" " + e) for e in example["endings"]]
    for (tokens, start), end in zip(render_example(tokenizer, example, 1024), ends, strict=True):
        assert tokens == ctx + end and start == len(ctx)
    block = len(max(ends, key=len)) + 3
    for (tokens, start), end in zip(render_example(tokenizer, example, block), ends, strict=True):
        assert len(tokens) == block and tokens == (ctx + end)[-block:]
        assert tokens[start:] == end


def test_batch_size_changes_no_prediction(char_model: Path, hellaswag_full: Path) -> None:
    model, tokenizer = load_checkpoint(char_model, "cpu")
    examples = load_hellaswag(hellaswag_full, limit=48)
    results = [evaluate_hellaswag(model, tokenizer, examples, "cpu", batch_size=b) for b in (1, 5, 48)]
    assert results[0]["examples"] == results[1]["examples"] == results[2]["examples"]
    assert results[0]["acc_norm"] == results[2]["acc_norm"]
    rows = [row for ex in examples[:12] for row in render_example(tokenizer, ex, model.config.block_size)]
    assert len({len(tokens) for tokens, _ in rows}) > 1  # the padding is really exercised
    batched = ending_losses(model, rows, "cpu")[1]
    single = torch.cat([ending_losses(model, [row], "cpu")[1] for row in rows])
    torch.testing.assert_close(batched, single, rtol=0, atol=1e-5)


def test_random_model_scores_near_chance(char_model: Path, hellaswag_full: Path) -> None:
    model, tokenizer = load_checkpoint(char_model, "cpu")
    result = evaluate_hellaswag(model, tokenizer, load_hellaswag(hellaswag_full, limit=600), "cpu", batch_size=64)
    assert result["n"] == 600
    # 4 endings: chance is 25%; with 600 examples one standard deviation is 1.8 points
    assert 0.17 <= result["acc_norm"] <= 0.33 and 0.17 <= result["acc"] <= 0.33


def test_cli_scores_a_tiny_gpt2_model(tiny_gpt2: Path, hellaswag_full: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "hs.json"
    code = main(["eval", "hellaswag", "--checkpoint", str(tiny_gpt2), "--limit", "80", "--batch-size", "32",
                 "--data-path", str(hellaswag_full), "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "acc " in printed and "acc_norm" in printed and "n=80" in printed
    result = json.loads(out.read_text())
    assert result["n"] == 80 and len(result["examples"]) == 80
    assert set(result["examples"][0]) == {"index", "label", "pred_sum", "pred_norm"}
    assert result["acc_norm"] == sum(e["pred_norm"] == e["label"] for e in result["examples"]) / 80
    assert 0.1 <= result["acc_norm"] <= 0.4


@pytest.mark.parametrize("line, message", [
    ('{"ctx": "a", "endings": ["b", "c", "d"', "line 3: not valid JSON"),
    ('{"ctx": "a", "endings": ["b", "c", "d", "e"], "label": 4}', "line 3: label 4 is out of range"),
    ('{"ctx": "a", "endings": ["b", "c"], "label": 0}', "line 3: 'endings' must be a list of 4"),
    ('["not", "an", "object"]', "line 3: expected an object"),
])
def test_bad_lines_name_the_line(hellaswag_100: Path, tmp_path: Path, line: str, message: str) -> None:
    good = hellaswag_100.read_text(encoding="utf-8").split("\n")[:2]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(good + [line]) + "\n", encoding="utf-8")
    with pytest.raises(GhoulError, match=message.replace("[", r"\[")):
        load_hellaswag(path)


def test_cli_errors_exit_2(tiny_gpt2: Path, hellaswag_100: Path, tmp_path: Path,
                           capsys: pytest.CaptureFixture) -> None:
    args = ["eval", "hellaswag", "--checkpoint", str(tiny_gpt2)]
    assert main(args + ["--data-path", str(tmp_path / "missing.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"ctx": "x", "endings": ["a", "b", "c", "d"], "label": 9}\n', encoding="utf-8")
    assert main(args + ["--data-path", str(bad)]) == 2
    assert "line 1: label 9 is out of range" in capsys.readouterr().err
    assert main(["eval", "hellaswag", "--checkpoint", str(tmp_path / "nope"), "--data-path", str(bad)]) == 2
    assert "does not exist" in capsys.readouterr().err
    data, config = hellaswag_100.read_bytes(), (tiny_gpt2 / "config.json").read_bytes()
    for out, message in [(hellaswag_100, "is also an input"), (tiny_gpt2 / "config.json", "is inside"),
                         (tmp_path, f"--out {tmp_path} is a directory")]:  # found before scoring, not after
        assert main(args + ["--data-path", str(hellaswag_100), "--limit", "2", "--out", str(out)]) == 2
        assert message in capsys.readouterr().err
    assert hellaswag_100.read_bytes() == data and (tiny_gpt2 / "config.json").read_bytes() == config
    notes = tmp_path / "notes.json"  # not an earlier result: kept
    notes.write_text('{"todo": "compare with GPT-2"}\n')
    assert main(args + ["--data-path", str(hellaswag_100), "--limit", "2", "--out", str(notes)]) == 2
    assert "is not an earlier output" in capsys.readouterr().err and "GPT-2" in notes.read_text()
    result = tmp_path / "result.json"
    for _ in range(2):  # an earlier result is replaced
        assert main(args + ["--data-path", str(hellaswag_100), "--limit", "2", "--out", str(result)]) == 0
    assert json.loads(result.read_text())["n"] == 2


def test_vocabulary_mismatch_is_an_error(hellaswag_100: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    save_model_dir(GPT(GPTConfig.from_name("tiny", vocab_size=500)), tmp_path / "small_vocab")  # says "gpt2"
    code = main(["eval", "hellaswag", "--checkpoint", str(tmp_path / "small_vocab"), "--data-path",
                 str(hellaswag_100), "--limit", "2"])
    assert code == 2
    assert "use the tokenizer the model was trained with" in capsys.readouterr().err


def test_download_checks_sha256(hellaswag_100: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                data: Path) -> None:
    sha = hashlib.sha256(hellaswag_100.read_bytes()).hexdigest()
    target = tmp_path / "cache" / "hs.jsonl"
    download(hellaswag_100.as_uri(), target, sha)  # file:// stands in for the network
    assert target.read_bytes() == hellaswag_100.read_bytes()
    with pytest.raises(GhoulError, match="sha256"):
        download(hellaswag_100.as_uri(), tmp_path / "other.jsonl", "0" * 64)
    assert not (tmp_path / "other.jsonl").exists() and not list(tmp_path.glob(".*.tmp"))
    monkeypatch.setenv("GHOUL_DATA_DIR", str(data))
    assert default_data_path() == data / "hellaswag" / "hellaswag_val.jsonl"


def _rank_worker(rank: int, world_size: int, port: int, model_dir: str, data_path: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    model, tokenizer = load_checkpoint(model_dir, "cpu")
    result = evaluate_hellaswag(model, tokenizer, load_hellaswag(data_path, limit=30), "cpu", batch_size=4,
                                rank=rank, world_size=world_size)
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def test_two_gloo_ranks_match_one_process(char_model: Path, hellaswag_100: Path, tmp_path: Path) -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank_worker, args=(2, port, str(char_model), str(hellaswag_100), str(tmp_path)), nprocs=2)
    model, tokenizer = load_checkpoint(char_model, "cpu")
    single = evaluate_hellaswag(model, tokenizer, load_hellaswag(hellaswag_100, limit=30), "cpu")
    for rank in (0, 1):
        sharded = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert sharded == single  # counts all-reduced, examples gathered from both ranks


@pytest.fixture
def slow_server(hellaswag_100: Path) -> Iterator[tuple[str, list[str]]]:
    """The 100-example file over HTTP on 127.0.0.1, sent in 8 parts 50 ms apart so that downloads overlap; the URL
    and the paths requested."""
    body, requests = hellaswag_100.read_bytes(), []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            step = len(body) // 8 + 1
            for i in range(0, len(body), step):
                self.wfile.write(body[i:i + step])
                self.wfile.flush()
                time.sleep(0.05)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hellaswag_val.jsonl", requests
    server.shutdown()
    server.server_close()


def test_concurrent_downloads_of_one_file_all_succeed(slow_server, hellaswag_100: Path, tmp_path: Path) -> None:
    """Processes fetching the same file at once (nodes sharing a cache) each write their own temporary file; the
    renames leave the whole file, and none fails for the file another one moved away."""
    url, requests = slow_server
    sha = hashlib.sha256(hellaswag_100.read_bytes()).hexdigest()
    target = tmp_path / "cache" / "hs.jsonl"
    with ThreadPoolExecutor(3) as pool:
        paths = list(pool.map(lambda _: download(url, target, sha), range(3)))
    assert paths == [target] * 3 and len(requests) == 3
    assert target.read_bytes() == hellaswag_100.read_bytes() and not list(target.parent.glob(".*.tmp"))


HELLASWAG_PROBE = """
import sys
from ghoul.cli import main
from ghoul.eval import hellaswag

hellaswag.URL, hellaswag.SHA256 = sys.argv[1], sys.argv[2]  # the local server stands in for GitHub
sys.exit(main(sys.argv[3:]))
"""


def test_two_torchrun_ranks_download_once(slow_server, hellaswag_100: Path, char_model: Path,
                                          tmp_path: Path) -> None:
    """`ghoul eval hellaswag` under torchrun with nothing cached: local rank 0 downloads, the other waits and reads
    the same file (both wrote one `.part` name before, and the second rename failed)."""
    url, requests = slow_server
    probe = tmp_path / "probe.py"
    probe.write_text(HELLASWAG_PROBE)
    env = {k: v for k, v in os.environ.items() if k != "GHOUL_DATA_DIR"}
    env.update(XDG_CACHE_HOME=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    sha = hashlib.sha256(hellaswag_100.read_bytes()).hexdigest()
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(probe), url, sha, "eval", "hellaswag", "--checkpoint", str(char_model),
                           "--limit", "8", "--batch-size", "4", "--device", "cpu"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "n=8" in done.stdout and len(requests) == 1
    cached = tmp_path / "cache" / "ghoul" / "hellaswag"
    assert (cached / "hellaswag_val.jsonl").read_bytes() == hellaswag_100.read_bytes()
    assert not list(cached.glob(".*.tmp"))


def test_a_char_tokenizer_without_hellaswags_characters_is_named_as_the_cause(hellaswag_100: Path, tmp_path: Path,
                                                                                 capsys: pytest.CaptureFixture) -> None:
    # the error named a character missing from the tokenizer's training text, not that HellaSwag's text held it
    tokenizer = CharTokenizer.train(["the house was dark and the door was open"])
    save_model_dir(GPT(GPTConfig.from_name("tiny", vocab_size=tokenizer.vocab_size)), tmp_path / "m", tokenizer)
    assert main(["eval", "hellaswag", "--checkpoint", str(tmp_path / "m"), "--data-path", str(hellaswag_100)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ghoul eval hellaswag: error: HellaSwag example 0 cannot be encoded: "
                                               "character "), err
    assert err[0].endswith("; score HellaSwag with a model whose tokenizer takes any text (a byte-level BPE)"), err
