"""The report's stage table: what each training stage logged, and the GPU columns only where a GPU logged them;
losses in bits per byte where the run has them."""

import json

from ghoul.cli import main
from ghoul.report import loss_curves, stage_summary, winrate_sentence, write_report


def write_log(path, records):
    path.mkdir(parents=True)
    (path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def step(n, loss, tokens_per_s, **gpu):
    return {"step": n, "loss": loss, "lr": 6e-4, "tokens": n * 4096, "tokens_per_s": tokens_per_s,
            "elapsed": n * 0.5, **gpu}


def test_stage_table_shows_mfu_and_peak_memory_when_a_gpu_logged_them(tmp_path):
    # as the trainer logs on a CUDA GPU: MFU and peak memory on every record, beside a validation record
    write_log(tmp_path / "pretrain", [step(10, 6.5, 8_000.0, mfu=0.40, peak_memory_gib=61.2),
                                      {"step": 10, "val_loss": 6.7},
                                      step(20, 5.9, 9_000.0, mfu=0.44, peak_memory_gib=61.9),
                                      step(30, 5.5, 9_500.0, mfu=0.46, peak_memory_gib=61.7)])
    write_log(tmp_path / "finetune", [step(5, 4.2, 7_000.0), step(10, 4.0, 7_200.0)])  # resumed on a CPU, say
    write_report(tmp_path)
    md, html = (tmp_path / "report.md").read_text(), (tmp_path / "report.html").read_text()
    assert "| stage | steps | tokens | time (s) | tokens/s | MFU | peak memory (GiB) | train loss |" in md
    assert "| pretrain | 30 | 122,880 | 15 | 9,000 | 44.0% | 61.9 | 5.5000 |" in md  # median MFU, largest peak
    assert "| finetune | 10 | 40,960 | 5 | 7,100 | — | — | 4.0000 |" in md
    assert "<th>MFU</th>" in html and "<td>44.0%</td><td>61.9</td>" in html


def test_stage_table_leaves_out_the_gpu_columns_for_cpu_runs(tmp_path):
    write_log(tmp_path / "pretrain", [step(10, 6.5, 800.0), step(20, 6.1, 820.0)])
    write_report(tmp_path)
    md, html = (tmp_path / "report.md").read_text(), (tmp_path / "report.html").read_text()
    assert ("| stage | steps | tokens | time (s) | tokens/s | train loss | val loss | val bpb | HellaSwag acc_norm |"
            in md)
    assert "| pretrain | 20 | 81,920 | 10 | 810 | 6.1000 | — | — | — (n=0) |" in md
    assert "<th>tokens/s</th><th>train loss</th>" in html and "MFU" not in md and "MFU" not in html


def test_losses_in_bits_per_byte_where_the_run_has_them_and_in_nats_otherwise(tmp_path):
    bpb = [step(10, 6.5, 800.0), {"step": 10, "val_loss": 6.7, "val_bpb": 2.4, "val_bytes_per_token": 4.03},
           step(20, 6.1, 820.0), {"step": 20, "val_loss": 6.3, "val_bpb": 2.25, "val_bytes_per_token": 4.03}]
    older = [step(5, 4.2, 700.0), {"step": 5, "val_loss": 4.4}]  # logged before bits per byte
    write_log(tmp_path / "pretrain", bpb)
    write_log(tmp_path / "finetune", older)
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "pretrain.json").write_text(json.dumps({"val_loss": 6.3, "val_bpb": 2.2551,
                                                                 "hellaswag_acc": 0.25, "hellaswag_n": 8}))
    (tmp_path / "eval" / "finetune.json").write_text(json.dumps({"val_loss": 4.4, "hellaswag_n": 0}))
    write_report(tmp_path)
    md, html = (tmp_path / "report.md").read_text(), (tmp_path / "report.html").read_text()
    assert "| pretrain | 20 | 81,920 | 10 | 810 | 6.1000 | 6.3000 | 2.2551 | 25.0% (n=8) |" in md
    assert "| finetune | 5 | 20,480 | 2 | 700 | 4.2000 | 4.4000 | — | — (n=0) |" in md
    assert "<th>val bpb</th>" in html and "<td>2.2551</td>" in html
    assert loss_curves(bpb) == ("validation loss (bits/byte)", {"validation": [(10, 2.4), (20, 2.25)]})
    assert loss_curves(older) == ("loss (nats/token)", {"train": [(5, 4.2)], "validation": [(5, 4.4)]})
    assert (tmp_path / "loss.png").read_bytes().startswith(b"\x89PNG")
    assert "evaluation points" not in md  # the log does not say how many tokens its validation read


