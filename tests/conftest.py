"""Shared pytest fixtures. Add yours below, keeping each fixture's scope as narrow as it can be."""
import pytest


@pytest.fixture(scope='session')
def tiny_model_dir(tmp_path_factory):
    """The embedded tiny InternVL2 checkpoint (seed 0), built once per test session.

    Read-only for tests: copy it first if a test must change files in it.
    """
    from foodie.tiny_model import write_checkpoint

    return write_checkpoint(tmp_path_factory.mktemp('tiny-model') / 'tiny-internvl2', seed=0)
