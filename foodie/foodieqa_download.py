"""FoodieQA as users download it (``hf download lyan62/FoodieQA --repo-type dataset --local-dir data/FoodieQA``):
the question files and images come inside ``data/FoodieQA/FoodieQA.zip``. ``locate_data_root`` finds the folder with
the question files: the one pointed at, or the one below it the zip unpacked into. ``unpack=True`` first unpacks a
packed zip, safely: no member with an absolute name, ``..``, a link, a device or a name used twice; all of it written
to a temporary folder and moved in when complete.
"""
from __future__ import annotations

import os
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from foodie.foodieqa import question_file
from foodie.tasks import TASKS

ZIP_NAME = "FoodieQA.zip"
MAX_UNPACKED_BYTES = 20 * 1024 ** 3  # FoodieQA is well under 1 GB; a zip declaring more is refused
SKIPPED_MEMBERS = ("__MACOSX/",)  # resource forks that macOS's zip adds


class DownloadError(ValueError):
    """The download cannot be used as it is; the message says what to run."""


def _has_questions(folder: Path) -> bool:
    return any(question_file(folder, t) is not None for t in TASKS)


def _zips(folder: Path) -> list[Path]:  # FoodieQA.zip first
    return sorted((p for p in folder.glob("*.zip") if p.is_file()), key=lambda p: (p.name != ZIP_NAME, p.name))


def locate_data_root(folder: str | os.PathLike, *, unpack: bool = False) -> Path:
    """The FoodieQA folder (with sivqa_tidy.json ...) at or just below ``folder`` (module docstring)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir() or _has_questions(folder):
        return folder  # load_foodieqa names what is wrong with a missing folder
    roots = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and _has_questions(p))
    if len(roots) == 1:
        return roots[0]
    zips = _zips(folder)
    if not roots and zips:
        if not unpack:
            raise DownloadError(f"{folder} holds {zips[0].name}, not yet unpacked: run python tools/process_food.py "
                                f"--data-root {folder} (it unpacks it) or unzip {zips[0]} -d {folder}")
        unpack_zip(zips[0], folder)
        return locate_data_root(folder, unpack=False)
    if len(roots) > 1:
        raise DownloadError(f"{folder}: several folders hold FoodieQA question files "
                            f"({', '.join(p.name for p in roots)}); point --data-root at one of them")
    return folder


def looks_like_photo_folder(folder: str | os.PathLike) -> bool:
    """No question files and no zip, but subfolders: photos for tools/photos_to_foodieqa.py."""
    folder = Path(folder)
    return (folder.is_dir() and not _has_questions(folder) and not _zips(folder)
            and any(p.is_dir() and not p.name.startswith(".") for p in folder.iterdir()))


def _member_problem(info: zipfile.ZipInfo) -> str | None:
    """Why a member may not be unpacked, or None."""
    name = info.filename
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "is a symbolic link"
    if mode and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return "is not a regular file or folder"
    if name.startswith(("/", "\\")) or name[1:2] == ":":
        return "has an absolute path"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "climbs out of the folder ('..')"
    return None  # (zipfile cuts a name at a NUL byte itself)


def unpack_zip(archive: str | os.PathLike, dest: str | os.PathLike) -> list[Path]:
    """Unpack ``archive`` into ``dest`` safely (see the module docstring); returns the top-level paths created.
    Raises DownloadError naming the member and the fix; nothing is left behind on failure."""
    archive, dest = Path(archive), Path(dest).resolve()
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as e:
        raise DownloadError(f"{archive}: not a readable zip ({e}); download it again "
                            f"(hf download lyan62/FoodieQA --repo-type dataset --local-dir {dest})") from None
    with zf:
        members = [m for m in zf.infolist() if not m.filename.startswith(SKIPPED_MEMBERS)]
        seen: set[str] = set()
        for info in members:  # a second member of one name would silently replace the first
            if why := _member_problem(info) or ("appears twice" if info.filename in seen else None):
                raise DownloadError(f"{archive}: member {info.filename!r} {why}; refusing to unpack it. Unpack the "
                                    f"archive by hand after checking it, or download it again")
            seen.add(info.filename)
        total = sum(m.file_size for m in members)
        if total > MAX_UNPACKED_BYTES:
            raise DownloadError(f"{archive}: declares {total / 1024 ** 3:.1f} GiB unpacked (FoodieQA is under 1 GB); "
                                f"refusing to unpack it. Download it again")
        tops = sorted({parts[0] for m in members if (parts := PurePosixPath(m.filename.replace("\\", "/")).parts)})
        clash = [t for t in tops if (dest / t).exists() or (dest / t).is_symlink()]
        if clash:
            raise DownloadError(f"{archive}: unpacking would overwrite {', '.join(str(dest / t) for t in clash)}; "
                                f"move it away or unpack by hand")
        tmp = Path(tempfile.mkdtemp(prefix=f".{archive.stem}.unpack-", dir=dest))
        try:  # every name was checked above, so zipfile's own extraction stays inside tmp
            zf.extractall(tmp, members)
            for t in tops:
                os.replace(tmp / t, dest / t)
        except zipfile.BadZipFile as e:
            raise DownloadError(f"{archive}: corrupt ({e}); download it again") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return [dest / t for t in tops]
