"""Where training text comes from: a small `TextSource` base class, the built-in sources and a registry by name.

A source yields documents as strings. Every source reads local files (`path`); the ones with a public home
(FineWeb on the Hugging Face Hub, the Reddit horror CSVs on GitHub) download only when no path is given.
"""

from __future__ import annotations

import csv
import glob
import gzip
import html
import importlib
import json
import os
import sys
import zipfile
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar, TextIO

from ghoul.config import flag
from ghoul.download import cache_dir, download
from ghoul.errors import GhoulError

SOURCES: dict[str, type[TextSource]] = {}
# the help of the options every command that reads a source offers (prepare, learn)
SOURCE_PATH_HELP = ("local file, directory or glob to read; without it the sources that can download do so (fineweb "
                    "and fineweb-edu stream from the Hub, with ghoul[data]; jsonl and text need it)")
TEXT_FIELD_HELP = ("field holding the text: creepypasta finds it when not given; fineweb, fineweb-edu and jsonl read "
                   "'text' when not given; the plain-text sources take none")


def register(cls: type[TextSource]) -> type[TextSource]:
    """Class decorator: make a source available to `ghoul prepare NAME`."""
    SOURCES[cls.name] = cls
    return cls


def make_source(name: str, path: str | Path | None = None, **options: Any) -> TextSource:
    """The registered source `name`, reading `path` (a file, directory or glob) when given."""
    if name not in SOURCES:
        raise GhoulError(f"unknown source '{name}'; sources: {', '.join(sorted(SOURCES))}")
    return SOURCES[name](path, **options)


class TextSource(ABC):
    """A stream of documents. Subclasses set `name`, `licence`, `suffixes` and implement `iter_documents`."""

    name: ClassVar[str]
    licence: ClassVar[str]
    suffixes: ClassVar[tuple[str, ...]] = ()  # file types read from a local path
    urls: ClassVar[tuple[tuple[str, str], ...]] = ()  # (address, sha256) of each file to download without a path
    options: ClassVar[frozenset[str]] = frozenset()  # which of text_field, subset, separator apply

    def __init__(self, path: str | Path | None = None, *, text_field: str | None = None,
                 subset: str | None = None, separator: str | None = None) -> None:
        given = {k for k, v in {"text_field": text_field, "subset": subset, "separator": separator}.items() if v}
        if given - self.options:
            raise GhoulError(f"source '{self.name}' takes no {', '.join(map(flag, sorted(given - self.options)))}")
        if separator == "":
            raise GhoulError("--separator must not be empty: give the text between documents, e.g. '\\n\\n'")
        self.path, self.text_field, self.subset, self.separator = path, text_field, subset, separator

    @abstractmethod
    def iter_documents(self) -> Iterator[str]:
        """Yield the documents in a fixed order (resuming `ghoul prepare` relies on it)."""

    def size_estimate(self) -> int | None:
        """About how many documents there are, when that is cheap to know; None otherwise."""
        return None

    def describe(self) -> str:
        return str(self.path) if self.path is not None else f"{self.name} (download)"

    def files(self) -> list[Path]:
        if self.path is not None:
            return resolve_paths(self.path, self.suffixes)
        if not self.urls:
            raise GhoulError(f"source '{self.name}' needs a local file: give --source-path FILE|DIR|GLOB")
        hint = ("download it yourself and give --source-path (ghoul pipeline: --data-dir, or GHOUL_DATA_DIR, a folder "
                "laid out as shared/data)")
        return [download(url, cache_dir() / self.name / url.rsplit("/", 1)[1], sha256, hint=hint)
                for url, sha256 in self.urls]

    def __iter__(self) -> Iterator[str]:
        count = 0
        try:
            for doc in filter(None, self.iter_documents()):
                count += 1
                yield doc
        except (gzip.BadGzipFile, EOFError, zlib.error) as e:  # read lazily: a .gz file cut short, or not gzip
            raise GhoulError(f"{self.describe()}: a .gz file is damaged or not gzip ({e}): download it again") from None
        if count == 0:
            raise GhoulError(f"source '{self.name}' found no documents in {self.describe()}")


