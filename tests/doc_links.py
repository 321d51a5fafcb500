"""Check (and re-anchor) the links in our Markdown docs, so links into the code cannot rot silently.

    python tests/doc_links.py [--fix]   # docs/*.md and README.md; exit 1 listing every broken link

A relative link or image must point at a file that exists; a `#heading` anchor must match a heading (GitHub's
slug rule); a line-anchored link into code, ``[`name`](../foodie/x.py#L10-L20)``, names its symbol in backticks:
a function, class, method, constant or ``self.name`` attribute (``Class.name`` allowed, ``()`` ignored) must be
spanned exactly, any other snippet must lie within the lines. ``--fix`` moves a symbol's anchor onto its
definition, and a snippet's onto the first line holding it (keeping the span's length).
"""
from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from foodie import cli
from foodie.atomic import write_text
from foodie.paths import REPO_ROOT as REPO

# [text](target "title"): the text may hold `code spans` (with any brackets) and one level of [nested] brackets,
# never a line break.
LINK = re.compile(r"(!?)\[((?:`[^`\n]*`|[^\[\]`\n]|\[[^\]\n]*\])*)\]\(([^)\s]+)(\s+\"[^\"]*\")?\)")
FENCED = re.compile(r"^[ \t]*(```|~~~).*?(?:^[ \t]*\1|\Z)", re.M | re.S)  # a fenced code block
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


def prose(doc: Path) -> str:
    """The doc's text with its fenced code blocks blanked (offsets and line numbers kept)."""
    return FENCED.sub(lambda m: re.sub(r"[^\n]", " ", m[0]), doc.read_text(encoding="utf-8"))


def links_in(doc: Path) -> list[Link]:
    text, found = prose(doc), []
    for m in LINK.finditer(text):
        if text[text.rfind("\n", 0, m.start()) + 1:m.start()].count("`") % 2:
            continue  # inside an inline code span
        found.append(Link(doc, text.count("\n", 0, m.start()) + 1, bool(m[1]), m[2], m[3], m.start(3), m.end(3)))
    return found


def github_slug(heading: str) -> str:
    text = re.sub(r"`|\*|_(?=\W)|(?<=\W)_|\[|\]\([^)]*\)", "", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@lru_cache(maxsize=None)
def heading_slugs(doc: Path) -> frozenset[str]:
    text, slugs, seen = prose(doc), set(), {}
    for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M):
        slug = github_slug(m[1])
        seen[slug] = seen.get(slug, -1) + 1
        slugs.add(slug if seen[slug] == 0 else f"{slug}-{seen[slug]}")
    return frozenset(slugs | set(re.findall(r"<a\s+(?:name|id)=\"([^\"]+)\"", text)))


@lru_cache(maxsize=None)
def python_symbols(path: Path, mtime: float) -> dict[str, list[tuple[int, int]]]:
    """Qualified name ('f', 'C', 'C.m', 'C.attr', 'CONST') -> [(first line, last line)] of its definitions."""
    table: dict[str, list[tuple[int, int]]] = {}

    def assigned(node) -> list[ast.expr]:
        return node.targets if isinstance(node, ast.Assign) else [node.target]

    def walk(body, prefix, cls):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                table.setdefault(prefix + node.name, []).append((node.lineno, node.end_lineno))
                if isinstance(node, ast.ClassDef):
                    walk(node.body, f"{prefix}{node.name}.", prefix + node.name)
                for sub in ast.walk(node) if cls else ():  # self.x = ... inside methods -> Class.x (first one)
                    for t in assigned(sub) if isinstance(sub, (ast.Assign, ast.AnnAssign)) else ():
                        if isinstance(t, ast.Attribute) and getattr(t.value, "id", None) == "self":
                            table.setdefault(f"{cls}.{t.attr}", [(sub.lineno, sub.end_lineno)])
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                for t in assigned(node):
                    if isinstance(t, ast.Name):
                        table.setdefault(prefix + t.id, []).append((node.lineno, node.end_lineno))
            elif isinstance(node, (ast.If, ast.Try)):  # e.g. `if TYPE_CHECKING:` / optional imports
                walk(node.body, prefix, cls)

    walk(ast.parse(path.read_text(encoding="utf-8")).body, "", None)
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
    return re.sub(r"^(def|class)\s+|\(\)$", "", m[1].strip()) if m else None


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
    m = LINE_ANCHOR.match(anchor)
    if not m:  # none, a heading, or an anchor into another kind of file (nothing to check there)
        bad_heading = anchor and path.suffix == ".md" and anchor not in heading_slugs(path)
        return (f"{link.where()}: no heading #{anchor} in {path.name}" if bad_heading else None), None
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
    ap = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fix", action="store_true", help="rewrite drifted line anchors in place")
    args = ap.parse_args(argv)
    docs = markdown_docs()
    problems = check(docs, fix=args.fix)
    for p in problems:
        print(p)
    unfixed = [p for p in problems if "-> fixed to" not in p]
    print(f"{len(docs)} file(s) checked, {len(problems)} problem(s)" + (f", {len(unfixed)} left" if args.fix else ""))
    return 1 if unfixed else 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
