"""facrnn.cli.process: the commands' objects frozen out of the garbage collector's walks."""

from __future__ import annotations

import ast
import gc
import weakref
from pathlib import Path

import pytest

from facrnn.cli.process import frozen_garbage_collection

ROOT = Path(__file__).resolve().parents[2]


class Node:
    """An object of a reference cycle (only the cyclic collector frees it)."""

    def __init__(self) -> None:
        self.partner: Node | None = None


def tracked(obj: object) -> bool:
    """Whether ``obj`` is in a generation the collector walks (frozen objects are not)."""
    return any(other is obj for other in gc.get_objects())


def test_objects_alive_on_entry_and_exit_are_frozen_and_new_garbage_is_still_collected() -> None:
    before = Node()
    assert tracked(before)
    try:
        with frozen_garbage_collection():
            assert not tracked(before), "an object alive on entry is frozen"
            assert gc.get_freeze_count() > 0
            during = Node()
            assert tracked(during), "objects made inside are collected as usual"
            first, second = Node(), Node()
            first.partner, second.partner = second, first
            gone = weakref.ref(first)
            del first, second
            gc.collect()
            assert gone() is None, "a reference cycle dropped inside the block is still collected"
        assert not tracked(during), "on the way out everything left is frozen for the shutdown"
    finally:
        gc.unfreeze()  # the test process goes on
    assert tracked(before) and tracked(during)


def test_the_collector_is_on_inside_the_block_after_a_start_without_it() -> None:
    gc.disable()  # as the commands do before their imports
    try:
        with frozen_garbage_collection():
            assert gc.isenabled(), "collection is back on for the command's run"
    finally:
        gc.enable()
        gc.unfreeze()


def test_frozen_again_when_the_command_fails() -> None:
    try:
        with pytest.raises(SystemExit), frozen_garbage_collection():
            during = Node()
            raise SystemExit(1)
        assert not tracked(during)
    finally:
        gc.unfreeze()


def main_blocks(tree: ast.Module) -> list[ast.If]:
    """The module-level ``if __name__ == "__main__":`` blocks of ``tree``."""
    return [
        node
        for node in tree.body
        if isinstance(node, ast.If)
        and isinstance(node.test, ast.Compare)
        and ast.unparse(node.test) == "__name__ == '__main__'"
    ]


@pytest.mark.parametrize("script", ["train.py", "evaluate.py"])
def test_the_commands_import_with_the_collector_off(script: str) -> None:
    tree = ast.parse((ROOT / script).read_text())
    first_import = next(
        index
        for index, node in enumerate(tree.body)
        if isinstance(node, ast.Import | ast.ImportFrom) and not ast.unparse(node) == "import gc"
    )
    disabling = [
        index
        for index, block in enumerate(tree.body)
        if block in main_blocks(tree) and [ast.unparse(node) for node in block.body] == ["gc.disable()"]
    ]
    assert disabling and disabling[0] < first_import, f"{script}: gc.disable() under __main__ before the imports"


@pytest.mark.parametrize("script", ["train.py", "evaluate.py"])
def test_the_commands_run_main_inside_the_frozen_block(script: str) -> None:
    tree = ast.parse((ROOT / script).read_text())
    main_block = main_blocks(tree)[-1]
    (outer,) = main_block.body[-1:]
    assert isinstance(outer, ast.With), f"{script}: the __main__ block should be `with frozen_garbage_collection():`"
    assert ast.unparse(outer.items[0].context_expr) == "frozen_garbage_collection()"
    calls = {ast.unparse(node.func) for node in ast.walk(outer) if isinstance(node, ast.Call)}
    assert "main" in calls, f"{script}: main() runs inside the frozen block"
