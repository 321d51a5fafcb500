"""The hostile-user corpus: every tool under bad paths, symlinks, kills, damaged inputs and secrets.

Each case rebuilds one situation on the embedded default (tiny model, small synthetic FoodieQA) and asserts
what a user relies on: a clear error (exit code, the path named, no traceback), nothing deleted, nothing
leaked (no file outside its root served or uploaded, no secret echoed), nothing half-written.
Tools run in-process through their ``main`` (the same code path as the command, minus interpreter start-up)
except where a real process matters: kills (real SIGKILL on real child processes) and the command-line
secret cases. A read-only or full disk cannot be made here without privileges: those cases inject the
OS error (real errno) at the file-system call; every other case is real.
"""
from __future__ import annotations

import errno
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parent.parent
CPU_CONFIG = REPO / "xtuner_configs" / "internvl_v2_tiny_lora_cpu.py"
SECRET = "hf_" + "Zx9" * 10  # a hub-token-shaped secret that must never appear in any output


# --------------------------------------------------------------------------- helpers

_tools: dict[str, object] = {}


def tool(name: str):
    """The module of tools/<name>.py (demo/app.py for "app"), loaded once."""
    if name not in _tools:
        path = REPO / ("demo/app.py" if name == "app" else f"tools/{name}.py")
        spec = importlib.util.spec_from_file_location(f"adversarial_{name}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        _tools[name] = module
    return _tools[name]


@dataclass
class Result:
    code: int
    out: str
    err: str


def call(capsys, name: str, *args) -> Result:
    """Run a tool as ``python tools/<name>.py ARGS`` does (its ``__main__`` block, in this process): the exit
    code, stdout, stderr; an exception escaping the tool is a traceback, as the user would see it."""
    import runpy
    import traceback

    path = REPO / ("demo/app.py" if name == "app" else f"tools/{name}.py")
    capsys.readouterr()
    argv, sys.argv = sys.argv, [str(path), *map(str, args)]
    trace = ""
    try:
        runpy.run_path(str(path), run_name="__main__")
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
        if isinstance(e.code, str):
            trace = e.code + "\n"  # what the interpreter prints for SystemExit("message")
    except Exception:  # noqa: BLE001 - what reaches the user as a traceback
        code, trace = 1, traceback.format_exc()
    finally:
        sys.argv = argv
    out, err = capsys.readouterr()
    return Result(code, out, err + trace)


def clear_error(r: Result, *needles: str, code: int = 2) -> None:
    """Exit ``code``, no traceback, every needle (paths, fixes) in the message."""
    text = r.out + r.err
    assert r.code == code, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    for needle in needles:
        assert needle in text, (needle, text[-3000:])


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def inject_os_error(monkeypatch, prefix: Path, code: int) -> None:
    """Make creating or replacing anything under ``prefix`` fail with the real errno ``code`` (EROFS:
    a read-only disk, ENOSPC: a full one), as the kernel would."""
    import tempfile

    prefix = str(prefix)

    def guard(fn, *path_args):
        def wrapper(*args, **kwargs):
            for i in path_args:
                target = kwargs.get("dir") if i == "dir" else (args[i] if len(args) > i else None)
                if target is not None and str(target).startswith(prefix):
                    raise OSError(code, os.strerror(code), str(target))
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(tempfile, "mkdtemp", guard(tempfile.mkdtemp, "dir"))
    monkeypatch.setattr(tempfile, "mkstemp", guard(tempfile.mkstemp, "dir"))
    monkeypatch.setattr(os, "mkdir", guard(os.mkdir, 0))
    monkeypatch.setattr(os, "replace", guard(os.replace, 1))


@pytest.fixture
def data(small_foodieqa_dir, tmp_path) -> Path:
    """A private copy of the small synthetic FoodieQA (tests may damage it)."""
    return Path(shutil.copytree(small_foodieqa_dir, tmp_path / "foodieqa", symlinks=True))


# =========================================================================== process_food: --out

def test_out_equal_to_or_around_the_data_is_refused_and_nothing_is_deleted(capsys, data, tmp_path):
    """Issue 20 #1: --out equal to the data root, its parent, a folder inside it, or a link to it."""
    before = snapshot(tmp_path)
    link = tmp_path / "link-to-data"
    link.symlink_to(data)
    for out, relation in ((data, "is the input"), (tmp_path, "contains the input"),
                          (data / "images", "is inside the input"), (link, "is the input")):
        r = call(capsys, "process_food", "--data-root", data, "--out", out, "--no-image-check")
        clear_error(r, relation, str(data), "Choose an output folder outside the data")
    link.unlink()
    assert snapshot(tmp_path) == before


def test_folder_with_a_summary_json_is_not_ours(capsys, data, tmp_path):
    """Issue 20 #1: an experiment folder holding a summary.json (any content) is never replaced."""
    exp = tmp_path / "experiment"
    exp.mkdir()
    (exp / "summary.json").write_text('{"format": "foodie-conversion-summary"}')
    (exp / "results.csv").write_text("mine\n")
    before = snapshot(exp)
    r = call(capsys, "process_food", "--data-root", data, "--out", exp, "--no-image-check")
    clear_error(r, str(exp), "not an output of process_food", "choose another --out")
    assert snapshot(exp) == before


def test_own_output_is_replaced_but_not_once_the_user_added_a_file(capsys, data, tmp_path):
    out = tmp_path / "out"
    r = call(capsys, "process_food", "--data-root", data, "--out", out, "--no-image-check")
    assert r.code == 0, r.err
    r = call(capsys, "process_food", "--data-root", data, "--out", out, "--no-image-check", "--seed", "1")
    assert r.code == 0, r.err  # an unchanged earlier output is ours to replace
    assert json.loads((out / "summary.json").read_text())["options"]["seed"] == 1
    (out / "my_notes.md").write_text("keep me")
    (out / "collages").mkdir(exist_ok=True)
    (out / "collages" / "mine.jpg").write_bytes(b"x")
    before = snapshot(out)
    r = call(capsys, "process_food", "--data-root", data, "--out", out, "--no-image-check")
    clear_error(r, str(out), "process_food did not write", "my_notes.md")
    assert snapshot(out) == before


def test_output_of_an_earlier_version_without_marker(capsys, data, tmp_path):
    """An output written before the marker existed is still replaced, if it holds only what process_food writes."""
    from foodie.data_conversion import OUTPUT_MARKER

    out = tmp_path / "out"
    assert call(capsys, "process_food", "--data-root", data, "--out", out, "--no-image-check").code == 0
    (out / OUTPUT_MARKER).unlink()
    assert call(capsys, "process_food", "--data-root", data, "--out", out, "--no-image-check").code == 0
    (out / OUTPUT_MARKER).unlink()
    (out / "images").mkdir()
    (out / "images" / "dish.jpg").write_bytes(b"a photo")
    r = call(capsys, "process_food", "--data-root", data, "--out", out, "--no-image-check")
    clear_error(r, "not an output of process_food")
    assert (out / "images" / "dish.jpg").read_bytes() == b"a photo"


def test_forged_marker_does_not_make_a_folder_ours(capsys, data, tmp_path):
    from foodie.data_conversion import OUTPUT_MARKER

    out = tmp_path / "forged"
    out.mkdir()
    (out / OUTPUT_MARKER).write_text(json.dumps({"format": "foodie-process-food-output", "files": []}))
    (out / "paper.tex").write_text("years of work")
    r = call(capsys, "process_food", "--data-root", data, "--out", out, "--no-image-check")
    clear_error(r, "paper.tex")
    assert (out / "paper.tex").read_text() == "years of work"
    (out / OUTPUT_MARKER).write_text("not json")
    r = call(capsys, "process_food", "--data-root", data, "--out", out, "--no-image-check")
    clear_error(r, "not an output of process_food")


@pytest.mark.parametrize("case", ["out-is-a-file", "parent-is-a-file"])
def test_output_path_through_a_file(capsys, data, tmp_path, case):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("keep")
    out = blocker if case == "out-is-a-file" else blocker / "sub"
    r = call(capsys, "process_food", "--data-root", data, "--out", out, "--no-image-check")
    clear_error(r, str(blocker))
    assert blocker.read_text() == "keep"


@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC], ids=["read-only", "disk-full"])
def test_read_only_or_full_disk_is_one_line(capsys, monkeypatch, data, tmp_path, code):
    out = tmp_path / "disk" / "out"
    out.parent.mkdir()
    inject_os_error(monkeypatch, out.parent, code)
    r = call(capsys, "process_food", "--data-root", data, "--out", out, "--no-image-check")
    clear_error(r, str(out.parent), os.strerror(code))
    assert len(r.err.strip().splitlines()) == 1, r.err
    assert sorted(p.name for p in out.parent.iterdir()) == []  # nothing half-written


