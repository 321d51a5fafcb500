"""tools/publish.py: checks that stop bad publishes, the model card, and uploads to a local stand-in of the
Hugging Face Hub HTTP API (tests/hub_standin.py) through huggingface_hub itself."""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from rich.console import Console
from safetensors import safe_open
from safetensors.numpy import save_file

from foodie.publish import (ACK_FLAG, CARD_FILE, CARD_MARKER, PROVENANCE_FILE, PublishError, check_checkpoint,
                            publish)
from hub_standin import HubStandin  # tests/ is on sys.path (pytest rootdir-less import)

REPO_ROOT = Path(__file__).resolve().parent.parent
TOKEN = "hf_standinSECRET0123456789abcdef"
REPO_ID = "tester/InternVL2-2B-FoodieQA"

PROVENANCE = {
    "base_model": "OpenGVLab/InternVL2-2B",
    "config": "xtuner_configs/internvl2_2b_foodie_lora.py",
    "config_summary": {"lr": 3e-5, "epochs": 3, "batch_size": 4, "max_length": 4096},
    "checkpoint": "work/runs/foodie/iter_120.pth",
    "date": "2026-11-26T01:00:00Z",
    "lora": {"r": 128, "alpha": 256, "dropout": 0.05},
    "data": {"name": "lyan62/FoodieQA", "synthetic": False, "train_questions": 200, "held_out": 56},
}
EVAL_MD = """# FoodieQA held-out evaluation

| model | questions | accuracy zh |
|---|---|---|
| InternVL2-2B | 56 | 48.21 |
| fine-tuned | 56 | 62.50 |

![accuracy chart](accuracy.png)
"""


# ---------------------------------------------------------------------------------------------------------
# checkpoint folders: the embedded tiny model (fixture ``tiny``) and, for sharded/damaged variants, a small
# hand-made folder in the same official layout (``make_checkpoint``)


def _write_remote_code(d: Path) -> None:
    code = {
        "configuration_internvl_chat.py": "from .configuration_intern_vit import InternVisionConfig\n"
                                          "from .configuration_internlm2 import InternLM2Config\n"
                                          "class InternVLChatConfig:\n    pass\n",
        "configuration_intern_vit.py": "class InternVisionConfig:\n    pass\n",
        "configuration_internlm2.py": "class InternLM2Config:\n    pass\n",
        "modeling_internvl_chat.py": "from .configuration_internvl_chat import InternVLChatConfig\n"
                                     "from .modeling_intern_vit import InternVisionModel\n"
                                     "from .modeling_internlm2 import InternLM2ForCausalLM\n"
                                     "from .conversation import get_conv_template\n"
                                     "class InternVLChatModel:\n    pass\n",
        "modeling_intern_vit.py": "class InternVisionModel:\n    pass\n",
        "modeling_internlm2.py": "class InternLM2ForCausalLM:\n    pass\n",
        "conversation.py": "def get_conv_template(name):\n    return name\n",
        "tokenization_internlm2.py": "class InternLM2Tokenizer:\n    pass\n",
    }
    for name, text in code.items():
        (d / name).write_text(text)


