"""One way to configure every stage: a dataclass whose fields are the CLI flags and the keys of a TOML file.

A stage's config holds groups of options it shares with other stages (`optim: OptimOptions = group(OptimOptions)`)
as members: their flags are as flat as the stage's own, a TOML file may set them at the top level or in a table named
for the group (`[optim]`), and a command offers exactly the groups its config holds.
Precedence: dataclass defaults < `--config FILE.toml` < flags given on the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
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


def group(cls: type, **defaults: Any) -> Any:
    """A member holding the options of `cls`, with this stage's own `defaults` for some of them."""
    return dataclasses.field(default_factory=lambda: cls(**defaults), metadata={"group": cls, "defaults": defaults})


def groups(cls: type) -> dict[str, type]:
    """The groups `cls` holds, by member name."""
    return {f.name: f.metadata["group"] for f in dataclasses.fields(cls) if "group" in f.metadata}


def option_owners(cls: type) -> dict[str, str | None]:
    """Every option of `cls` (its own fields and those of its groups) -> the group holding it (None: its own)."""
    owners: dict[str, str | None] = {}
    for f in dataclasses.fields(cls):
        for name in ([g.name for g in dataclasses.fields(f.metadata["group"])] if "group" in f.metadata else [f.name]):
            if name in owners:
                raise TypeError(f"{cls.__name__}: option {name} is declared twice")  # one flag, one meaning
            owners[name] = f.name if "group" in f.metadata else None
    return owners


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def require(cfg: Any, names: Iterable[str], ok: Callable[[Any], bool], what: str) -> None:
    """A one-line error for the first option in `names` whose value fails `ok` ("--NAME must be WHAT, got VALUE");
    an optional option left unset (None) passes."""
    for name in names:
        value = getattr(cfg, name)
        if value is not None and not ok(value):
            raise GhoulError(f"{flag(name)} must be {what}, got {value}")


def refuse_set(cfg: Any, names: Iterable[str], needs: str, defaults: dict[str, Any] | None = None) -> None:
    """A one-line error for the first option in `names` set to other than its default (`defaults`: those a stage
    gives a group, see member_defaults): it is only read with `needs` (e.g. "--judge web"), and would otherwise be
    silently ignored."""
    defaults = defaults or _defaults(type(cfg))
    for name in names:
        value = getattr(cfg, name)
        if value != defaults[name]:
            given = flag(f"no_{name}" if value is False else name)  # a switch turned off was given as --no-NAME
            raise GhoulError(f"{given} is only read with {needs}: leave it out")


def refuse_changed(cfg: Any, made_with: dict[str, Any] | None, names: Iterable[str], run: Path) -> None:
    """A one-line error for the first option in `names` whose value differs from the one `run` was made with
    (`made_with`: its saved to_dict; None for a new run): a rerun continues the run, and would silently keep what
    its finished steps made with the old value. A path is compared by where it points from the run directory, so
    a run moved or renamed together with what it uses goes on."""
    if made_with is None:
        return
    now = to_dict(cfg)
    roots = (made_with.get("output_dir"), str(run))
    for name in names:
        if not same_setting(made_with.get(name, now[name]), now[name], *roots):
            old, new = (repr(v) if isinstance(v, str) else v for v in (made_with[name], now[name]))
            raise GhoulError(f"{run} holds a run made with {flag(name)} {old}, not {new}: rerun it with the options "
                             f"it was made with to continue it, or give another --output-dir")


def same_setting(old: Any, new: Any, old_root: str | None = None, new_root: str | Path | None = None) -> bool:
    """Equal option values. Paths are equal when they name the same file or folder, however written (relative,
    absolute, ./), or the same place relative to the directory that recorded them, `old_root` then and `new_root`
    now: a run directory moved or renamed, or copied, together with what it uses."""
    if old == new:
        return True
    if not (isinstance(old, str) and isinstance(new, str) and old and new):  # "" is no path (a prompt left empty)
        return False
    if Path(old).exists() and Path(old).resolve() == Path(new).resolve():
        return True
    # lexical: `old` and `old_root` were written from the same working directory, `new` and `new_root` too
    return None not in (old_root, new_root) and os.path.relpath(old, old_root) == os.path.relpath(new, new_root)