def test_the_stage_evaluation_is_told_apart_from_the_validation_sampled_in_training(tmp_path):
    log = [step(10, 6.5, 800.0), {"step": 10, "val_loss": 6.7, "val_bpb": 2.4, "val_tokens": 20480},
           step(20, 6.1, 820.0), {"step": 20, "val_loss": 6.3, "val_bpb": 2.25, "val_tokens": 20480}]
    evaluation = {"val_loss": 6.4, "val_bpb": 2.3001, "val_tokens": 82432, "hellaswag_acc": 0.25, "hellaswag_n": 8}
    write_log(tmp_path / "finetune", log)
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "finetune.json").write_text(json.dumps(evaluation))
    assert loss_curves(log, evaluation) == ("validation loss (bits/byte)", {
        "validation in training (20,480 tok.)": [(10, 2.4), (20, 2.25)],
        "evaluation (82,432 tok.)": [(20, 2.3001)]})  # at the stage's last step
    write_report(tmp_path)
    md, html = (tmp_path / "report.md").read_text(), (tmp_path / "report.html").read_text()
    assert "| finetune | 20 | 81,920 | 10 | 810 | 6.1000 | 6.4000 | 2.3001 | 25.0% (n=8) |" in md
    note = ("The table's val loss and val bpb are the evaluation after each stage, on 82,432 held-out tokens (the "
            "evaluation points in the plot). The curves were measured during training on the first 20,480 held-out "
            "tokens")
    assert note in md and html.count(note.replace("'", "&#x27;")) == 1


def test_a_damaged_file_in_the_run_is_a_one_line_error(tmp_path, capsys):
    write_log(tmp_path / "pretrain", [step(10, 6.5, 800.0)])
    (tmp_path / "pipeline.json").write_text('{"seed": 13')  # cut short
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'pipeline.json'} is not valid JSON" in err and len(err.strip().splitlines()) == 1


def test_judgments_are_read_through_the_checked_reader(tmp_path, capsys):
    write_log(tmp_path / "pretrain", [step(10, 6.5, 800.0)])
    feedback = tmp_path / "rlhf"
    feedback.mkdir()
    stories = [{"id": i, "prompt": "The door ", "text": "creaked" + " open" * i} for i in range(4)]
    (feedback / "stories.jsonl").write_text("".join(json.dumps(s) + "\n" for s in stories))
    # edited by hand, or written by another tool: no position, skipped flag or known judge
    judgments = [{"group": 0, "shown": [0, 1], "chosen": 1, "judge": "alice"},
                 {"group": 1, "shown": [3, 2], "chosen": 2, "judge": "alice"}]
    (feedback / "rankings.jsonl").write_text("".join(json.dumps(j) + "\n" for j in judgments))
    assert main(["report", str(tmp_path)]) == 0
    report = (tmp_path / "report.md").read_text()
    assert "Judge `alice` (a judge ghoul does not know" in report and "2 groups of 2 judged, 0 skipped" in report
    assert "position 1: 0, position 2: 2" in report and "length baseline: 50%" in report
    (feedback / "rankings.jsonl").write_text(json.dumps({"group": 0, "chosen": 1}) + "\n")
    capsys.readouterr()
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{feedback / 'rankings.jsonl'}, record 1: a judgment needs" in err and len(err.strip().splitlines()) == 1