def resolve_paths(spec: str | Path, suffixes: tuple[str, ...]) -> list[Path]:
    """The files named by a file path, a directory (searched recursively for `suffixes`) or a glob, sorted."""
    text = os.path.expanduser(str(spec))
    path = Path(text)
    kinds = ", ".join(suffixes)
    if glob.has_magic(text):
        files = sorted(p for p in map(Path, glob.glob(text, recursive=True)) if p.is_file() and _fits(p, suffixes))
        if not files:
            raise GhoulError(f"no {kinds} files match {text}")
        return files
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _fits(p, suffixes))
        if not files:
            raise GhoulError(f"directory {path} holds no {kinds} files")
        return files
    if not path.is_file():
        raise GhoulError(f"{path} does not exist: give a file, a directory or a glob with --source-path")
    if not _fits(path, suffixes):
        raise GhoulError(f"{path}: unsupported file type; this source reads {kinds}")
    return [path]


def _fits(path: Path, suffixes: tuple[str, ...]) -> bool:
    return not suffixes or path.name.lower().endswith(suffixes)


def open_text(path: Path) -> TextIO:
    """Open a text file, gunzipping `.gz`; undecodable bytes become U+FFFD rather than stopping a long run."""
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", errors="replace", newline="")
    return open(path, encoding="utf-8", errors="replace", newline="")


# ---- record files: one dict per row, whatever the container ----

