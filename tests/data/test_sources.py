"""Text sources on the real sample files: what each yields, and the errors for bad input."""

from __future__ import annotations

import csv
import gzip
import html
import json
from pathlib import Path

import pytest

from ghoul.data.sources import SOURCES, make_source, resolve_paths
from ghoul.download import cache_dir, download
from ghoul.errors import GhoulError

GZ = r"a \.gz file is damaged or not gzip \(.*\): download it again"


def fineweb_texts(data: Path) -> list[str]:
    return [d["text"] for d in json.loads((data / "fineweb" / "fineweb_subset.json").read_text(encoding="utf-8"))]


def reddit_stories(data: Path) -> list[dict]:
    with open(data / "creepypasta" / "reddit_horror_stories.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_registry_has_the_built_in_sources() -> None:
    assert {"fineweb", "fineweb-edu", "creepypasta", "text", "jsonl"} <= set(SOURCES)
    for cls in SOURCES.values():
        assert cls.licence
    with pytest.raises(GhoulError, match="unknown source 'nope'.*fineweb"):
        make_source("nope", "x")


@pytest.mark.parametrize("name", ["fineweb_subset.json", "fineweb_subset.jsonl", "fineweb_subset.parquet"])
def test_fineweb_reads_every_local_format(data: Path, name: str) -> None:
    docs = list(make_source("fineweb", data / "fineweb" / name))
    assert docs == fineweb_texts(data)
    assert docs[0].startswith("How AP reported in all formats from tornado")


def test_fineweb_glob_and_parquet_size_estimate(data: Path) -> None:
    source = make_source("fineweb", str(data / "fineweb" / "fineweb_subset.json*"))
    assert [p.name for p in source.files()] == ["fineweb_subset.json", "fineweb_subset.jsonl"]
    assert len(list(source)) == 600
    assert make_source("fineweb", data / "fineweb" / "fineweb_subset.parquet").size_estimate() == 300


def expected_story(record: dict, title: str, body: str) -> str:
    return f"{html.unescape(record[title]).strip()}\n\n{html.unescape(record[body]).strip()}"


def test_creepypasta_jsonl_prefixes_titles_and_unescapes(data: Path) -> None:
    stories = reddit_stories(data)
    docs = list(make_source("creepypasta", data / "creepypasta" / "reddit_horror_stories.jsonl"))
    assert docs == [expected_story(s, "title", "selftext") for s in stories]
    assert any("&amp;" in s["selftext"] for s in stories)  # the raw data has entities ...
    assert not any("&amp;" in d for d in docs)  # ... the documents do not


def test_creepypasta_csv_drops_empty_and_deleted_posts(data: Path) -> None:
    """The JSONL is a conversion of the two CSVs with empty/[deleted]/[removed] posts left out: same documents."""
    folder = data / "creepypasta"
    docs = list(make_source("creepypasta", str(folder / "*.csv")))
    assert docs == list(make_source("creepypasta", folder / "reddit_horror_stories.jsonl"))
    rows = []
    for name in ("creepypasta.csv", "shortscarystories.csv"):
        with open(folder / name, encoding="utf-8", newline="") as f:
            rows += list(csv.DictReader(f))
    kept = [r for r in rows if r["selftext"].strip() not in ("", "[deleted]", "[removed]")]
    assert len(docs) == len(kept) < len(rows)  # link posts with no text were dropped


def test_creepypasta_kaggle_xlsx_schema(data: Path, tmp_path: Path) -> None:
    import openpyxl  # the `data` extra, which the dev extra includes
    stories = reddit_stories(data)[:20]
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["story_name", "body", "average_rating", "tags"])
    for s in stories:
        sheet.append([s["title"], s["selftext"], 9.1, "ghosts"])
    sheet.append(["Gone", "[deleted]", 1.0, ""])
    sheet.append(["Removed", "[removed]", 1.0, ""])
    sheet.append(["Empty", None, 1.0, ""])
    book.save(tmp_path / "creepypastas.xlsx")
    docs = list(make_source("creepypasta", tmp_path / "creepypastas.xlsx"))
    assert docs == [expected_story(s, "title", "selftext") for s in stories]


def test_creepypasta_unknown_text_field_lists_fields(data: Path) -> None:
    path = data / "creepypasta" / "creepypasta.csv"
    with pytest.raises(GhoulError, match=r"creepypasta\.csv has no field 'story'.*selftext"):
        list(make_source("creepypasta", path, text_field="story"))
    docs = list(make_source("creepypasta", path, text_field="selftext"))
    assert docs == list(make_source("creepypasta", path))