def make_checkpoint(d: Path, *, sharded: bool = False, provenance: dict | None = PROVENANCE) -> Path:
    d.mkdir(parents=True)
    config = {
        "architectures": ["InternVLChatModel"], "model_type": "internvl_chat", "template": "internlm2-chat",
        "auto_map": {"AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
                     "AutoModel": "modeling_internvl_chat.InternVLChatModel",
                     "AutoModelForCausalLM": "modeling_internvl_chat.InternVLChatModel"},
        "force_image_size": 448, "max_dynamic_patch": 12, "downsample_ratio": 0.5,
        "vision_config": {"model_type": "intern_vit_6b", "hidden_size": 8, "image_size": 448, "patch_size": 14},
        "llm_config": {"model_type": "internlm2", "architectures": ["InternLM2ForCausalLM"], "hidden_size": 16},
    }
    (d / "config.json").write_text(json.dumps(config, indent=2))
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 92542]}))
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "InternLM2Tokenizer", "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]}}))
    (d / "special_tokens_map.json").write_text(json.dumps({"eos_token": "</s>"}))
    (d / "tokenizer.model").write_bytes(np.random.default_rng(1).bytes(3000))
    _write_remote_code(d)
    rng = np.random.default_rng(0)
    vision = {"vision_model.embeddings.patch_embedding.weight": rng.standard_normal((8, 3, 14, 14), np.float32),
              "vision_model.encoder.layers.0.attn.qkv.weight": rng.standard_normal((24, 8), np.float32)}
    rest = {"mlp1.1.weight": rng.standard_normal((16, 32), np.float32),
            "language_model.model.tok_embeddings.weight": rng.standard_normal((300, 16), np.float32),
            "language_model.output.weight": rng.standard_normal((300, 16), np.float32)}
    if sharded:
        save_file(vision, str(d / "model-00001-of-00002.safetensors"))
        save_file(rest, str(d / "model-00002-of-00002.safetensors"))
        weight_map = {**{k: "model-00001-of-00002.safetensors" for k in vision},
                      **{k: "model-00002-of-00002.safetensors" for k in rest}}
        (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    else:
        save_file({**vision, **rest}, str(d / "model.safetensors"))
    if provenance is not None:
        (d / PROVENANCE_FILE).write_text(json.dumps(provenance))
    return d


@pytest.fixture
def tiny(tiny_model_dir, tmp_path) -> Path:
    """A merged-model folder as tools/convert_to_official.py leaves it: the embedded tiny InternVL2 (conftest's
    session build, what tools/make_tiny_model.py writes) plus a provenance note."""
    model = tmp_path / "merged"
    shutil.copytree(tiny_model_dir, model)
    (model / PROVENANCE_FILE).write_text(json.dumps(PROVENANCE))
    return model


def files_of(d: Path) -> set[str]:
    return {p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file() and not p.name.startswith(".")}


def run_cli(*args: str, env_extra: dict | None = None, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE", "MODELSCOPE"))}
    env.update({"COLUMNS": "200", "HF_HUB_DISABLE_TELEMETRY": "1"})
    env.update(env_extra or {})
    # a test's own PYTHONPATH (a stand-in package) first, then this checkout's foodie
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), str(REPO_ROOT)]))
    return subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "publish.py"), *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def publish_cmd(capsys, monkeypatch):
    """tools/publish.py's main run in this process (as `foodie publish ARGS`): exit code, stdout, stderr."""
    from foodie import cli

    monkeypatch.setattr(sys, "argv", list(sys.argv))  # the stage runner renames the program

    def run(*args) -> subprocess.CompletedProcess:
        capsys.readouterr()
        code = cli.main(["publish", *map(str, args)])
        return subprocess.CompletedProcess(args, code, *capsys.readouterr())
    return run


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


# ---------------------------------------------------------------------------------------------------------
# dry run: exact file list and card


def test_dry_run_lists_exact_files_and_writes_the_card(tiny, tmp_path):
    model = tiny
    (model / ".cache").mkdir()
    (model / ".cache" / "junk").write_text("not uploaded")
    report = tmp_path / "report.md"
    report.write_text(EVAL_MD)
    expected = files_of(model) - {".cache/junk"} | {CARD_FILE}
    (model / CARD_FILE).write_text("# InternVL2-2B\n\nThe base model's card, copied with the weights.\n")

    console = quiet()
    result = publish(model, REPO_ID, "hf", dry_run=True, eval_report=report, accept_foodieqa_licence=True,
                     console=console)

    assert result.url is None
    assert {f.path for f in result.files} == expected
    assert {f.path: f.size for f in result.files} == {p: (model / p).stat().st_size for p in expected}
    out = console.file.getvalue()
    for path in expected:
        assert path in out
    assert f"{len(expected)} files" in out and "nothing uploaded" in out
    assert "Replacing" in out and "not written by this tool" in out  # the base model's card is replaced
    console.file.seek(0)
    console.file.truncate(0)
    publish(model, REPO_ID, "hf", dry_run=True, eval_report=report, accept_foodieqa_licence=True, console=console)
    assert "Replacing" not in console.file.getvalue()  # our own card is regenerated silently

    card = (model / CARD_FILE).read_text()
    assert result.card_path == model / CARD_FILE
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    meta = yaml.safe_load(front)
    assert meta["base_model"] == "OpenGVLab/InternVL2-2B"
    assert meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "image-text-to-text"
    assert meta["datasets"] == ["lyan62/FoodieQA"]
    assert meta["license"] == "cc-by-nc-nd-4.0"
    assert {"internvl2", "foodieqa"} <= set(meta["tags"])
    assert CARD_MARKER in body
    assert "# InternVL2-2B-FoodieQA" in body
    assert "CC BY-NC-ND 4.0" in body and "non-commercial" in body
    # training summary from the provenance note
    assert "| lora: r | 128 |" in body and "| lora: alpha | 256 |" in body
    assert "| config | xtuner_configs/internvl2_2b_foodie_lora.py |" in body
    assert "| config: lr | 3e-05 |" in body and "| data: held_out | 56 |" in body
    # the evaluation table, verbatim, headings below the card's, the local chart dropped
    assert "### FoodieQA held-out evaluation" in body
    assert "| fine-tuned | 56 | 62.50 |" in body and "| InternVL2-2B | 56 | 48.21 |" in body
    assert "](accuracy.png)" not in body
    # usage with transformers and LMDeploy
    assert f'path = "{REPO_ID}"' in body and "trust_remote_code=True" in body and "def load_image(" in body
    assert 'ChatTemplateConfig("internvl2-internlm2")' in body and f'pipeline("{REPO_ID}"' in body
    assert "## Limitations" in body
    # parameter count, read from the safetensors headers
    with safe_open(str(model / "model.safetensors"), "pt") as f:
        num_parameters = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    assert f"| parameters | {num_parameters:,} |" in body


