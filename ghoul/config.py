"""One way to configure every stage: a dataclass whose fields are the CLI flags and the keys of a TOML file.

Precedence: dataclass defaults < `--config FILE.toml` < flags given on the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tomllib
import types
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from ghoul.errors import GhoulError

C = TypeVar("C")

# The value argparse leaves for an optional positional that was not given: not a string, so argparse never runs the
# field's type on it (it would turn argparse.SUPPRESS into Path("==SUPPRESS==")); config_from_args skips it.
_OMITTED = object()


def option(default: Any = dataclasses.MISSING, help: str = "", *, choices: list[Any] | None = None,
           positional: bool = False, metavar: str | None = None, const: Any = None) -> Any:
    """A config field whose `help` becomes the flag's --help text; with `const`, the flag's value is optional."""
    meta = {"help": help, "choices": choices, "positional": positional, "metavar": metavar, "const": const}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def require(cfg: Any, names: Iterable[str], ok: Callable[[Any], bool], what: str) -> None:
    """A one-line error for the first option in `names` whose value fails `ok` ("--NAME must be WHAT, got VALUE");
    an optional option left unset (None) passes."""
    for name in names:
        value = getattr(cfg, name)
        if value is not None and not ok(value):
            raise GhoulError(f"{flag(name)} must be {what}, got {value}")


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _scalar_type(annotation: Any) -> tuple[type, bool]:
    """(element type, is_list) of a field annotation such as `int`, `float | None`, `list[str]`."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _scalar_type(args[0])
    if origin is list:
        return typing.get_args(annotation)[0], True
    if origin is typing.Literal:
        return type(typing.get_args(annotation)[0]), False
    return annotation, False


def add_config_args(parser: argparse.ArgumentParser, cls: type, config_file: bool = True) -> None:
    """Add one flag per field of the dataclass `cls` (plus `--config FILE.toml`)."""
    if config_file:
        parser.add_argument("--config", type=Path, default=argparse.SUPPRESS, metavar="FILE.toml",
                            help="read options from a TOML file with the same keys; flags given here override it")
    hints = _field_types(cls)
    for f in dataclasses.fields(cls):
        kind, is_list = _scalar_type(hints[f.name])
        meta = f.metadata
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        help_text = meta.get("help", "")
        if default not in (None, "", []) and kind is not bool:
            help_text += f" (default: {default})"
        kwargs: dict[str, Any] = {"help": help_text, "default": argparse.SUPPRESS}
        if meta.get("metavar"):
            kwargs["metavar"] = meta["metavar"]
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = kind  # int() accepts 100_000_000 as people write it in TOML; argparse names it in errors
            if meta.get("choices"):
                kwargs["choices"] = meta["choices"]
            if is_list:
                kwargs["nargs"] = "+"
            if meta.get("const") is not None:
                kwargs["nargs"], kwargs["const"] = "?", meta["const"]
        if meta.get("positional"):
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if not required:
                kwargs["nargs"] = "?" if not is_list else "*"
                kwargs["default"] = _OMITTED
            parser.add_argument(f.name, **kwargs)
        else:
            parser.add_argument(flag(f.name), dest=f.name, **kwargs)


def read_toml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """A TOML file's contents, with a one-line error when it is missing or malformed."""
    path = Path(path)
    if path.is_dir():
        raise GhoulError(f"{what} {path} is a directory: give the path of a TOML file")
    if not path.is_file():
        raise GhoulError(f"{what} {path} does not exist: give the path of a TOML file")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise GhoulError(f"{what} {path} is not UTF-8 text: give the path of a TOML file") from None
    except tomllib.TOMLDecodeError as e:
        raise GhoulError(f"{what} {path} is not valid TOML: {e}") from None


def load_toml(path: str | Path, cls: type, section: str | None = None) -> dict[str, Any]:
    """Read the keys of `cls` from a TOML file (optionally from one `[section]`), with a clear error otherwise."""
    data = read_toml(path)
    if section is not None:
        data = data.get(section, {})
    return _check_keys(data, cls, str(path))


def _check_keys(data: dict[str, Any], cls: type, where: str) -> dict[str, Any]:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = _field_types(cls)
    values = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if isinstance(value, dict):
            continue  # a [section] for another stage
        if name not in fields:
            raise GhoulError(f"{where}: unknown key '{key}'; valid keys are: {', '.join(sorted(fields))}")
        values[name] = _check_value(value, hints[name], f"{where}: key '{key}'")
        choices = fields[name].metadata.get("choices")
        if choices and any(v not in choices for v in (value if isinstance(value, list) else [value])):
            raise GhoulError(f"{where}: key '{key}' must be one of {', '.join(map(str, choices))}, not "
                             f"{_toml_text(value)}")
    return values


# what a TOML value of each field type must be, in words: (one value, a list of them)
_TYPE_WORDS = {int: ("an integer", "integers"), float: ("a number", "numbers"), str: ("a string", "strings"),
               Path: ("a path (a string)", "paths (strings)"), bool: ("true or false", "true/false values")}


def _check_value(value: Any, annotation: Any, what: str) -> Any:
    """`value` from a TOML file converted to the field's type (int -> float, str -> Path), or a one-line error."""
    kind, is_list = _scalar_type(annotation)
    if kind not in _TYPE_WORDS:
        return value  # a type we do not describe: the config class checks it
    one, many = _TYPE_WORDS[kind]
    if is_list:
        if not isinstance(value, list) or not all(_is(kind, v) for v in value):
            raise GhoulError(f"{what} must be a list of {many}, not {_toml_text(value)}")
        return [_convert(kind, v) for v in value]
    if not _is(kind, value):
        raise GhoulError(f"{what} must be {one}, not {_toml_text(value)}")
    return _convert(kind, value)


def _is(kind: type, value: Any) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):  # bool is a subclass of int in Python, but `true` is no number in a config
        return False
    if kind is int:
        return isinstance(value, int)
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, str)  # str and Path


def _convert(kind: type, value: Any) -> Any:
    return float(value) if kind is float else Path(value) if kind is Path else value


def _toml_text(value: Any) -> str:
    """A value as it is written in TOML (true, "5", [1, 2]), for error messages."""
    return json.dumps(value, default=str)


def config_from_args(cls: type[C], args: argparse.Namespace, section: str | None = None) -> C:
    """Build `cls` from defaults, then the `--config` file, then the flags that were given."""
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(load_toml(args.config, cls, section))
    for f in dataclasses.fields(cls):
        if getattr(args, f.name, _OMITTED) is not _OMITTED:
            values[f.name] = getattr(args, f.name)
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise GhoulError(f"missing required option(s): {', '.join(flag(m) for m in missing)}")
    return cls(**values)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-friendly dict of a config (paths as strings), for saving next to a run."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()}