def test_what_is_not_a_pipeline_run_is_named_for_what_it_is(tmp_path, capsys):
    # a training run of one command: it held training logs, so "holds no training logs" was wrong
    write_log(tmp_path / "pretraining", [step(10, 6.5, 800.0)])
    (tmp_path / "pretraining" / "config.json").write_text('{"output_dir": "pretraining", "resume": null, "seed": 1}')
    (tmp_path / "notes.txt").write_text("mine")
    for path, message in [
        (tmp_path / "pretraining", f"{tmp_path / 'pretraining'} is the run of one command or a model, not a `ghoul "
                                   f"pipeline` run: give a pipeline's run directory (`ghoul eval checkpoints "
                                   f"{tmp_path / 'pretraining'}` plots a training run)"),
        (tmp_path / "notes.txt", f"{tmp_path / 'notes.txt'} is a file: give the run directory of `ghoul pipeline`"),
        (tmp_path / "none", f"{tmp_path / 'none'} does not exist: give the run directory of `ghoul pipeline`"),
        (tmp_path, f"{tmp_path} holds no training logs: give the run directory of `ghoul pipeline`")]:
        assert main(["report", str(path)]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [f"ghoul report: error: {message}"]
    assert not (tmp_path / "pretraining" / "report.md").exists()


def test_a_preference_loss_is_labelled_for_what_it_measures(tmp_path):
    # DPO's loss is -log sigmoid of a margin, per pair: on an axis of nats per token it read as a language model's
    write_log(tmp_path / "pretrain", [step(10, 6.5, 800.0)])
    write_log(tmp_path / "rlhf" / "dpo", [step(2, 0.69, 90.0), {"step": 2, "val_loss": 0.68}])
    write_report(tmp_path)
    stages = stage_summary(tmp_path)
    assert [s["loss_label"] for s in stages.values()] == ["loss (nats/token)", "DPO loss (nats/pair)"]
    assert loss_curves(stages["preference"]["log"], None, stages["preference"]["loss_label"]) == (
        "DPO loss (nats/pair)", {"train": [(2, 0.69)], "validation": [(2, 0.68)]})


def test_the_win_rate_sentence_counts_ties_apart(tmp_path):
    w = {"a": "preference", "b": "finetune", "judge": "length", "wins_a": 3, "wins_b": 1, "skipped": 0, "ties": 2,
         "win_rate": 0.75, "low": 0.3, "high": 0.95}
    assert "in 3 of 4 pairs of stories" in winrate_sentence(w)
    assert "[30.0%, 95.0%]; 2 ties (the same story from both). An interval" in winrate_sentence(w)
    older = {k: v for k, v in w.items() if k != "ties"}  # a win-rate recorded before ties were told apart
    assert "ties" not in winrate_sentence(older) and "[30.0%, 95.0%]. An interval" in winrate_sentence(older)


def test_a_report_of_a_run_that_stopped_says_which_stages_are_missing(tmp_path):
    # the report of a pipeline that stopped at its preference stage read as a whole run
    write_log(tmp_path / "pretrain", [step(10, 6.5, 800.0)])
    write_log(tmp_path / "finetune", [step(5, 4.2, 700.0)])
    write_report(tmp_path)
    said = ("The preference stage has not run yet: the run stopped before; the same `ghoul pipeline` command goes on "
            "from where it stopped.")
    assert said in (tmp_path / "report.md").read_text() and f"<p>{said}</p>" in (tmp_path / "report.html").read_text()
    (tmp_path / "finetune" / "log.jsonl").unlink()
    write_report(tmp_path)
    assert "The finetune and preference stages have not run yet" in (tmp_path / "report.md").read_text()
    write_log(tmp_path / "rlhf" / "finetune", [step(2, 3.9, 90.0)])  # a finished run: nothing is said
    (tmp_path / "finetune").rmdir()
    write_log(tmp_path / "finetune", [step(5, 4.2, 700.0)])
    write_report(tmp_path)
    assert "not run yet" not in (tmp_path / "report.md").read_text()