def test_card_snippet_is_valid_python_and_metrics_json_becomes_a_table(tmp_path):
    model = make_checkpoint(tmp_path / "merged")
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"sivqa": {"zh": {"accuracy": 0.625, "n": 56}}, "model": "merged"}))
    publish(model, REPO_ID, "hf", dry_run=True, eval_report=metrics, accept_foodieqa_licence=True, console=quiet())
    card = (model / CARD_FILE).read_text()
    assert "| sivqa.zh.accuracy | 0.625 |" in card and "| sivqa.zh.n | 56 |" in card
    for block in card.split("```python\n")[1:]:
        compile(block.split("```")[0], "card snippet", "exec")


def test_eval_food_metrics_json_is_rendered_by_its_own_report_writer(tmp_path):
    from foodie import evaluation
    from foodie.report import render_report
    rows = [dict(item_id=f"sivqa:{i}", task="sivqa", question_type="main-ingredient", cuisine="Sichuan",
                 answer="A" if i < 5 else "B", letter="A", score=float(i < 5), guess=None, option_text="A",
                 response="A") for i in range(8)]
    run = dict(label="fine-tuned", model_dir="m", backend="transformers", fingerprint="f", rows=rows)
    metrics = evaluation.build_metrics([run], "zh", tmp_path, None)
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    (tmp_path / "report.md").write_text(render_report(metrics, "accuracy.png"))

    model = make_checkpoint(tmp_path / "merged")
    publish(model, REPO_ID, "hf", dry_run=True, eval_report=tmp_path / "metrics.json", accept_foodieqa_licence=True,
            console=quiet())
    from_json = (model / CARD_FILE).read_text()
    publish(model, REPO_ID, "hf", dry_run=True, eval_report=tmp_path / "report.md", accept_foodieqa_licence=True,
            console=quiet())
    from_md = (model / CARD_FILE).read_text()
    for card in (from_json, from_md):
        assert "### FoodieQA evaluation" in card and "#### Accuracy" in card
        assert "| fine-tuned | single-image VQA | 62.5 |" in card  # 5 of 8 right
        assert "](accuracy.png)" not in card


