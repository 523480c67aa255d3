"""The embedded default corpus: English text that ships with every Python install.

pydoc_data's topic pages (the language reference as prose) plus module, class and function docstrings
of the standard library, collected with `ast` in sorted file order, so the corpus is identical for a
given Python version on every machine.
"""

from __future__ import annotations

import ast
import inspect
import sysconfig
from functools import cache
from pathlib import Path

# Folders of the stdlib that hold tests, vendored code or generated tables rather than documentation.
_SKIPPED_PARTS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "lib2to3", "ensurepip"}


@cache  # read twice per prepare (tokenizer training, then shards); 2 MB
def stdlib_documents(min_docstring_chars: int = 80) -> list[str]:
    from pydoc_data.topics import topics

    documents = [topics[key].strip() for key in sorted(topics)]
    documents += _stdlib_docstrings(min_docstring_chars)
    return documents


def _stdlib_docstrings(min_chars: int) -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    docstrings = []
    for path in sorted(root.rglob("*.py")):
        if _SKIPPED_PARTS.intersection(path.relative_to(root).parts):
            continue
        docstrings += docstrings_of(path, min_chars)
    return docstrings


def docstrings_of(path: Path, min_chars: int) -> list[str]:
    try:
        tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError, OSError):
        return []
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            text = ast.get_docstring(node, clean=False)
            if text and len(text) >= min_chars:
                found.append(inspect.cleandoc(text))
    return found
