"""The install profile is chosen from whether a CUDA GPU is visible, can be overridden, and takes its
torch pins from pyproject.toml (the one place where versions are pinned)."""
from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _dry_run_venv(env_path: str, *args: str) -> str:
    # Drop make's own variables: under `make test PROFILE=cpu` they would pass PROFILE down to this make.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "PROFILE")}
    env["PATH"] = env_path
    out = subprocess.run(["make", "-n", "-B", "venv", "VENV=/nonexistent-venv", *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True)
    return out.stdout


def _torch_pins(profile: str) -> list[str]:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return [d for d in cfg["project"]["optional-dependencies"][profile] if d.startswith("torch")]


@pytest.fixture
def fake_gpu_path(tmp_path):
    """A PATH on which `nvidia-smi -L` succeeds, as on a machine with a CUDA GPU."""
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3'\n")
    smi.chmod(0o755)
    return f"{tmp_path}:{os.environ['PATH']}"


def test_cpu_profile_without_gpu():
    plan = _dry_run_venv("/usr/bin:/bin")
    assert '.[cpu,test]' in plan and ".[gpu" not in plan


def test_gpu_profile_when_gpu_visible(fake_gpu_path):
    plan = _dry_run_venv(fake_gpu_path)
    assert '.[gpu,test]' in plan
    # lmdeploy brings mmengine-lite, which overwrites mmengine's files: the plan reinstalls XTuner's mmengine.
    assert "force-reinstall" in plan


def test_profile_override_beats_detection(fake_gpu_path):
    assert '.[cpu,test]' in _dry_run_venv(fake_gpu_path, "PROFILE=cpu")


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_torch_pins_come_from_pyproject(profile):
    pins = _torch_pins(profile)
    assert pins and all("==" in p for p in pins)
    cmd = ["python3", "-c", "import tomllib;print(' '.join(d for d in tomllib.load(open('pyproject.toml','rb'))"
           f"['project']['optional-dependencies']['{profile}'] if d.startswith('torch')))"]
    assert subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout.split() == pins


def test_transformers_pinned_once_for_remote_code():
    text = (ROOT / "pyproject.toml").read_text()
    assert text.count("transformers==") == 1
    assert '"transformers==4.48.0"' in text
