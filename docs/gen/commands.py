"""The shell commands of the README and the guides, as a reader would paste them.

Every fenced block of these pages names its language; ``bash`` blocks are commands, run from the
repository root by ``tests/test_docs_commands.py`` on small data. An HTML comment on the line
before a block says more about it (it is invisible on the rendered page):

- ``<!-- commands: skip (why) -->``: not run, for the reason given (a server that runs until
  stopped, a download, the set-up commands themselves);
- ``<!-- commands: writes PATH ... -->``: run, and afterwards each PATH (relative to the
  repository root) must exist.

``python docs/gen/commands.py`` lists every block with what the test does with it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# The pages whose commands must run as pasted, in the order the test runs them: later pages may use
# what earlier ones wrote (the Caffe page converts the models the filters, evolution and transfer
# guides read). Pages that do not exist yet (other engineers' pages) are left out until they do.
PAGES = [
    "README.md",
    "docs/index.md",
    "docs/getting-started.md",
    "docs/guides/models.md",
    "docs/guides/caffe.md",
    "docs/guides/deconv.md",
    "docs/guides/top.md",
    "docs/guides/filters.md",
    "docs/guides/occlusion.md",
    "docs/guides/invariance.md",
    "docs/guides/correspondence.md",
    "docs/guides/evolution.md",
    "docs/guides/transfer.md",
    "docs/explorer.md",
    "docs/attributions.md",
    "docs/imagenet.md",
]
SHELL = "bash"
FENCE = re.compile(r"^(`{3,}|~{3,})\s*([\w+-]*)")
MARKER = re.compile(r"^<!--\s*commands:\s*(skip|writes)\b(.*?)-->\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced block: where it is, its language and text, and what its marker says."""

    page: str
    line: int  # 1-based line of the opening fence
    language: str
    text: str
    skip: str | None = None  # the reason, when the block is not run
    writes: tuple[str, ...] = ()

    @property
    def runs(self) -> bool:
        return self.language == SHELL and self.skip is None

    def where(self) -> str:
        return f"{self.page}:{self.line}"


def pages(root: Path = ROOT) -> list[str]:
    """The pages of :data:`PAGES` that exist under ``root``."""
    return [page for page in PAGES if (root / page).is_file()]


def blocks(page: str, root: Path = ROOT) -> list[Block]:
    """Every fenced block of ``page`` with the marker on the line before it, if any; a marker that
    is not directly before a block, or a skip without its reason, is an error."""
    lines = (root / page).read_text(encoding="utf-8").split("\n")
    found: list[Block] = []
    i = 0
    while i < len(lines):
        marker = MARKER.match(lines[i].strip())
        if marker and not (i + 1 < len(lines) and FENCE.match(lines[i + 1])):
            raise ValueError(f"{page}:{i + 1}: a commands marker must be the line right before a fenced block")
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence, language = opening.group(1), opening.group(2)
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith(fence[0] * len(fence)) and not lines[j].strip(fence[0]).strip()), None)
        if end is None:
            raise ValueError(f"{page}:{i + 1}: a fenced block is not closed")
        before = MARKER.match(lines[i - 1].strip()) if i else None
        skip, writes = None, ()
        if before and before.group(1) == "skip":
            skip = before.group(2).strip().strip("()").strip()
            if not skip:
                raise ValueError(f"{page}:{i}: a skipped block must say why: <!-- commands: skip (reason) -->")
        elif before:
            writes = tuple(before.group(2).split())
        found.append(Block(page, i + 1, language, "\n".join(lines[i + 1:end]), skip, writes))
        i = end + 1
    return found


def main() -> None:
    for page in pages():
        for block in blocks(page):
            what = f"skip ({block.skip})" if block.skip else ("run" if block.runs else f"not a command ({block.language or 'no language'})")
            print(f"{block.where():40} {what}" + (f"; writes {' '.join(block.writes)}" if block.writes else ""))


if __name__ == "__main__":
    main()