def test_card_transformers_usage_runs_and_tiles_like_the_project(tiny, tmp_path, capsys):
    """The card's transformers snippet, run as written (only the repo id and image path replaced) against the
    tiny model; its self-contained load_image gives the tensors foodie.image_tiling (checked against the
    official code) gives, so people feed the published model images the way it was trained."""
    torch = pytest.importorskip("torch")
    from PIL import Image

    from foodie.image_tiling import load_image as project_load_image

    publish(tiny, REPO_ID, "hf", dry_run=True, accept_foodieqa_licence=True, console=quiet())
    card = (tiny / CARD_FILE).read_text()
    snippet = card.split("### transformers")[1].split("```python\n")[1].split("```")[0]
    dish = tmp_path / "dish.png"
    size = json.loads((tiny / "config.json").read_text())["force_image_size"]  # one tile of the model's size
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(dish)
    assert f'"{REPO_ID}"' in snippet and '"dish.jpg"' in snippet
    snippet = snippet.replace(f'"{REPO_ID}"', repr(str(tiny))).replace('"dish.jpg"', repr(str(dish)))
    namespace: dict = {}
    exec(compile(snippet, "card snippet", "exec"), namespace)
    assert namespace["model"].config.force_image_size == size  # the card's code reads the tile side from the model
    assert namespace["pixel_values"].shape == (1, 3, size, size)
    assert capsys.readouterr().out.endswith("\n")  # model.chat answered (random weights: any text)

    rng = np.random.default_rng(4)
    for w, h in [(1600, 500), (300, 900), (60, 40)]:  # wide, tall, tiny
        path = tmp_path / f"{w}x{h}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        ours = namespace["load_image"](str(path), size=size)
        theirs = project_load_image(path, input_size=size)
        assert ours.shape == theirs.shape, (w, h)
        assert torch.allclose(ours, theirs, atol=1e-5), (w, h)


def test_card_without_provenance_says_so_and_synthetic_needs_no_ack(tmp_path):
    bare = make_checkpoint(tmp_path / "bare", provenance=None)
    publish(bare, REPO_ID, "hf", dry_run=True, accept_foodieqa_licence=True, console=quiet())
    card = (bare / CARD_FILE).read_text()
    assert "training setup is not recorded" in card and "No evaluation report" in card

    synthetic = make_checkpoint(tmp_path / "synthetic", provenance={"data": {"name": "synthetic", "synthetic": True}})
    publish(synthetic, REPO_ID, "hf", dry_run=True, console=quiet())  # no acknowledgement needed
    meta = yaml.safe_load((synthetic / CARD_FILE).read_text().split("---\n")[1])
    assert meta["license"] == "mit" and "datasets" not in meta
    assert "synthetic data only" in (synthetic / CARD_FILE).read_text()


def test_card_names_the_base_the_weights_came_from_never_a_2b_guess(tmp_path):
    """An 8B run (InternLM2.5-7B language model) merged from a local base folder: the card names the base its
    folder records (hub-cache layout), and claims no base at all when nothing records one (it used to say
    OpenGVLab/InternVL2-2B whenever the provenance held a local path). The uploaded note keeps no local path."""
    base = tmp_path / "hub" / "models--OpenGVLab--InternVL2-8B" / "snapshots" / "0123abc"
    cases = {"recorded": (str(base), "OpenGVLab/InternVL2-8B"), "unrecorded": ("/models/my-internvl", None)}
    for case, (base_path, expected) in cases.items():
        model = make_checkpoint(tmp_path / case, provenance={**PROVENANCE, "base_model": base_path})
        config = json.loads((model / "config.json").read_text())
        config["llm_config"].update(hidden_size=4096, num_hidden_layers=32, num_key_value_heads=8,
                                    intermediate_size=14336, _name_or_path="internlm/internlm2_5-7b-chat")
        (model / "config.json").write_text(json.dumps(config))
        if case == "recorded":
            shutil.copytree(model, base, ignore=shutil.ignore_patterns(PROVENANCE_FILE))
        publish(model, REPO_ID.replace("2B", "8B"), "hf", dry_run=True, accept_foodieqa_licence=True,
                console=quiet())
        card = (model / CARD_FILE).read_text()
        assert yaml.safe_load(card.split("---\n")[1]).get("base_model") == expected
        assert "InternVL2-2B" not in card
        note = (model / PROVENANCE_FILE).read_text()
        assert str(tmp_path) not in note and "/models/" not in note
        assert json.loads(note)["base_model"] == expected


# ---------------------------------------------------------------------------------------------------------
# checks that stop bad publishes (through the command line, as users meet them)


@pytest.mark.parametrize("repo_id", ["tester/foodie-2b", "tester/internvl2-foodie"])
def test_name_without_InternVL_is_refused(publish_cmd, tmp_path, repo_id):
    model = make_checkpoint(tmp_path / "merged")
    proc = publish_cmd("--model", str(model), "--repo-id", repo_id, "--hub", "hf", "--dry-run", ACK_FLAG)
    assert proc.returncode == 2
    assert '"InternVL"' in proc.stderr and "course requires" in proc.stderr
    assert not (model / CARD_FILE).exists()


