"""tools/convert_to_official.py / foodie.merge: a trained run becomes a verified official InternVL2 folder.

One real CPU training run of the embedded tiny model (conftest's finished_run: tools/train.py, 2 iterations, a
checkpoint after each) is shared with tests/test_adversarial.py; one conversion runs through the command line
(shared by the module), the others in-process.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from foodie.merge import PROVENANCE_FILE, ConvertError, convert, probe_image, probe_inputs, probe_logits

REPO = Path(__file__).resolve().parent.parent
CPU_CONFIG = REPO / "xtuner_configs" / "internvl_v2_tiny_lora_cpu.py"
TOOL = REPO / "tools" / "convert_to_official.py"
PUBLISH_KEYS = {"base_model", "base_model_path", "config", "config_summary", "checkpoint", "date", "lora", "data",
                "trained"}


# --------------------------------------------------------------------------- fixtures

def _env(tiny_model_dir, xtuner_data, work_dir) -> dict:
    return {"FOODIE_MODEL": str(tiny_model_dir), "FOODIE_DATA": str(xtuner_data), "FOODIE_WORK_DIR": str(work_dir)}


@pytest.fixture
def run_env(monkeypatch, tiny_model_dir, xtuner_data, finished_run):
    """The environment the configs read (FOODIE_MODEL, FOODIE_DATA, FOODIE_WORK_DIR) set for conftest's shared
    training run (2 iterations, a checkpoint after each)."""
    for k, v in _env(tiny_model_dir, xtuner_data, finished_run).items():
        monkeypatch.setenv(k, v)
    return finished_run


@pytest.fixture(scope="module")
def merged_by_command(tiny_model_dir, xtuner_data, finished_run, tmp_path_factory):
    """The tool's command line run once on the trained run: (SAVE_DIR, its output)."""
    out = tmp_path_factory.mktemp("cli") / "InternVL2-tiny-foodie"
    env = dict(os.environ, **_env(tiny_model_dir, xtuner_data, finished_run))
    done = subprocess.run([sys.executable, str(TOOL), str(CPU_CONFIG), "latest", str(out), "--no-progress"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, done.stdout


def leftovers(folder: Path) -> list[str]:
    """Temporary folders/files the atomic writer would leave if it failed to clean up."""
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def demo_line(model_dir: Path) -> str:
    """What `python demo/app.py --model DIR` (no other flag) says once the model is loaded (stopped there)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = subprocess.Popen([sys.executable, str(REPO / "demo/app.py"), "--model", str(model_dir), "--port", str(port)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = ""
    try:
        for line in demo.stdout:  # the server runs on: read up to the model's line, then stop it
            if line.startswith("[demo] loaded") or "rror" in line:
                break
    finally:
        demo.kill()
        demo.wait(timeout=60)
    return line


# --------------------------------------------------------------------------- the trained tiny model

def test_command_converts_latest_and_verifies(run_env, merged_by_command):
    """The tool's command line: `latest` picks iter_2, the merged folder is complete, verified (max
    difference printed), served by the demo at the tile budget it trained with, and passes the publish checks."""
    from mmengine.config import Config

    from foodie.publish import check_checkpoint

    out, stdout = merged_by_command
    assert f"checkpoint {run_env / 'iter_2.pth'}" in stdout
    assert "max |logits(merged) - logits(base+LoRA, unmerged)| = " in stdout
    assert leftovers(out.parent) == []

    names = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer_config.json",
            "tokenizer.json", "modeling_internvl_chat.py", "modeling_internlm2.py", "modeling_intern_vit.py",
            "configuration_internvl_chat.py", "conversation.py", PROVENANCE_FILE} <= names
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "internvl_chat" and config["torch_dtype"] == "bfloat16"
    # The tile budget the run trained with (the CPU config: 1; the base says 12) is the merged model's own, so
    # `python demo/app.py --model <merged>` serves it as trained without a flag (the page's control starts at the
    # checkpoint's budget: tests/test_demo_e2e.py; evaluation's backend: the pipeline test below).
    trained_tiles = Config.fromfile(str(CPU_CONFIG)).max_dynamic_patch
    base_tiles = json.loads((Path(os.environ["FOODIE_MODEL"]) / "config.json").read_text())["max_dynamic_patch"]
    assert config["max_dynamic_patch"] == trained_tiles != base_tiles
    line = demo_line(out)
    assert line.startswith("[demo] loaded") and line.rstrip().endswith(f"tile budget {trained_tiles})"), line
    base = Path(os.environ["FOODIE_MODEL"])
    for code in base.glob("*.py"):  # the checkpoint's own remote code (the embedded model's: OpenGVLab's)
        assert (out / code.name).read_bytes() == code.read_bytes(), code.name

    ckpt = check_checkpoint(out)  # foodie.publish: loadable official checkpoint, no LoRA tensors, no pickle
    assert ckpt.dtypes == ["BF16"]
    note = ckpt.provenance
    assert PUBLISH_KEYS <= set(note)
    assert note["checkpoint"].endswith("iter_2.pth") and note["iteration"] == 2
    assert note["lora"] == {"r": 128, "alpha": 256, "dropout": 0.05,
                            "targets": "all LLM linear layers (output, w1, w2, w3, wo, wqkv)"}
    assert note["trained"] == {"vision_model": "frozen", "mlp1": "full", "language_model": "LoRA"}
    assert note["data"]["synthetic"] is True and note["data"]["train_questions"] > 0 and note["data"]["held_out"] > 0
    v = note["verification"]
    assert v["max_abs_logit_diff"] <= v["tolerance"] < v["lora_effect"]  # the check could have failed


def test_merged_float32_sharded_equals_xtuner_model_with_lora(run_env, tmp_path):
    """The merged weights (float32, several safetensors shards + index) give the logits of the model as
    XTuner trains it: FoodieInternVL built from the config, checkpoint loaded by XTuner, LoRA unmerged."""
    from mmengine.config import Config
    from transformers import AutoModel
    from xtuner.registry import BUILDER

    ckpt = run_env / "iter_1.pth"
    out = tmp_path / "merged"
    result = convert(CPU_CONFIG, ckpt, out, dtype="float32", max_shard_size="1MB", verify=False)
    layers = json.loads((Path(os.environ["FOODIE_MODEL"]) / "config.json").read_text())["llm_config"]["num_hidden_layers"]
    assert result.checkpoint == ckpt and result.counts["merged"] == 5 * layers + 1  # wqkv wo w1 w2 w3 + the LM head
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((out / s).is_file() for s in shards) and not (out / "model.safetensors").exists()

    cfg = Config.fromfile(str(CPU_CONFIG))
    cfg.model.pretrained_pth = str(ckpt)
    xtuner_model = BUILDER.build(cfg.model).model.eval()
    tokenizer, pixel_values, enc = probe_inputs(out)
    want = probe_logits(xtuner_model, tokenizer, pixel_values, enc)
    got = probe_logits(AutoModel.from_pretrained(out, torch_dtype=torch.float32, trust_remote_code=True).eval(),
                       tokenizer, pixel_values, enc)
    base = probe_logits(AutoModel.from_pretrained(os.environ["FOODIE_MODEL"], torch_dtype=torch.float32,
                                                  trust_remote_code=True).eval(), tokenizer, pixel_values, enc)
    assert (got - want).abs().max() < 1e-4 * max(1.0, float(want.abs().max()))
    assert (base - want).abs().max() > 1e-2  # training changed the model, so the equality above means something


def test_vit_lora_and_llm_lora_merge_into_both_parts(tiny_model_dir, tmp_path, monkeypatch):
    """A run with LoRA on the ViT too (XTuner's visual_encoder_lora): the model class saves both adapters;
    after randomising them (as training would move them) both merge and the result verifies."""
    from mmengine.config import Config
    from xtuner.registry import BUILDER

    monkeypatch.setenv("FOODIE_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("FOODIE_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("FOODIE_DATA", str(tmp_path / "no-data"))
    config = write_config(tmp_path / "vit_lora.py", "dict(type=FoodieInternVL, model_path=_os.environ['FOODIE_MODEL'], "
                          "torch_dtype='float32', freeze_llm=True, freeze_visual_encoder=True, "
                          "llm_lora=dict(type=LoraConfig, r=8, lora_alpha=16, target_modules=['wqkv', 'w2'], "
                          "task_type='CAUSAL_LM'), visual_encoder_lora=dict(type=LoraConfig, r=4, lora_alpha=4, "
                          "target_modules=None))")
    model = BUILDER.build(Config.fromfile(str(config)).model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    state = model.state_dict()  # XTuner's: LoRA of both parts + mlp1
    assert any(k.startswith("model.vision_model.base_model.model.") and "lora_A" in k for k in state)
    ckpt = tmp_path / "work" / "iter_1.pth"
    ckpt.parent.mkdir()
    torch.save({"meta": {"iter": 1}, "state_dict": state}, ckpt)

    out = tmp_path / "merged"
    result = convert(config, "latest", out, dtype="float32")
    vit_layers = json.loads((tiny_model_dir / "config.json").read_text())["vision_config"]["num_hidden_layers"]
    llm_layers = json.loads((tiny_model_dir / "config.json").read_text())["llm_config"]["num_hidden_layers"]
    assert result.counts["merged"] == 4 * vit_layers + 2 * llm_layers  # qkv, proj, fc1, fc2 | wqkv, w2
    v = result.verification
    assert v["max_abs_logit_diff"] <= v["tolerance"] < v["lora_effect"]
    note = json.loads((out / PROVENANCE_FILE).read_text())
    assert note["trained"] == {"vision_model": "LoRA", "mlp1": "full", "language_model": "LoRA"}
    assert note["vision_lora"]["r"] == 4 and note["lora"]["targets"] == "wqkv, w2"


# --------------------------------------------------------------------------- bad input fails cleanly

def write_config(path: Path, model: str) -> Path:
    """A standalone XTuner config with the given model dict source (work dir and data from the env)."""
    path.write_text(
        "from peft import LoraConfig\n"
        "from foodie.xtuner_model import FoodieInternVL\n"
        "from xtuner.model import InternVL_V1_5\n"
        "_os = __import__('os')\n"
        f"model = {model}\n"
        "work_dir = _os.environ['FOODIE_WORK_DIR']\n"
        "data_path = _os.path.join(_os.environ['FOODIE_DATA'], 'train.json')\n"
        "del _os\n", encoding="utf-8")
    return path


def test_checkpoint_not_matching_the_config_names_the_keys(run_env, tmp_path):
    config = write_config(tmp_path / "r16.py", "dict(type=FoodieInternVL, model_path=_os.environ['FOODIE_MODEL'], "
                          "freeze_llm=True, freeze_visual_encoder=True, llm_lora=dict(type=LoraConfig, r=16, "
                          "lora_alpha=32, target_modules=['wqkv', 'wo'], task_type='CAUSAL_LM'))")
    out = tmp_path / "out"
    with pytest.raises(ConvertError) as e:
        convert(config, "latest", out)
    msg = str(e.value)
    assert f"checkpoint {run_env / 'iter_2.pth'} does not match config {config}" in msg
    assert "shapes differ" in msg and "attention.wqkv.lora_A.default.weight: (128, 128) in the checkpoint, (16, 128)" in msg
    assert "tensors the config does not train" in msg and "feed_forward.w1.lora_A" in msg
    assert "Fix: pass the config this checkpoint was trained with" in msg
    assert not out.exists() and leftovers(tmp_path) == []


def test_missing_base_model(run_env, tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setenv("FOODIE_MODEL", str(tmp_path / "no-such-model"))
    with pytest.raises(ConvertError, match=r"base model folder not found: .*no-such-model.*FOODIE_MODEL"):
        convert(CPU_CONFIG, "latest", out)
    import huggingface_hub.constants

    monkeypatch.setenv("FOODIE_MODEL", "OpenGVLab/InternVL2-2B")  # a hub id: looked up in the cache only
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ConvertError, match=r"'OpenGVLab/InternVL2-2B' .* not in the Hugging Face cache"):
        convert(CPU_CONFIG, "latest", out)
    assert not out.exists() and leftovers(tmp_path) == []


def test_qlora_run_is_explained_and_merges_into_the_bf16_base_on_request(run_env, tmp_path):
    config = write_config(tmp_path / "qlora.py", "dict(type=InternVL_V1_5, model_path=_os.environ['FOODIE_MODEL'], "
                          "freeze_llm=True, freeze_visual_encoder=True, quantization_llm=True, "
                          "llm_lora=dict(type=LoraConfig, r=128, lora_alpha=256, lora_dropout=0.05, "
                          "target_modules=None, task_type='CAUSAL_LM'))")
    out = tmp_path / "out"
    with pytest.raises(ConvertError) as e:
        convert(config, "latest", out)
    msg = str(e.value)
    assert "QLoRA run (model.quantization_llm=True)" in msg and "--allow-qlora" in msg and "bf16 base" in msg
    assert not out.exists() and leftovers(tmp_path) == []

    convert(config, "latest", out, allow_qlora=True, verify=False)
    note = json.loads((out / PROVENANCE_FILE).read_text())
    assert "merged into the original bf16 base weights" in note["qlora"]


def test_half_written_checkpoints(run_env, tmp_path, monkeypatch):
    """A truncated iter_N.pth is refused by name; `latest` skips it for the newest complete one."""
    import shutil

    from foodie.merge import read_run, resolve_checkpoint

    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(run_env / "iter_1.pth", work / "iter_1.pth")
    data = (run_env / "iter_2.pth").read_bytes()
    (work / "iter_2.pth").write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    with pytest.raises(ConvertError, match=r"iter_2.pth is half-written or damaged .*newest complete checkpoint "
                                           r"there is .*iter_1.pth"):
        convert(CPU_CONFIG, work / "iter_2.pth", out)
    assert not out.exists()

    assert resolve_checkpoint("latest", read_run(CPU_CONFIG, work)) == work / "iter_1.pth"

    monkeypatch.setenv("FOODIE_WORK_DIR", str(work))
    (work / "iter_1.pth").unlink()
    with pytest.raises(ConvertError, match=r"CHECKPOINT=latest: no complete checkpoint .*only incomplete ones \(iter_2.pth\)"):
        convert(CPU_CONFIG, "latest", tmp_path / "out2")
    assert leftovers(tmp_path) == []


def test_half_written_deepspeed_folder(run_env, tmp_path):
    """A ZeRO folder (the layout DeepSpeed writes for mmengine's iter_N.pth) missing a rank's optimizer
    shard: readable files, but not a whole checkpoint -> a clear error, nothing written."""
    folder = tmp_path / "iter_5.pth"
    folder.mkdir()
    state = torch.load(run_env / "iter_2.pth", map_location="cpu", weights_only=True)["state_dict"]
    shapes = {k: v.shape for k, v in state.items()}
    torch.save({"module": state, "buffer_names": [], "param_shapes": [shapes], "frozen_param_shapes": None,
                "shared_params": {}, "ds_version": "0.16.2"}, folder / "mp_rank_00_model_states.pt")
    flat = torch.cat([v.flatten() for v in state.values()])
    half = (flat.numel() + 1) // 2
    # rank 0 of a 2-process ZeRO-2 run; rank 1's shard never got written
    torch.save({"optimizer_state_dict": {"zero_stage": 2, "partition_count": 2,
                                         "single_partition_of_fp32_groups": [flat[:half]]}},
               folder / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt")
    out = tmp_path / "out"
    with pytest.raises(ConvertError, match=r"DeepSpeed checkpoint .*iter_5.pth cannot be read .*Expected 2 of "
                                           r"'\*_optim_states.pt'"):
        convert(CPU_CONFIG, folder, out)
    assert not out.exists() and leftovers(tmp_path) == []


def test_save_dir_rules_and_failed_verification_leave_everything_as_it_was(run_env, tmp_path):
    out = tmp_path / "merged"
    out.mkdir()
    (out / "keep.txt").write_text("earlier conversion")
    ckpt = run_env / "iter_2.pth"

    with pytest.raises(ConvertError, match="already exists and is not empty: pass --force"):
        convert(CPU_CONFIG, ckpt, out)
    with pytest.raises(ConvertError, match="is the checkpoint"):
        convert(CPU_CONFIG, ckpt, ckpt, force=True)
    with pytest.raises(ConvertError, match="contains the checkpoint"):
        convert(CPU_CONFIG, ckpt, run_env, force=True)  # --force would have deleted the run
    with pytest.raises(ConvertError, match=r"'\.' in 'merged\.v2' breaks that import .*'merged-v2'"):
        convert(CPU_CONFIG, ckpt, tmp_path / "merged.v2")  # AutoModel could not load it
    with pytest.raises(ConvertError, match="is the base model"):
        convert(CPU_CONFIG, ckpt, os.environ["FOODIE_MODEL"], force=True)

    # The merged folder is written, reloaded and fails verification (zero tolerance): the earlier SAVE_DIR
    # stays as it was and no temporary folder remains.
    with pytest.raises(ConvertError, match=r"verification failed: .*differ .* by up to"):
        convert(CPU_CONFIG, ckpt, out, force=True, tolerance=0.0)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert leftovers(tmp_path) == [] and ckpt.is_file()

    convert(CPU_CONFIG, ckpt, out, force=True, verify=False)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert leftovers(tmp_path) == []


def test_command_line_error_exit_code(run_env, tmp_path, capsys, monkeypatch):
    """Bad input: one clear line (exit 1, no traceback) from the tool's main (as `foodie convert ARGS` runs it)."""
    from foodie import cli

    monkeypatch.setattr(sys, "argv", list(sys.argv))  # the stage runner renames the program
    assert cli.main(["convert", str(CPU_CONFIG), str(tmp_path / "iter_9.pth"), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert f"ERROR: checkpoint not found: {tmp_path / 'iter_9.pth'}" in err and "Traceback" not in err
    with pytest.raises(ConvertError, match=r"--max-shard-size '2 gigs': expected a size like 2GB"):
        convert(CPU_CONFIG, "latest", tmp_path / "out", max_shard_size="2 gigs")  # before any loading


# --------------------------------------------------------------------------- the official code

def test_official_code_builds_where_torch_device_meta_crashes(run_env, tiny_model_dir):
    """OpenGVLab's InternViT calls .item() on a torch.linspace in __init__, so it cannot be built under
    torch.device("meta"); the merge builds it through from_pretrained (accelerate's init_empty_weights,
    parameters only) and wraps the LLM in PEFT as XTuner does, so the checkpoint's names fit as saved."""
    from transformers import AutoConfig, AutoModel

    from foodie.merge import build_model, load_trained_state, read_run

    config = AutoConfig.from_pretrained(tiny_model_dir, trust_remote_code=True)
    with pytest.raises(RuntimeError, match="meta"), torch.device("meta"):
        AutoModel.from_config(config, trust_remote_code=True)
    model = build_model(tiny_model_dir, read_run(CPU_CONFIG), torch.float32)
    assert type(model.vision_model).__module__.endswith(".modeling_intern_vit")
    state = load_trained_state(run_env / "iter_2.pth")
    assert set(state) <= set(model.state_dict()) and any(".lora_A.default." in k for k in state)


# --------------------------------------------------------------------------- DeepSpeed

DS_ZERO2_CPU = {  # XTuner's deepspeed_zero2 without the "auto" dtypes it resolves through CUDA-only calls
    "gradient_accumulation_steps": "auto", "train_micro_batch_size_per_gpu": "auto", "gradient_clipping": "auto",
    "zero_allow_untested_optimizer": True, "zero_force_ds_cpu_optimizer": False,
    "zero_optimization": {"stage": 2, "overlap_comm": False}, "fp16": {"enabled": False}, "bf16": {"enabled": False},
}


@pytest.mark.slow
def test_deepspeed_zero2_checkpoint_folder_converts(tiny_model_dir, xtuner_data, tmp_path, monkeypatch):
    """A real DeepSpeed ZeRO-2 run on CPU (one gloo process) saves iter_N.pth as a folder of shards; the
    converter reads its fp32 master weights and the result verifies against the unmerged model."""
    import socket

    ds_config = tmp_path / "zero2_cpu.json"
    ds_config.write_text(json.dumps(DS_ZERO2_CPU))
    work = tmp_path / "ds-run"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1",
               **_env(tiny_model_dir, xtuner_data, work))
    cmd = [sys.executable, str(REPO / "tools" / "train.py"), "--config", str(CPU_CONFIG), "--deepspeed",
           str(ds_config), "--", "--cfg-options", "train_cfg.max_iters=2", "param_scheduler.0.start_factor=1.0",
           "param_scheduler.1.end=2", "default_hooks.checkpoint.interval=2"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    folder = work / "iter_2.pth"
    assert folder.is_dir() and (folder / "mp_rank_00_model_states.pt").is_file()

    for k, v in _env(tiny_model_dir, xtuner_data, work).items():
        monkeypatch.setenv(k, v)
    out = tmp_path / "merged"
    result = convert(CPU_CONFIG, "latest", out)
    assert result.checkpoint == folder
    v = result.verification
    assert v["max_abs_logit_diff"] <= v["tolerance"] < v["lora_effect"]
    assert json.loads((out / PROVENANCE_FILE).read_text())["checkpoint"].endswith("iter_2.pth")


def test_official_code_pipeline_merged_folder_evaluates_serves_and_publishes(run_env, merged_by_command,
                                                                            small_foodieqa_dir, tmp_path):
    """The whole course on the embedded checkpoint, which carries OpenGVLab's modeling files: the run trained
    above (data converted as tools/process_food.py does, tools/train.py), merged by the command line, is scored by
    tools/eval_food.py, answers through the demo's backend (streamed and batched alike, at the trained tile budget)
    and passes the publish dry run."""
    import shutil

    from mmengine.config import Config
    from rich.console import Console

    from foodie.inference import GenerationParams, Message, load_backend
    from foodie.publish import publish

    base = Path(os.environ["FOODIE_MODEL"])
    assert "resolve_attn_implementation" not in (base / "modeling_internlm2.py").read_text()  # not ours
    out = merged_by_command[0]
    evaluated = subprocess.run([sys.executable, str(REPO / "tools" / "eval_food.py"), "--model", str(out), "--label",
                                "tuned", "--data-root", str(small_foodieqa_dir), "--out", str(tmp_path / "eval"),
                                "--tasks", "sivqa", "--limit", "2", "--backend", "transformers",
                                "--max-new-tokens", "4"], capture_output=True, text=True, timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["models"]

    backend = load_backend(out, backend="transformers")  # what demo/app.py serves on a CPU, and evaluation loads
    assert backend.max_tiles == Config.fromfile(str(CPU_CONFIG)).max_dynamic_patch
    assert type(backend.model.vision_model).__module__.endswith(f"{out.name}.modeling_intern_vit")
    request = [Message("user", "这是什么菜？", images=[probe_image()])]
    params = GenerationParams(max_new_tokens=6)
    assert "".join(backend.stream(request, params)) == backend.generate([request], params)[0]

    mine = Path(shutil.copytree(out, tmp_path / out.name))  # the dry run writes the card into the folder
    published = publish(mine, "me/InternVL2-tiny-foodie", "hf", dry_run=True,
                        eval_report=tmp_path / "eval" / "report.md", console=Console(file=open(os.devnull, "w")))
    assert published.url is None and "modeling_internlm2.py" in {f.path for f in published.files}
