"""foodie.cli: the `foodie STAGE` console script runs the stage's tool as `python tools/<file>.py` does."""
from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from foodie import cli

REPO = Path(__file__).resolve().parent.parent


def test_the_console_script_is_installed_and_every_stage_has_a_main():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["foodie"] == "foodie.cli:main"
    assert {"process", "train", "convert", "eval", "demo", "publish", "quickstart"} <= set(cli.STAGES)
    for stage, path in cli.STAGES.items():
        text = (REPO / path).read_text()
        assert "def main(" in text or "import main" in text, stage


def test_a_stage_runs_its_tool_the_same_from_anywhere(capsys, tmp_path):
    assert cli.main(["explain", "--size", "1920x1080", "--max-tiles", "6"]) == 0
    ours = capsys.readouterr().out
    # The tools import the installed package: no sys.path edits, so they run from any folder.
    done = subprocess.run([sys.executable, str(REPO / "docs/examples/explain_image.py"), "--size", "1920x1080", "--max-tiles",
                           "6"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert ours == done.stdout and "image 1920x1080 -> grid 2x1" in ours


def test_usage_help_and_unknown_stage(capsys):
    assert cli.main([]) == cli.EXIT_BAD_INPUT and "stages: tiny-model, demo-data" in capsys.readouterr().err
    assert cli.main(["--help"]) == 0 and "usage: foodie STAGE" in capsys.readouterr().out
    assert cli.main(["trian"]) == cli.EXIT_BAD_INPUT and "no stage 'trian'" in capsys.readouterr().err
    done = subprocess.run([sys.executable, "-m", "foodie.cli", "process", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("usage: foodie process")
