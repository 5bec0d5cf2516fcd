"""Checking that a command offers exactly what it uses: the options a run of it reads, and the one-line refusal of
each option it does not read."""

from __future__ import annotations

import dataclasses
import sys
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from ghoul import config
from ghoul.cli import COMMANDS, build_parser, main
from ghoul.config import flag, groups, option_owners

# options a test run cannot reach, and why
NOT_REACHED = {
    "wandb_project": "read only with --wandb, which needs the wandb package and its service",
}
SKIPPED_FRAMES = {config.__file__, dataclasses.__file__, "<string>"}  # checks, saving, dataclass methods


@contextmanager
def reads(classes: list[type]) -> Iterator[set[tuple[type, str]]]:
    """The (class, option) pairs the code reads from configs of `classes` while the block runs, leaving out the
    reads of ghoul.config (checks, config.json), of dataclass methods and of `__post_init__` (validation)."""
    seen: set[tuple[type, str]] = set()
    block = sys._getframe(2)  # the `with` statement's frame, above contextmanager's __enter__: where the walk stops

    def get(self: Any, name: str) -> Any:
        if not name.startswith("_"):
            frame = sys._getframe(1)
            while frame not in (block, None) and frame.f_code.co_filename not in SKIPPED_FRAMES \
                    and frame.f_code.co_name != "__post_init__":
                frame = frame.f_back
            if frame in (block, None):  # None: a read in another thread (a server's)
                seen.add((type(self), name))
        return object.__getattribute__(self, name)

    for cls in classes:
        cls.__getattribute__ = get
    try:
        yield seen
    finally:
        for cls in classes:
            del cls.__getattribute__


def other_value(cls: type, name: str, default: Any, tmp: Path) -> list[str]:
    """The flag `name` with a value other than its default, as typed on the command line."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    kind = config._scalar_type(typing.get_type_hints(cls)[name])[0]
    if kind is bool:
        return [flag(name) if not default else "--no-" + flag(name)[2:]]
    if f.metadata.get("choices"):
        return [flag(name), str(next(c for c in f.metadata["choices"] if c != default))]
    value = {int: "3", float: "0.5", str: "x", Path: str(tmp / "x")}[kind]
    return [flag(name), value]


def check_options_used(argv: list[str], tmp: Path, capsys: pytest.CaptureFixture) -> None:
    command = next(c for c in COMMANDS if argv[:len(c.name.split())] == c.name.split())
    _, cls, _ = build_parser(command)
    owners, members = option_owners(cls), groups(cls)
    holder = {name: members[owner] if owner else cls for name, owner in owners.items()}
    with reads([cls, *members.values()]) as seen:
        assert main(argv) == 0, capsys.readouterr().err
    unread = [name for name in owners if (holder[name], name) not in seen and name not in NOT_REACHED]
    for name in unread:  # not read: given, it must be refused, or read in that run (a rerun, another branch)
        field = next(f for f in dataclasses.fields(holder[name]) if f.name == name)
        assert not field.metadata.get("positional"), f"{' '.join(argv[:2])}: its argument {name} is not read"
        capsys.readouterr()
        given = other_value(holder[name], name, default_of(cls, name), tmp)
        with reads([cls, *members.values()]) as seen_given:
            code = main([*argv, *given])
        err = capsys.readouterr().err
        where = f"{' '.join(argv[:2])}: {flag(name)}"
        assert code in (0, 2), f"{where} failed: {err[-500:]}"
        assert (holder[name], name) in seen_given if code == 0 else flag(name) in err, \
            f"{where} is neither read nor refused" + ("" if code == 0 else f": {err[-300:]}")


def default_of(cls: type, name: str) -> Any:
    """The default of option `name` of the stage config `cls` (a group's, or the stage's own default for it)."""
    owner = option_owners(cls)[name]
    if owner is not None:
        member = next(f for f in dataclasses.fields(cls) if f.name == owner)
        if name in member.metadata["defaults"]:
            return member.metadata["defaults"][name]
        cls = member.metadata["group"]
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