def test_zero_training_samples_is_an_error(capsys, data, tmp_path):
    """Issue 20 #6: every item bad and --skip-bad -> exit 2, not an empty train.json that XTuner dies on."""
    for img in (data / "images").rglob("*.jpg"):
        img.write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    r = call(capsys, "process_food", "--data-root", data, "--out", out, "--skip-bad")
    clear_error(r, "0 training samples", "nothing was written")
    assert not out.exists()


def test_stale_staging_of_a_killed_run_is_cleaned(capsys, data, tmp_path):
    """Issue 20 #6: a killed run leaves .NAME.tmp-PID-*; the next run removes it (its process is gone)."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = tmp_path / f".out.tmp-{pid}-abc123"
    (stale / "collages").mkdir(parents=True)
    (stale / "train.json").write_text("[")
    r = call(capsys, "process_food", "--data-root", data, "--out", tmp_path / "out", "--no-image-check")
    assert r.code == 0, r.err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_staging_of_a_live_writer_is_left_alone(tmp_path):
    from foodie.atomic import remove_stale_staging

    live = tmp_path / f".out.tmp-{os.getppid()}-xyz"
    live.mkdir()
    assert remove_stale_staging(tmp_path / "out") == [] and live.is_dir()


# =========================================================================== process_food: inputs

def test_image_symlinked_out_of_the_data_root_is_refused(capsys, data, tmp_path):
    """Issue 20 #3: a photo linking outside the root (e.g. into ~/.ssh) is never read or trained on."""
    private = tmp_path / "private"
    private.mkdir()
    photo = next((data / "images").rglob("*.jpg"))
    shutil.copy(photo, private / "id_rsa.jpg")
    photo.unlink()
    photo.symlink_to(private / "id_rsa.jpg")
    rel = photo.relative_to(data).as_posix()
    r = call(capsys, "process_food", "--data-root", data, "--out", tmp_path / "out")
    clear_error(r, rel, "outside the data root", "copy the image into the folder")
    r = call(capsys, "process_food", "--data-root", data, "--out", tmp_path / "out", "--skip-bad")
    assert r.code == 0, r.err
    train = (tmp_path / "out" / "train.json").read_text()
    assert "private" not in train and rel not in train


