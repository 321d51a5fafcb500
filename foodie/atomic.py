"""Every output is written under a temporary name beside its destination and renamed into place only when complete,
so a failure never leaves half an output behind."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, *, is_dir: bool = False) -> Iterator[Path]:
    """A temporary path beside ``dest``, renamed onto it on success (an existing folder is replaced only once the
    new one is complete); on an exception it is removed and ``dest`` left as it was."""
    dest = Path(dest)
    if is_dir and dest.is_symlink():  # replace the folder the link points at, not the link
        dest = dest.resolve()
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(dest)
    prefix = f".{dest.name}.tmp-{os.getpid()}-"
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=dest.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=dest.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        if is_dir and dest.exists():
            os.replace(dest, old)
        if not is_dir:
            os.chmod(tmp, 0o644)  # mkstemp's 0o600 would hide the output from other users
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        _remove(tmp)
        raise


def remove_stale_staging(dest: str | os.PathLike) -> list[Path]:
    """Delete the staging copies (``.NAME.tmp-PID-*``, ``.NAME.old-PID``) of ``dest`` that a killed run left
    behind: those whose process is gone. A live writer's staging copy is left alone."""
    dest = Path(dest)
    pattern = re.compile(rf"\.{re.escape(dest.name)}\.(?:tmp|old)-(\d+)(?:-.*)?")
    stale = [p for p in (dest.parent.iterdir() if dest.parent.is_dir() else ())
             if (m := pattern.fullmatch(p.name)) and not _alive(int(m[1]))]
    for p in stale:
        _remove(p)
    return stale


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        pass
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def write_text(dest: str | os.PathLike, text: str) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(dest: str | os.PathLike, obj, *, indent: int | None = 2) -> None:
    write_text(dest, json.dumps(obj, ensure_ascii=False, indent=indent) + "\n")
