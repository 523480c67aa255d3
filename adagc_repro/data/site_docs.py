"""The `site_docs` corpus: docstrings and documentation pages of every installed Python package.

Packages are read in sorted (name, version) order and their files in sorted path order; module,
class and function docstrings come from `ast` (nothing is imported), `.md`/`.rst` files are taken
whole, and a text seen before (a vendored copy, a repeated licence) is skipped. What is installed
differs between machines, so the corpus is identified by a fingerprint of the package list and
the candidate files' sizes; on one machine the same fingerprint means the same documents.
"""

from __future__ import annotations

import hashlib
import itertools
import multiprocessing
import os
from collections.abc import Iterator
from functools import partial
from importlib import metadata
from pathlib import Path

from adagc_repro.data.stdlib_corpus import docstrings_of

_RECIPE = "site-docs-v1"
_PAGE_SUFFIXES = (".md", ".rst")
_SKIPPED_PARTS = {"test", "tests", "testing", "__pycache__", "_vendor", "vendored", "benchmarks"}
_MAX_FILE_BYTES = 4_000_000  # generated tables and bundled data, not prose


class SiteDocs:
    def __init__(self, min_docstring_chars: int = 80):
        self.min_chars = min_docstring_chars
        self.packages, self.files = _candidate_files()
        sizes = [path.stat().st_size for path in self.files]
        self.candidate_bytes = sum(sizes)
        digest = hashlib.sha256(f"{_RECIPE}|{min_docstring_chars}".encode())
        for package in self.packages:
            digest.update(f"{package}\n".encode())
        for path, size in zip(self.files, sizes, strict=True):
            digest.update(f"{path.name}:{size}\n".encode())
        self.fingerprint = digest.hexdigest()[:16]

    def documents(self) -> Iterator[str]:
        """Parsed in a process pool (`ast` is the slow part), consumed in file order."""
        seen: set[bytes] = set()
        workers = min(os.cpu_count() or 1, 8)
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            parsed = pool.imap(partial(_documents_of, min_chars=self.min_chars), self.files, chunksize=16)
            for text in itertools.chain.from_iterable(parsed):
                key = hashlib.sha1(text.encode()).digest()
                if key not in seen:
                    seen.add(key)
                    yield text


def _candidate_files() -> tuple[list[str], list[Path]]:
    distributions = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        # a vendored copy is not an installed package: it is listed only while its package has put its
        # folder on sys.path (setuptools does, once torch.compile has imported it)
        if name and dist.files and not _SKIPPED_PARTS.intersection(Path(dist.locate_file("")).parts):
            distributions.setdefault((name.lower(), dist.version), dist)
    packages, files, seen = [], [], set()
    for key in sorted(distributions):
        packages.append("==".join(key))
        for entry in sorted(distributions[key].files, key=str):
            if entry.suffix not in (".py", *_PAGE_SUFFIXES) or _SKIPPED_PARTS.intersection(entry.parts):
                continue
            path = Path(entry.locate()).resolve()
            if path not in seen and path.is_file() and path.stat().st_size <= _MAX_FILE_BYTES:
                seen.add(path)
                files.append(path)
    return packages, files


def _documents_of(path: Path, min_chars: int) -> list[str]:
    if path.suffix == ".py":
        return docstrings_of(path, min_chars)
    text = path.read_text(encoding="utf-8", errors="replace").strip()
    return [text] if len(text) >= min_chars else []
