"""mae_tutorial.classroom: student copies hide every solution, run in quick mode, and stop only at
the stubs; every chapter has function exercises in the fixed layout; nbgrader accepts a chapter."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from mae_tutorial import checks
from mae_tutorial.classroom import (
    BEGIN,
    END,
    main,
    solution_regions,
    stub_solutions,
    student_notebook,
    write_copies,
)

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
IDS = [path.name for path in CHAPTERS]
EXERCISE = re.compile(r"\*\*Exercise (\d+)\.(\d+) ")


def source(cell: dict) -> str:
    text = cell.get("source", "")
    return "".join(text) if isinstance(text, list) else text


def region_texts(notebook: nbformat.NotebookNode) -> list[str]:
    """The text inside every solution region of a notebook, markers excluded."""
    texts = []
    for cell in notebook.cells:
        lines = source(cell).splitlines()
        for begin, end in solution_regions(source(cell)):
            texts.append("\n".join(lines[begin + 1 : end]))
    return texts


@pytest.fixture(scope="module")
def copies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("classroom")
    write_copies(CHAPTERS, out)
    return out


# ---------------------------------------------------------------------------------- the stubs


def test_stub_keeps_the_signature_and_indentation() -> None:
    text = (
        "# Solution to exercise 9.2\n"
        "def my_thing(x):\n"
        "    y = 1\n"
        f"    {BEGIN}\n"
        "    secret = x * 42\n"
        "    return secret\n"
        f"    {END}\n"
        "\n"
        "print('after')"
    )
    stubbed = stub_solutions(text)
    assert stubbed.splitlines() == [
        "# Your solution to exercise 9.2",
        "def my_thing(x):",
        "    y = 1",
        '    raise NotImplementedError("exercise 9.2: implement my_thing")',
        "",
        "print('after')",
    ]


def test_stub_at_top_level_and_several_regions() -> None:
    text = f"# Solution to exercise 0.1\n{BEGIN}\na = 1\n{END}\nb = 2\n{BEGIN}\nc = 3\n{END}"
    stubbed = stub_solutions(text)
    assert stubbed.count('raise NotImplementedError("exercise 0.1: write your solution here")') == 2
    assert "a = 1" not in stubbed and "c = 3" not in stubbed and "b = 2" in stubbed


@pytest.mark.parametrize(
    "text",
    [f"{BEGIN}\nx = 1", f"x = 1\n{END}", f"{BEGIN}\n{BEGIN}\n{END}\n{END}"],
    ids=["no end", "no begin", "nested"],
)
def test_unbalanced_markers_are_an_error(text: str) -> None:
    with pytest.raises(ValueError, match="SOLUTION"):
        solution_regions(text)


# --------------------------------------------------------------------- the chapters' exercises


def function_exercises(notebook: nbformat.NotebookNode) -> list[tuple[str, str, str]]:
    """(exercise, function, check) for every exercise in the fixed layout: task, solution, check."""
    found = []
    cells = notebook.cells
    for i, cell in enumerate(cells[:-2]):
        match = EXERCISE.search(source(cell)) if cell.cell_type == "markdown" else None
        implement = re.search(r"implement\s+`(my_\w+)\(", source(cell), flags=re.IGNORECASE)
        if not (match and implement):
            continue
        number, function = f"{match.group(1)}.{match.group(2)}", implement.group(1)
        solution, check = source(cells[i + 1]), source(cells[i + 2])
        assert solution.startswith(f"# Solution to exercise {number}\n"), number
        assert re.search(rf"^def {function}\(", solution, flags=re.MULTILINE), number
        assert re.search(rf"\n    {BEGIN}\n.*\n    {END}", solution, flags=re.DOTALL), number
        called = re.fullmatch(
            rf"from mae_tutorial\.checks import (check_\w+)\n\n\1\({function}\)", check
        )
        assert called, f"exercise {number}: the cell after the solution calls its check"
        assert not cells[i + 2].metadata.get("tags"), "check cells are visible"
        found.append((number, function, called.group(1)))
    return found


@pytest.mark.parametrize("path", CHAPTERS, ids=IDS)
def test_chapter_has_two_function_exercises_with_checks(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    exercises = function_exercises(notebook)
    assert len(exercises) >= 2, f"{path.name}: {exercises}"
    for number, _, check in exercises:
        assert check in checks.__all__, f"exercise {number}: {check} is not in mae_tutorial.checks"


@pytest.mark.parametrize("path", CHAPTERS, ids=IDS)
def test_solution_cells_carry_nbgrader_metadata(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code" and BEGIN in source(cell):
            number = re.match(r"# Solution to exercise (\d+)\.(\d+)", source(cell))
            assert number, f"{path.name}: a solution cell starts with '# Solution to exercise N.k'"
            assert cell.metadata.get("nbgrader") == {
                "grade": False,
                "solution": True,
                "locked": False,
                "grade_id": f"ex-{number.group(1)}-{number.group(2)}",
                "schema_version": 3,
            }
            assert {"hide-cell", "solution"} <= set(cell.metadata.get("tags", []))


# --------------------------------------------------------------------------------- the copies


@pytest.mark.parametrize("path", CHAPTERS, ids=IDS)
def test_student_copy_shows_no_solution_text(path: Path, copies: Path) -> None:
    chapter = nbformat.read(path, as_version=4)
    student_file = copies / "student" / path.name
    student = nbformat.read(student_file, as_version=4)
    regions = region_texts(chapter)
    assert regions, f"{path.name} has no solution regions"
    # A solution line may stay only where the chapter shows it outside every solution too (an
    # import, a line of the chapter's own code); every region as a whole must be gone.
    outside = []
    for cell in chapter.cells:
        lines = source(cell).splitlines()
        spans = solution_regions(source(cell)) if cell.cell_type == "code" else []
        inside = {n for begin, end in spans for n in range(begin, end + 1)}
        outside += [line for n, line in enumerate(lines) if n not in inside]
    outside_text = "\n".join(outside)
    shown = "\n".join(source(cell) for cell in student.cells) + nbformat.writes(student)
    for region in regions:
        assert region.strip() and region not in shown
        for line in region.splitlines():
            line = line.strip()
            if len(line) >= 8 and line not in outside_text:
                assert line not in shown, f"{path.name}: solution line {line!r} in the student copy"
    assert BEGIN not in shown and END not in shown


@pytest.mark.parametrize("path", CHAPTERS, ids=IDS)
def test_student_copy_has_no_outputs_and_keeps_the_checks(path: Path, copies: Path) -> None:
    chapter = nbformat.read(path, as_version=4)
    student = nbformat.read(copies / "student" / path.name, as_version=4)
    assert len(student.cells) == len(chapter.cells)
    for ours, theirs in zip(chapter.cells, student.cells):
        if theirs.cell_type == "code":
            assert theirs.outputs == [] and theirs.execution_count is None
        if BEGIN not in source(ours):
            assert source(ours) == source(theirs), "only solution cells change"
    for number, function, _ in function_exercises(chapter):
        assert f'raise NotImplementedError("exercise {number}: implement {function}")' in (
            "".join(source(cell) for cell in student.cells)
        )


def test_instructor_copies_are_the_chapters(copies: Path) -> None:
    for path in CHAPTERS:
        instructor = nbformat.read(copies / "instructor" / path.name, as_version=4)
        assert instructor == nbformat.read(path, as_version=4)


def test_student_notebook_leaves_its_input_alone() -> None:
    chapter = nbformat.read(CHAPTERS[0], as_version=4)
    before = nbformat.writes(chapter)
    student_notebook(chapter)
    assert nbformat.writes(chapter) == before


@pytest.mark.slow
def test_student_copies_run_in_quick_mode_and_stop_only_at_the_stubs(
    copies: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every cell runs (errors allowed); the only errors are the stubs' NotImplementedError,
    one per exercise, so nothing after an exercise depends on the student's solution."""
    from nbclient import NotebookClient

    monkeypatch.setenv("MAE_TUTORIAL_QUICK", "1")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    seconds = {}
    for path in CHAPTERS:
        student_file = copies / "student" / path.name
        notebook = nbformat.read(student_file, as_version=4)
        start = time.perf_counter()
        NotebookClient(
            notebook,
            timeout=300,
            kernel_name="python3",
            allow_errors=True,
            resources={"metadata": {"path": str(student_file.parent)}},
        ).execute()
        seconds[path.name] = time.perf_counter() - start
        errors = [
            (source(cell).splitlines()[0], output)
            for cell in notebook.cells
            if cell.cell_type == "code"
            for output in cell.outputs
            if output.output_type == "error"
        ]
        wrong = [
            (first, o.ename, o.evalue) for first, o in errors if o.ename != "NotImplementedError"
        ]
        assert not wrong, f"{path.name}: errors other than the stubs': {wrong}"
        chapter = nbformat.read(path, as_version=4)
        exercises = sorted({m.group(0) for m in EXERCISE.finditer(nbformat.writes(chapter))})
        stopped = sorted({o.evalue.split(":")[0] for _, o in errors})
        expected = sorted(f"exercise {m[11:-1].strip()}" for m in exercises)
        assert stopped == expected, f"{path.name}: stubs raised for {stopped}, expected {expected}"
    print("quick-mode seconds per student copy:", {k: round(v) for k, v in seconds.items()})


