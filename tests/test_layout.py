"""The package stays readable: no module over 400 lines, no function over 80, and every stage says what it owns.

`make lint` runs this file beside ruff and import-linter (whose contract in pyproject.toml keeps
the stages importing downward only), so a module or function that grows past the limits fails the
build where it grew, not in a later review.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "platform" / "fracture"
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80  # from `def` (decorators included) to the last line, docstring and all


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            yield node.name, node.lineno, node.end_lineno - first + 1


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_and_functions_stay_short(path):
    text = path.read_text()
    lines = len(text.splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.relative_to(PACKAGE)}: {lines} lines (max {MAX_MODULE_LINES}): split it"
    long = [
        f"{name} (line {line}): {n} lines" for name, line, n in _functions(ast.parse(text)) if n > MAX_FUNCTION_LINES
    ]
    assert not long, f"{path.relative_to(PACKAGE)}: functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_every_stage_package_says_in_its_docstring_what_it_owns():
    packages = sorted(p.parent for p in PACKAGE.glob("*/__init__.py"))
    assert {p.name for p in packages} >= {"core", "runtime", "data", "model", "train", "tune", "track", "evaluate"}
    for package in packages:
        doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
        assert doc and len(doc.splitlines()[0]) > 20, (
            f"{package.name}/__init__.py: a one-line docstring of what it owns"
        )


def test_the_checks_fail_on_what_they_are_for(tmp_path):
    long = "def f():\n" + "    x = 1\n" * MAX_FUNCTION_LINES + "    return x\n"
    assert [n for _, _, n in _functions(ast.parse(long))] == [MAX_FUNCTION_LINES + 2]
