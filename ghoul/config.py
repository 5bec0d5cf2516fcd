"""One way to configure every stage: a dataclass whose fields are the CLI flags and the keys of a TOML file.

Precedence: dataclass defaults < `--config FILE.toml` < flags given on the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from ghoul.errors import GhoulError

C = TypeVar("C")


def option(default: Any = dataclasses.MISSING, help: str = "", *, choices: list[Any] | None = None,
           positional: bool = False, metavar: str | None = None, const: Any = None) -> Any:
    """A config field whose `help` becomes the flag's --help text; with `const`, the flag's value is optional."""
    meta = {"help": help, "choices": choices, "positional": positional, "metavar": metavar, "const": const}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


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
            kwargs["type"] = _parser_for(kind)
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
            parser.add_argument(f.name, **kwargs)
        else:
            parser.add_argument(flag(f.name), dest=f.name, **kwargs)


def _parser_for(kind: type) -> Any:
    if kind is int:
        return lambda s: int(s.replace("_", ""))  # accept 100_000_000 as people write it in TOML
    return kind


def read_toml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """A TOML file's contents, with a one-line error when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise GhoulError(f"{what} {path} does not exist: give the path of a TOML file")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise GhoulError(f"{what} {path} is not valid TOML: {e}") from None


def load_toml(path: str | Path, cls: type, section: str | None = None) -> dict[str, Any]:
    """Read the keys of `cls` from a TOML file (optionally from one `[section]`), with a clear error otherwise."""
    data = read_toml(path)
    if section is not None:
        data = data.get(section, {})
    return _check_keys(data, cls, str(path))


def _check_keys(data: dict[str, Any], cls: type, where: str) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    hints = _field_types(cls)
    values = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if isinstance(value, dict):
            continue  # a [section] for another stage
        if name not in names:
            raise GhoulError(f"{where}: unknown key '{key}'; valid keys are: {', '.join(sorted(names))}")
        kind, _ = _scalar_type(hints[name])
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind is Path and isinstance(value, str):
            value = Path(value)
        values[name] = value
    return values


def config_from_args(cls: type[C], args: argparse.Namespace, section: str | None = None) -> C:
    """Build `cls` from defaults, then the `--config` file, then the flags that were given."""
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(load_toml(args.config, cls, section))
    for f in dataclasses.fields(cls):
        if hasattr(args, f.name):
            values[f.name] = getattr(args, f.name)
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise GhoulError(f"missing required option(s): {', '.join(flag(m) for m in missing)}")
    return cls(**values)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-friendly dict of a config (paths as strings), for saving next to a run."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()}