def test_symlink_inside_the_root_is_fine(capsys, data, tmp_path):
    photo = next((data / "images").rglob("*.jpg"))
    copy = photo.with_name("copy-" + photo.name)
    photo.rename(copy)
    photo.symlink_to(copy)
    r = call(capsys, "process_food", "--data-root", data, "--out", tmp_path / "out", "--no-image-check")
    assert r.code == 0, r.err


@pytest.mark.parametrize("damage", ["question-file-not-json", "question-file-is-a-folder", "image-truncated",
                                    "data-root-is-a-file"])
def test_damaged_data(capsys, data, tmp_path, damage):
    target = data / "sivqa_tidy.json"
    if damage == "question-file-not-json":
        target.write_text('[{"question": ')
    elif damage == "question-file-is-a-folder":
        target.unlink()
        target.mkdir()
    elif damage == "image-truncated":
        target = next((data / "images").rglob("*.jpg"))
        target.write_bytes(target.read_bytes()[:200])
    else:
        target = tmp_path / "file"
        target.write_text("x")
        data = target
    r = call(capsys, "process_food", "--data-root", data, "--out", tmp_path / "out")
    clear_error(r, target.name)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", ["config-not-json", "tokenizer-files-missing", "tokenizer-json-damaged"])
def test_damaged_tokenizer_folder(capsys, data, tmp_path, tiny_model_dir, damage):
    model = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    if damage == "config-not-json":
        (model / "config.json").write_text("{")
    elif damage == "tokenizer-files-missing":
        for p in model.glob("tokenizer*"):
            p.unlink()
    else:
        for p in model.glob("tokenizer*.json"):
            p.write_text("{\"truncat")
    r = call(capsys, "process_food", "--data-root", data, "--out", tmp_path / "out", "--no-image-check",
             "--tokenizer", model)
    clear_error(r, str(model))
    assert not (tmp_path / "out").exists()


# =========================================================================== train: the launcher owns its trainer

def _env_for(tiny_model_dir, xtuner_data, work) -> dict:
    return dict(os.environ, FOODIE_MODEL=str(tiny_model_dir), FOODIE_DATA=str(xtuner_data),
                FOODIE_WORK_DIR=str(work), OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))


def _trainer_group(work: Path, launcher: subprocess.Popen, marker: str, timeout: float = 300) -> int:
    """The process group of the trainer the launcher started, once a process whose command line holds
    ``marker`` (XTuner's own train.py, started by the xtuner CLI) runs in it."""
    from foodie.process_guard import group_commands
    from foodie.training import TRAINER_PID_FILE

    deadline = time.time() + timeout
    while time.time() < deadline:
        assert launcher.poll() is None, launcher.stdout.read()[-3000:]
        try:
            pgid = int((work / TRAINER_PID_FILE).read_text())
        except (OSError, ValueError):
            pgid = None
        if pgid and any(marker in c for c in group_commands(pgid).values()):
            return pgid
        time.sleep(0.3)
    raise AssertionError("the trainer did not start")


