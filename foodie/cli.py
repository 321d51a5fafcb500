"""What every tool's main shares (``sys.exit(cli.run(main))``, ``cli.ArgumentParser``): an OS error becomes one line
naming the path and the fix (exit 2), and argument errors never echo a secret (``--token hf_...`` shows as ``***``).
``foodie STAGE ARGS`` (the console script, ``main`` below) runs ``python <the stage's file> ARGS``.
"""
from __future__ import annotations

import argparse
import errno
import importlib.util
import os
import re
import sys
from typing import Callable, Sequence

from foodie.paths import REPO_ROOT

EXIT_BAD_INPUT = 2
STAGES = {  # `foodie STAGE`: the checkout's entry point it runs, in the order of a run
    "tiny-model": "tools/make_tiny_model.py", "demo-data": "tools/make_demo_data.py",
    "photos": "tools/photos_to_foodieqa.py", "process": "tools/process_food.py", "train": "tools/train.py",
    "convert": "tools/convert_to_official.py", "eval": "tools/eval_food.py", "demo": "demo/app.py",
    "publish": "tools/publish.py", "quickstart": "tools/quickstart.py", "explain": "docs/examples/explain_image.py",
    "walkthrough": "docs/examples/walkthrough_shapes.py", "figures": "docs/examples/make_figures.py",
}
SECRET_FLAG = re.compile(r"^--?[\w-]*(token|secret|password|passwd|api[-_]?key|auth)[\w-]*$", re.IGNORECASE)
SECRET_VALUE = re.compile(r"\b(hf_[A-Za-z0-9]{16,}|ms-[A-Za-z0-9-]{16,})\b")
SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "MODELSCOPE_API_TOKEN")
FIXES = {  # what to do, after the system's own words (e.g. "Read-only file system")
    errno.EROFS: "choose an output folder on a writable disk",
    **dict.fromkeys((errno.ENOSPC, errno.EDQUOT), "free space there or choose an output folder on another disk"),
    errno.ENOTDIR: "a part of this path is a file, not a folder: choose another path or move that file",
    errno.EISDIR: "a folder is where a file belongs: choose a file name",
    errno.EEXIST: "choose another path or remove it",
    **dict.fromkeys((errno.EACCES, errno.EPERM), "choose a path you may use, or fix its permissions"),
    errno.ENOENT: "check the path",
    errno.ENAMETOOLONG: "choose a shorter path",
    errno.ELOOP: "fix the symbolic link",
    errno.EIO: "the disk or file is damaged: check it or use another copy",
}


def redact(text: str, argv: Sequence[str] | None = None) -> str:
    """``text`` without the secrets of a command line: values of --token-like options, hub-token-shaped strings
    and the hub tokens in the environment."""
    argv = list(sys.argv[1:] if argv is None else argv)
    secrets = [v for v in (os.environ.get(k, "").strip() for k in SECRET_ENV) if len(v) >= 8]
    for i, arg in enumerate(argv):
        flag, eq, value = arg.partition("=")
        if SECRET_FLAG.match(flag):
            secrets += [value] if eq else argv[i + 1:i + 2]  # --token=VALUE or --token VALUE
        secrets += SECRET_VALUE.findall(arg)
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        text = text.replace(secret, "***")
    return SECRET_VALUE.sub("***", text)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose error messages (unknown or mistyped options) never show a secret value."""

    def parse_known_args(self, args=None, namespace=None):
        self._argv_seen = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str):
        super().error(redact(message, getattr(self, "_argv_seen", None)))


def os_error_line(e: OSError) -> str:
    """``PATH: what is wrong (the fix)`` for an OS error, on one line."""
    paths = [str(p) for p in (e.filename, e.filename2) if p is not None]
    if e.errno is None or not paths:  # raised by a library with its own message (e.g. "Can't load tokenizer")
        return " ".join(str(e).split()) or type(e).__name__
    fix = FIXES.get(e.errno)
    return f"{' -> '.join(paths)}: {e.strerror or e}" + (f" ({fix})" if fix else "")


def run(main: Callable[..., int], argv: Sequence[str] | None = None) -> int:
    try:
        return main(argv) if argv is not None else main()
    except OSError as e:
        print(f"error: {redact(os_error_line(e))}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in STAGES:
        asked = argv[:1] in (["-h"], ["--help"])
        print(("" if asked or not argv else f"foodie: no stage {argv[0]!r}\n") + "usage: foodie STAGE [ARGS ...] "
              "(foodie STAGE --help: its options)\nstages: " + ", ".join(STAGES),
              file=sys.stdout if asked else sys.stderr)
        return 0 if asked else EXIT_BAD_INPUT
    path = REPO_ROOT / STAGES[argv[0]]
    if not path.is_file():
        print(f"error: {path}: not found; `foodie {argv[0]}` runs the tools of a source checkout installed with "
              f"`pip install -e .`", file=sys.stderr)
        return EXIT_BAD_INPUT
    spec = importlib.util.spec_from_file_location(f"foodie_stage_{argv[0].replace('-', '_')}", path)
    tool = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look their module up there
    spec.loader.exec_module(tool)
    sys.argv = [f"foodie {argv[0]}", *argv[1:]]  # usage lines say `foodie train ...`
    return run(tool.main, argv[1:])


if __name__ == "__main__":
    sys.exit(main())
