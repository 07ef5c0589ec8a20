#!/usr/bin/env python3
"""The crate's module graph, from its `crate::` and `super::` paths (use lines and inline paths
alike): prints every arrow (`a -> b`: a names something of b), then fails (exit 1) on an import
circle or on an arrow from transport or application to infrastructure (issue 21: domain <-
application <- transport/infrastructure; wiring only in main.rs). `--modules` groups by top-level
module (application, domain, ...) instead of by file. Tests (`#[cfg(test)] mod tests`) are left out:
they may reach anywhere."""
import re
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PATH = re.compile(r"\b(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)+|::\{)")


def module_of(file: Path) -> list[str]:
    parts = list(file.relative_to(SRC).with_suffix("").parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return parts


def without_tests(text: str) -> str:
    """The file up to its `#[cfg(test)]` module, which every file keeps last."""
    match = re.search(r"^#\[cfg\(test\)\]\s*(pub(\(crate\))?\s+)?mod tests", text, re.M)
    return text[: match.start()] if match else text


def uses(text: str) -> list[list[str]]:
    """Every path the code names, `use` groups spelled out: `use crate::{a::b, c}` is a::b and c."""
    text = re.sub(r"//.*", "", text)
    found = []
    for statement in re.finditer(r"\buse\s+([^;]+);", text):
        found.extend(spell_out(re.sub(r"\s+", "", statement.group(1))))
    # Inline paths (`crate::telemetry::METRICS.x`) outside use statements.
    for match in PATH.finditer(re.sub(r"\buse\s+[^;]+;", "", text)):
        found.append([match.group(1)] + [p for p in match.group(2).split("::") if p and p != "{"])
    return found


def spell_out(tree: str) -> list[list[str]]:
    if "{" not in tree:
        return [tree.split("::")]
    head, rest = tree.split("{", 1)
    body = rest[: rest.rfind("}")]
    prefix = [p for p in head.split("::") if p]
    items, depth, start = [], 0, 0
    for i, ch in enumerate(body + ","):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            if body[start:i]:
                items.append(body[start:i])
            start = i + 1
    return [prefix + sub for item in items for sub in spell_out(item)]


def resolve(path: list[str], here: list[str], modules: set[tuple]) -> tuple | None:
    """The longest known module the path names, or None for an external crate."""
    if path[0] == "crate":
        names = path[1:]
    elif path[0] == "super":
        base = here
        while path and path[0] == "super":
            path, base = path[1:], base[:-1]
        names = base + path
    else:
        return None
    for length in range(len(names), 0, -1):
        if tuple(names[:length]) in modules:
            return tuple(names[:length])
    return None


def graph(by_top: bool) -> dict[str, set[str]]:
    files = sorted(SRC.rglob("*.rs"))
    modules = {tuple(module_of(f)) for f in files}
    arrows: dict[str, set[str]] = {}
    for file in files:
        here = module_of(file)
        if not here:  # lib.rs and main.rs: the map and the wiring
            continue
        for path in uses(without_tests(file.read_text())):
            if path[0] not in ("crate", "super"):
                continue
            target = resolve(path, here, modules)
            if target is None or not target:
                continue
            a, b = (here[:1], list(target[:1])) if by_top else (here, list(target))
            # A module naming its own children, or its parent's re-exports, is not an arrow.
            if a == b or b == a[: len(b)] or a == b[: len(a)]:
                continue
            arrows.setdefault("::".join(a), set()).add("::".join(b))
    return arrows


def circles(arrows: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for next_node in sorted(arrows.get(node, ())):
            if state.get(next_node) == "open":
                found.append(stack[stack.index(next_node):] + [next_node])
            elif next_node not in state:
                visit(next_node)
        stack.pop()
        state[node] = "done"

    for node in sorted(arrows):
        if node not in state:
            visit(node)
    return found


def main() -> int:
    by_top = "--modules" in sys.argv
    arrows = graph(by_top)
    for a in sorted(arrows):
        print(f"{a} -> {', '.join(sorted(arrows[a]))}")
    problems = [" -> ".join(circle) for circle in circles(arrows)]
    problems = [f"circle: {p}" for p in problems]
    for a, targets in arrows.items():
        for b in targets:
            if a.split("::")[0] in ("transport", "application", "domain") and b.startswith("infrastructure"):
                problems.append(f"inward rule broken: {a} -> {b}")
            if a.split("::")[0] == "domain" and not b.startswith("domain"):
                problems.append(f"domain imports nothing else: {a} -> {b}")
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"{sum(map(len, arrows.values()))} arrows, {len(problems)} problems", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
