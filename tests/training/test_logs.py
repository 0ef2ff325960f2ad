"""facrnn.training.logs: the frozen modules' entries in inspect's file-to-module cache."""

from __future__ import annotations

import inspect
import sys
import types

import pytest

from facrnn.training.logs import index_frozen_module_files


class CountingModule(types.ModuleType):
    """A module in ``sys.modules`` that counts how often ``inspect`` asks for its file."""

    reads = 0

    @property
    def __file__(self) -> str:  # type: ignore[override]
        CountingModule.reads += 1
        return "/nowhere/counting_module.py"


def frame_of_frozen_import_code() -> types.FrameType:
    """A frame of ``importlib._bootstrap`` (frozen), captured by a finder during an import."""
    captured: list[types.FrameType] = []

    class Finder:
        @staticmethod
        def find_spec(name: str, path: object = None, target: object = None) -> None:
            captured.append(sys._getframe(1))  # _bootstrap._find_spec
            return None

    sys.meta_path.insert(0, Finder)
    try:
        with pytest.raises(ModuleNotFoundError):
            __import__("facrnn_no_such_module_for_this_test")
    finally:
        sys.meta_path.remove(Finder)
    return captured[0]


@pytest.fixture
def fresh_inspect_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """inspect's caches without the frozen entries, and a counting module in sys.modules."""
    entries = {key: name for key, name in inspect.modulesbyfile.items() if "<frozen " not in key}
    monkeypatch.setattr(inspect, "modulesbyfile", entries)
    monkeypatch.setattr(inspect, "_filesbymodname", {})
    monkeypatch.setitem(sys.modules, "facrnn_counting_module", CountingModule("facrnn_counting_module"))
    CountingModule.reads = 0


def test_frozen_frame_is_found_without_a_walk_of_sys_modules(fresh_inspect_cache: None) -> None:
    frame = frame_of_frozen_import_code()
    assert frame.f_code.co_filename == "<frozen importlib._bootstrap>"
    # without the entries each lookup walks sys.modules, reading every module's file
    assert inspect.getmodule(frame) is None
    assert CountingModule.reads > 0
    assert index_frozen_module_files() >= 4  # importlib's two modules, each by name and absolute path
    CountingModule.reads = 0
    inspect._filesbymodname.clear()  # a walk would now read every file again
    assert inspect.getmodule(frame) is sys.modules["_frozen_importlib"]
    assert CountingModule.reads == 0


def test_entries_name_the_modules_the_frames_run_in(fresh_inspect_cache: None) -> None:
    index_frozen_module_files()
    for key in ("<frozen importlib._bootstrap>", "<frozen importlib._bootstrap_external>"):
        name = inspect.modulesbyfile[key]
        module = sys.modules[name]
        codes = [value.__code__ for value in vars(module).values() if isinstance(value, types.FunctionType)]
        assert codes and {code.co_filename for code in codes} == {key}
    assert index_frozen_module_files() == 0  # added once
