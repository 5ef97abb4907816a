"""Sphinx extension: leave the exporter's `#| default_exp <module>` cells out of the book.

A chapter names its default module in a code cell that holds nothing but `#| default_exp patches`
(nbdev's convention; `python -m mae_tutorial.export` reads it). The line means something to the
exporter and nothing to a reader of the web page, so the rendered chapter drops such cells. The
notebook itself keeps them (Colab and Jupyter show them), and export cells, whose first line is
`#| export` and whose code is the package's, stay on the page: the chapters' text explains them.
"""

from __future__ import annotations

import re
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx

# A cell whose whole source is one `#| default_exp <module>` line (blank lines around it allowed).
DEFAULT_EXP = re.compile(r"\A\s*#\|\s*default_exp\s+[\w.]+\s*\Z")


def is_default_exp_cell(node: nodes.Node) -> bool:
    """Whether `node` is a myst-nb code cell holding only a `#| default_exp` line."""
    if not isinstance(node, nodes.container) or node.get("nb_element") != "cell_code":
        return False
    sources = [
        child
        for child in node.children
        if isinstance(child, nodes.container) and child.get("nb_element") == "cell_code_source"
    ]
    return len(sources) == 1 and bool(DEFAULT_EXP.match(sources[0].astext()))


def drop_default_exp_cells(app: Sphinx, doctree: nodes.document) -> None:
    for node in list(doctree.findall(is_default_exp_cell)):
        node.parent.remove(node)


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("doctree-read", drop_default_exp_cells)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
