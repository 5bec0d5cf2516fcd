"""TOML configs: every file in configs/ loads into its command's config, and values are checked against field types."""

import dataclasses
import re
from pathlib import Path

import pytest

from ghoul.cli import COMMANDS, build_parser
from ghoul.config import build, group, load_toml, make_config, option, same_setting
from ghoul.errors import GhoulError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def stage_configs() -> list[tuple[str, Path]]:
    """(command, file) of each stage config, from the `ghoul COMMAND --config configs/FILE` line in its comments."""
    pairs = []
    for path in sorted(CONFIGS.glob("*.toml")):
        used = re.search(r"ghoul (\w+(?: \w+)?) --config configs/" + re.escape(path.name), path.read_text())
        if used:
            pairs.append((used.group(1), path))
    return pairs


def test_every_config_in_configs_loads_into_its_command():
    pairs = stage_configs()
    assert len(pairs) >= 6, pairs  # all but laptop-variants.toml, which `ghoul learn compare --variants` reads
    commands = {c.name: c for c in COMMANDS}
    for command, path in pairs:
        _, cls, _ = build_parser(commands[command])
        # an unknown key or a value of the wrong type fails in load_toml, settings that disagree in the config class
        make_config(cls, load_toml(path, cls))


@dataclasses.dataclass
class Example:
    steps: int = option(1)
    rate: float = option(0.1)
    name: str = option("a")
    out: Path = option(Path("x"))
    fast: bool = option(False)
    ids: list[int] = option([])
    inputs: list[Path] = option([])
    top_k: int | None = option(None)
    mode: str = option("slow", choices=["slow", "exact"])


def test_values_are_converted_to_the_field_type(tmp_path):
    (tmp_path / "c.toml").write_text('steps = 3\nrate = 1\nname = "b"\nout = "o"\nfast = true\nids = [1, 2]\n'
                                     'inputs = ["a", "b"]\ntop_k = 5\n')
    values = load_toml(tmp_path / "c.toml", Example)
    assert values == {"steps": 3, "rate": 1.0, "name": "b", "out": Path("o"), "fast": True, "ids": [1, 2],
                      "inputs": [Path("a"), Path("b")], "top_k": 5}
    assert isinstance(values["rate"], float)


@pytest.mark.parametrize("line, message", [
    ("steps = 2.5", "key 'steps' must be an integer, not 2.5"),
    ("steps = true", "key 'steps' must be an integer, not true"),
    ("rate = false", "key 'rate' must be a number, not false"),
    ('rate = "0.1"', "key 'rate' must be a number, not \"0.1\""),
    ("fast = 1", "key 'fast' must be true or false, not 1"),
    ("name = 1979-05-27", "key 'name' must be a string, not \"1979-05-27\""),
    ("ids = 3", "key 'ids' must be a list of integers, not 3"),
    ("ids = [1, true]", "key 'ids' must be a list of integers, not [1, true]"),
    ("top_k = 0.5", "key 'top_k' must be an integer, not 0.5"),
    ('mode = "fast"', "key 'mode' must be one of slow, exact, not \"fast\""),
])
def test_values_of_the_wrong_type_are_one_line_errors(tmp_path, line, message):
    (tmp_path / "c.toml").write_text(line + "\n")
    with pytest.raises(GhoulError) as e:
        load_toml(tmp_path / "c.toml", Example)
    assert str(e.value) == f"{tmp_path / 'c.toml'}: {message}"


@dataclasses.dataclass
class Schedule:
    """When to stop."""

    max_steps: int = option(10, "steps")
    warmup: int = option(0, "warmup steps")


@dataclasses.dataclass
class Staged:
    name: str = option("a")
    schedule: Schedule = group(Schedule, max_steps=50)  # this stage's own default


def test_a_group_is_set_at_the_top_level_or_in_its_table_over_the_stages_defaults(tmp_path):
    (tmp_path / "top.toml").write_text('name = "b"\nwarmup = 2\n')
    (tmp_path / "table.toml").write_text('name = "b"\n[schedule]\nwarmup = 2\n')
    for path in (tmp_path / "top.toml", tmp_path / "table.toml"):
        cfg = make_config(Staged, load_toml(path, Staged))
        assert (cfg.name, cfg.schedule.max_steps, cfg.schedule.warmup) == ("b", 50, 2)
    assert build(Staged, warmup=3).schedule == Schedule(max_steps=50, warmup=3)
    with pytest.raises(TypeError, match="Staged has no option steps"):
        build(Staged, steps=3)


@pytest.mark.parametrize("text, message", [
    ("[shedule]\nwarmup = 2\n", "unknown table [shedule]; tables are: [schedule]"),
    ("[schedule]\nname = \"b\"\n", "[schedule]: unknown key 'name'; valid keys are: max_steps, warmup"),
    ("warmpu = 2\n", "unknown key 'warmpu'; valid keys are: max_steps, name, warmup"),
])
def test_an_unknown_table_or_key_is_a_one_line_error_naming_it(tmp_path, text, message):
    (tmp_path / "c.toml").write_text(text)
    with pytest.raises(GhoulError) as e:
        load_toml(tmp_path / "c.toml", Staged)
    assert str(e.value) == f"{tmp_path / 'c.toml'}: {message}"


def test_a_command_without_groups_has_no_tables(tmp_path):
    (tmp_path / "c.toml").write_text("[trian]\nsteps = 3\n")
    with pytest.raises(GhoulError, match=r"unknown table \[trian\]; this command has none"):
        load_toml(tmp_path / "c.toml", Example)


def test_a_recorded_path_is_the_same_however_written_or_wherever_its_run_moved(tmp_path, monkeypatch):
    (tmp_path / "runs" / "ft").mkdir(parents=True)
    (tmp_path / "runs" / "pre").mkdir()
    monkeypatch.chdir(tmp_path)
    assert same_setting("runs/pre", str(tmp_path / "runs" / "pre"))  # relative and absolute, the same folder
    assert not same_setting("runs/pre", "runs/ft")
    # recorded as "old/pre" by the run in "old/ft", which now lies in runs/ft: the same place from the run
    assert same_setting("old/pre", "runs/pre", "old/ft", "runs/ft")
    assert not same_setting("old/pre", "runs/other", "old/ft", "runs/ft")
    assert not same_setting("old/pre", "runs/pre")  # without the run's directory, then and now: not known
    assert not same_setting("", "The well", "old/ft", "runs/ft")  # an empty prompt is no path
    assert same_setting(0.8, 0.8) and not same_setting(0.8, 0.9)

