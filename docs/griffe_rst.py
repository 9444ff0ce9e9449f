"""A griffe extension for the API reference: ragpress's docstrings are reStructuredText-flavoured
prose (Sphinx roles, ``>>>`` examples, ``::`` literal blocks); mkdocstrings renders Markdown.

* ``:class:`~a.b.C``` / ``:func:`f``` / ... -> `` `C` `` / `` `f` `` (plain code: a role may name an
  object the reference does not render, and a dangling cross-reference would fail the strict build);
* a run of ``>>>`` / ``...`` lines and their output -> a ``pycon`` fence (Markdown would read
  ``>>>`` as nested block quotes);
* a paragraph ending in ``::`` -> ``:`` (the indented block after it is already Markdown code).
"""

from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj|ref|const):`~?([^`]+)`")


def _role(m: re.Match) -> str:
    target = m.group(1)
    if "<" in target and target.endswith(">"):  # :ref:`title <target>`
        return f"`{target.split('<')[0].strip()}`"
    name = target.rsplit(".", 1)[-1] if m.group(0).count("~") else target
    return f"`{name}`"


def rst_to_markdown(text: str) -> str:
    text = ROLE.sub(_role, text)
    out: list[str] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.lstrip()
        if stripped.startswith(">>>"):
            indent = line[: len(line) - len(stripped)]
            block = []
            while i < len(lines) and lines[i].strip() and lines[i].startswith(indent):
                block.append(lines[i][len(indent):])
                i += 1
            out += [f"{indent}```pycon", *(indent + b for b in block), f"{indent}```"]
            continue
        if line.rstrip().endswith("::") and not stripped.startswith(("-", "*")):
            line = line.rstrip()[:-1]
        out.append(line)
        i += 1
    return "\n".join(out)


class RstToMarkdown(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:  # noqa: D102
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)