def test_foodieqa_model_needs_the_licence_acknowledgement(publish_cmd, tmp_path):
    model = make_checkpoint(tmp_path / "merged")
    proc = publish_cmd("--model", str(model), "--repo-id", REPO_ID, "--hub", "hf", "--dry-run")
    assert proc.returncode == 2
    assert "CC BY-NC-ND 4.0" in proc.stderr and ACK_FLAG in proc.stderr and "NonCommercial" in proc.stderr
    assert not (model / CARD_FILE).exists()
    ok = publish_cmd("--model", str(model), "--repo-id", REPO_ID, "--hub", "hf", "--dry-run", ACK_FLAG)
    assert ok.returncode == 0, ok.stderr
    assert (model / CARD_FILE).exists()


def test_foodieqa_trained_model_card_states_the_terms_and_own_photos_need_no_flag(publish_cmd, tmp_path):
    """The provenance process_food -> train -> merge records (foodie.terms.describe_source) decides: a model
    trained on FoodieQA is refused without the acknowledgement and its card lists the terms it inherits; a model
    trained on the publisher's own photos publishes without it."""
    from foodie.terms import TERMS_EN, TERMS_ZH, describe_source

    data = tmp_path / "FoodieQA"
    data.mkdir()
    foodie_data = {**describe_source(data, terms_accepted=True), "train_questions": 200, "held_out": 56}
    model = make_checkpoint(tmp_path / "foodie", provenance={**PROVENANCE, "data": foodie_data})
    refused = publish_cmd("--model", str(model), "--repo-id", REPO_ID, "--hub", "hf", "--dry-run")
    assert refused.returncode == 2 and ACK_FLAG == "--accept-foodieqa-terms" and ACK_FLAG in refused.stderr
    assert "EVALUATION ONLY" in refused.stderr and "authors' permission" in refused.stderr
    assert not (model / CARD_FILE).exists()
    publish(model, REPO_ID, "hf", dry_run=True, accept_foodieqa_licence=True, console=quiet())
    card = (model / CARD_FILE).read_text(encoding="utf-8")
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["license"] == "cc-by-nc-nd-4.0" and meta["datasets"] == ["lyan62/FoodieQA"]
    assert "Training data: FoodieQA" in card and "inherits the non-commercial terms" in card
    assert all(t in card for t in TERMS_EN + TERMS_ZH)
    assert publish_cmd("--model", str(model), "--repo-id", REPO_ID, "--hub", "hf", "--dry-run",
                       "--i-accept-foodieqa-license").returncode == 0  # the earlier flag still works

    own = {"kind": "own-photos", "name": "own photos (tools/photos_to_foodieqa.py)", "synthetic": False,
           "source": "/home/me/photos", "photos": 120, "dishes": 12}
    mine = make_checkpoint(tmp_path / "mine", provenance={**PROVENANCE, "data": own})
    ok = publish_cmd("--model", str(mine), "--repo-id", REPO_ID, "--hub", "hf", "--dry-run")
    assert ok.returncode == 0, ok.stderr
    card = (mine / CARD_FILE).read_text(encoding="utf-8")
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["license"] == "mit" and "datasets" not in meta and "own-photos" in meta["tags"]
    assert "own dish photos" in card and "no FoodieQA data was trained on" in card


def _break(model: Path, how: str) -> str:
    """Damage the folder; return text the error must contain (the file it names)."""
    if how == "no config":
        (model / "config.json").unlink()
        return "config.json: missing"
    if how == "pickle weights":
        (model / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
        return "pytorch_model.bin: pickle file"
    if how == "no remote code":
        (model / "modeling_intern_vit.py").unlink()  # imported by modeling_internvl_chat.py
        return "modeling_intern_vit.py: missing"
    if how == "no auto_map":
        config = json.loads((model / "config.json").read_text())
        del config["auto_map"]
        (model / "config.json").write_text(json.dumps(config))
        return "auto_map must name AutoConfig and AutoModel"
    if how == "no tokenizer":
        for name in ("tokenizer.model", "tokenizer.json"):
            (model / name).unlink(missing_ok=True)
        return "no tokenizer vocabulary"
    if how == "missing shard":
        (model / "model-00002-of-00002.safetensors").unlink()
        return "model-00002-of-00002.safetensors: missing"
    if how == "truncated shard":
        shard = model / "model-00001-of-00002.safetensors"
        shard.write_bytes(shard.read_bytes()[:-100])
        return "model-00001-of-00002.safetensors: unreadable safetensors file"
    if how == "unmerged lora":
        save_file({"language_model.model.layers.0.attention.wqkv.lora_A.weight": np.zeros((4, 4), np.float32)},
                  str(model / "model-00002-of-00002.safetensors"))
        return "model-00002-of-00002.safetensors: lacks tensor"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["no config", "pickle weights", "no remote code", "no auto_map", "no tokenizer",
                                 "missing shard", "truncated shard", "unmerged lora"])