def _gone(pgid: int, timeout: float = 60) -> bool:
    from foodie.process_guard import group_commands

    deadline = time.time() + timeout
    while time.time() < deadline:
        if not group_commands(pgid):
            return True
        time.sleep(0.3)
    return False


def _kill_launcher_and_check(launcher: subprocess.Popen, work: Path, marker: str, sig: int) -> None:
    from foodie.training import check_no_running_trainer

    try:
        pgid = _trainer_group(work, launcher, marker)
        launcher.send_signal(sig)
        launcher.wait(timeout=60)
        assert _gone(pgid), "the trainer outlived its launcher"
        check_no_running_trainer(work)  # nothing left to block a resume
    finally:
        if launcher.poll() is None:
            launcher.kill()
        launcher.communicate()


def _as_from_a_terminal():
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a background shell ignores SIGINT; a terminal does not


# A stand-in trainer shaped like `xtuner train`: a CLI process that starts the real trainer as its child.
FAKE_XTUNER = ("import subprocess, sys; print('Iter(train) [1/1000]', flush=True); "
               "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)', 'fake-trainer-of', "
               "sys.argv[1]]).wait()")
LAUNCH_FAKE = ("import os, sys; from pathlib import Path; from foodie.training import TrainPlan, run_training; "
               "work = Path(sys.argv[1]); run_training(TrainPlan(config=Path('c.py'), work_dir=work, model_path='m', "
               "data_path=work / 'd' / 'train.json', resume_from=None, command=[sys.executable, '-c', sys.argv[2], "
               "str(work)], env=dict(os.environ)), build_inputs=False)")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=["kill-9", "kill", "ctrl-c"])
def test_killing_the_launcher_ends_the_whole_trainer_tree(tmp_path, sig):
    """Issue 20 #2: a real SIGKILL/SIGTERM/SIGINT to the launcher process alone (not its group) ends the trainer
    and the trainer's own children, instead of leaving them training in the background."""
    work = tmp_path / "work"
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCH_FAKE, str(work), FAKE_XTUNER], cwd=REPO,
                                env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, preexec_fn=_as_from_a_terminal)
    _kill_launcher_and_check(launcher, work, "fake-trainer-of", sig)


@pytest.mark.slow
def test_kill_9_of_tools_train_ends_xtuner(tiny_model_dir, xtuner_data, tmp_path):
    """The same with the real thing: kill -9 of tools/train.py while XTuner trains the tiny model."""
    work = tmp_path / "work"
    launcher = subprocess.Popen([sys.executable, str(REPO / "tools/train.py"), "--config", str(CPU_CONFIG), "--",
                                 "--cfg-options", "train_cfg.max_iters=5000"], cwd=REPO,
                                env=_env_for(tiny_model_dir, xtuner_data, work), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, preexec_fn=_as_from_a_terminal)
    _kill_launcher_and_check(launcher, work, "xtuner/tools/train.py", signal.SIGKILL)


def test_resume_refuses_while_a_stale_trainer_runs(capsys, monkeypatch, tiny_model_dir, xtuner_data, tmp_path):
    """Issue 20 #2: a trainer left running in the work dir is detected before a start or a resume."""
    from foodie.training import TRAINER_PID_FILE

    work = tmp_path / "work"
    work.mkdir()
    stale = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "--work-dir", str(work)],
                             start_new_session=True)
    try:
        (work / TRAINER_PID_FILE).write_text(f"{stale.pid}\n")
        for k, v in _env_for(tiny_model_dir, xtuner_data, work).items():
            monkeypatch.setenv(k, v)
        for args in (["--resume"], []):
            r = call(capsys, "train", "--config", CPU_CONFIG, *args)
            clear_error(r, "a trainer is still running", str(work), f"kill -- -{stale.pid}", code=1)
        assert not list(work.glob("train-*.log"))  # nothing was started
    finally:
        stale.kill()
        stale.wait()
    # the same pid file with its process gone (or reused by something else) blocks nothing
    from foodie.training import check_no_running_trainer
    check_no_running_trainer(work)


def test_resume_of_a_finished_run_says_it_finished(capsys, monkeypatch, tiny_model_dir, xtuner_data, finished_run):
    for k, v in _env_for(tiny_model_dir, xtuner_data, finished_run).items():
        monkeypatch.setenv(k, v)
    logs = sorted(finished_run.glob("train-*.log"))
    r = call(capsys, "train", "--config", CPU_CONFIG, "--resume")
    assert r.code == 0, r.out + r.err
    assert "already finished" in r.out and "iter_2.pth" in r.out and "failed" not in r.out + r.err
    assert sorted(finished_run.glob("train-*.log")) == logs  # nothing ran


