"""requirements.txt and pyproject.toml name the same requirements, and both cover every
third-party module that the package and the chapters import.

requirements.txt is what a reader installs; pyproject.toml is what `pip install mae-tutorial[...]`
installs. They must agree line for line: `dependencies` plus the `book`, `interop` and `test`
extras.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import json
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("book", "interop", "test")


def spec(text: str) -> tuple[str, str]:
    """(canonical distribution name, specifier) of one requirement line."""
    req = Requirement(text)
    return canonicalize_name(req.name), str(req.specifier)


def pyproject_requirements() -> dict[str, list[str]]:
    """pyproject.toml's `dependencies` and its extras, by group."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {"dependencies": project["dependencies"], **project["optional-dependencies"]}


def requirements_txt() -> list[str]:
    """The requirement lines of requirements.txt (comments and blank lines dropped)."""
    lines = (line.split("#", 1)[0].strip() for line in (ROOT / "requirements.txt").open())
    return [line for line in lines if line]


def declared(*groups: str) -> dict[str, str]:
    """Distribution name -> specifier over the named pyproject groups."""
    found = pyproject_requirements()
    return dict(spec(line) for group in groups for line in found[group])


def imported_modules(source: str) -> set[str]:
    """Top-level names of the modules `source` imports (absolute imports only)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def notebook_source(path: Path) -> str:
    """The code cells of a notebook, IPython magics and shell lines left out."""
    cells = json.loads(path.read_text())["cells"]
    code = ("".join(cell["source"]) for cell in cells if cell["cell_type"] == "code")
    lines = (line for cell in code for line in cell.splitlines())
    return "\n".join(line for line in lines if not line.lstrip().startswith(("%", "!")))


def third_party(modules: set[str]) -> set[str]:
    return {m for m in modules if m not in sys.stdlib_module_names and m != "mae_tutorial"}


@functools.cache
def installed_modules() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def distributions_of(module: str) -> set[str]:
    """The installed distributions that provide top-level `module`."""
    found = installed_modules().get(module)
    assert found, f"{module!r} is imported but no installed distribution provides it"
    return {canonicalize_name(name) for name in found}


def test_requirements_txt_is_pyproject_dependencies_plus_extras() -> None:
    lines = requirements_txt()
    names = [spec(line)[0] for line in lines]
    assert len(names) == len(set(names)), f"requirements.txt names one twice: {sorted(names)}"
    in_txt = dict(spec(line) for line in lines)
    in_pyproject = declared("dependencies", *EXTRAS)
    assert in_txt == in_pyproject, (
        "requirements.txt and pyproject.toml (dependencies + extras "
        f"{', '.join(EXTRAS)}) differ: only in requirements.txt "
        f"{sorted(set(in_txt.items()) - set(in_pyproject.items()))}, only in pyproject.toml "
        f"{sorted(set(in_pyproject.items()) - set(in_txt.items()))}"
    )


def test_an_extra_never_contradicts_another_group() -> None:
    specs: dict[str, set[str]] = {}
    for lines in pyproject_requirements().values():
        for name, specifier in map(spec, lines):
            specs.setdefault(name, set()).add(specifier)
    assert {n: s for n, s in specs.items() if len(s) > 1} == {}


@pytest.mark.parametrize(
    ("where", "groups"),
    [
        ("mae_tutorial/*.py", ("dependencies", "book", "interop")),
        ("notebooks/*.ipynb", ("dependencies", "book")),
    ],
    ids=["package", "chapters"],
)
def test_every_imported_module_is_declared(where: str, groups: tuple[str, ...]) -> None:
    """What the package and the chapters import is declared in pyproject.toml (so in
    requirements.txt too): e.g. chapter 3's widget needs ipywidgets, interop needs transformers."""
    allowed = set(declared(*groups))
    missing = {}
    for path in sorted(ROOT.glob(where)):
        text = notebook_source(path) if path.suffix == ".ipynb" else path.read_text()
        for module in third_party(imported_modules(text)):
            if not distributions_of(module) & allowed:
                missing.setdefault(module, []).append(path.name)
    assert missing == {}, f"imported but not declared in {' or '.join(groups)}: {missing}"


def test_chapter_3_widget_is_a_declared_requirement() -> None:
    assert "ipywidgets" in declared("book")
    assert "ipywidgets" in dict(map(spec, requirements_txt()))