def member_defaults(stage: Any, member: str) -> dict[str, Any]:
    """The defaults of the options of the group `member` as `stage` holds it: the group's own, some of them the
    stage's (`group(OptimOptions, learning_rate=...)`)."""
    f = next(f for f in dataclasses.fields(stage) if f.name == member)
    return {**_defaults(f.metadata["group"]), **f.metadata["defaults"]}


def _defaults(cls: type) -> dict[str, Any]:
    """The default of each option of `cls` (its groups left out), a list's too (from its factory); None for a
    required one."""
    return {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else  # type: ignore[misc]
            None if f.default is dataclasses.MISSING else f.default
            for f in dataclasses.fields(cls) if "group" not in f.metadata}


def _scalar_type(annotation: Any) -> tuple[type, bool]:
    """(element type, is_list) of a field annotation such as `int`, `float | None`, `list[str]`."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return _scalar_type(next(a for a in typing.get_args(annotation) if a is not type(None)))  # X | None: X
    if origin is list:
        return typing.get_args(annotation)[0], True
    if origin is typing.Literal:
        return type(typing.get_args(annotation)[0]), False
    return annotation, False


def add_config_args(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add `--config` and one flag per option of the dataclass `cls`, its groups' under their own headings."""
    tables = [f"[{t}]" for t in [*groups(cls), *_variants(cls)]]
    parser.add_argument("--config", type=Path, default=argparse.SUPPRESS, metavar="FILE.toml",
                        help="read options from a TOML file with the same keys" + (
                            f" (or in the tables {', '.join(tables)})" if tables else "") +
                             "; flags given here override it")
    option_owners(cls)  # no option declared twice
    _add_flags(parser, cls, _defaults(cls))
    for name, members in groups(cls).items():
        heading = parser.add_argument_group(f"{name} options", (members.__doc__ or "").split("\n")[0])
        _add_flags(heading, members, member_defaults(cls, name))


def _add_flags(parser: Any, cls: type, defaults: dict[str, Any]) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if "group" in f.metadata:
            continue
        kind, is_list = _scalar_type(hints[f.name])
        meta = f.metadata
        default = defaults[f.name]
        help_text = meta.get("help", "")
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if default not in (None, "", []) and kind is not bool:
            help_text += f" (default: {default})"
        elif required and not meta.get("positional"):
            help_text += " (required)"  # a flag, not argparse's required one: a --config file may give it
        kwargs: dict[str, Any] = {"help": help_text, "default": argparse.SUPPRESS, "metavar": meta.get("metavar")}
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


def load_toml(path: str | Path, cls: type) -> dict[str, Any]:
    """The options of `cls` in a TOML file, those of a group under its name (`{"optim": {...}}`), checked against
    their types; an unknown key or table is a one-line error naming it."""
    where, owners, tables = str(path), option_owners(cls), groups(cls)
    per = _variants(cls)
    values: dict[str, Any] = {}
    for key, value in read_toml(path).items():
        name = key.replace("-", "_")
        if isinstance(value, dict) and key in per:
            values.setdefault(_VARIANTS, {})[key] = check_keys(value, cls, f"{where}: [{key}]")
        elif isinstance(value, dict) and name not in owners:
            if name not in tables:
                known = [*tables, *per]
                raise GhoulError(f"{where}: unknown table [{key}]; " + (
                    f"tables are: {', '.join(f'[{t}]' for t in known)}" if known else "this command has none"))
            values.setdefault(name, {}).update(check_keys(value, tables[name], f"{where}: [{key}]"))
        elif owners.get(name) is not None:
            values.setdefault(owners[name], {}).update(check_keys({key: value}, tables[owners[name]], where))
        else:
            values.update(check_keys({key: value}, cls, where, sorted(owners)))
    return values


_VARIANTS = "[variants]"  # where load_toml keeps the tables of `TABLE_PER` (no option has this name)


def _variants(cls: type) -> list[str]:
    """The values of the option that `cls.TABLE_PER` names (e.g. "method"): a file's [VALUE] table holds the options
    for that value, applied when it is chosen (rlhf's [dpo] and [ppo] hold what only those methods read)."""
    per = getattr(cls, "TABLE_PER", None)
    return [] if per is None else list(next(f for f in dataclasses.fields(cls) if f.name == per).metadata["choices"])


def _apply_variant(cls: type, values: dict[str, Any], chosen: Any) -> None:
    """Replace the tables of `values` with the options of the chosen one (default: the file's or the class's)."""
    per = cls.TABLE_PER  # type: ignore[attr-defined]
    if chosen is None:
        chosen = values.get(per, _defaults(cls)[per])
    values.update(values.pop(_VARIANTS).get(chosen, {}))