def test_non_loadable_folders_are_refused(request, tmp_path, how):
    sharded_only = how in ("missing shard", "truncated shard", "unmerged lora")
    model = make_checkpoint(tmp_path / "merged", sharded=True) if sharded_only else request.getfixturevalue("tiny")
    check_checkpoint(model)  # intact: passes
    expected = _break(model, how)
    with pytest.raises(PublishError) as err:
        publish(model, REPO_ID, "hf", dry_run=True, accept_foodieqa_licence=True, console=quiet())
    assert expected in str(err.value)
    assert not (model / CARD_FILE).exists()


def test_lora_tensors_left_in_the_weights_are_refused(tmp_path):
    model = make_checkpoint(tmp_path / "merged")
    weights = {"vision_model.x": np.zeros(2, np.float32), "mlp1.0.weight": np.zeros(2, np.float32),
               "language_model.model.layers.0.attention.wqkv.lora_A.weight": np.zeros(2, np.float32)}
    save_file(weights, str(model / "model.safetensors"))
    with pytest.raises(PublishError, match="unmerged LoRA weights"):
        check_checkpoint(model)


# ---------------------------------------------------------------------------------------------------------
# uploads to the local stand-in of the hub


def _hf_env(hub: HubStandin, tmp_path: Path, token: str | None = TOKEN) -> dict:
    env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_VERBOSITY": "debug",
           "HF_HUB_ETAG_TIMEOUT": "5"}
    if token is not None:
        env["HF_TOKEN"] = token
    return env


def _assert_same_bytes(hub: HubStandin, model: Path):
    remote = hub.state.repos[REPO_ID]["files"]
    assert set(remote) == files_of(model)
    for path, data in remote.items():
        assert hashlib.sha256(data).hexdigest() == hashlib.sha256((model / path).read_bytes()).hexdigest(), path


@pytest.mark.parametrize("layout", ["tiny model", "sharded"])
def test_upload_sends_every_file_byte_for_byte_and_never_shows_the_token(request, tmp_path, layout):
    model = request.getfixturevalue("tiny") if layout == "tiny model" else \
        make_checkpoint(tmp_path / "merged", sharded=True)
    with HubStandin(TOKEN) as hub:
        proc = run_cli("--model", str(model), "--repo-id", REPO_ID, "--hub", "hf", "--private", ACK_FLAG,
                       env_extra=_hf_env(hub, tmp_path))
        assert proc.returncode == 0, proc.stderr
        _assert_same_bytes(hub, model)
        state = hub.state
        assert state.repos[REPO_ID]["private"] is True
        # LFS carried the weights and the tokenizer model; the rest went inside the commit
        lfs_paths = {p for p in files_of(model) if p.endswith((".safetensors", ".model"))}
        assert sorted(state.lfs_puts) == sorted(hashlib.sha256((model / p).read_bytes()).hexdigest()
                                                for p in lfs_paths)
        assert len(state.commits) == 1 and state.commits[0]["paths"] == sorted(files_of(model))
        # the token was used (every request carried it) and never appears in what the user sees
        assert state.authorizations and all(a == f"Bearer {TOKEN}" for a in state.authorizations)
        assert state.storage_authorizations and not any(state.storage_authorizations)  # not sent to storage
    assert TOKEN not in proc.stdout + proc.stderr
    assert TOKEN[3:20] not in proc.stdout + proc.stderr
    written = [p for p in tmp_path.rglob("*") if p.is_file()]  # the folder, the card, the client's HF_HOME
    assert written and not any(TOKEN.encode() in p.read_bytes() for p in written)
    assert "Published" in proc.stdout and "README.md" in proc.stdout


