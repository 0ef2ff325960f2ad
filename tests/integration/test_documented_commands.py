"""Every command the README and docs/*.md show composes: ``python train.py ...``,
``python evaluate.py ...`` and ``make train ARGS="..."`` lines of fenced code blocks are
composed with Hydra's compose API (no training), and every ``python -m`` tool they name exists
(``--help`` runs for the package's own tools).

Placeholders (``RUN``, ``FILE``, ``SWEEP_DIR``, ``<run>``, ...) become paths under ``tmp_path``;
``[...]``-style notes (``[original overrides]``) are dropped; a multirun (``-m``) is composed
once per value of each swept key, the other keys at their first value.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from tests.helpers import CONFIG_DIR, ROOT, compose_config

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SCRIPT = re.compile(r"^(?:\S*/)?python3? (?P<script>train|evaluate)\.py(?=\s|$)(?P<args>.*)$")
MAKE_TRAIN = re.compile(r"^make train(?=\s|$)(?P<args>.*)$")
MODULE_TOOL = re.compile(r"python3? -m (?P<module>(?:facrnn|datamodules|benchmarks)(?:\.\w+)+)")
#: a note in brackets after a space, not a Hydra list value (`key=[1,2]`): `[original overrides]`, `[...]`
NOTE = re.compile(r"(?<=\s)\[[^\]=]*\]")
#: an upper-case placeholder value (RUN, RUN_DIR, FILE, SWEEP_DIR) or one in angle brackets
PLACEHOLDER = re.compile(r"^(?:[A-Z][A-Z_]*|.*<[^>]*>.*)$")
#: modules whose --help is run (the benchmarks are only checked to exist: they import torch)
HELP_PREFIXES = ("facrnn.", "datamodules.")


@dataclass(frozen=True)
class DocumentedCommand:
    """One command line of a fenced code block: ``script`` (train or evaluate) and its arguments."""

    doc: str
    line: int
    text: str
    script: str
    args: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.doc}:{self.line}"


def fenced_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the lines inside fenced code blocks, ``\\`` continuations joined."""
    lines, inside, pending, start = [], False, "", 0
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            inside, pending = not inside, ""
            continue
        if not inside:
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        lines.append((start, (pending + line).strip()))
        pending = ""
    return lines


def documented_commands() -> list[DocumentedCommand]:
    commands = []
    for path in DOCS:
        for number, text in fenced_lines(path):
            script = SCRIPT.match(text)
            make = MAKE_TRAIN.match(text)
            if script is None and make is None:
                continue
            args = shlex.split(NOTE.sub("", (script or make)["args"]), comments=True)
            if make is not None:
                args = [part for arg in args if arg.startswith("ARGS=") for part in shlex.split(arg[len("ARGS=") :])]
            while args and args[-1] == "&":  # started in the background
                args.pop()
            doc = str(path.relative_to(ROOT))
            commands.append(DocumentedCommand(doc, number, text, script["script"] if script else "train", tuple(args)))
    return commands


def documented_module_tools() -> dict[str, str]:
    """``python -m MODULE`` anywhere in the docs (prose too): module -> first place it is named."""
    tools: dict[str, str] = {}
    for path in DOCS:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for match in MODULE_TOOL.finditer(line):
                tools.setdefault(match["module"].rstrip("."), f"{path.relative_to(ROOT)}:{number}")
    tools.pop("benchmarks.NAME", None)  # README's pattern for every benchmark
    return tools


COMMANDS = documented_commands()
MODULE_TOOLS = documented_module_tools()


def with_placeholders_filled(overrides: list[str], tmp_path: Path) -> list[str]:
    filled = []
    for override in overrides:
        key, sep, value = override.partition("=")
        if sep and PLACEHOLDER.match(value):
            value = str(tmp_path / re.sub(r"[^\w.-]", "_", value))
        filled.append(f"{key}{sep}{value}")
    return filled


def sweep_variants(overrides: list[str]) -> list[list[str]]:
    """A multirun's jobs to compose: the first value of every swept key, then each other option of
    each swept config group (``model=facrnn,lrrnn``); other swept values (``seed=0,1,2``) have
    been checked by Hydra's override grammar."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    values = [
        [f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override() else [text]
        for o, text in zip(parsed, overrides)
    ]
    values = [choices if (CONFIG_DIR / choices[0].split("=")[0]).is_dir() else choices[:1] for choices in values]
    first = [choices[0] for choices in values]
    variants = [first]
    for index, choices in enumerate(values):
        variants += [[*first[:index], choice, *first[index + 1 :]] for choice in choices[1:]]
    return variants


def test_the_docs_show_commands_of_every_kind() -> None:
    """The extraction finds the commands (a changed code-block style would silently test nothing)."""
    scripts = {command.script for command in COMMANDS}
    assert scripts == {"train", "evaluate"}
    assert any(command.text.startswith("make train ARGS=") for command in COMMANDS)
    assert sum("-m" in command.args for command in COMMANDS) >= 5
    assert len(COMMANDS) >= 30
    assert {"facrnn.cli.compare", "facrnn.cli.group_selection", "datamodules.convert"} <= set(MODULE_TOOLS)


@pytest.mark.parametrize("command", COMMANDS, ids=[command.label for command in COMMANDS])
def test_documented_command_composes(command: DocumentedCommand, tmp_path: Path) -> None:
    overrides = with_placeholders_filled([arg for arg in command.args if arg not in ("-m", "--multirun")], tmp_path)
    multirun = len(overrides) < len(command.args)
    variants = sweep_variants(overrides) if multirun else [overrides]
    for variant in variants:
        try:
            cfg = compose_config(command.script, variant, tmp_path)
        except Exception as error:  # noqa: BLE001 - any failure is the doc's command not composing
            pytest.fail(f"{command.label}: `{command.text}` does not compose (overrides {variant}): {error}")
        job = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
        missing = sorted(OmegaConf.missing_keys(job))
        assert not missing, f"{command.label}: `{command.text}` leaves {missing} unset (???)"


@pytest.mark.parametrize("module", sorted(MODULE_TOOLS), ids=sorted(MODULE_TOOLS))
def test_documented_module_tool_exists(module: str) -> None:
    where = MODULE_TOOLS[module]
    assert find_spec(module) is not None, f"{where}: `python -m {module}` names no module"
    if not module.startswith(HELP_PREFIXES):
        return
    env = {**os.environ, "WANDB_MODE": "offline"}
    result = subprocess.run(
        [sys.executable, "-m", module, "--help"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"{where}: `python -m {module} --help` failed:\n{result.stderr}"
    assert result.stdout.startswith("usage:")
