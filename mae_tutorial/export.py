"""Write the package's modules from the book's chapters (nbdev's `#| export` convention).

A chapter notebook is the source of the modules it teaches. In a chapter, a code cell whose first
line is

    #| default_exp patches      names the module that plain `#| export` cells go to (not exported);
    #| export                   is exported to that default module;
    #| export pos_embed         is exported to `mae_tutorial/pos_embed.py`.

The export cells of one module are joined, in notebook order, with two blank lines between them,
under a header that names the chapter. The first export cell of a module therefore holds the module
docstring and the imports, and every cell must already be formatted as `ruff format` would, so the
joined file is stable under the formatter.

    python -m mae_tutorial.export            rewrite the modules from notebooks/*.ipynb
    python -m mae_tutorial.export --check    exit 1, listing the modules that differ, write nothing
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "mae_tutorial"
# `#| export`, `#|export`, `# | export` (what a formatter may turn it into) all count.
_DIRECTIVE = re.compile(r"^#\s*\|\s*(default_exp|export)\b\s*(\S*)\s*$")
_MODULE_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


@dataclass(frozen=True)
class ExportedModule:
    """One module's text as a chapter exports it.

    Args:
        module: the module name, e.g. "patches" for `mae_tutorial/patches.py`.
        notebook: the chapter it comes from, relative to the repository root.
        text: the whole file, header included.
    """

    module: str
    notebook: str
    text: str


def header(notebook: str) -> str:
    """The comment that opens every generated module."""
    return f"# Generated from {notebook} by `make export`; edit the notebook, not this file.\n"


def _directive(source: str) -> tuple[str, str] | None:
    """(kind, argument) of a cell's first-line directive, or None when it has none."""
    first = source.split("\n", 1)[0].strip()
    match = _DIRECTIVE.match(first)
    return (match.group(1), match.group(2)) if match else None


def _cell_source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def export_notebook(path: Path, root: Path) -> list[ExportedModule]:
    """The modules one chapter exports, in the order they first appear.

    Raises:
        ValueError: a directive names no module or an invalid one, an `#| export` cell comes before
            any `#| default_exp`, or an export cell holds nothing but its directive.
    """
    notebook = path.relative_to(root).as_posix()
    cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
    default: str | None = None
    bodies: dict[str, list[str]] = {}
    for number, cell in enumerate(cells):
        if cell.get("cell_type") != "code":
            continue
        source = _cell_source(cell)
        found = _directive(source)
        if found is None:
            continue
        kind, module = found
        where = f"{notebook}, cell {number}"
        if kind == "default_exp":
            if not module:
                raise ValueError(f"{where}: `#| default_exp` needs a module name")
            default = module
            continue
        module = module or default or ""
        if not module:
            raise ValueError(
                f"{where}: `#| export` with no module and no `#| default_exp` before it; "
                "expected `#| export <module>` or a `#| default_exp <module>` cell earlier"
            )
        if not _MODULE_NAME.match(module):
            raise ValueError(f"{where}: {module!r} is not a module name such as 'pos_embed'")
        body = source.split("\n", 1)[1].strip("\n") if "\n" in source else ""
        if not body.strip():
            raise ValueError(f"{where}: the export cell holds no code after its directive")
        bodies.setdefault(module, []).append(body)
    return [
        ExportedModule(module, notebook, header(notebook) + "\n\n\n".join(parts) + "\n")
        for module, parts in bodies.items()
    ]


def export_all(root: Path) -> list[ExportedModule]:
    """Every module that `root/notebooks/*.ipynb` exports, in notebook order.

    Raises:
        ValueError: two chapters export the same module (see also `export_notebook`).
    """
    modules: list[ExportedModule] = []
    owner: dict[str, str] = {}
    for path in sorted((root / "notebooks").glob("*.ipynb")):
        for exported in export_notebook(path, root):
            if exported.module in owner:
                raise ValueError(
                    f"module {exported.module!r} is exported by both {owner[exported.module]} and "
                    f"{exported.notebook}; expected exactly one chapter per module"
                )
            owner[exported.module] = exported.notebook
            modules.append(exported)
    return modules


def module_path(root: Path, module: str) -> Path:
    """Where a module's file lives: `root/mae_tutorial/<module>.py`."""
    return root / PACKAGE / f"{module}.py"


def stale_modules(root: Path) -> list[ExportedModule]:
    """The exported modules whose committed file differs from (or lacks) the chapter's export."""
    stale = []
    for exported in export_all(root):
        path = module_path(root, exported.module)
        current = path.read_text(encoding="utf-8") if path.is_file() else None
        if current != exported.text:
            stale.append(exported)
    return stale


def write_modules(root: Path) -> list[ExportedModule]:
    """Rewrite every module that differs from its chapter's export; returns those rewritten."""
    stale = stale_modules(root)
    for exported in stale:
        module_path(root, exported.module).write_text(exported.text, encoding="utf-8")
    return stale


def default_root() -> Path:
    """The repository holding this package when it is a checkout with chapters, else the cwd."""
    checkout = Path(__file__).resolve().parents[1]
    return checkout if (checkout / "notebooks").is_dir() else Path.cwd()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mae_tutorial.export",
        description="Write mae_tutorial/<module>.py from the chapters' `#| export` cells.",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 and list the modules that differ from their chapters",
    )
    parser.add_argument(
        "--root", type=Path, default=None, help="repository root (default: this checkout)"
    )
    args = parser.parse_args(argv)
    root = (args.root or default_root()).resolve()
    if args.check:
        stale = stale_modules(root)
        for exported in stale:
            print(
                f"{PACKAGE}/{exported.module}.py differs from what {exported.notebook} exports; "
                "run `make export`"
            )
        return 1 if stale else 0
    for exported in write_modules(root):
        print(f"wrote {PACKAGE}/{exported.module}.py from {exported.notebook}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