def _plan(work: Path, code: str):
    """A launcher plan whose 'trainer' is a small Python program (the launcher's checks, without XTuner)."""
    from foodie.training import TrainPlan

    return TrainPlan(config=CPU_CONFIG, work_dir=work, model_path="unused", data_path=work / "unused",
                     resume_from=None, command=[sys.executable, "-c", code], env=dict(os.environ))


def test_an_old_checkpoint_is_not_the_result_of_a_failed_run(tmp_path):
    """Mutation: the launcher must not take the checkpoint of an earlier run as this run's result."""
    import torch

    from foodie.checkpoints import is_complete_checkpoint
    from foodie.training import TrainingFailed, run_training

    work = tmp_path / "work"
    work.mkdir()
    torch.save({"state_dict": {"w": torch.zeros(2)}}, work / "iter_2.pth")  # an earlier run's last checkpoint
    assert is_complete_checkpoint(work / "iter_2.pth")
    with pytest.raises(TrainingFailed, match="no new complete checkpoint"):
        run_training(_plan(work, "print('Iter(train) [2/2]  lr: 1e-4')"), build_inputs=False)


def test_failed_run_keeps_the_config_copy_and_names_the_dotted_error(tmp_path):
    """Issue 20 #2 and #6: the config copy in the work dir (what the last good run trained with) survives a
    failed run that rewrote it; the reported error is the exception, dotted names included."""
    from foodie.training import TrainingFailed, run_training

    work = tmp_path / "work"
    work.mkdir()
    copy = work / CPU_CONFIG.name
    copy.write_text("lr = 1e-4  # what the good run used\n")
    crash = (f"import pathlib; pathlib.Path({str(copy)!r}).write_text('lr = 99\\n'); "
             "print('Traceback (most recent call last):'); print('  File \"x.py\", line 1'); "
             "print('json.decoder.JSONDecodeError: Expecting value: line 1 column 1 (char 0)'); "
             "print('[rank0] exiting')")
    with pytest.raises(TrainingFailed) as failed:
        run_training(_plan(work, crash), build_inputs=False)
    assert "last error: json.decoder.JSONDecodeError: Expecting value" in str(failed.value)
    assert copy.read_text() == "lr = 1e-4  # what the good run used\n"


def test_missing_images_are_named_as_the_cause():
    """Issue 20 #6: when images are missing the first error in the log (the FileNotFoundError naming the
    image) is reported, not a later follow-up error."""
    from foodie.training import last_error

    log = ["Traceback (most recent call last):", "FileNotFoundError: [Errno 2] No such file or directory: "
           "'/data/images/x.jpg'", "", "During handling of the above exception, another exception occurred:",
           "Traceback (most recent call last):", "RuntimeError: DataLoader worker (pid 12) exited unexpectedly"]
    assert "x.jpg" in last_error(log)


# =========================================================================== convert