def test_text_source_gzip_and_separator(data: Path) -> None:
    docs = list(make_source("text", data / "lovecraft" / "lovecraft.txt.gz"))
    with gzip.open(data / "lovecraft" / "lovecraft.txt.gz", "rt", encoding="utf-8", newline="") as f:
        assert docs == [f.read()]
    path = data / "tinyshakespeare" / "input.txt"
    speeches = list(make_source("text", path, separator="\\n\\n"))
    expected = [p.strip() for p in path.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    assert speeches == expected
    assert speeches[0].startswith("First Citizen:")


def test_jsonl_source_with_text_field(data: Path) -> None:
    path = data / "hellaswag" / "hellaswag_val_first100.jsonl"
    docs = list(make_source("jsonl", path, text_field="ctx"))
    with open(path, encoding="utf-8") as f:
        assert docs == [json.loads(line)["ctx"] for line in f]
    with pytest.raises(GhoulError, match=r"hellaswag_val_first100\.jsonl has no field 'text'.*activity_label"):
        list(make_source("jsonl", path))


def test_missing_and_empty_sources_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(GhoulError, match="nowhere.jsonl does not exist"):
        list(make_source("jsonl", tmp_path / "nowhere.jsonl"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(GhoulError, match="no documents in .*empty.jsonl"):
        list(make_source("jsonl", empty))
    with pytest.raises(GhoulError, match="holds no .txt"):
        list(make_source("text", tmp_path))
    with pytest.raises(GhoulError, match="no .* files match"):
        resolve_paths(tmp_path / "*.parquet", (".parquet",))
    with pytest.raises(GhoulError, match="needs a local file"):
        list(make_source("text"))


def test_bad_records_and_options(data: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{not json\n', encoding="utf-8")
    with pytest.raises(GhoulError, match=r"bad.jsonl:2: not valid JSON"):
        list(make_source("jsonl", bad))
    with pytest.raises(GhoulError, match="takes no --subset"):
        make_source("creepypasta", bad, subset="sample-10BT")
    text = tmp_path / "notes.txt"
    text.write_text("x", encoding="utf-8")
    with pytest.raises(GhoulError, match=r"notes.txt: unsupported file type; this source reads .parquet"):
        list(make_source("fineweb", text))
    with pytest.raises(GhoulError, match="--separator must not be empty"):
        make_source("text", text, separator="")


@pytest.mark.parametrize("source, name, original, size, message", [
    # a download cut short
    ("fineweb", "cut.parquet", "fineweb/fineweb_subset.parquet", 4096, r"cut.parquet could not be read as parquet"),
    # gzip is read lazily: cut short, or a plain file named .gz, is a line, not EOFError or BadGzipFile
    ("text", "cut.txt.gz", "lovecraft/lovecraft.txt.gz", 200_000, GZ),
    ("lovecraft", "cut.txt.gz", "lovecraft/lovecraft.txt.gz", 200_000, GZ),
    ("jsonl", "fake.jsonl.gz", "creepypasta/reddit_horror_stories.jsonl", 1000, GZ),
    ("creepypasta", "fake.xlsx", "creepypasta/reddit_horror_stories.jsonl", 1000,
     r"fake.xlsx could not be read as an Excel workbook \(BadZipFile"),
])
def test_a_damaged_file_is_one_line(data: Path, tmp_path: Path, source, name, original, size, message) -> None:
    path = tmp_path / name
    path.write_bytes((data / original).read_bytes()[:size])
    with pytest.raises(GhoulError, match=message):
        list(make_source(source, path))


def test_download_caches_under_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert cache_dir() == tmp_path / "cache" / "ghoul"
    origin = tmp_path / "origin.csv"
    origin.write_text("title,selftext\nA,story\n", encoding="utf-8")
    dest = download(origin.as_uri(), cache_dir() / "x" / "origin.csv")  # file:// needs no network
    assert dest.read_text(encoding="utf-8") == origin.read_text(encoding="utf-8")
    origin.unlink()
    assert download(origin.as_uri(), dest) == dest  # cached: not fetched again
    with pytest.raises(GhoulError, match="could not download"):
        download(origin.as_uri(), cache_dir() / "y.csv")


def test_creepypasta_without_a_path_downloads_once_into_the_cache(data: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from ghoul.data.sources import CreepypastaSource

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    folder = data / "creepypasta"
    urls = tuple(((folder / name).as_uri(), sha) for (_, sha), name in  # same files, same checksums
                 zip(CreepypastaSource.urls, ("creepypasta.csv", "shortscarystories.csv"), strict=True))
    monkeypatch.setattr(CreepypastaSource, "urls", urls)  # file:// stands in for GitHub: no network in tests
    docs = list(make_source("creepypasta"))
    assert docs == list(make_source("creepypasta", folder / "reddit_horror_stories.jsonl"))
    assert sorted(p.name for p in (tmp_path / "ghoul" / "creepypasta").iterdir()) == [
        "creepypasta.csv", "shortscarystories.csv"]


def test_fineweb_without_a_path_streams_from_the_hub(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Hub call, with a stand-in `datasets` module serving the real sample (the tests have no network)."""
    import sys
    import types

    calls = []

    def load_dataset(repo: str, name: str, split: str, streaming: bool) -> list[dict]:
        calls.append((repo, name, split, streaming))
        return json.loads((data / "fineweb" / "fineweb_subset.json").read_text(encoding="utf-8"))

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    assert list(make_source("fineweb-edu", subset="sample-100BT")) == fineweb_texts(data)
    assert list(make_source("fineweb"))[:1] == fineweb_texts(data)[:1]
    assert calls == [("HuggingFaceFW/fineweb-edu", "sample-100BT", "train", True),
                     ("HuggingFaceFW/fineweb", "sample-10BT", "train", True)]
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
    with pytest.raises(GhoulError, match=r"needs datasets: pip install 'ghoul\[data\]'"):
        list(make_source("fineweb"))
    with pytest.raises(GhoulError, match="--subset picks a Hub subset"):
        list(make_source("fineweb", data / "fineweb" / "fineweb_subset.json", subset="sample-10BT"))


def test_lovecraft_joins_hard_wrapped_lines_into_paragraphs(data: Path) -> None:
    docs = list(make_source("lovecraft", data / "lovecraft" / "lovecraft.txt.gz"))
    text = "\n\n".join(docs)
    assert "Table of Contents" not in text and "....." not in text  # the contents pages are left out
    assert "The year after I first beheld the tomb, I stumbled upon a worm-eaten translation of Plutarch" in text
    paragraphs = [p for doc in docs for p in doc.split("\n\n")]
    assert all("\n" not in p for p in paragraphs)  # no hard wraps left inside a paragraph
    assert sorted(map(len, paragraphs))[len(paragraphs) // 2] > 300  # prose paragraphs, not 90-character lines
    assert 500 < len(docs) and sum(map(len, docs)) > 2_500_000  # the whole works, cut into sections


def test_tinyshakespeare_is_cut_into_scenes_of_speeches(data: Path) -> None:
    path = data / "tinyshakespeare" / "input.txt"
    docs = list(make_source("tinyshakespeare", path))
    assert docs[0].startswith("First Citizen:\nBefore we proceed any further, hear me speak.")
    assert all(doc.count("\n\n") <= 39 for doc in docs) and len(docs) > 100
    assert "\n\n".join(docs) == path.read_text(encoding="utf-8").strip()  # nothing lost or reordered


@pytest.mark.parametrize("name", ["lovecraft", "tinyshakespeare"])
def test_small_corpora_without_a_path_download_once_into_the_cache(name: str, data: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import gzip

    source = SOURCES[name]
    local = {"lovecraft": data / "lovecraft" / "lovecraft.txt.gz", "tinyshakespeare": data / "tinyshakespeare" /
             "input.txt"}[name]
    served = tmp_path / "served" / source.url.rsplit("/", 1)[1]  # the file as its public home serves it: plain text
    served.parent.mkdir()
    served.write_bytes(gzip.decompress(local.read_bytes()) if local.suffix == ".gz" else local.read_bytes())
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(source, "url", served.as_uri())  # file:// stands in for GitHub: no network in tests
    assert list(make_source(name)) == list(make_source(name, local))  # checked against the pinned sha256
    assert (tmp_path / "cache" / "ghoul" / name / served.name).is_file()
    served.write_text("changed")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "other"))
    with pytest.raises(GhoulError, match="the download is damaged"):
        list(make_source(name))


def test_binary_files_given_as_text_are_skipped_with_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "a.txt").write_text("The door creaked open.", encoding="utf-8")
    (tmp_path / "b.txt").write_bytes(b"\x7fELF\x02\x01\x01" + b"\x00" * 71_745)  # a program named .txt
    (tmp_path / "c.txt").write_text("The cellar was dark.".encode("utf-16").decode("latin-1"), encoding="latin-1")
    assert list(make_source("text", tmp_path)) == ["The door creaked open."]
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all("holds NUL bytes" in line and "skipped" in line for line in err)
    assert "b.txt" in err[0] and "c.txt" in err[1]
    with pytest.raises(GhoulError, match="found no documents"):
        list(make_source("text", tmp_path / "b.txt"))
