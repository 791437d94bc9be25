"""Griffe extension used by the API pages (mkdocs.yml): render ``>>>`` examples as code.

minidl's docstrings follow the doctest convention: an example is a run of lines starting
with ``>>>`` (continued by ``...``) followed by the expected output, ended by a blank line.
Markdown knows nothing of that (``>>>`` would become a nested block quote and ``[1.0, 2.0]``
a link), so each run is wrapped in a fenced ``pycon`` block before mkdocstrings renders it.
The docstrings themselves are untouched; pytest runs them with ``--doctest-modules``.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_PROMPT = re.compile(r"^(?P<indent>\s*)>>>( |$)")


def fence_doctests(text: str) -> str:
    """Wrap every doctest run of ``text`` in a fenced code block (idempotent on fences)."""
    lines = text.split("\n")
    out: list[str] = []
    i, in_fence = 0, False
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith(("```", "~~~")):
            in_fence = not in_fence
        m = None if in_fence else _PROMPT.match(line)
        if not m:
            out.append(line)
            i += 1
            continue
        indent = m.group("indent")
        block = []
        while i < len(lines) and lines[i].strip():
            block.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        if out and out[-1].strip():
            out.append("")
        out += [indent + "```pycon", *(indent + b for b in block), indent + "```"]
    return "\n".join(out)


class DoctestFences(griffe.Extension):
    """Fence the doctest examples of every loaded object's docstring."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None and ">>>" in obj.docstring.value:
            obj.docstring.value = fence_doctests(obj.docstring.value)

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        # The package's own docstring is not always passed to on_object.
        self.on_object(obj=pkg)
