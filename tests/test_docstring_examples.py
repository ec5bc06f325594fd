"""The ``Examples::`` in the package's docstrings run and print what they show (doctest), so they stay true."""
from __future__ import annotations

import doctest
import importlib
import importlib.util
import pkgutil
from pathlib import Path

import pytest

import babilong_fast


def _modules_with_examples() -> list[str]:
    names = [m.name for m in pkgutil.walk_packages(babilong_fast.__path__, "babilong_fast.")]
    found = []
    for name in names:
        origin = importlib.util.find_spec(name).origin
        if origin and origin.endswith(".py") and ">>>" in Path(origin).read_text(encoding="utf-8"):
            found.append(name)
    return sorted(found)


MODULES = _modules_with_examples()


def test_examples_are_found():
    assert len(MODULES) >= 10, MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, capsys):
    module = importlib.import_module(name)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in doctest.DocTestFinder().find(module):
        runner.run(test)
    failed, attempted = runner.summarize(verbose=False)
    assert failed == 0, capsys.readouterr().out
