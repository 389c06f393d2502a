"""The command blocks of the repository's READMEs, and the folder each one runs from.

A command block is a fenced block tagged ``bash``, ``sh``, ``shell`` or ``console`` (in a ``console`` block only
the lines that start with ``$`` are commands, the others are output), or an indented code block (four spaces
after a blank line; ``tools/monailabel/README.md`` writes its commands so). An untagged fenced block is output,
never run: :func:`looks_like_commands` lets a test refuse one that holds commands.

The folder a block runs from is a ``<!-- run from: <folder> -->`` comment on the line before the block (the
folder relative to the repository root, ``.`` for the root); without one, a bundle's ``docs/README.md`` runs
from its bundle folder and every other README from the repository root. :func:`prose_folder` reads what the
paragraph before the block says ("from the repository root", "from this folder"), so that a test can check
the comment and the prose agree.

Example::

    blocks = collect(Path("."))
    blocks[0].readme, blocks[0].line, blocks[0].run_from   # ('README.md', 3, '.')
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["COMMAND_TAGS", "Block", "collect", "readmes", "parse", "looks_like_commands", "prose_folder"]

#: the fence tags whose blocks hold commands
COMMAND_TAGS = ("bash", "sh", "shell", "console")
#: where the READMEs are, as git pathspecs
README_GLOBS = ("README.md", "bundles/*/docs/README.md", "families/README.md", "studies/README.md", "tools/**/README.md",
                "docs/*.md")

_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<tag>[\w+-]*)")
_RUN_FROM = re.compile(r"^\s*<!--\s*run from:\s*(?P<folder>\S+)\s*-->\s*$")
_LIST_ITEM = re.compile(r"^\s*([-*+]|\d+[.)])\s")
_COMMAND_WORDS = re.compile(r"^\s*(\$ )?(python3?|pip|cd|torchrun|bash|sh|export|mkdir|cp|curl|mlflow|git|\./)\b")


@dataclass(frozen=True)
class Block:
    """One code block of a README: where it is, what it holds and the folder it runs from."""

    readme: str  #: the README's path relative to the repository root
    line: int  #: the line of the opening fence (or of an indented block's first line), from 1
    tag: str  #: the fence's tag ("" untagged, "indented" for an indented code block)
    text: str  #: the block's content, dedented; for ``console`` only the commands
    run_from: str  #: the folder it runs from, relative to the repository root
    annotated: bool  #: whether a ``run from`` comment names that folder
    prose: str | None  #: the folder the paragraph before the block names, if it names one

    @property
    def id(self) -> str:
        return f"{self.readme}:{self.line}"

    @property
    def is_command(self) -> bool:
        return self.tag in COMMAND_TAGS or self.tag == "indented"

    @property
    def first_command(self) -> str:
        return next((s.strip() for s in self.text.splitlines() if s.strip() and not s.lstrip().startswith("#")), "")


def readmes(root: Path) -> list[str]:
    """The READMEs git knows of (tracked, or new and not ignored), relative to ``root``."""
    out = subprocess.run(["git", "-C", str(root), "ls-files", "-co", "--exclude-standard", "--", *README_GLOBS],
                         capture_output=True, text=True, check=True).stdout
    return sorted({p for p in out.splitlines() if (root / p).is_file()})


def collect(root: Path) -> list[Block]:
    """Every code block of every README under ``root``, in README then document order."""
    return [block for readme in readmes(root) for block in parse(root, readme)]


def _home(readme: str) -> str:
    """The default folder of a README's blocks: the bundle for a bundle's docs, else the repository root."""
    parts = Path(readme).parts
    return "/".join(parts[:2]) if len(parts) == 4 and parts[0] == "bundles" and parts[2] == "docs" else "."


def _dedent(lines: list[str], indent: int) -> str:
    return "\n".join(line[indent:] if line[:indent].strip() == "" else line.lstrip() for line in lines)


def parse(root: Path, readme: str) -> list[Block]:
    """The code blocks of one README (``readme`` relative to ``root``)."""
    lines = (root / readme).read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        start = _FENCE.match(lines[index])
        if start:
            fence, indent = start["fence"], len(start["indent"])
            end = index + 1
            while end < len(lines) and not lines[end].strip().startswith(fence[:3]):
                end += 1
            body = lines[index + 1 : end]
            tag = start["tag"].lower()
            if tag == "console":
                body = [line.strip()[2:] for line in body if line.strip().startswith("$ ")]
                indent = 0
            blocks.append(_block(readme, lines, index, tag, _dedent(body, indent)))
            index = end + 1
        elif _indented_start(lines, index):
            end = index
            while end < len(lines) and (lines[end].startswith("    ") or not lines[end].strip()):
                end += 1
            while not lines[end - 1].strip():
                end -= 1
            blocks.append(_block(readme, lines, index, "indented", _dedent(lines[index:end], 4)))
            index = end
        else:
            index += 1
    return blocks


def _indented_start(lines: list[str], index: int) -> bool:
    """An indented code block starts here: four spaces after a blank line that follows plain text (not a list)."""
    if not lines[index].startswith("    ") or not lines[index].strip() or index < 2 or lines[index - 1].strip():
        return False
    before = next((line for line in reversed(lines[:index]) if line.strip()), "")
    return not before.startswith(" ") and not _LIST_ITEM.match(before)


def _block(readme: str, lines: list[str], index: int, tag: str, text: str) -> Block:
    above = next((line for line in reversed(lines[:index]) if line.strip()), "")
    comment = _RUN_FROM.match(above)
    run_from = comment["folder"].rstrip("/") if comment else _home(readme)
    return Block(readme, index + 1, tag, text, run_from, bool(comment), prose_folder(readme, lines, index))


def prose_folder(readme: str, lines: list[str], index: int) -> str | None:
    """The folder the paragraph just before line ``index`` names: its last "from the repository root" (``.``)
    or "from this folder" (the README's bundle), or None."""
    paragraph: list[str] = []
    for line in reversed(lines[:index]):
        if _RUN_FROM.match(line):
            continue
        if not line.strip() or _FENCE.match(line):
            if paragraph:
                break
            continue
        paragraph.insert(0, line)
    text = " ".join(paragraph).lower()
    found = [(m.start(), ".") for m in re.finditer(r"from the repository root", text)]
    found += [(m.start(), _home(readme)) for m in re.finditer(r"from this (bundle's )?folder", text)]
    return max(found)[1] if found else None


def looks_like_commands(text: str) -> bool:
    """Whether a block's first line reads as a shell command (for untagged blocks, which are never run)."""
    first = next((line for line in text.splitlines() if line.strip()), "")
    return bool(_COMMAND_WORDS.match(first))