def iter_records(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of a .jsonl, .json (array of objects), .csv, .parquet or .xlsx file as dicts."""
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
        return _jsonl(path)
    if name.endswith((".json", ".json.gz")):
        return _json(path)
    if name.endswith((".csv", ".csv.gz")):
        return _csv(path)
    if name.endswith(".parquet"):
        return _parquet(path)
    if name.endswith(".xlsx"):
        return _xlsx(path)
    raise GhoulError(f"{path}: unsupported file type for records")


def _jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with open_text(path) as f:
        yield from (record for _, record in jsonl_records(f, path))


def jsonl_records(lines: Iterable[str], path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of each non-blank JSON-lines line; a clear error naming `path` and the line."""
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise GhoulError(f"{path}:{lineno}: not valid JSON ({e})") from None
        if not isinstance(record, dict):
            raise GhoulError(f"{path}:{lineno}: expected a JSON object per line")
        yield lineno, record


def _json(path: Path) -> Iterator[dict[str, Any]]:
    with open_text(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise GhoulError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise GhoulError(f"{path}: expected a JSON array of objects (or use .jsonl, one object per line)")
    yield from data


def _csv(path: Path) -> Iterator[dict[str, Any]]:
    csv.field_size_limit(2**31 - 1)  # story bodies exceed the default 128 KiB field limit
    with open_text(path) as f:
        yield from csv.DictReader(f)


def _parquet(path: Path) -> Iterator[dict[str, Any]]:
    pq = _optional("pyarrow.parquet", "pyarrow", path)
    try:
        parquet = pq.ParquetFile(path)
    except (ValueError, OSError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise GhoulError(f"{path} could not be read as parquet ({e}): the file is damaged or not parquet") from None
    for batch in parquet.iter_batches(batch_size=1024):
        yield from batch.to_pylist()


def _xlsx(path: Path) -> Iterator[dict[str, Any]]:
    openpyxl = _optional("openpyxl", "openpyxl", path)
    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except (zipfile.BadZipFile, KeyError, OSError) as e:  # not a zip, or a zip that is no workbook
        raise GhoulError(f"{path} could not be read as an Excel workbook ({type(e).__name__}: {e}): the file is "
                         "damaged or not .xlsx") from None
    try:
        rows = book.active.iter_rows(values_only=True)
        header = [str(h) if h is not None else "" for h in next(rows, ())]
        for row in rows:
            yield {h: ("" if v is None else str(v)) for h, v in zip(header, row, strict=False)}
    finally:
        book.close()


def _optional(module: str, package: str, path: Path | str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise GhoulError(f"reading {path} needs {package}: pip install 'ghoul[data]' (or pip install {package})") \
            from None


def pick_field(record: dict[str, Any], path: Path, given: str | None, candidates: tuple[str, ...]) -> str:
    """The text column: `given` if the record has it, else the first candidate present; errors list the fields."""
    fields = ", ".join(map(str, record))
    if given is not None:
        if given not in record:
            raise GhoulError(f"{path} has no field '{given}'; its fields are: {fields}")
        return given
    for name in candidates:
        if name in record:
            return name
    raise GhoulError(f"{path}: no text field among {', '.join(candidates)}; its fields are: {fields}; "
                     "choose one with --text-field")


def iter_field(path: Path, given: str | None, candidates: tuple[str, ...]) -> Iterator[tuple[dict, str]]:
    """(record, text field name) for each record of a file, the field chosen from the first record."""
    field = None
    for record in iter_records(path):
        field = field or pick_field(record, path, given, candidates)
        yield record, field


def field_texts(paths: list[Path], field: str) -> Iterator[str]:
    """The `field` of every record of `paths`; the first record of each file must have it."""
    for path in paths:
        for record, _ in iter_field(path, field, ()):
            yield _text(record.get(field))


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ("" if value is None else str(value))


# ---- the built-in sources ----

@register
class FineWebSource(TextSource):
    """FineWeb from the Hugging Face Hub (streamed), or local .parquet/.jsonl/.json files with a text field."""

    name = "fineweb"
    hub_id = "HuggingFaceFW/fineweb"
    licence = "ODC-By 1.0, subject to the Common Crawl terms of use"
    suffixes = (".parquet", ".jsonl", ".jsonl.gz", ".json", ".json.gz")
    options = frozenset({"text_field", "subset"})

    def iter_documents(self) -> Iterator[str]:
        if self.path is not None:
            if self.subset:
                raise GhoulError("--subset picks a Hub subset; it does not apply to local files given by --source-path")
            yield from field_texts(self.files(), self.text_field or "text")
            return
        datasets = _optional("datasets", "datasets", self.hub_id)
        rows = datasets.load_dataset(self.hub_id, name=self.subset or "sample-10BT", split="train", streaming=True)
        yield from (_text(row.get(self.text_field or "text")) for row in rows)

    def size_estimate(self) -> int | None:
        if self.path is None:
            return None
        files = self.files()
        if not all(p.name.endswith(".parquet") for p in files):
            return None
        pq = _optional("pyarrow.parquet", "pyarrow", files[0])
        return sum(pq.ParquetFile(p).metadata.num_rows for p in files)

    def describe(self) -> str:
        return str(self.path) if self.path is not None else f"{self.hub_id} ({self.subset or 'sample-10BT'})"


@register
class FineWebEduSource(FineWebSource):
    """FineWeb-Edu: the educational subset of FineWeb, same layout."""

    name = "fineweb-edu"
    hub_id = "HuggingFaceFW/fineweb-edu"


@register
class CreepypastaSource(TextSource):
    """Horror stories: the Kaggle creepypastas.xlsx (or a CSV of it) and Reddit exports (title, selftext)."""

    name = "creepypasta"
    licence = ("Reddit exports: umbrae/reddit-top-2.5-million is PDDL 1.0, posts are user content; "
               "Kaggle '3500 Popular Creepypastas': see its Kaggle page")
    suffixes = (".xlsx", ".csv", ".jsonl", ".json")
    options = frozenset({"text_field"})
    text_fields = ("body", "selftext", "text", "story", "content")
    title_fields = ("story_name", "title")
    # the top posts of two subreddits, August 2013 (the Kaggle file needs a Kaggle login, so it is not fetched)
    urls = (  # (address, sha256 of the file at commit d0efcade504b8ed735a48ddc2b15552fa924c9d9)
        ("https://raw.githubusercontent.com/umbrae/reddit-top-2.5-million/master/data/creepypasta.csv",
         "2dca90b4cb33bebf50e2b1366511c6e47c8540cf48af2ba34e403c390e30155f"),
        ("https://raw.githubusercontent.com/umbrae/reddit-top-2.5-million/master/data/shortscarystories.csv",
         "29bab452f6321329bc71d1554082d1a2a4b236fad528eec2d4c8a2f53d63547b"))

    def iter_documents(self) -> Iterator[str]:
        for path in self.files():
            for record, field in iter_field(path, self.text_field, self.text_fields):
                body = html.unescape(_text(record.get(field))).strip()
                if not body or body in ("[deleted]", "[removed]"):
                    continue
                title = next((_text(record[t]) for t in self.title_fields if record.get(t)), "")
                title = html.unescape(title).strip()
                yield f"{title}\n\n{body}" if title else body

    def describe(self) -> str:
        return str(self.path) if self.path is not None else "Reddit r/creepypasta + r/shortscarystories (download)"


class DownloadedTextSource(TextSource):
    """A plain-text corpus with one public home: a local .txt/.txt.gz, else downloaded once and checked."""

    suffixes = (".txt", ".txt.gz")
    url: ClassVar[str]
    sha256: ClassVar[str]

    @property
    def urls(self) -> tuple[tuple[str, str], ...]:
        return ((self.url, self.sha256),)

    def iter_documents(self) -> Iterator[str]:
        for path in self.files():
            with open_text(path) as f:
                yield from self.split(f.read())

    @staticmethod
    @abstractmethod
    def split(text: str) -> Iterator[str]:
        """The corpus cut into documents (a story or a scene each), so that a shuffle can interleave them."""

    def describe(self) -> str:
        return str(self.path) if self.path is not None else f"{self.url} (download)"


@register
class LovecraftSource(DownloadedTextSource):
    """H.P. Lovecraft's complete fiction (CthulhuChick.com's compilation): horror prose, one document per section,
    its hard-wrapped lines joined back into paragraphs."""

    name = "lovecraft"
    licence = "the compilation: CC BY-NC 3.0; the stories are widely held to be public domain"
    url = ("https://raw.githubusercontent.com/arpitingle/lovecraft-gpt/a9d54eb4323ec5c19b64476d6c92c252ee4c7131/"
           "lovecraft.txt")
    sha256 = "69b95b69f5435fc95610397934173321a48e62a9a00a602a44f13356464f4d3b"

    @staticmethod
    def split(text: str) -> Iterator[str]:
        for block in text.split("\n\n"):
            lines = [line for line in map(str.strip, block.splitlines())
                     if line and line != "Return to Table of Contents"]  # the e-book's links
            if not lines or any("....." in line for line in lines):  # the table of contents
                continue
            width = max(map(len, lines))
            paragraphs, current = [], []
            for line in lines:
                current.append(line)
                # a line that stops well short of the wrap width and ends a sentence ends its paragraph
                if len(line) < 0.75 * width and line.endswith((".", "!", "?", '"', "\u201d", "'", "\u2019")):
                    paragraphs.append(" ".join(current))
                    current = []
            yield "\n\n".join(paragraphs + ([" ".join(current)] if current else []))


@register
class TinyShakespeareSource(DownloadedTextSource):
    """Tiny Shakespeare (char-rnn's 1 MB of the plays): general English text, one document per 40 speeches."""

    name = "tinyshakespeare"
    licence = "the text is public domain; the char-rnn repository is MIT"
    url = ("https://raw.githubusercontent.com/karpathy/char-rnn/6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e/data/"
           "tinyshakespeare/input.txt")
    sha256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
    speeches = 40

    @staticmethod
    def split(text: str) -> Iterator[str]:
        speeches = text.strip().split("\n\n")
        n = TinyShakespeareSource.speeches
        for i in range(0, len(speeches), n):
            yield "\n\n".join(speeches[i:i + n])


@register
class TextFileSource(TextSource):
    """Plain text files (.txt, .txt.gz): one document per file, or split on `separator`."""

    name = "text"
    licence = "that of the files given"
    suffixes = (".txt", ".txt.gz")
    options = frozenset({"separator"})

    def iter_documents(self) -> Iterator[str]:
        separator = self.separator
        if separator is not None:  # typed on the command line: the escapes \n and \t mean newline and tab
            separator = separator.replace("\\n", "\n").replace("\\t", "\t")
        for path in self.files():
            with open_text(path) as f:
                text = f.read()
            if "\0" in text:  # text files hold no NUL bytes (git's test); binary ones and UTF-16 text do
                print(f"warning: {path} holds NUL bytes, so it is binary (or UTF-16), not UTF-8 text: skipped",
                      file=sys.stderr)
                continue
            if separator is None:
                yield text
            else:
                yield from (piece.strip() for piece in text.split(separator))


@register
class JsonlSource(TextSource):
    """Any JSON-lines file; the document is the `text_field` of each line (default `text`)."""

    name = "jsonl"
    licence = "that of the files given"
    suffixes = (".jsonl", ".jsonl.gz", ".ndjson")
    options = frozenset({"text_field"})

    def iter_documents(self) -> Iterator[str]:
        yield from field_texts(self.files(), self.text_field or "text")
