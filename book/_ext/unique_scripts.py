"""Sphinx extension: drop repeated inline scripts from each page's <head>.

With Jupyter Book 1.0.4 and Sphinx 7.4, the inline scripts that sphinx-thebe and
sphinx-togglebutton add while the documents are read reach each page twice. The repeated
`const THEBE_JS_URL = ...` is a JavaScript SyntaxError in every browser console, which the
built book's test (tests/test_book_html.py) rightly reports. Sphinx keeps both because one copy
has the file name None and the other "". Keeping the first copy of each script is exactly what the
page was meant to contain.
"""

from __future__ import annotations

from typing import Any

from sphinx.application import Sphinx


def drop_repeated_scripts(
    app: Sphinx, pagename: str, templatename: str, context: dict[str, Any], doctree: Any
) -> None:
    scripts = context.get("script_files")
    if not isinstance(scripts, list):
        return
    seen, unique = set(), []
    for script in scripts:
        # The two copies differ only in an empty file name: None in one, "" in the other.
        attributes = tuple(sorted(getattr(script, "attributes", {}).items()))
        key = (getattr(script, "filename", None) or "", attributes)
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("html-page-context", drop_repeated_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
