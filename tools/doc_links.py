"""Check (and re-anchor) the links in our Markdown docs, so links into the code cannot rot silently.

    python tools/doc_links.py            # check docs/*.md and README.md; exit 1 listing every broken link
    python tools/doc_links.py --fix      # also move line anchors that drifted onto the lines they name

Rules checked:
- a relative link or image must point at a file that exists (external http(s) links are not fetched);
- a `#heading` anchor into a Markdown file must match one of its headings (GitHub's slug rule);
- a line-anchored link into the code, ``[`name`](../foodie/x.py#L10-L20)``, must name a symbol in
  backticks, and the lines must hold it:
  * if ``name`` (optionally ``Class.name``; trailing ``()`` ignored) is a function, class, method,
    module constant or ``self.name = ...`` attribute of that Python file, the anchor must span exactly
    its definition (first to last line);
  * otherwise ``name`` is a code snippet that must appear within the anchored lines.
``--fix`` rewrites anchors of the first kind to the definition's current lines, and re-anchors a snippet
to the first line of the file holding it (keeping the span's length) when it is no longer in range.
"""
from __future__ import annotations

import argparse
import ast
import re
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from foodie.atomic import write_text

REPO = Path(__file__).resolve().parent.parent
# [text](target "title"): the text may hold `code spans` (with any brackets) and one level of [nested] brackets,
# never a line break.
LINK = re.compile(r"(!?)\[((?:`[^`\n]*`|[^\[\]`\n]|\[[^\]\n]*\])*)\]\(([^)\s]+)(\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^\s*(```|~~~)")
LINE_ANCHOR = re.compile(r"^L(\d+)(?:-L(\d+))?$")
DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


@dataclass
class Link:
    doc: Path
    line: int  # 1-based line in the doc
    is_image: bool
    text: str
    target: str  # as written
    start: int  # offsets of the target inside the doc text, for --fix
    end: int

    def where(self) -> str:
        return f"{self.doc.relative_to(REPO) if self.doc.is_relative_to(REPO) else self.doc}:{self.line}"


def markdown_docs() -> list[Path]:
    return sorted((REPO / "docs").glob("*.md")) + [REPO / "README.md"]


def outside_code(text: str) -> list[tuple[int, int]]:
    """(start, end) offsets of the parts of a Markdown text that are not fenced code blocks."""
    spans, pos, inside, start = [], 0, False, 0
    for line in text.splitlines(keepends=True):
        if FENCE.match(line):
            if not inside:
                spans.append((start, pos))
            inside = not inside
            start = pos + len(line)
        pos += len(line)
    if not inside:
        spans.append((start, pos))
    return spans


def links_in(doc: Path) -> list[Link]:
    text = doc.read_text(encoding="utf-8")
    found = []
    for a, b in outside_code(text):
        for m in LINK.finditer(text, a, b):
            if text[text.rfind("\n", 0, m.start()) + 1:m.start()].count("`") % 2:
                continue  # inside an inline code span
            found.append(Link(doc, text.count("\n", 0, m.start()) + 1, bool(m.group(1)), m.group(2), m.group(3),
                              m.start(3), m.end(3)))
    return found


def github_slug(heading: str) -> str:
    text = re.sub(r"`|\*|_(?=\W)|(?<=\W)_|\[|\]\([^)]*\)", "", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@lru_cache(maxsize=None)
def heading_slugs(doc: Path) -> frozenset[str]:
    text = doc.read_text(encoding="utf-8")
    slugs, seen = set(), {}
    for a, b in outside_code(text):
        for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text[a:b], re.M):
            slug = github_slug(m.group(1))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            slugs.add(slug if n == 0 else f"{slug}-{n}")
    for m in re.finditer(r"<a\s+(?:name|id)=\"([^\"]+)\"", text):
        slugs.add(m.group(1))
    return frozenset(slugs)


