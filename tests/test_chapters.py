"""The committed chapters: run top to bottom in full mode, one setup cell, exercises, PNG figures.

nbval (`make notebooks`) re-runs the chapters in quick mode; these tests check what is committed,
which is what the book and GitHub show.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def source(cell: dict) -> str:
    text = cell.get("source", "")
    return "".join(text) if isinstance(text, list) else text


def code_cells(path: Path) -> list[dict]:
    return [cell for cell in load(path)["cells"] if cell["cell_type"] == "code"]


def output_text(output: dict) -> str:
    if "text" in output:
        return source({"source": output["text"]})
    return source({"source": output.get("data", {}).get("text/plain", "")})


def test_there_are_chapters_and_the_toc_lists_exactly_them() -> None:
    assert CHAPTERS, "no notebooks/NN_*.ipynb found"
    toc = (ROOT / "_toc.yml").read_text(encoding="utf-8")
    listed = re.findall(r"^\s*-\s*file:\s*notebooks/(\S+)\s*$", toc, flags=re.MULTILINE)
    assert sorted(f"{name}.ipynb" for name in listed) == [path.name for path in CHAPTERS]


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_was_executed_top_to_bottom_without_errors(path: Path) -> None:
    cells = code_cells(path)
    counts = [cell.get("execution_count") for cell in cells]
    assert counts == list(range(1, len(cells) + 1)), (
        f"{path.name}: execution counts {counts}; run `make execute` so every cell runs once, in order"
    )
    for number, cell in enumerate(cells, start=1):
        for output in cell.get("outputs", []):
            assert output["output_type"] != "error", f"{path.name}, code cell {number} has an error"
            assert "Traceback" not in output_text(output), f"{path.name}, code cell {number}"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_outputs_come_from_full_mode(path: Path) -> None:
    shown = "".join(output_text(o) for o in code_cells(path)[0].get("outputs", []))
    assert "quick=False" in shown, (
        f"{path.name}: the setup cell reports {shown!r}; commit outputs of a full run "
        "(`make execute`), not of quick mode"
    )


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_draws_png_figures_only(path: Path) -> None:
    kinds = {
        kind
        for cell in code_cells(path)
        for output in cell["outputs"]
        for kind in output.get("data", {})
    }
    assert "image/png" in kinds, f"{path.name} draws no figure"
    assert "image/svg+xml" not in kinds, f"{path.name} has SVG figures; nbval cannot compare them"


def test_every_chapter_starts_with_the_same_setup_cell() -> None:
    firsts = {path.name: code_cells(path)[0] for path in CHAPTERS}
    sources = {source(cell) for cell in firsts.values()}
    assert len(sources) == 1, "the first code cell differs between chapters: " + ", ".join(firsts)
    setup = sources.pop()
    config = (ROOT / "_config.yml").read_text(encoding="utf-8")
    url = re.search(r"^\s+url:\s*(https://github\.com/\S+)\s*$", config, flags=re.MULTILINE)
    assert url, "_config.yml names no repository url"
    assert f"git+{url.group(1)}" in setup, "the setup cell installs from another repository"
    assert 'if "google.colab" in sys.modules:' in setup
    assert "setup_notebook()" in setup
    for name, cell in firsts.items():
        assert "hide-cell" in cell["metadata"].get("tags", []), f"{name}: setup cell not hidden"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_has_exercises_with_marked_solutions(path: Path) -> None:
    cells = load(path)["cells"]
    exercises = [c for c in cells if c["cell_type"] == "markdown" and "**Exercise" in source(c)]
    solutions = [c for c in cells if "solution" in c["metadata"].get("tags", [])]
    assert len(exercises) >= 2, f"{path.name} has {len(exercises)} exercises; expected two or more"
    assert len(solutions) == len(exercises), f"{path.name}: one solution cell per exercise"
    for cell in solutions:
        text = source(cell)
        assert "### BEGIN SOLUTION" in text and "### END SOLUTION" in text
        assert text.index("### BEGIN SOLUTION") < text.index("### END SOLUTION")
        assert "hide-cell" in cell["metadata"]["tags"], "solutions are folded away in the book"


def test_chapters_refuse_to_run_under_nbval_without_quick_mode() -> None:
    env = {k: v for k, v in os.environ.items() if k != "MAE_TUTORIAL_QUICK"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--nbval-lax",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
        ]
        + [str(path) for path in CHAPTERS],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "without quick mode: set MAE_TUTORIAL_QUICK=1" in result.stdout + result.stderr


# ------------------------------------------------------------------ openings and reference pages

REFERENCE_PAGES = ("glossary", "cheatsheet", "pitfalls")


def first_markdown(path: Path) -> str:
    return next(source(c) for c in load(path)["cells"] if c["cell_type"] == "markdown")


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_opens_with_goals_prerequisites_time_and_reference_links(path: Path) -> None:
    opening = first_markdown(path)
    for part in ("**You will be able to:**", "**It assumes:**", "**Time:**"):
        assert part in opening, f"{path.name}: the first cell has no {part}"
    time_line = opening[opening.index("**Time:**") :]
    assert re.search(r"about \d+ min to read", time_line), f"{path.name}: reading time"
    assert re.search(r"about [\d.,]+ (s|min) to run on a CPU", time_line), f"{path.name}: CPU time"
    assert "GPU" in time_line, f"{path.name}: say how long it takes on a GPU"
    links = re.findall(r"\]\(\.\./book/(\w+)\.md\)", opening)
    assert links[-3:] == list(REFERENCE_PAGES), f"{path.name} ends without the three links"


def test_reference_pages_exist_and_are_in_the_toc() -> None:
    toc = (ROOT / "_toc.yml").read_text(encoding="utf-8")
    for name in REFERENCE_PAGES:
        assert (ROOT / "book" / f"{name}.md").is_file(), name
        assert re.search(rf"^\s*-\s*file:\s*book/{name}\s*$", toc, flags=re.MULTILINE), name


def test_glossary_defines_every_shape_letter_with_a_korean_term() -> None:
    text = (ROOT / "book" / "glossary.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| (\S+(?:, \S+)?) \| [^|]+ \| ([^|]+) \|", text, flags=re.MULTILINE))
    for letter in ("B", "C", "H, W", "P", "L", "K", "D", "E", "h", "d", "N"):
        assert letter in rows, f"the glossary does not define {letter}"
        assert re.search(r"[\uac00-\ud7a3]", rows[letter]), f"{letter} has no Korean term"


def test_pitfalls_cite_tests_and_checks_that_exist() -> None:
    from mae_tutorial import checks

    text = (ROOT / "book" / "pitfalls.md").read_text(encoding="utf-8")
    cited = re.findall(r"`tests/(test_\w+\.py)::(test_\w+)`", text)
    # `::test_x` right after a cited file refers to that file.
    for later in re.finditer(
        r"`tests/(test_\w+\.py)::test_\w+`((?:[^`]|`[^t:])*?)`::(test_\w+)`", text
    ):
        cited.append((later.group(1), later.group(3)))
    assert cited, "pitfalls.md cites no test"
    for file, test in cited:
        body = (ROOT / "tests" / file).read_text(encoding="utf-8")
        assert f"def {test}(" in body, f"pitfalls.md cites {file}::{test}, which does not exist"
    for name in set(re.findall(r"`(check_\w+)`", text)):
        assert hasattr(checks, name), f"pitfalls.md cites {name}, which mae_tutorial.checks lacks"


def test_readme_states_viz_default_as_the_code_has_it() -> None:
    import inspect

    from mae_tutorial import viz

    default = inspect.signature(viz.prediction_to_images).parameters["stats"].default
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f'the default is `"{default}"`' in readme


def test_readme_and_intro_name_the_chapter_of_every_exported_module() -> None:
    exported = set()
    for path in CHAPTERS:
        for cell in code_cells(path):
            text = source(cell)
            if match := re.match(r"#\| default_exp (\w+)", text):
                exported.add(match.group(1))
            elif match := re.match(r"#\| export (\w+)", text):
                exported.add(match.group(1))
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    intro = (ROOT / "book" / "intro.md").read_text(encoding="utf-8")
    for module in exported:
        assert re.search(rf"^\|[^|\n]*`{module}\.py`[^|\n]*\| chapter \d", readme, re.M), module
        assert f"`{module}.py`" in intro, module
