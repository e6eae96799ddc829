"""Words that stay true: every dotted module name and every file path the code's
docstrings and comments or the docs mention must exist."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "stream", "agents")
SOURCES = sorted(p for pkg in (*PACKAGES, "bench", "tests", "deploy") for p in (ROOT / pkg).rglob("*.py"))
DOCS = [
    ROOT / "README.md",
    ROOT / "CHANGELOG.md",
    ROOT / "bench/RESULTS.md",
    *sorted((ROOT / "docs").rglob("*.md")),
]
DOTTED = re.compile(r"(?<![\w./-])((?:models|stream|agents)(?:\.[A-Za-z_]\w*)+)")
TOP = "models|stream|agents|bench|deploy|tests|docs"
PATH = re.compile(rf"(?<![\w./-])((?:{TOP})/[\w./-]*\w\.(?:py|md|sh|html|yaml|json))")
# Written before the move, about the tree as it was then.
HISTORY = {ROOT / "CHANGELOG.md", ROOT / "bench/RESULTS.md"}


def resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                # a dataclass field or an instance attribute, named in the class's annotations
                return attr in getattr(obj, "__annotations__", {})
            obj = getattr(obj, attr)
        return True
    return False


def mentions(pattern: re.Pattern[str]) -> list[tuple[str, str]]:
    out = []
    for path in [*SOURCES, *DOCS]:
        if path in HISTORY or not path.exists():
            continue
        if pattern is DOTTED and "upstream" in path.parts:
            continue  # write-ups of Faust's code, where ``stream`` is a Faust stream
        text = path.read_text(encoding="utf-8")
        for m in pattern.finditer(text):
            name = m.group(1).rstrip(".")
            out.append((str(path.relative_to(ROOT)), name))
    return sorted(set(out))


@pytest.mark.parametrize(("where", "name"), mentions(DOTTED))
def test_every_dotted_name_imports(where: str, name: str) -> None:
    assert resolves(name), f"{where} names {name}, which does not import"


def test_every_file_path_mentioned_exists() -> None:
    missing = [(where, p) for where, p in mentions(PATH) if not (ROOT / p).exists() and "*" not in p]
    assert missing == []