@lru_cache(maxsize=None)
def python_symbols(path: Path, mtime: float) -> dict[str, list[tuple[int, int]]]:
    """Qualified name ('f', 'C', 'C.m', 'C.attr', 'CONST') -> [(first line, last line)] of its definitions."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    table: dict[str, list[tuple[int, int]]] = {}

    def add(name, node):
        table.setdefault(name, []).append((node.lineno, node.end_lineno))

    def walk(body, prefix, cls):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                q = f"{prefix}{node.name}"
                add(q, node)
                if isinstance(node, ast.ClassDef):
                    walk(node.body, q + ".", q)
                elif cls:  # self.x = ... inside methods -> Class.x (first one wins below)
                    for sub in ast.walk(node):
                        if isinstance(sub, (ast.Assign, ast.AnnAssign)):
                            targets = sub.targets if isinstance(sub, ast.Assign) else [sub.target]
                            for t in targets:
                                if (isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name)
                                        and t.value.id == "self" and f"{cls}.{t.attr}" not in table):
                                    add(f"{cls}.{t.attr}", sub)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    if isinstance(t, ast.Name):
                        add(f"{prefix}{t.id}", node)
            elif isinstance(node, (ast.If, ast.Try)):  # e.g. `if TYPE_CHECKING:` / optional imports
                walk(node.body, prefix, cls)

    walk(tree.body, "", None)
    return table


def resolve(path: Path, name: str) -> tuple[int, int] | None | str:
    """The definition span of `name` in a Python file; None if not a symbol there; a message if ambiguous."""
    if path.suffix != ".py" or not DOTTED.match(name):
        return None
    table = python_symbols(path, path.stat().st_mtime)
    hits = sorted({span for q, spans in table.items() if q == name or q.endswith("." + name) for span in spans[:1]})
    if not hits:
        return None
    if len(hits) > 1:
        exact = table.get(name)
        if exact and len(exact) == 1:
            return exact[0]
        return f"`{name}` is defined {len(hits)} times in {path.name} (lines {', '.join(str(a) for a, _ in hits)}): " \
               f"qualify it, e.g. `Class.{name.split('.')[-1]}`"
    return hits[0]


def symbol_of(text: str) -> str | None:
    m = re.search(r"`([^`]+)`", text)
    if not m:
        return None
    code = m.group(1).strip()
    code = re.sub(r"^(def|class)\s+", "", code)
    return code[:-2] if code.endswith("()") else code


def contains(lines: list[str], a: int, b: int, code: str) -> bool:
    chunk = "\n".join(lines[a - 1:b])
    if DOTTED.match(code):
        return re.search(rf"(?<![\w.]){re.escape(code.split('.')[-1])}\b", chunk) is not None or code in chunk
    return code in chunk


def check_link(link: Link) -> tuple[str | None, str | None]:
    """(problem or None, corrected target or None)."""
    target = link.target
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
        return None, None
    path_part, _, anchor = target.partition("#")
    path = (link.doc.parent / path_part).resolve() if path_part else link.doc
    if not path.exists():
        return f"{link.where()}: {'image' if link.is_image else 'link'} target {path_part} does not exist", None
    if not anchor:
        return None, None
    m = LINE_ANCHOR.match(anchor)
    if path.suffix == ".md" and not m:
        if anchor not in heading_slugs(path):
            return f"{link.where()}: no heading #{anchor} in {path.name}", None
        return None, None
    if not m:
        return None, None  # an anchor into another kind of file: nothing we can check
    a, b = int(m.group(1)), int(m.group(2) or m.group(1))
    code = symbol_of(link.text)
    if not code:
        return f"{link.where()}: line-anchored link [{link.text}] must name its symbol in `backticks`", None
    lines = path.read_text(encoding="utf-8").splitlines()
    span = resolve(path, code)
    if isinstance(span, str):
        return f"{link.where()}: {span}", None
    if span is not None:
        if (a, b) == span:
            return None, None
        fixed = f"{path_part}#L{span[0]}" + (f"-L{span[1]}" if span[1] != span[0] else "")
        return (f"{link.where()}: `{code}` is defined at lines {span[0]}-{span[1]} of {path_part}, "
                f"the link says L{a}-L{b}"), fixed
    if b < a or b > len(lines):
        problem = f"{link.where()}: lines L{a}-L{b} outside {path_part} ({len(lines)} lines)"
    elif contains(lines, a, b, code):
        return None, None
    else:
        problem = f"{link.where()}: `{code}` is not in lines {a}-{b} of {path_part}"
    for n in range(1, len(lines) + 1):
        if contains(lines, n, n, code):
            end = min(len(lines), n + (b - a))
            return problem, f"{path_part}#L{n}" + (f"-L{end}" if end != n else "")
    return problem + " (nor anywhere in that file)", None


def check(docs: list[Path], fix: bool = False) -> list[str]:
    problems = []
    for doc in docs:
        if not doc.exists():
            continue
        edits = []
        for link in links_in(doc):
            problem, fixed = check_link(link)
            if problem:
                if fix and fixed:
                    edits.append((link.start, link.end, fixed))
                    problem += f"  -> fixed to {fixed}"
                problems.append(problem)
        if edits:
            text = doc.read_text(encoding="utf-8")
            for s, e, new in sorted(edits, reverse=True):
                text = text[:s] + new + text[e:]
            write_text(doc, text)
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("docs", nargs="*", type=Path, help="Markdown files (default: docs/*.md and README.md)")
    ap.add_argument("--fix", action="store_true", help="rewrite drifted line anchors in place")
    args = ap.parse_args(argv)
    docs = [d.resolve() for d in args.docs] or markdown_docs()
    problems = check(docs, fix=args.fix)
    for p in problems:
        print(p)
    unfixed = [p for p in problems if "-> fixed to" not in p]
    print(f"{len(docs)} file(s) checked, {len(problems)} problem(s)" + (f", {len(unfixed)} left" if args.fix else ""))
    return 1 if unfixed else 0


if __name__ == "__main__":
    sys.exit(main())
