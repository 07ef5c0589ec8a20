#!/usr/bin/env python3
"""Fails when a Markdown file of the repository links, by a relative link, to a file that does not
exist or to a heading anchor that its target does not have.

Checks inline links and images, `[text](target)` and `![alt](target)`, outside fenced code blocks
and inline code. Absolute URLs (`https:`, `mailto:` …) are not followed. Anchors are computed as
GitHub computes them: the heading's text in lower case, without punctuation (hyphens and
underscores kept), spaces made hyphens, `-1`, `-2` … added to repeats.

Usage: scripts/check-doc-links.py [ROOT]   (default: the repository root). Exit status 1 with one
line per broken link, `file:line: target: why`; 0 when every link resolves.
"""

import os
import re
import sys
from pathlib import Path

SKIP_DIRS = {".git", "target", "node_modules", "build", "dist"}
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_CODE = re.compile(r"(`+).*?\1")
# [text](target) or ![alt](target "title"); text may hold one level of brackets, the target may be
# written <like this>.
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def markdown_files(root: Path):
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in SKIP_DIRS)
        for name in sorted(files):
            if name.endswith(".md"):
                yield Path(directory) / name


def prose_lines(text: str):
    """(line number, line) for every line outside fenced code blocks."""
    fence = None
    for number, line in enumerate(text.splitlines(), start=1):
        opening = FENCE.match(line)
        if fence is None and opening:
            fence = opening.group(1)
        elif fence is not None and line.strip().startswith(fence):
            fence = None
        elif fence is None:
            yield number, line


def anchor(heading: str) -> str:
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = text.replace("`", "").lower()
    return "".join(c for c in text if c.isalnum() or c in " -_").replace(" ", "-")


def anchors_of(path: Path, cache: dict) -> set:
    if path not in cache:
        anchors, repeats = set(), {}
        for _, line in prose_lines(path.read_text(encoding="utf-8")):
            match = HEADING.match(line)
            if match:
                base = anchor(match.group(2))
                count = repeats.get(base, 0)
                repeats[base] = count + 1
                anchors.add(f"{base}-{count}" if count else base)
        cache[path] = anchors
    return cache[path]


def broken_links(root: Path):
    cache: dict = {}
    for source in markdown_files(root):
        for number, line in prose_lines(source.read_text(encoding="utf-8")):
            for match in LINK.finditer(INLINE_CODE.sub("", line)):
                target = match.group(1).strip("<>")
                if SCHEME.match(target):
                    continue
                file_part, _, fragment = target.partition("#")
                resolved = (source.parent / file_part).resolve() if file_part else source
                where = f"{source.relative_to(root)}:{number}: {target}"
                if not resolved.exists():
                    yield f"{where}: no such file"
                elif fragment and resolved.suffix == ".md" and fragment not in anchors_of(resolved, cache):
                    yield f"{where}: {resolved.relative_to(root)} has no heading #{fragment}"


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent).resolve()
    problems = list(broken_links(root))
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{len(problems)} broken relative link(s) in the Markdown files", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
