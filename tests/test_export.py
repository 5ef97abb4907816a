"""Tests for mae_tutorial.export: the chapters' `#| export` cells are the package's modules."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from mae_tutorial.export import (
    export_all,
    export_notebook,
    header,
    main,
    module_path,
    stale_modules,
    write_modules,
)

ROOT = Path(__file__).resolve().parents[1]


def test_committed_modules_match_their_chapters() -> None:
    stale = stale_modules(ROOT)
    assert not stale, (
        "these modules differ from what their chapters export; edit the notebook, then run "
        "`make export`: " + ", ".join(f"{m.module} ({m.notebook})" for m in stale)
    )


def test_chapters_1_to_8_each_write_package_code() -> None:
    """Every chapter from 1 to 8 ends having written a module (issue 13), and every module that
    says it is generated comes from a chapter, so the sync test above covers all of them."""
    exported = export_all(ROOT)
    chapters = {Path(m.notebook).name[:2] for m in exported}
    assert {f"{n:02d}" for n in range(1, 9)} <= chapters, sorted(chapters)
    generated = {
        path.stem
        for path in (ROOT / "mae_tutorial").glob("*.py")
        if path.read_text(encoding="utf-8").startswith("# Generated from notebooks/")
    }
    assert generated == {m.module for m in exported}
    assert {"encoder", "augment", "training", "probe", "lr_decay"} <= generated


def test_every_exported_module_opens_with_its_header_then_its_docstring() -> None:
    exported = export_all(ROOT)
    assert {m.module for m in exported} >= {"patches", "pos_embed", "attention", "transformer"}
    for module in exported:
        text = module_path(ROOT, module.module).read_text(encoding="utf-8")
        assert text.startswith(header(module.notebook))
        assert ast.get_docstring(ast.parse(text)), f"{module.module}.py lost its module docstring"


# ------------------------------------------------------------------------ a chapter in a tmp repo


def code_cell(source: str) -> dict:
    return {"cell_type": "code", "metadata": {}, "source": source, "outputs": []}


def write_chapter(root: Path, name: str, cells: list[dict]) -> Path:
    notebooks = root / "notebooks"
    notebooks.mkdir(parents=True, exist_ok=True)
    (root / "mae_tutorial").mkdir(exist_ok=True)
    path = notebooks / name
    path.write_text(
        json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5})
    )
    return path


CHAPTER = [
    {"cell_type": "markdown", "metadata": {}, "source": "#| export\nmarkdown is never exported"},
    code_cell("#| default_exp alpha"),
    code_cell('#| export\n"""Alpha."""\n\nimport math\n'),
    code_cell("x = 1  # an ordinary cell stays in the notebook"),
    code_cell(["#| export\n", "def one() -> float:\n", "    return math.cos(0)\n"]),
    code_cell('# | export beta\n"""Beta."""'),
    code_cell("#|export\nTWO = 2"),
]


def test_export_joins_cells_in_order_under_the_header(tmp_path: Path) -> None:
    write_chapter(tmp_path, "01_demo.ipynb", CHAPTER)
    modules = {m.module: m for m in export_notebook(tmp_path / "notebooks/01_demo.ipynb", tmp_path)}
    assert list(modules) == ["alpha", "beta"]
    assert modules["alpha"].text == (
        header("notebooks/01_demo.ipynb")
        + '"""Alpha."""\n\nimport math\n\n\ndef one() -> float:\n    return math.cos(0)\n\n\nTWO = 2\n'
    )
    assert modules["beta"].text == header("notebooks/01_demo.ipynb") + '"""Beta."""\n'


def test_write_then_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_chapter(tmp_path, "01_demo.ipynb", CHAPTER)
    assert main(["--check", "--root", str(tmp_path)]) == 1
    assert "mae_tutorial/alpha.py differs from what notebooks/01_demo.ipynb exports" in (
        capsys.readouterr().out
    )
    assert [m.module for m in write_modules(tmp_path)] == ["alpha", "beta"]
    assert ast.get_docstring(ast.parse(module_path(tmp_path, "alpha").read_text())) == "Alpha."
    assert main(["--check", "--root", str(tmp_path)]) == 0
    module_path(tmp_path, "beta").write_text("hand edit\n")
    assert [m.module for m in stale_modules(tmp_path)] == ["beta"]
    assert main(["--root", str(tmp_path)]) == 0
    assert stale_modules(tmp_path) == []


@pytest.mark.parametrize(
    ("cells", "match"),
    [
        ([code_cell("#| export\nx = 1")], "no `#| default_exp` before it"),
        ([code_cell("#| default_exp")], "needs a module name"),
        ([code_cell("#| export Bad-Name\nx = 1")], "'Bad-Name' is not a module name"),
        ([code_cell("#| export alpha\n\n")], "holds no code"),
    ],
)
def test_bad_directives_are_refused_by_cell(cells: list[dict], match: str, tmp_path: Path) -> None:
    write_chapter(tmp_path, "01_demo.ipynb", cells)
    with pytest.raises(ValueError, match=match):
        export_all(tmp_path)


def test_two_chapters_cannot_export_one_module(tmp_path: Path) -> None:
    write_chapter(tmp_path, "01_a.ipynb", [code_cell("#| export alpha\nx = 1")])
    write_chapter(tmp_path, "02_b.ipynb", [code_cell("#| export alpha\ny = 2")])
    with pytest.raises(
        ValueError, match="exported by both notebooks/01_a.ipynb and notebooks/02_b"
    ):
        export_all(tmp_path)