def check_keys(data: dict[str, Any], cls: type, where: str, valid: list[str] | None = None) -> dict[str, Any]:
    """`data`'s keys, fields of `cls`, with values of their types (one-line errors naming `where`)."""
    fields = {f.name: f for f in dataclasses.fields(cls) if "group" not in f.metadata}
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in fields:
            raise GhoulError(f"{where}: unknown key '{key}'; valid keys are: {', '.join(valid or sorted(fields))}")
        values[name] = _check_value(value, hints[name], f"{where}: key '{key}'")
        choices = fields[name].metadata.get("choices")
        if choices and any(v not in choices for v in (value if isinstance(value, list) else [value])):
            raise GhoulError(f"{where}: key '{key}' must be one of {', '.join(map(str, choices))}, not "
                             f"{_toml_text(value)}")
    return values


# what a TOML value of each field type must be: its Python types, and in words (one value, a list of them)
_TOML_TYPES = {int: (int, "an integer", "integers"), float: ((int, float), "a number", "numbers"),
               str: (str, "a string", "strings"), Path: (str, "a path (a string)", "paths (strings)"),
               bool: (bool, "true or false", "true/false values")}


def _check_value(value: Any, annotation: Any, what: str) -> Any:
    """`value` from a TOML file converted to the field's type (int -> float, str -> Path), or a one-line error."""
    kind, is_list = _scalar_type(annotation)
    if kind not in _TOML_TYPES:
        return value  # a type we do not describe: the config class checks it
    _, one, many = _TOML_TYPES[kind]
    if is_list:
        if not isinstance(value, list) or not all(_is(kind, v) for v in value):
            raise GhoulError(f"{what} must be a list of {many}, not {_toml_text(value)}")
        return [kind(v) for v in value]
    if not _is(kind, value):
        raise GhoulError(f"{what} must be {one}, not {_toml_text(value)}")
    return kind(value)


def _is(kind: type, value: Any) -> bool:
    # bool is a subclass of int in Python, but `true` is no number in a config
    return isinstance(value, _TOML_TYPES[kind][0]) and (kind is bool or not isinstance(value, bool))


def _toml_text(value: Any) -> str:
    """A value as it is written in TOML (true, "5", [1, 2]), for error messages."""
    return json.dumps(value, default=str)


def config_from_args(cls: type[C], args: argparse.Namespace) -> C:
    """Build `cls` from defaults, then the `--config` file, then the flags that were given."""
    values = load_toml(args.config, cls) if getattr(args, "config", None) else {}
    if _VARIANTS in values:  # the chosen value's table, whether the flag or the file chose it
        _apply_variant(cls, values, getattr(args, cls.TABLE_PER, None))  # type: ignore[attr-defined]
    for name, owner in option_owners(cls).items():
        if getattr(args, name, _OMITTED) is not _OMITTED:
            (values if owner is None else values.setdefault(owner, {}))[name] = getattr(args, name)
    return make_config(cls, values)


def build(cls: type[C], **options: Any) -> C:
    """`cls` from options named as their flags are, whichever group holds them: `build(FinetuneConfig, max_steps=9)`.
    An option `cls` does not have is a TypeError, as a wrong keyword is."""
    owners, values = option_owners(cls), {}
    for name, value in options.items():
        if name not in owners:
            raise TypeError(f"{cls.__name__} has no option {name}")
        (values if owners[name] is None else values.setdefault(owners[name], {}))[name] = value
    return make_config(cls, values)


def make_config(cls: type[C], values: dict[str, Any]) -> C:
    """`cls` from option values as `load_toml` gives them: each group's under its name, on top of this stage's
    defaults for the group."""
    if _VARIANTS in values:
        _apply_variant(cls, values, None)
    members = {f.name: f.metadata["group"](**{**f.metadata["defaults"], **values[f.name]})
               for f in dataclasses.fields(cls) if "group" in f.metadata and f.name in values}
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise GhoulError(f"missing required option(s): {', '.join(flag(m) for m in missing)}")
    return cls(**{**values, **members})


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-friendly dict of a config's options, its groups' among them, as flat as its flags (paths as strings),
    for saving next to a run."""
    flat: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        flat.update(to_dict(value) if "group" in f.metadata else {f.name: value})
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in flat.items()}