# ------------------------------------------------------------------------ the command line


def test_help_explains_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "NotImplementedError" in text and "--out" in text and "instructor" in text


def test_main_writes_both_copies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(CHAPTERS[0]), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "student" / CHAPTERS[0].name).is_file()
    assert (tmp_path / "instructor" / CHAPTERS[0].name).is_file()
    assert "wrote 1 student copies" in capsys.readouterr().out


def test_main_refuses_to_write_into_the_chapters(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([str(CHAPTERS[0]), "--out", str(ROOT / "notebooks" / "copies")])
    assert exit_.value.code == 2
    assert "refusing" in capsys.readouterr().err
    assert not (ROOT / "notebooks" / "copies").exists()


def test_module_runs_from_the_command_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mae_tutorial.classroom", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and "student" in result.stdout


# --------------------------------------------------------------------------------- nbgrader


@pytest.mark.slow
def test_nbgrader_generates_a_student_version(tmp_path: Path, copies: Path) -> None:
    pytest.importorskip("nbgrader")
    nbgrader = Path(sys.executable).parent / "nbgrader"
    chapter = next(path for path in CHAPTERS if path.name.startswith("06_"))
    source_dir = tmp_path / "source" / "loss"
    source_dir.mkdir(parents=True)
    shutil.copy(copies / "instructor" / chapter.name, source_dir / chapter.name)
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter"), "HOME": str(tmp_path)}
    result = subprocess.run(
        [
            str(nbgrader),
            "generate_assignment",
            "loss",
            "--force",
            "--no-db",
            "--CourseDirectory.root=.",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    released = nbformat.read(tmp_path / "release" / "loss" / chapter.name, as_version=4)
    text = nbformat.writes(released)
    assert BEGIN not in text
    for region in region_texts(nbformat.read(chapter, as_version=4)):
        assert region not in text
    assert "raise NotImplementedError()" in text
    assert "check_masked_mse_loss(my_masked_mse_loss)" in text
