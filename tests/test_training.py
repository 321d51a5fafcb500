"""Training with XTuner on CPU: the launcher, failure detection, resume after SIGKILL, the prompt
format shared with inference, and that the embedded default actually learns.

Every run here is a real `xtuner train` (through tools/train.py) on the embedded tiny InternVL2 and
the synthetic FoodieQA, with iteration counts overridden to stay short.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from foodie.checkpoints import AtomicCheckpointHook, checkpoint_iter, is_complete_checkpoint, latest_complete_checkpoint
from foodie.process_guard import group_commands
from foodie.training import TRAINER_PID_FILE

REPO = Path(__file__).resolve().parent.parent
CPU_CONFIG = REPO / "xtuner_configs" / "internvl_v2_tiny_lora_cpu.py"
REAL_CONFIG = REPO / "xtuner_configs" / "internvl_v2_internlm2_2b_lora_finetune_food.py"


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def food_data(tmp_path_factory):
    """Synthetic FoodieQA -> process_food output (train.json + held_out.json), SIVQA, zh."""
    from foodie.data_conversion import ConversionOptions, convert_foodieqa
    from foodie.synthetic_data import make_demo_data

    root = tmp_path_factory.mktemp("food")
    make_demo_data(root / "foodieqa")
    convert_foodieqa(root / "foodieqa", root / "xtuner", ConversionOptions(check_images=False))
    return root


def train_env(tiny_model_dir, food_data, work_dir) -> dict:
    env = dict(os.environ)
    env.update(FOODIE_MODEL=str(tiny_model_dir), FOODIE_DATA=str(food_data / "xtuner"),
               FOODIE_WORK_DIR=str(work_dir), OMP_NUM_THREADS="1")
    return env


SHORT_RUN = ["--", "--cfg-options", "train_cfg.max_iters=12", "param_scheduler.1.end=12",
             "default_hooks.checkpoint.interval=2"]


def launch(env, *args):
    """tools/train.py in its own process (for a run that is killed)."""
    return subprocess.Popen([sys.executable, str(REPO / "tools" / "train.py"), "--config", str(CPU_CONFIG), *args],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def finish(proc, timeout=600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    return out


def train_here(run_tool, monkeypatch, env, *args, config=CPU_CONFIG):
    """tools/train.py run in this process (no interpreter start-up); returns (exit code, stdout + stderr)."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    r = run_tool("tools/train.py", "--config", config, *args)
    return r.returncode, r.stdout + r.stderr


# --------------------------------------------------------------------------- end to end

def test_failed_training_is_reported(tiny_model_dir, food_data, tmp_path, run_tool, monkeypatch):
    """xtuner exits 0 when training crashes; the launcher must not: non-zero exit, the reason, the log."""
    work = tmp_path / "broken"
    env = train_env(tiny_model_dir, food_data, work)
    # A crash inside `xtuner train` (the LoRA config is rejected while the model is built).
    code, out = train_here(run_tool, monkeypatch, env, "--", "--cfg-options",
                           "model.llm_lora.target_modules=[no_such_layer]")
    assert code == 1, out[-3000:]
    assert "training failed" in out and "traceback" in out and "no new complete checkpoint" in out
    assert "full log: " + str(work) in out
    log = next(work.glob("train-*.log"))
    assert "Traceback (most recent call last)" in log.read_text()

    # A config that cannot be read: clear error naming the file, before anything runs.
    bad = tmp_path / "bad_config.py"
    bad.write_text("model = dict(type=\n")
    code, out = train_here(run_tool, monkeypatch, env, config=bad)
    assert code == 1 and f"cannot read config {bad}" in out


def _wait_for(path_fn, proc, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path_fn():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.2)
    return False