def test_interrupted_upload_continues_when_rerun(tiny, tmp_path):
    model = tiny
    shard_oid = hashlib.sha256((model / "model.safetensors").read_bytes()).hexdigest()
    with HubStandin(TOKEN, lfs_threshold=100_000) as hub:  # tokenizer.json (~145 KB) goes through LFS too
        hub.state.fail_put_once = {shard_oid}
        first = run_cli("--model", str(model), "--repo-id", REPO_ID, "--hub", "hf", ACK_FLAG,
                        env_extra=_hf_env(hub, tmp_path))
        assert first.returncode == 2
        assert "Re-running the same command continues" in first.stderr
        assert hub.state.commits == [] and hub.state.repos[REPO_ID]["files"] == {}
        stored_before = set(hub.state.lfs)
        assert stored_before and shard_oid not in stored_before
        puts_before = len(hub.state.lfs_puts)

        second = run_cli("--model", str(model), "--repo-id", REPO_ID, "--hub", "hf", ACK_FLAG,
                         env_extra=_hf_env(hub, tmp_path))
        assert second.returncode == 0, second.stderr
        assert hub.state.lfs_puts[puts_before:] == [shard_oid]  # only the file that did not make it
        _assert_same_bytes(hub, model)

        # publishing the same folder again sends nothing and makes no empty commit
        third = run_cli("--model", str(model), "--repo-id", REPO_ID, "--hub", "hf", ACK_FLAG,
                        env_extra=_hf_env(hub, tmp_path))
        assert third.returncode == 0, third.stderr
        assert hub.state.lfs_puts[puts_before:] == [shard_oid] and len(hub.state.commits) == 1
    for proc in (first, second, third):
        assert TOKEN not in proc.stdout + proc.stderr


def test_missing_or_rejected_token_is_a_clear_error(tiny, tmp_path):
    model = tiny
    with HubStandin(TOKEN) as hub:
        missing = run_cli("--model", str(model), "--repo-id", REPO_ID, "--hub", "hf", ACK_FLAG,
                          env_extra=_hf_env(hub, tmp_path, token=None))
        assert missing.returncode == 2
        assert "No Hugging Face token" in missing.stderr and "HF_TOKEN" in missing.stderr
        assert hub.state.requests == []

        wrong = "hf_wrongTOKEN9876543210"
        rejected = run_cli("--model", str(model), "--repo-id", REPO_ID, "--hub", "hf", ACK_FLAG,
                           env_extra=_hf_env(hub, tmp_path, token=wrong))
        assert rejected.returncode == 2
        assert "rejected the token from the HF_TOKEN environment variable (401" in rejected.stderr
        assert wrong not in rejected.stdout + rejected.stderr
        assert hub.state.repos == {}
        assert hub.state.authorizations == [f"Bearer {wrong}"]


# ---------------------------------------------------------------------------------------------------------
# ModelScope: the real service cannot be reached offline


def test_modelscope_without_its_client_explains_how_to_install(tmp_path):
    hidden = tmp_path / "no-modelscope" / "modelscope_hub"  # as if not installed, even where it is
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError(\"No module named 'modelscope_hub'\")\n")
    model = make_checkpoint(tmp_path / "merged")
    proc = run_cli("--model", str(model), "--repo-id", REPO_ID, "--hub", "modelscope", ACK_FLAG,
                   env_extra={"MODELSCOPE_API_TOKEN": TOKEN, "PYTHONPATH": str(hidden.parent)})
    assert proc.returncode == 2
    assert "pip install 'internvl-foodie[publish]'" in proc.stderr
    assert TOKEN not in proc.stdout + proc.stderr


