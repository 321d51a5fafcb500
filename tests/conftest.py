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


@pytest.fixture
def run_tool(capsys):
    """``run_tool("tools/x.py", *args)`` runs the tool as ``python tools/x.py ARGS`` does (its ``__main__`` block), in
    this process: no interpreter start-up or torch import per call. Returns (returncode, stdout, stderr) like
    subprocess.run; an exception escaping the tool (a traceback for the user) fails the test."""
    import runpy
    import sys
    from pathlib import Path
    from types import SimpleNamespace

    def run(tool: str, *args):
        path = Path(__file__).resolve().parent.parent / tool
        capsys.readouterr()
        argv, sys.argv = sys.argv, [str(path), *map(str, args)]
        try:
            runpy.run_path(str(path), run_name="__main__")
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
        finally:
            sys.argv = argv
        out, err = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out, stderr=err)

    return run