def _flip_a_tensor_byte(pth: Path) -> None:
    """Damage one byte of the largest tensor record inside a torch archive (the ZIP stays readable)."""
    import struct

    with zipfile.ZipFile(pth) as zf:
        info = max((i for i in zf.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(pth, "r+b") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        at = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_checkpoint_failing_its_crc_is_not_merged(capsys, monkeypatch, tiny_model_dir, xtuner_data, finished_run,
                                                  tmp_path):
    """Issue 20 #5: a .pth whose ZIP CRC fails is refused before the merge (it used to merge and 'verify'
    against the same corrupt tensor)."""
    for k, v in _env_for(tiny_model_dir, xtuner_data, finished_run).items():
        monkeypatch.setenv(k, v)
    bad = tmp_path / "iter_2.pth"
    shutil.copy2(finished_run / "iter_2.pth", bad)
    _flip_a_tensor_byte(bad)
    save = tmp_path / "merged"
    r = call(capsys, "convert_to_official", CPU_CONFIG, bad, save, "--no-progress")
    clear_error(r, str(bad), "damaged", "CRC", code=1)
    assert not save.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["iter_2.pth"]


def test_convert_force_onto_a_symlinked_save_dir_writes_its_target(capsys, monkeypatch, tiny_model_dir, xtuner_data,
                                                                   finished_run, tmp_path):
    """Issue 20 #6: --force onto a link replaces the folder it points at (the link stays), and the staging
    folder a killed convert left there (a full model copy) is removed."""
    for k, v in _env_for(tiny_model_dir, xtuner_data, finished_run).items():
        monkeypatch.setenv(k, v)
    target = tmp_path / "disk" / "merged"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")  # a stale earlier result
    link = tmp_path / "merged"
    link.symlink_to(target, target_is_directory=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = target.parent / f".merged.tmp-{int(dead.stdout)}-k1ll3d"
    (stale / "merged").mkdir(parents=True)
    (stale / "merged" / "model.safetensors").write_bytes(b"\0" * 1024)
    r = call(capsys, "convert_to_official", CPU_CONFIG, "latest", link, "--force", "--no-verify", "--no-progress")
    assert r.code == 0, r.out + r.err
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert json.loads((target / "config.json").read_text())["model_type"] == "internvl_chat"
    assert (target / "model.safetensors").is_file()
    assert sorted(p.name for p in target.parent.iterdir()) == ["merged"]  # the stale staging copy is gone


@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC], ids=["read-only", "disk-full"])
def test_convert_onto_a_read_only_or_full_disk(capsys, monkeypatch, tiny_model_dir, xtuner_data, finished_run,
                                               tmp_path, code):
    for k, v in _env_for(tiny_model_dir, xtuner_data, finished_run).items():
        monkeypatch.setenv(k, v)
    disk = tmp_path / "disk"
    disk.mkdir()
    inject_os_error(monkeypatch, disk, code)
    r = call(capsys, "convert_to_official", CPU_CONFIG, "latest", disk / "merged", "--no-verify", "--no-progress")
    clear_error(r, str(disk), os.strerror(code))
    assert len([ln for ln in r.err.splitlines() if ln.strip()]) == 1, r.err
    assert list(disk.iterdir()) == []


@pytest.mark.parametrize("damage", ["config-not-json", "weights-truncated", "save-dir-is-a-file"])
def test_convert_with_damaged_inputs(capsys, monkeypatch, tiny_model_dir, xtuner_data, finished_run, tmp_path,
                                     damage):
    for k, v in _env_for(tiny_model_dir, xtuner_data, finished_run).items():
        monkeypatch.setenv(k, v)
    base = Path(shutil.copytree(tiny_model_dir, tmp_path / "base"))
    save = tmp_path / "merged"
    if damage == "config-not-json":
        (base / "config.json").write_text('{"model_type": ')
        named = base / "config.json"
    elif damage == "weights-truncated":
        weights = next(base.glob("*.safetensors"))
        weights.write_bytes(weights.read_bytes()[:1000])
        named = weights
    else:
        save.write_text("my notes")
        named = save
    r = call(capsys, "convert_to_official", CPU_CONFIG, "latest", save, "--base-model", base, "--no-verify",
             "--no-progress")
    assert r.code in (1, 2)
    clear_error(r, str(named), code=r.code)
    assert not save.is_dir()


# =========================================================================== publish

@pytest.fixture
def model(tiny_model_dir, tmp_path) -> Path:
    """A publishable merged folder (the tiny model, marked as trained on synthetic data)."""
    m = Path(shutil.copytree(tiny_model_dir, tmp_path / "merged"))
    (m / "foodie_provenance.json").write_text(json.dumps({"data": {"synthetic": True}}))
    return m


def publish_dry(capsys, model: Path, *extra) -> Result:
    return call(capsys, "publish", "--model", model, "--repo-id", "me/InternVL2-2B-Foodie", "--hub", "hf",
                "--dry-run", *extra)


@pytest.mark.parametrize("link", ["file", "folder"])
def test_publish_never_follows_a_link_out_of_the_folder(capsys, model, tmp_path, link):
    """Issue 20 #4: a symlinked token file or folder (~/.cache/huggingface) reached the hub."""
    home = tmp_path / "home" / ".cache" / "huggingface"
    home.mkdir(parents=True)
    (home / "token").write_text(SECRET)
    if link == "file":
        (model / "token.txt").symlink_to(home / "token")
    else:
        (model / "extras").symlink_to(home, target_is_directory=True)
    before = snapshot(model)
    r = publish_dry(capsys, model, "--include-extra-files")  # not even with the flag
    clear_error(r, "outside the model folder", "Copy what belongs to the model into the folder")
    assert SECRET not in r.out + r.err
    assert snapshot(model) == before  # no card written either


@pytest.mark.parametrize("extra", ["id_rsa", "notes/plan.md", "my_secret_script.py"])
def test_publish_asks_before_uploading_extra_files(capsys, model, extra):
    """Issue 20 #4: only what a checkpoint folder holds is uploaded unless --include-extra-files."""
    path = model / extra
    path.parent.mkdir(exist_ok=True)
    path.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    r = publish_dry(capsys, model)
    clear_error(r, str(path), "--include-extra-files")
    assert not (model / "README.md").exists()
    r = publish_dry(capsys, model, "--include-extra-files")
    assert r.code == 0, r.err
    assert extra.split("/")[-1] in r.out


def test_dry_run_keeps_a_hand_written_readme(capsys, model):
    """Issue 20 #4: --dry-run overwrote the user's README.md without a backup."""
    mine = "# My model\n\nWritten by hand over a week.\n"
    (model / "README.md").write_text(mine)
    r = publish_dry(capsys, model)
    assert r.code == 0, r.err
    backups = list(model.glob(".README.md.hand-written*"))
    assert [b.read_text() for b in backups] == [mine]
    assert "generated by internvl-foodie" in (model / "README.md").read_text()
    assert ".README.md.hand-written" not in r.out.replace(str(backups[0]), "")  # listed as kept, not uploaded
    r = publish_dry(capsys, model)  # our own card is simply regenerated: no second backup
    assert r.code == 0 and len(list(model.glob(".README.md.hand-written*"))) == 1


def test_card_shows_no_local_absolute_paths(capsys, model, tmp_path):
    (model / "foodie_provenance.json").write_text(json.dumps({
        "base_model": "OpenGVLab/InternVL2-2B", "base_model_path": str(tmp_path / "models" / "InternVL2-2B"),
        "config": "/home/alice/projects/foodie/xtuner_configs/run.py",
        "checkpoint": "/home/alice/work/train/iter_500.pth", "data": {"synthetic": True}}))
    r = publish_dry(capsys, model)
    assert r.code == 0, r.err
    card = (model / "README.md").read_text()
    assert "/home/alice" not in card and str(tmp_path) not in card
    assert "iter_500.pth" in card and "run.py" in card  # the names still tell what was used


@pytest.mark.parametrize("argv", [["--token", SECRET], [f"--token={SECRET}"], ["--hf-token", SECRET], [SECRET]],
                         ids=["--token VALUE", "--token=VALUE", "--hf-token VALUE", "bare token"])
def test_mistyped_token_flag_never_echoes_the_secret(model, argv):
    """Issue 20 #4: argparse's 'unrecognized arguments: --token hf_...' printed the secret to stderr."""
    done = subprocess.run([sys.executable, str(REPO / "tools/publish.py"), "--model", str(model), "--repo-id",
                           "me/InternVL2-2B-Foodie", "--hub", "hf", "--dry-run", *argv],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "unrecognized arguments" in done.stderr and "***" in done.stderr
    assert SECRET not in done.stdout + done.stderr
    assert SECRET[3:12] not in done.stdout + done.stderr


def test_upload_errors_never_show_the_token():
    """Mutation: the token scrubbing of upload errors removed."""
    from foodie.publish import upload_error

    class Boom(Exception):
        pass

    message = str(upload_error(Boom(f"POST https://hub/api?token={SECRET} failed: 500"), SECRET, "HF_TOKEN", "upload"))
    assert SECRET not in message and "***" in message


def test_licence_gate_closed_unless_the_data_is_marked_synthetic(capsys, model):
    """Mutation: trained_on_foodieqa always False would open the licence gate silently."""
    from foodie.publish import ACK_FLAG, trained_on_foodieqa

    assert trained_on_foodieqa(None) and trained_on_foodieqa({"data": {"name": "lyan62/FoodieQA"}})
    assert not trained_on_foodieqa({"data": {"synthetic": True}})
    for provenance in (None, {"data": {"name": "lyan62/FoodieQA", "synthetic": False}}):
        if provenance is None:
            (model / "foodie_provenance.json").unlink(missing_ok=True)
        else:
            (model / "foodie_provenance.json").write_text(json.dumps(provenance))
        r = publish_dry(capsys, model)
        clear_error(r, "CC BY-NC-ND 4.0", ACK_FLAG)
        assert not (model / "README.md").exists()
        assert publish_dry(capsys, model, ACK_FLAG).code == 0
        (model / "README.md").unlink()


# =========================================================================== demo

def test_demo_serves_gallery_photos_only_never_their_folders(data, tmp_path):
    """Issue 20 #3: a symlinked gallery photo put its resolved folder (and every dotfile in it) in
    allowed_paths. Now a link out of the root is dropped and only the photos themselves are served."""
    from gradio.utils import is_allowed_file

    app = tool("app")
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_rsa").write_text("PRIVATE")
    photo = next((data / "images").rglob("*.jpg"))
    shutil.copy(photo, home / "dish.jpg")
    photo.unlink()
    photo.symlink_to(home / "dish.jpg")
    (photo.parent / ".env").write_text(f"HF_TOKEN={SECRET}")
    gallery = app.load_gallery(data)
    served = app.served_files(gallery)
    assert served and all(Path(p).resolve().is_relative_to(data.resolve()) for p in served)
    assert str(home / "dish.jpg") not in served

    def allowed(path: Path) -> bool:
        return is_allowed_file(path.resolve(), blocked_paths=[], allowed_paths=served, created_paths=[])[0]

    assert allowed(Path(served[0]))
    for private in (home / ".ssh" / "id_rsa", home / "dish.jpg", photo.parent / ".env", data / "sivqa_tidy.json"):
        assert not allowed(private), private


# =========================================================================== eval

def test_labels_that_map_to_one_file_name_stay_apart():
    """Issue 20 #6: 'run 1' and 'run_1' both became predictions/run_1.jsonl; the second deleted the first."""
    from foodie.evaluation import default_labels, safe_label

    labels = default_labels(["m1", "m2", "m3", "m4"], ["run 1", "run_1", "run/1", "run 1"])
    assert len({safe_label(x) for x in labels}) == 4 and labels[0] == "run 1"


@pytest.mark.parametrize("case", ["out-is-a-file", "items-missing", "model-config-damaged"])
def test_eval_bad_paths(capsys, tiny_model_dir, small_foodieqa_dir, tmp_path, case):
    out, items, model = tmp_path / "eval", None, tiny_model_dir
    if case == "out-is-a-file":
        out.write_text("keep")
        named = out
    elif case == "items-missing":
        items = named = tmp_path / "held_out.json"
    else:
        model = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
        (model / "config.json").write_text('{"model_type": "internvl_chat", ')
        named = model
    args = ["--model", model, "--data-root", small_foodieqa_dir, "--out", out, "--limit", "2",
            "--backend", "transformers"] + (["--items", items] if items else [])
    r = call(capsys, "eval_food", *args)
    clear_error(r, str(named))
    if case == "out-is-a-file":
        assert out.read_text() == "keep"


# =========================================================================== surviving mutants of the first audit
# (first capital letter, multi-image order: tests/test_scoring.py, tests/test_evaluation.py catch those mutants)

def test_english_prompts_use_the_english_choices_of_the_file():
    """Mutation: choices_en read from the Chinese field (foodie/foodieqa.py). tests/test_evaluation.py compares the
    prompt with the parsed item, which such a bug changes too; this compares it with the file's text."""
    from foodie.foodieqa import _parse_item
    from foodie.prompts import question_prompt

    raw = {"question_id": "q1", "question": "这是哪个菜系？", "question_en": "Which cuisine is this?",
           "choices": ["粤菜", "川菜", "鲁菜", "苏菜"], "choices_en": ["Cantonese", "Sichuan", "Shandong", "Jiangsu"],
           "answer": "1", "food_meta": {"food_file": "images/a.jpg", "food_name": "白切鸡", "cuisine_type": "粤菜"}}
    item, problems = _parse_item("sivqa", "sivqa_tidy.json", 0, raw, {})
    assert item is not None, problems
    text = question_prompt(item, "en").user
    assert all(c in text for c in raw["choices_en"]) and not any(c in text for c in raw["choices"])


def test_items_straddling_the_split_are_never_trained_on(small_foodieqa_dir):
    from foodie.data_conversion import ConversionOptions, make_split
    from foodie.foodieqa import load_foodieqa

    data = load_foodieqa(small_foodieqa_dir, check_images=False)
    split = make_split(data, ConversionOptions(tasks=("sivqa", "mivqa"), mivqa_eval_share=0.0))
    assert split.dropped["mivqa"]  # with no whole questions held out, many straddle
    for task in ("sivqa", "mivqa"):
        for item in split.train[task]:
            assert not set(item.images) & split.eval_images, item.question_id
        for item in split.held_out[task]:
            assert set(item.images) <= split.eval_images, item.question_id


def test_outputs_are_replaced_whole_never_rewritten_in_place(tmp_path):
    """Mutation: an in-place write lets a reader (or a crash) see half a file; the atomic writer swaps in
    a new file, so a reader holding the old one still reads it whole."""
    from foodie.atomic import write_json, write_text

    for write, new in ((write_text, "new text\n"), (write_json, {"new": 1})):
        dest = tmp_path / f"out-{write.__name__}"
        dest.write_text("old complete content\n")
        with open(dest, encoding="utf-8") as reader:
            write(dest, new)
            assert reader.read() == "old complete content\n"
        assert "new" in dest.read_text()