def test_resume_after_sigkill_reaches_the_same_final_iteration(tiny_model_dir, food_data, tmp_path, run_tool,
                                                               monkeypatch):
    """SIGKILL mid-run, leave behind what an interrupted save leaves (a truncated newer checkpoint that
    last_checkpoint names, a partial temp folder), then --resume: it must pick the newest *complete*
    checkpoint, continue from its iteration and end at the planned final iteration. The launcher shows the
    exact xtuner command and the final checkpoint, which holds the LoRA weights and the projector (what the
    convert step merges) and no frozen weights. (One run serves both: each tiny training costs a start-up.)"""
    work = tmp_path / "killed"
    env = train_env(tiny_model_dir, food_data, work)
    proc = launch(env, *SHORT_RUN)
    assert _wait_for(lambda: (work / "iter_2.pth").exists(), proc, timeout=300), finish(proc)[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (work / "iter_12.pth").exists()
    trainer = int((work / TRAINER_PID_FILE).read_text())
    deadline = time.time() + 60
    while group_commands(trainer) and time.time() < deadline:  # the guard ends the trainer (10 s grace at most)
        time.sleep(0.2)
    assert not group_commands(trainer)

    newest = latest_complete_checkpoint(work)
    assert newest is not None and checkpoint_iter(newest) < 12
    # What the stock CheckpointHook leaves when killed while saving the next checkpoint:
    truncated = work / f"iter_{checkpoint_iter(newest) + 1}.pth"
    data = newest.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    (work / "last_checkpoint").write_text(str(truncated))
    (work / ".iter_99.pth.partial").mkdir()
    assert not is_complete_checkpoint(truncated)

    code, out = train_here(run_tool, monkeypatch, env, "--resume", *SHORT_RUN)
    assert code == 0, out[-3000:]
    assert f"skipping incomplete checkpoint {truncated}" in out
    assert f"resuming from {newest}" in out
    assert f"resume=True load_from={newest}" in out  # passed explicitly, last_checkpoint is not trusted
    assert f"resumed epoch: 0, iter: {checkpoint_iter(newest)}" in out  # MMEngine restored the loop state
    final = work / "iter_12.pth"
    assert is_complete_checkpoint(final)
    assert f"checkpoint: {final}" in out
    assert not (work / ".iter_99.pth.partial").exists()  # stale temp folders are cleared
    assert "xtuner train " in out and str(CPU_CONFIG) in out  # the exact command is shown
    assert (work / "last_checkpoint").read_text().strip() == str(final)

    # torch >= 2.6 default weights_only=True loads it: the checkpoint holds only tensors and plain values.
    state = torch.load(final, map_location="cpu", weights_only=True)["state_dict"]
    lora = [k for k in state if "lora_A" in k or "lora_B" in k]
    assert lora and all(k.startswith("model.language_model.base_model.model.") for k in lora)
    assert any(".output.lora_A." in k for k in lora)  # every linear layer of the LLM, the head included
    assert any(k.startswith("model.mlp1.") for k in state)  # the projector is trained
    assert not any("vision_model" in k for k in state)  # the ViT is frozen and not saved
    assert not any(k.endswith(".base_layer.weight") for k in state)  # nor the frozen LLM weights


def test_atomic_checkpoint_hook_keeps_the_previous_checkpoint_until_the_new_one_is_whole(tmp_path):
    """A save that dies half-way leaves only a hidden partial; old checkpoints and last_checkpoint stay."""
    from mmengine.logging import MessageHub

    class Runner:  # the parts of mmengine's Runner the hook touches
        work_dir = str(tmp_path)
        message_hub = MessageHub.get_instance("atomic-hook-test")

        def __init__(self):
            self.fail = False

        def save_checkpoint(self, out_dir, filename, *args, **kwargs):
            path = Path(out_dir) / filename
            torch.save({"meta": {"iter": 0}, "state_dict": {"w": torch.zeros(1000)}}, path)
            if self.fail:
                path.write_bytes(path.read_bytes()[:100])  # the process dies mid-write
                raise KeyboardInterrupt

    hook = AtomicCheckpointHook(interval=1, by_epoch=False, max_keep_ckpts=2)
    hook.out_dir, hook.keep_ckpt_ids = str(tmp_path), __import__("collections").deque([], 2)
    runner = Runner()
    for step in (1, 2, 3):
        hook._save_checkpoint_with_step(runner, step, meta={})
    assert [p.name for p in sorted(tmp_path.glob("iter_*.pth"))] == ["iter_2.pth", "iter_3.pth"]
    runner.fail = True
    with pytest.raises(KeyboardInterrupt):
        hook._save_checkpoint_with_step(runner, 4, meta={})
    assert not (tmp_path / "iter_4.pth").exists() and (tmp_path / ".iter_4.pth.partial").exists()
    assert (tmp_path / "iter_2.pth").exists() and (tmp_path / "iter_3.pth").exists()
    assert (tmp_path / "last_checkpoint").read_text() == str(tmp_path / "iter_3.pth")
    assert latest_complete_checkpoint(tmp_path) == tmp_path / "iter_3.pth"


# --------------------------------------------------------------------------- prompt format

def test_training_tokens_equal_what_chat_feeds_the_model(tiny_model_dir, food_data, tmp_path):
    """Token for token: the training sample's prompt (XTuner dataset + our template) is what the model's
    chat() passes to generate() for the same question and image, in one turn and with history; the
    answer tokens are what the tokenizer gives the whole rendered conversation; the image tensors agree."""
    from transformers import AutoModel, AutoTokenizer

    from foodie.image_tiling import load_image
    from foodie.xtuner_dataset import FoodieInternVLDataset, conversation_template

    sample = json.loads((food_data / "xtuner" / "train.json").read_text())[0]
    human, gpt = sample["conversations"]
    two_turns = dict(sample, conversations=[human, gpt, {"from": "human", "value": "再说一遍？"},
                                            {"from": "gpt", "value": gpt["value"]}])
    data_file = tmp_path / "samples.json"
    data_file.write_text(json.dumps([sample, two_turns], ensure_ascii=False))
    ds = FoodieInternVLDataset(str(tiny_model_dir), str(data_file), image_folders=str(tmp_path),
                               max_length=8192, max_dynamic_patch=2)

    tok = AutoTokenizer.from_pretrained(tiny_model_dir, trust_remote_code=True)
    model = AutoModel.from_pretrained(tiny_model_dir, trust_remote_code=True).eval()
    seen = []

    def fake_generate(pixel_values=None, input_ids=None, attention_mask=None, **kw):
        seen.append(input_ids[0].tolist())
        return tok(gpt["value"], add_special_tokens=False, return_tensors="pt").input_ids

    model.generate = fake_generate
    question = human["value"].replace("<image>", "").strip()
    pixel_values = load_image(sample["image"], input_size=model.config.force_image_size, max_num=2)

    one = ds.prepare_data(0)
    assert torch.allclose(one["pixel_values"], pixel_values, atol=1e-5)
    reply, history = model.chat(tok, pixel_values, question, dict(max_new_tokens=8), return_history=True)
    assert reply == gpt["value"]
    prompt = [i for i, lab in zip(one["input_ids"], one["labels"]) if lab == -100]
    assert seen[-1] == prompt
    n = len(prompt)
    # The answer tokens are those of tokenising the whole rendered conversation in one go.
    template, system = conversation_template(str(tiny_model_dir))
    image = "<img>" + "<IMG_CONTEXT>" * (model.num_image_token * pixel_values.shape[0]) + "</img>"
    text = template["SYSTEM"].format(system=system) + template["INSTRUCTION"].format(input=image + "\n" + question)
    assert one["input_ids"] == tok(text + gpt["value"] + template["SUFFIX"]).input_ids
    assert template["SUFFIX"] == "<|im_end|>" and system == model.system_message
    assert one["labels"][n:] == one["input_ids"][n:]  # loss on the whole answer and its end marker

    two = ds.prepare_data(1)
    model.chat(tok, pixel_values, "再说一遍？", dict(max_new_tokens=8), history=history)
    second_prompt = [i for i, lab in zip(two["input_ids"], two["labels"]) if lab == -100]
    # Everything before the second answer, i.e. prompt of turn 1 + answer 1 + end + turn 2, in order.
    end_of_second_prompt = len(two["input_ids"]) - len(one["input_ids"][n:])
    assert seen[-1] == two["input_ids"][:end_of_second_prompt]
    assert len(second_prompt) < end_of_second_prompt  # the first answer is trained on too


def test_configs_read_paths_from_the_environment(monkeypatch, tmp_path):
    """Nobody edits paths in the configs: both read FOODIE_MODEL / FOODIE_DATA / FOODIE_WORK_DIR; the
    CPU one changes only CPU things and keeps the real run's LoRA and template settings."""
    from mmengine.config import Config

    monkeypatch.setenv("FOODIE_MODEL", "/m")
    monkeypatch.setenv("FOODIE_DATA", "/d")
    monkeypatch.setenv("FOODIE_WORK_DIR", "/w")
    real, cpu = Config.fromfile(str(REAL_CONFIG)), Config.fromfile(str(CPU_CONFIG))
    for cfg in (real, cpu):
        assert cfg.model.model_path == "/m" and cfg.train_dataloader.dataset.model_path == "/m"
        assert cfg.train_dataloader.dataset.data_paths == "/d/train.json" and cfg.work_dir == "/w"
        assert cfg.custom_hooks[0].tokenizer.pretrained_model_name_or_path == "/m"
        assert dict(cfg.model.llm_lora, type=None) == dict(r=128, lora_alpha=256, lora_dropout=0.05,
                                                           target_modules=None, task_type="CAUSAL_LM", type=None)
        assert cfg.model.freeze_visual_encoder and cfg.model.freeze_llm
    assert real.optim_wrapper.type.__name__ == "AmpOptimWrapper" and real.optim_wrapper.dtype == "bfloat16"
    assert cpu.optim_wrapper.type.__name__ == "OptimWrapper"
    assert real.param_scheduler[0].end >= 1 and real.param_scheduler[0].by_epoch is False  # warm-up in iterations
    assert real.default_hooks.checkpoint.max_keep_ckpts >= 2 and real.default_hooks.checkpoint.save_optimizer


def _flat(cfg, prefix=""):
    """Every leaf of a config as {"a.b.0.c": value} (classes by name), for comparing two configs."""
    items = cfg.items() if hasattr(cfg, "items") else enumerate(cfg)
    out = {}
    for k, v in items:
        if isinstance(v, (dict, list, tuple)) or hasattr(v, "items"):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = getattr(v, "__name__", v)
    return out


def test_another_model_size_is_one_config_file(monkeypatch):
    """The InternVL2-8B config inherits the 2B one and changes only the checkpoint (everywhere it is used), the
    work dir, and activation checkpointing (all layers: the 2B's count was sized for 2B memory)."""
    from mmengine.config import Config

    for name in ("FOODIE_MODEL", "FOODIE_WORK_DIR"):
        monkeypatch.delenv(name, raising=False)
    two = _flat(Config.fromfile(str(REAL_CONFIG)).to_dict())
    eight = _flat(Config.fromfile(str(REPO / "xtuner_configs" / "internvl_v2_internlm2_5_8b_lora_finetune_food.py"))
                  .to_dict())
    assert set(two) == set(eight)
    changed = {k: (two[k], eight[k]) for k in two if two[k] != eight[k]}
    assert {k for k, (a, b) in changed.items() if (a, b) == ("OpenGVLab/InternVL2-2B", "OpenGVLab/InternVL2-8B")} == {
        "path", "model.model_path", "train_dataloader.dataset.model_path", "tokenizer.pretrained_model_name_or_path",
        "custom_hooks.0.tokenizer.pretrained_model_name_or_path"}
    assert changed["model.activation_checkpointing"] == (15, 32)
    assert changed["work_dir"][1].endswith("internvl_v2_internlm2_5_8b_lora_finetune_food")
    assert len(changed) == 8  # the five paths, the layer count (setting and model), the work dir
