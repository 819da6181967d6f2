"""`python -m kuai_assets.bench NAME [options]`: run a benchmark script of the repo's benchmarks/.

    python -m kuai_assets.bench quality --size demo      # = python -m benchmarks.quality --size demo
    python -m kuai_assets.bench --help                    # the benchmarks and what each measures

The benchmarks live beside the package in a checkout (benchmarks/*.py, each with its own --help);
they are run by hand and print their figures, which go to BENCHMARKS.md. They are not installed
with the package: outside a checkout this names the folder it looked for.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDER = REPO / "benchmarks"


def available() -> dict[str, str]:
    """{name: the first line of its docstring} for every benchmark script in the checkout."""
    import ast

    found = {}
    for path in sorted(FOLDER.glob("*.py")) if FOLDER.is_dir() else []:
        if path.name.startswith("_"):
            continue
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        found[path.stem] = doc.strip().splitlines()[0] if doc.strip() else ""
    return found


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    names = available()
    if not names:
        print(f"kuai_assets.bench: no benchmark scripts at {FOLDER} (they are in a checkout of the repo, "
              "not in the installed package)", file=sys.stderr)
        return 2
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m kuai_assets.bench NAME [options]   (NAME --help: its own options)\n")
        for name, line in names.items():
            print(f"  {name:<16}{line}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in names:
        print(f"kuai_assets.bench: no benchmark {name!r}; there are: {', '.join(names)}", file=sys.stderr)
        return 2
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    module = importlib.import_module(f"benchmarks.{name}")
    sys.argv = [f"python -m kuai_assets.bench {name}", *rest]
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
