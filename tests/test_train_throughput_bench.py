"""bench/train_throughput.py writes configs that measure what users run: the shipped config untouched but for
measurement plumbing, and the tutorial's setup from XTuner's own stock config. (The timing itself runs on a GPU.)"""
import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("xtuner")

REPO = Path(__file__).resolve().parent.parent


def bench():
    spec = importlib.util.spec_from_file_location("train_throughput", REPO / "bench" / "train_throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load(path):
    from mmengine.config import Config

    sys.path.insert(0, str(REPO))  # the config imports bench.throughput_hook
    try:
        return Config.fromfile(str(path))
    finally:
        sys.path.remove(str(REPO))


def test_ours_is_the_shipped_config_and_workers_change_only_when_asked(tmp_path, monkeypatch):
    b = bench()
    for name in ("FOODIE_MODEL", "FOODIE_DATA", "FOODIE_WORK_DIR"):  # as the bench sets them for each run
        monkeypatch.setenv(name, str(tmp_path / name))
    shipped = load(b.BASE_CONFIG)
    ours = load(b.write_config("ours", tmp_path / "a", 7, tmp_path / "it.jsonl", workers=None))
    for key in ("model", "train_dataloader", "optim_wrapper", "param_scheduler"):  # lazy types compare by text
        assert str(ours[key]) == str(shipped[key]), key
    assert ours.train_dataloader.num_workers == 8
    assert ours.train_cfg.max_iters == 7 and ours.custom_hooks[-1].type.__name__ == "ThroughputHook"
    none = load(b.write_config("ours", tmp_path / "b", 7, tmp_path / "it.jsonl", workers=0))
    assert none.train_dataloader.num_workers == 0 and none.train_dataloader.persistent_workers is False


def test_tutorial_row_is_xtuners_stock_config_with_the_tutorials_overrides(tmp_path):
    b = bench()
    model, data = tmp_path / "model", tmp_path / "data"
    cfg = load(b.write_config("tutorial", tmp_path / "t", 5, tmp_path / "it.jsonl", workers=None,
                              model=model, data=data))
    assert cfg.model.type.__name__ == "InternVL_V1_5" and cfg.model.model_path == str(model)
    dataset = cfg.train_dataloader.dataset
    assert dataset.type.__name__ == "InternVL_V1_5_Dataset" and dataset.data_paths == str(data / "train.json")
    assert cfg.train_dataloader.batch_size == 4 and cfg.train_dataloader.num_workers == 4  # the stock loader
    assert cfg.optim_wrapper.accumulative_counts == 2 and cfg.optim_wrapper.dtype == "float16"
    assert cfg.optim_wrapper.optimizer.lr == 3e-5 and dataset.max_length == 8192
    assert [s.end for s in cfg.param_scheduler] == pytest.approx([0.3, 10])  # 3% warm-up of 10 epochs


def test_the_lever_row_turns_the_sdpa_swap_off_and_unknown_rows_are_refused(tmp_path, monkeypatch):
    b = bench()
    for name in ("FOODIE_MODEL", "FOODIE_DATA", "FOODIE_WORK_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name))
    assert load(b.BASE_CONFIG).model.attn_implementation == "auto"  # sdpa swap, or flash-attn where installed
    assert load(b.write_config("ours_eager", tmp_path / "e", 7, tmp_path / "it.jsonl", workers=None)
                ).model.attn_implementation == "eager"
    assert b.attention_that_ran("InternVL2 loaded: dtype=torch.bfloat16, attention=sdpa") == "sdpa (swapped in)"
    with pytest.raises(SystemExit):
        b.main(["--variants", "ours:project", "--work", "/nonexistent"])
