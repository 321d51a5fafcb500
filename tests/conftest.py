"""Shared pytest fixtures. Add yours below, keeping each fixture's scope as narrow as it can be."""
import pytest


@pytest.fixture(scope='session')
def tiny_model_dir(tmp_path_factory):
    """The embedded tiny InternVL2 checkpoint (seed 0), built once per test session. It carries the official
    remote code (OpenGVLab's InternViT and InternLM2 files from the installed XTuner), as the real one does.

    Read-only for tests: copy it first if a test must change files in it.
    """
    from foodie.tiny_model import write_checkpoint

    return write_checkpoint(tmp_path_factory.mktemp('tiny-model') / 'tiny-internvl2', seed=0)


@pytest.fixture(scope='session')
def drawn_model_dir(tmp_path_factory):
    """The tiny checkpoint as drawn, before its LLM's reading pre-training (write_checkpoint(reader=False)): it
    rarely ends its turn, so tests of generation mechanics (streaming, Stop, history) get answers of any length.
    The embedded default answers multiple choice by letter and ends other replies at once. Read-only for tests."""
    from foodie.tiny_model import write_checkpoint

    return write_checkpoint(tmp_path_factory.mktemp('drawn-model') / 'tiny-internvl2', seed=0, reader=False)


@pytest.fixture(scope='session')
def small_foodieqa_dir(tmp_path_factory):
    """A small synthetic FoodieQA (96 single-image, 48 multi-image questions, 16 dishes, 8 cuisines)
    whose photos are shrunk to 160x160 px, so each is one tile: fast for the tiny model.

    Read-only for tests: copy it first if a test must change files in it.
    """
    from PIL import Image

    from foodie.synthetic_data import make_demo_data

    out = tmp_path_factory.mktemp('foodieqa-small') / 'foodieqa'
    make_demo_data(out, seed=0, photos_per_dish=6, questions_per_photo=1, mivqa_per_dish=3, textqa=False)
    for path in (out / 'images').rglob('*.jpg'):
        with Image.open(path) as im:
            small = im.convert('RGB').resize((160, 160), Image.Resampling.BICUBIC)
        small.save(path, quality=90)
    return out


@pytest.fixture(scope='session')
def xtuner_data(small_foodieqa_dir, tmp_path_factory):
    """small_foodieqa_dir converted for XTuner (foodie.data_conversion, images not checked). Read-only."""
    from foodie.data_conversion import ConversionOptions, convert_foodieqa

    out = tmp_path_factory.mktemp('xtuner') / 'xtuner'
    convert_foodieqa(small_foodieqa_dir, out, ConversionOptions(check_images=False))
    return out


@pytest.fixture(scope='session')
def finished_run(tiny_model_dir, xtuner_data, tmp_path_factory):
    """The work dir of a real 2-iteration CPU training run (tools/train.py on xtuner_data, no warm-up: two steps at
    the full lr change the model) that finished: iter_1.pth, iter_2.pth. Shared by the merge and hostile-user
    tests (one training per session). Read-only for tests: copy what a test must change."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    work = tmp_path_factory.mktemp('run') / 'work'
    env = dict(os.environ, FOODIE_MODEL=str(tiny_model_dir), FOODIE_DATA=str(xtuner_data), FOODIE_WORK_DIR=str(work),
               OMP_NUM_THREADS='1', PYTHONPATH=str(repo))
    config = repo / 'xtuner_configs/internvl_v2_tiny_lora_cpu.py'
    cmd = [sys.executable, str(repo / 'tools/train.py'), '--config', str(config), '--', '--cfg-options',
           'train_cfg.max_iters=2', 'param_scheduler.0.start_factor=1.0', 'param_scheduler.1.end=2',
           'default_hooks.checkpoint.interval=1']
    done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return work


@pytest.fixture
def run_tool(capsys):
    """``run_tool("tools/x.py", *args)`` runs the tool as ``python tools/x.py ARGS`` does (its ``__main__`` block), in
    this process: no interpreter start-up or torch import per call. Returns (returncode, stdout, stderr) like
    subprocess.run; an exception escaping the tool (a traceback for the user) fails the test."""
    import os
    import runpy
    import sys
    from pathlib import Path
    from types import SimpleNamespace

    def run(tool: str, *args):
        path = Path(__file__).resolve().parent.parent / tool
        capsys.readouterr()
        argv, sys.argv = sys.argv, [str(path), *map(str, args)]
        environ = dict(os.environ)  # a tool's environment changes end with it, as in its own process
        try:
            runpy.run_path(str(path), run_name="__main__")
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
        finally:
            sys.argv = argv
            os.environ.clear()
            os.environ.update(environ)
        out, err = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out, stderr=err)

    return run