FAKE_MODELSCOPE_HUB = '''
"""Test double of modelscope_hub 0.5.1 (the client modelscope>=1.40 installs): the signatures that
foodie.publish calls, copied from the real package; every call is recorded in $FAKE_MS_LOG."""
import json, os
from pathlib import Path

def _log(name, **kwargs):
    path = Path(os.environ["FAKE_MS_LOG"])
    calls = json.loads(path.read_text()) if path.exists() else []
    calls.append({"call": name, **kwargs})
    path.write_text(json.dumps(calls))

class HubApi:
    def __init__(self, config=None, *, endpoint=None, token=None, user_agent=None):
        self.token = token
        _log("init", token_is_env=token == os.environ.get("MODELSCOPE_API_TOKEN"))

    def whoami(self):
        from modelscope_hub.errors import AuthenticationError
        if self.token != os.environ["FAKE_MS_GOOD_TOKEN"]:
            raise AuthenticationError("[E401] token " + str(self.token) + " is invalid")
        return type("UserInfo", (), {"username": "tester"})()

    def create_repo(self, repo_id, repo_type, *, visibility=None, license=None, chinese_name=None,
                    description=None, gated_mode=None, **extra):
        _log("create_repo", repo_id=repo_id, repo_type=repo_type, visibility=visibility)
        if os.environ.get("FAKE_MS_EXISTS"):
            from modelscope_hub.errors import AlreadyExistsError
            raise AlreadyExistsError("exists")

    def upload_folder(self, repo_id, repo_type, folder_path, *, path_in_repo="", commit_message=None,
                      commit_description=None, revision=None, allow_patterns=None, ignore_patterns=None,
                      max_workers=None, use_cache=None, disable_tqdm=False, sync_remote_repo=False,
                      tracker_path=None, progress_callback=None):
        import fnmatch
        files = sorted(p.relative_to(folder_path).as_posix() for p in Path(folder_path).rglob("*") if p.is_file())
        sent = [f for f in files if any(fnmatch.fnmatch(f, pat) for pat in allow_patterns)]
        _log("upload_folder", repo_id=repo_id, repo_type=repo_type, sent=sent, commit_message=commit_message)
'''
FAKE_MODELSCOPE_ERRORS = '''
class HubError(Exception): pass
class AuthenticationError(HubError): pass
class PermissionDeniedError(HubError): pass
class AlreadyExistsError(HubError): pass
'''
FAKE_MODELSCOPE_CONFIG = '''
def get_default_config():
    return type("HubConfig", (), {"token": None})()
'''


def test_modelscope_upload_calls_the_client_with_the_checked_files(tmp_path):
    """Glue test with a recording double of modelscope_hub's HubApi (no ModelScope service offline)."""
    fake = tmp_path / "fake" / "modelscope_hub"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(FAKE_MODELSCOPE_HUB)
    (fake / "errors.py").write_text(FAKE_MODELSCOPE_ERRORS)
    (fake / "config.py").write_text(FAKE_MODELSCOPE_CONFIG)
    model = make_checkpoint(tmp_path / "merged")
    (model / ".ms_upload_cache").write_text("{}")  # the client's resume cache: never part of the upload
    log = tmp_path / "calls.json"
    env = {"PYTHONPATH": str(tmp_path / "fake"), "FAKE_MS_LOG": str(log), "FAKE_MS_GOOD_TOKEN": TOKEN,
           "HOME": str(tmp_path / "home")}

    proc = run_cli("--model", str(model), "--repo-id", REPO_ID, "--hub", "modelscope", "--private", ACK_FLAG,
                   env_extra={**env, "MODELSCOPE_API_TOKEN": TOKEN, "FAKE_MS_EXISTS": "1"})
    assert proc.returncode == 0, proc.stderr
    calls = json.loads(log.read_text())
    assert [c["call"] for c in calls] == ["init", "create_repo", "upload_folder"]
    assert calls[0]["token_is_env"] is True
    assert calls[1] == {"call": "create_repo", "repo_id": REPO_ID, "repo_type": "model", "visibility": "private"}
    assert calls[2]["sent"] == sorted(files_of(model))  # README.md included, hidden cache excluded
    assert TOKEN not in proc.stdout + proc.stderr

    log.unlink()
    wrong = "ms-wrong-token-123456789"
    rejected = run_cli("--model", str(model), "--repo-id", REPO_ID, "--hub", "modelscope", ACK_FLAG,
                       env_extra={**env, "MODELSCOPE_API_TOKEN": wrong})
    assert rejected.returncode == 2
    assert "ModelScope rejected the token from the MODELSCOPE_API_TOKEN environment variable" in rejected.stderr
    assert wrong not in rejected.stdout + rejected.stderr
    assert [c["call"] for c in json.loads(log.read_text())] == ["init"]

    missing = run_cli("--model", str(model), "--repo-id", REPO_ID, "--hub", "modelscope", ACK_FLAG, env_extra=env)
    assert missing.returncode == 2 and "No ModelScope token" in missing.stderr
