"""Build ragpress/data/sample_corpus.jsonl: the small corpus `make run` indexes.

Real public text: the docstrings of Python standard-library modules, functions and classes
(Copyright Python Software Foundation, PSF License Version 2), taken from the interpreter that runs
this script. Each docstring paragraph group becomes a passage of at most ~120 words.

    python scripts/make_sample_corpus.py          # rewrites ragpress/data/sample_corpus.jsonl
"""

from __future__ import annotations

import importlib
import inspect
import json
import platform
import re
from pathlib import Path

MODULES = [
    "json", "collections", "itertools", "functools", "heapq", "bisect", "datetime", "pathlib", "re",
    "csv", "statistics", "random", "textwrap", "string", "shutil", "tempfile", "logging", "argparse",
    "subprocess", "threading", "queue", "contextlib", "dataclasses", "enum", "hashlib",
    "base64", "zipfile", "gzip", "sqlite3", "urllib.parse", "time", "math",
    "decimal", "fractions", "operator", "copy", "pickle", "os.path", "glob", "fnmatch", "difflib",
    "timeit", "uuid", "secrets",
]
MAX_WORDS = 120
OUT = Path(__file__).resolve().parents[1] / "ragpress" / "data" / "sample_corpus.jsonl"


def _passages(title: str, doc: str):
    paras = [re.sub(r"\s+", " ", p).strip() for p in re.split(r"\n\s*\n", doc)]
    paras = [p for p in paras if len(p.split()) >= 6 and not p.startswith(">>>")]
    chunk: list[str] = []
    for p in paras:
        if chunk and len(" ".join(chunk + [p]).split()) > MAX_WORDS:
            yield " ".join(chunk)
            chunk = []
        chunk.append(p)
    if chunk:
        yield " ".join(chunk)


def main() -> None:
    rows = []
    for name in MODULES:
        mod = importlib.import_module(name)
        objs = [(name, mod)] + [
            (f"{name}.{attr}", obj) for attr, obj in sorted(vars(mod).items())
            if not attr.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.isbuiltin(obj))
            and (getattr(obj, "__module__", None) or "").split(".")[0] == name.split(".")[0]
        ]
        for title, obj in objs:
            doc = inspect.getdoc(obj) or ""
            for i, text in enumerate(_passages(title, doc)):
                rows.append({"id": f"{title}#{i}", "title": title, "text": text})
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} passages from Python {platform.python_version()} docstrings to {OUT}")


if __name__ == "__main__":
    main()
