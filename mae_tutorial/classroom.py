"""Student and instructor copies of the chapters, for handing them out as assignments.

    python -m mae_tutorial.classroom                  # every chapter in notebooks/
    python -m mae_tutorial.classroom notebooks/03_masking.ipynb --out handout

Every exercise's solution sits in a code cell between `### BEGIN SOLUTION` and `### END SOLUTION`
(nbgrader's markers). The student copy of a chapter replaces each such region by a stub that
raises `NotImplementedError("exercise N.k: ...")` at the region's indentation, so a function's
signature stays and its body goes; it clears every output and keeps the check cells
(`check_xxx(my_xxx)` from `mae_tutorial.checks`), which tell a student whether their function is
right. The instructor copy is the chapter unchanged, with the outputs of the book's full run, so
the expected results can be read without running anything. Copies go to a build folder
(`_build/classroom/{student,instructor}` by default), never into `notebooks/`.

The solution cells also carry nbgrader metadata (`solution: true`) and the check cells are
nbgrader test cells worth one point each, so an instructor copy is also a valid nbgrader source
notebook: `nbgrader generate_assignment` makes its own student version from it.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

import nbformat

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
DEFAULT_OUT = Path("_build/classroom")
_EXERCISE = re.compile(r"#\s*Solution to exercise (\d+\.\d+)")
_DEF = re.compile(r"^(\s*)def\s+(\w+)\s*\(")


def _source(cell: dict) -> str:
    text = cell.get("source", "")
    return "".join(text) if isinstance(text, list) else text


def solution_regions(text: str) -> list[tuple[int, int]]:
    """(begin, end) line numbers of every solution region in a cell's source, markers included.

    Raises:
        ValueError: for a marker without its partner, or regions inside each other.
    """
    regions, start = [], None
    for number, line in enumerate(text.splitlines()):
        if line.strip() == BEGIN:
            if start is not None:
                raise ValueError(f"line {number + 1}: {BEGIN} inside another solution region")
            start = number
        elif line.strip() == END:
            if start is None:
                raise ValueError(f"line {number + 1}: {END} without {BEGIN}")
            regions.append((start, number))
            start = None
    if start is not None:
        raise ValueError(f"line {start + 1}: {BEGIN} without {END}")
    return regions


def stub_solutions(text: str) -> str:
    """A cell's source with every solution region replaced by a `NotImplementedError` stub.

    The message names the exercise (from the cell's `# Solution to exercise N.k` line) and the
    function to implement when the region is a function's body.
    """
    lines = text.splitlines()
    exercise = _EXERCISE.search(text)
    label = f"exercise {exercise.group(1)}" if exercise else "exercise"
    out, previous = [], 0
    for begin, end in solution_regions(text):
        out += lines[previous:begin]
        indent = lines[begin][: len(lines[begin]) - len(lines[begin].lstrip())]
        function = next(
            (
                match.group(2)
                for line in reversed(lines[:begin])
                if (match := _DEF.match(line)) and len(match.group(1)) < len(indent)
            ),
            None,
        )
        task = f"implement {function}" if function else "write your solution here"
        out.append(f'{indent}raise NotImplementedError("{label}: {task}")')
        previous = end + 1
    out += lines[previous:]
    result = "\n".join(out)
    return result.replace("# Solution to exercise", "# Your solution to exercise")


def student_notebook(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A student copy: solution regions stubbed out, every output cleared."""
    notebook = copy.deepcopy(notebook)
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        text = _source(cell)
        if solution_regions(text):
            cell.source = stub_solutions(text)
            tags = [tag for tag in cell.metadata.get("tags", []) if tag != "hide-cell"]
            cell.metadata["tags"] = tags  # a student should see the cell to fill in
        cell.outputs = []
        cell.execution_count = None
    notebook.metadata.pop("widgets", None)
    return notebook


def write_copies(notebooks: list[Path], out: Path = DEFAULT_OUT) -> tuple[list[Path], list[Path]]:
    """Write `out/student/NAME` and `out/instructor/NAME` for every notebook.

    Returns:
        The student copies' paths and the instructor copies' paths.

    Raises:
        ValueError: when `out` lies inside a folder of the given notebooks (the chapters
            themselves must never be overwritten), or a notebook has unbalanced markers.
    """
    out = out.resolve()
    for path in notebooks:
        if out == path.parent.resolve() or path.parent.resolve() in out.parents:
            raise ValueError(
                f"refusing to write copies into {out}, inside the chapters' folder "
                f"{path.parent}; pass another --out"
            )
    students, instructors = [], []
    for path in notebooks:
        notebook = nbformat.read(path, as_version=4)
        try:
            student = student_notebook(notebook)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err
        for kind, copy_, paths in (
            ("student", student, students),
            ("instructor", notebook, instructors),
        ):
            target = out / kind / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(copy_, target)
            paths.append(target)
    return students, instructors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mae_tutorial.classroom",
        description=(
            "Write student and instructor copies of the chapters. A student copy replaces every "
            f"solution region ({BEGIN} ... {END}) by a stub raising NotImplementedError, clears "
            "all outputs and keeps the check cells that tell students whether their code is "
            "right. An instructor copy is the chapter unchanged, with the outputs of the book's "
            "full run; it is also a valid nbgrader source notebook."
        ),
        epilog=(
            "Example: python -m mae_tutorial.classroom notebooks/03_masking.ipynb --out handout "
            "writes handout/student/03_masking.ipynb and handout/instructor/03_masking.ipynb."
        ),
    )
    parser.add_argument(
        "notebooks",
        nargs="*",
        type=Path,
        help="chapters to copy (default: every notebooks/NN_*.ipynb under the current folder)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"folder to write student/ and instructor/ into (default: {DEFAULT_OUT})",
    )
    args = parser.parse_args(argv)
    notebooks = args.notebooks or sorted(Path("notebooks").glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        parser.error("no chapters given and none found in ./notebooks")
    missing = [str(path) for path in notebooks if not path.is_file()]
    if missing:
        parser.error(f"no such notebook: {', '.join(missing)}")
    try:
        students, _ = write_copies(notebooks, args.out)
    except ValueError as err:
        parser.error(str(err))
    for path in students:
        stubs = _source_count(path)
        print(f"{path.name}: {stubs} exercise stubs")
    print(f"wrote {len(students)} student copies to {args.out / 'student'}")
    print(f"wrote {len(students)} instructor copies to {args.out / 'instructor'}")
    return 0


def _source_count(path: Path) -> int:
    notebook = nbformat.read(path, as_version=4)
    return sum(_source(cell).count("raise NotImplementedError(") for cell in notebook.cells)


if __name__ == "__main__":
    sys.exit(main())
