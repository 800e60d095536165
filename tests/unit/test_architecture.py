"""The contracts of docs/architecture.md keep one owner each.

Import rules are checked by import-linter (``make imports``); this checks what an import rule
cannot see: a contract's values written out again outside the module that owns it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PARTS = ("store", "gss", "compute", "clients")

# A string value -> the module that owns it.
OWNED = {
    "gss-event-id": "contract/headers.py",
    "gss-signal": "contract/headers.py",
    "gss-replay-of": "contract/headers.py",
    "content-type": "contract/headers.py",
    "murmur2_random": "contract/kafka.py",
    "gss.{galaxy}.changelog": "contract/topics.py",
    "gss.{galaxy}.available": "contract/topics.py",
    "gss.{galaxy}.dlq": "contract/topics.py",
}


def _string_constants(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    }


@pytest.mark.parametrize("part", PARTS)
def test_contract_values_are_written_only_by_their_owner(part: str) -> None:
    """No module outside contract/ spells out a header name, topic template or partitioner."""
    offenders = [
        f"{path.relative_to(ROOT)}: {value!r} (owned by {OWNED[value]})"
        for path in sorted((ROOT / part).rglob("*.py"))
        for value in _string_constants(path) & OWNED.keys()
    ]
    assert offenders == []


def test_the_owners_hold_what_they_own() -> None:
    """The table above names real owners (a moved contract must move this test's table too)."""
    missing = [
        f"{owner} lacks {value!r}"
        for value, owner in OWNED.items()
        if value not in _string_constants(ROOT / owner)
    ]
    assert missing == []
