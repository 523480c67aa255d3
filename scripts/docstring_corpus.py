"""A large offline corpus: docstrings of every installed Python package, one JSON line per docstring.

    python3 scripts/docstring_corpus.py OUT.jsonl [MAX_CHARS=60000000]

Files are read in sorted order (site-packages folders, then paths) with `ast`, nothing is imported,
so the corpus is the same for the same set of installed packages. Feed it to `data=text_files
data.paths=[OUT.jsonl]`.
"""

from __future__ import annotations

import json
import site
import sys
import sysconfig
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from adagc_repro.data.stdlib_corpus import _docstrings_of

MIN_CHARS = 80
SKIPPED_PARTS = {"tests", "test", "__pycache__"}


def package_files() -> list[Path]:
    roots = sorted({Path(p) for p in [*site.getsitepackages(), sysconfig.get_paths()["purelib"]] if Path(p).is_dir()})
    files = []
    for root in roots:
        files += [p for p in sorted(root.rglob("*.py")) if not SKIPPED_PARTS.intersection(p.relative_to(root).parts)]
    return files


def _docstrings(path: Path) -> list[str]:
    return _docstrings_of(path, MIN_CHARS)


def main(out: Path, max_chars: int) -> None:
    written = count = 0
    tmp = out.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as handle, ProcessPoolExecutor() as pool:
        for docstrings in pool.map(_docstrings, package_files(), chunksize=64):
            for text in docstrings:
                if written >= max_chars:
                    break
                handle.write(json.dumps({"text": text}) + "\n")
                written += len(text)
                count += 1
    tmp.replace(out)
    print(f"{out}: {count:,} docstrings, {written:,} characters")


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 60_000_000)
