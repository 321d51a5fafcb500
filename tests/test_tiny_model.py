"""The embedded tiny checkpoint builder: official folder layout, determinism, tokenizer, full-size shapes."""
import hashlib
import json
import math
import re
import shutil
from pathlib import Path

import pytest

from foodie import tiny_model
from foodie.tiny_model import (OFFICIAL_FILES, RECIPE_FILE, REMOTE_CODE_DIR, REMOTE_CODE_FILES, parameter_shapes,
                               write_checkpoint, xtuner_package_dir)


def tiny_model_is_current(folder, seed: int = 0) -> bool:
    """True when `folder` holds the tiny model this code would write for `seed` (its recipe file matches)."""
    try:
        return json.loads((Path(folder) / RECIPE_FILE).read_text(encoding='utf-8')) == tiny_model.recipe(seed)
    except (OSError, ValueError):
        return False


def file_hashes(folder: Path) -> dict:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.iterdir())}


def test_folder_has_the_official_files(tiny_model_dir):
    names = {f.name for f in tiny_model_dir.iterdir()}
    expected = {'config.json', 'generation_config.json', 'model.safetensors', 'tokenizer.json',
                'tokenizer_config.json', 'special_tokens_map.json', *REMOTE_CODE_FILES}
    assert expected <= names, f'missing: {expected - names}'
    assert not any(n.startswith('.') or n.endswith('.tmp') for n in names)
    size = sum(f.stat().st_size for f in tiny_model_dir.iterdir())
    assert size < 5e6, f'the tiny checkpoint should be a few MB, is {size / 1e6:.1f} MB'


def test_checkpoint_carries_opengvlabs_files_and_our_chat_files(tiny_model_dir):
    """The folder runs what InternVL2-2B downloads with: OpenGVLab's InternViT and InternLM2 files, read from the
    installed XTuner (its InternViT with the released drop-path line written back), and the project's InternVL
    chat files, which XTuner does not ship."""
    xtuner = xtuner_package_dir()
    for fname in REMOTE_CODE_FILES:
        if fname not in OFFICIAL_FILES:
            assert (tiny_model_dir / fname).read_bytes() == (REMOTE_CODE_DIR / fname).read_bytes()
        elif fname != 'modeling_intern_vit.py':
            assert (tiny_model_dir / fname).read_bytes() == (xtuner / OFFICIAL_FILES[fname]).read_bytes()
    vit = (tiny_model_dir / 'modeling_intern_vit.py').read_text().splitlines()
    xtuner_vit = (xtuner / OFFICIAL_FILES['modeling_intern_vit.py']).read_text().splitlines()
    released = [line for line in vit if line not in xtuner_vit]
    assert released == ['        dpr = [x.item() for x in torch.linspace(0, config.drop_path_rate, '
                        'config.num_hidden_layers)]']
    assert len(xtuner_vit) - len(vit) == 2  # XTuner's comment line and numpy line, replaced by the released line


def load_cli():
    import importlib.util

    spec = importlib.util.spec_from_file_location('make_tiny_model', Path(tiny_model.__file__).parent.parent
                                                  / 'tools' / 'make_tiny_model.py')
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    return cli


def test_missing_xtuner_files_are_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tiny_model, 'xtuner_package_dir', lambda: tmp_path / 'no-xtuner')
    with pytest.raises(RuntimeError, match='xtuner==0.2.0'):
        write_checkpoint(tmp_path / 'out')
    assert load_cli().main(['--out', str(tmp_path / 'out')]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'no-xtuner' in err and 'xtuner==0.2.0' in err
    assert not (tmp_path / 'out').exists()


def test_config_json_matches_internvl2_2b_layout(tiny_model_dir):
    config = json.loads((tiny_model_dir / 'config.json').read_text())
    assert config['architectures'] == ['InternVLChatModel']
    assert config['model_type'] == 'internvl_chat'
    assert config['auto_map'] == {'AutoConfig': 'configuration_internvl_chat.InternVLChatConfig',
                                  'AutoModel': 'modeling_internvl_chat.InternVLChatModel',
                                  'AutoModelForCausalLM': 'modeling_internvl_chat.InternVLChatModel'}
    assert {k: config[k] for k in ('template', 'downsample_ratio', 'force_image_size', 'select_layer', 'ps_version',
                                   'dynamic_image_size', 'max_dynamic_patch', 'min_dynamic_patch',
                                   'use_thumbnail')} == {
        'template': 'internlm2-chat', 'downsample_ratio': 0.5, 'force_image_size': 224, 'select_layer': -1,
        'ps_version': 'v2', 'dynamic_image_size': True, 'max_dynamic_patch': 12, 'min_dynamic_patch': 1,
        'use_thumbnail': True}
    vision, llm = config['vision_config'], config['llm_config']
    assert vision['model_type'] == 'intern_vit_6b' and vision['architectures'] == ['InternVisionModel']
    assert (vision['image_size'], vision['patch_size']) == (224, 14)  # 64 tokens per tile (InternVL2-2B: 448, 256)
    assert llm['model_type'] == 'internlm2' and llm['architectures'] == ['InternLM2ForCausalLM']
    assert llm['rope_scaling'] == {'type': 'dynamic', 'factor': 2.0}
    assert llm['num_attention_heads'] > llm['num_key_value_heads']  # grouped-query attention is exercised
    tokenizer_config = json.loads((tiny_model_dir / 'tokenizer_config.json').read_text())
    assert llm['vocab_size'] == len(json.loads((tiny_model_dir / 'tokenizer.json').read_text())['model']['vocab']) \
        + len(tiny_model.CHAT_TOKENS + tiny_model.IMAGE_TOKENS)
    assert tokenizer_config['eos_token'] == '</s>' and tokenizer_config['pad_token'] == '</s>'
    assert tokenizer_config['bos_token'] == '<s>'


def test_rebuild_is_byte_identical_and_seed_changes_only_weights(tiny_model_dir, tmp_path):
    again = write_checkpoint(tmp_path / 'again', seed=0)  # the reading pre-training from its cache
    assert file_hashes(again) == file_hashes(tiny_model_dir)
    # seeds compared without the pre-training (a few CPU minutes for each new seed)
    reference = file_hashes(write_checkpoint(tmp_path / 'drawn', seed=0, reader=False))
    other = file_hashes(write_checkpoint(tmp_path / 'other', seed=1, reader=False))
    assert {n for n in reference if reference[n] != other[n]} == {'model.safetensors', RECIPE_FILE}
    assert reference['model.safetensors'] != file_hashes(tiny_model_dir)['model.safetensors']


def test_recipe_file_tells_a_current_tiny_model_from_a_stale_one(tiny_model_dir, tmp_path):
    """The quickstart rebuilds the embedded model when the code that writes it has changed."""
    assert tiny_model_is_current(tiny_model_dir)
    assert not tiny_model_is_current(tiny_model_dir, seed=1)
    assert not tiny_model_is_current(tmp_path / 'missing')
    stale = tmp_path / 'stale'
    shutil.copytree(tiny_model_dir, stale)
    recipe = json.loads((stale / RECIPE_FILE).read_text())
    (stale / RECIPE_FILE).write_text(json.dumps({**recipe, 'version': recipe['version'] - 1}))
    assert not tiny_model_is_current(stale)


def test_refuses_a_non_empty_folder_without_force(tmp_path):
    out = tmp_path / 'ckpt'
    out.mkdir()
    (out / 'keep.txt').write_text('user data')
    with pytest.raises(FileExistsError, match='--force'):
        write_checkpoint(out)
    assert (out / 'keep.txt').read_text() == 'user data'
    write_checkpoint(out, force=True)
    assert not (out / 'keep.txt').exists() and (out / 'model.safetensors').exists()
    assert [p.name for p in tmp_path.iterdir()] == ['ckpt']  # no temporary folder left behind


def test_tokenizer_encodes_any_text_and_has_the_internvl_special_tokens(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir, trust_remote_code=True)
    assert tok.convert_tokens_to_ids(['<unk>', '<s>', '</s>']) == [0, 1, 2]  # as in InternLM2
    specials = list(tiny_model.CHAT_TOKENS + tiny_model.IMAGE_TOKENS)
    ids = tok.convert_tokens_to_ids(specials)
    assert ids == list(range(len(tok) - len(specials), len(tok)))  # last, in the official order
    for text in ['这道菜是北京烤鸭吗？', 'Peking duck with 甜面酱 🦆!', '罕见字：龘靐齉', 'tab\tand\nnewline']:
        encoded = tok(text)['input_ids']
        assert encoded[0] == tok.bos_token_id  # <s> first, like InternLM2's tokenizer
        assert tok.decode(encoded, skip_special_tokens=True) == text
        assert tok.unk_token_id not in encoded  # byte-level: nothing is unknown
    prompt = '<|im_start|>user\n<img><IMG_CONTEXT><IMG_CONTEXT></img>\n菜<|im_end|>'
    pieces = tok.tokenize(prompt)
    assert pieces[:1] == ['<|im_start|>'] and pieces.count('<IMG_CONTEXT>') == 2 and pieces[-1] == '<|im_end|>'
    assert tok.apply_chat_template([{'role': 'user', 'content': 'hi'}], tokenize=False,
                                   add_generation_prompt=True) == '<s><|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n'


def expected_internvl2_2b_shapes():
    """Parameter table of InternVL2-2B from its published architecture (FACTS section 3)."""
    vit, vit_layers, vit_mlp, patch, image = 1024, 24, 4096, 14, 448
    llm, llm_layers, heads, kv_heads, llm_mlp, vocab = 2048, 24, 16, 8, 8192, 92553
    head_dim = llm // heads
    shapes = {
        'vision_model.embeddings.class_embedding': (1, 1, vit),
        'vision_model.embeddings.patch_embedding.weight': (vit, 3, patch, patch),
        'vision_model.embeddings.patch_embedding.bias': (vit,),
        'vision_model.embeddings.position_embedding': (1, (image // patch) ** 2 + 1, vit),
    }
    for i in range(vit_layers):
        p = f'vision_model.encoder.layers.{i}.'
        shapes.update({p + 'attn.qkv.weight': (3 * vit, vit), p + 'attn.qkv.bias': (3 * vit,),
                       p + 'attn.proj.weight': (vit, vit), p + 'attn.proj.bias': (vit,),
                       p + 'ls1': (vit,), p + 'ls2': (vit,),
                       p + 'mlp.fc1.weight': (vit_mlp, vit), p + 'mlp.fc1.bias': (vit_mlp,),
                       p + 'mlp.fc2.weight': (vit, vit_mlp), p + 'mlp.fc2.bias': (vit,),
                       p + 'norm1.weight': (vit,), p + 'norm1.bias': (vit,),
                       p + 'norm2.weight': (vit,), p + 'norm2.bias': (vit,)})
    shuffled = vit * 4  # pixel shuffle 0.5: 2x2 patches per token
    shapes.update({'mlp1.0.weight': (shuffled,), 'mlp1.0.bias': (shuffled,), 'mlp1.1.weight': (llm, shuffled),
                   'mlp1.1.bias': (llm,), 'mlp1.3.weight': (llm, llm), 'mlp1.3.bias': (llm,),
                   'language_model.model.tok_embeddings.weight': (vocab, llm),
                   'language_model.model.norm.weight': (llm,), 'language_model.output.weight': (vocab, llm)})
    for i in range(llm_layers):
        p = f'language_model.model.layers.{i}.'
        shapes.update({p + 'attention.wqkv.weight': ((heads + 2 * kv_heads) * head_dim, llm),
                       p + 'attention.wo.weight': (llm, llm),
                       p + 'feed_forward.w1.weight': (llm_mlp, llm), p + 'feed_forward.w3.weight': (llm_mlp, llm),
                       p + 'feed_forward.w2.weight': (llm, llm_mlp),
                       p + 'attention_norm.weight': (llm,), p + 'ffn_norm.weight': (llm,)})
    return shapes


def test_built_model_computes_what_the_saved_checkpoint_computes(tmp_path):
    """build_model (used by the benches and pre-training) must match the folder loaded the official way, buffers
    such as the rotary frequencies included: they are not in the checkpoint (an uninitialised one once made every
    in-memory model position-blind)."""
    import torch
    from transformers import AutoModel

    built = tiny_model.build_model(0, dtype=torch.float32).language_model
    for p in built.parameters():  # the checkpoint holds them in bfloat16
        p.data = p.data.bfloat16().float()
    drawn = write_checkpoint(tmp_path / 'drawn', seed=0, reader=False)  # as drawn, before the reading pre-training
    loaded = AutoModel.from_pretrained(drawn, trust_remote_code=True,
                                       torch_dtype=torch.float32).language_model
    ids = torch.arange(3, 43)[None]
    with torch.no_grad():
        assert torch.allclose(built(input_ids=ids).logits, loaded(input_ids=ids).logits, atol=1e-5)


def test_full_size_meta_model_matches_internvl2_2b():
    shapes = parameter_shapes(full_size=True)
    expected = expected_internvl2_2b_shapes()
    assert set(shapes) == set(expected), (sorted(set(shapes) - set(expected))[:5],
                                          sorted(set(expected) - set(shapes))[:5])
    assert {n: s for n, s in shapes.items() if expected[n] != s} == {}
    total = sum(math.prod(s) for s in shapes.values())
    assert abs(total - 2.206e9) < 0.0015e9, total


def test_cli_lists_full_size_shapes_without_writing(capsys, tmp_path, monkeypatch):
    cli = load_cli()
    monkeypatch.chdir(tmp_path)
    assert cli.main(['--full-size', '--device', 'meta']) == 0
    out = capsys.readouterr().out
    assert re.search(r'^language_model\.model\.layers\.23\.attention\.wqkv\.weight +\[4096, 2048\]$', out, re.M)
    expected = expected_internvl2_2b_shapes()
    total = sum(math.prod(s) for s in expected.values())
    assert out.splitlines()[-1] == f'{len(expected)} tensors, {total:,} parameters'
    assert list(tmp_path.iterdir()) == []
    (tmp_path / 'x').mkdir()
    (tmp_path / 'x' / 'f').write_text('1')
    assert cli.main(['--out', str(tmp_path / 'x')]) == 2  # refuses, names --force
    assert '--force' in capsys.readouterr().err


def test_xtuner_dataset_reads_the_checkpoint(tiny_model_dir, tmp_path):
    """XTuner 0.2.0's InternVL_V1_5_Dataset takes our config fields, tokenizer and image tokens."""
    dataset_module = pytest.importorskip('xtuner.dataset')
    from PIL import Image
    from xtuner.utils import PROMPT_TEMPLATE

    Image.new('RGB', (400, 200), (200, 120, 40)).save(tmp_path / 'dish.jpg')  # 2x1 tiles of 224 px
    rows = [{'id': '1', 'image': 'dish.jpg', 'conversations': [
        {'from': 'human', 'value': '<image>\n这道菜是什么？'}, {'from': 'gpt', 'value': '北京烤鸭'}]}]
    (tmp_path / 'data.json').write_text(json.dumps(rows, ensure_ascii=False))
    dataset = dataset_module.InternVL_V1_5_Dataset(
        model_path=str(tiny_model_dir), template=PROMPT_TEMPLATE.internlm2_chat,
        data_paths=str(tmp_path / 'data.json'), image_folders=str(tmp_path), max_length=8192)
    item = dataset[0]
    tiles = item['pixel_values'].shape[0]
    assert item['pixel_values'].shape[1:] == (3, 224, 224) and tiles == 3  # 2x1 grid + thumbnail
    tokenizer = dataset.tokenizer
    assert item['input_ids'].count(tokenizer.convert_tokens_to_ids('<IMG_CONTEXT>')) == 64 * tiles
    assert item['input_ids'][:2] == tokenizer.convert_tokens_to_ids(['<s>', '<|im_start|>'])
    answer = [i for i, label in zip(item['input_ids'], item['labels']) if label != -100]
    assert tokenizer.decode(answer) == '北京烤鸭<|im_end|>'


def test_every_stage_builds_the_embedded_default_when_missing_or_made_by_older_code(tmp_path, monkeypatch):
    """One function builds it for the quickstart, training, the demo and the walkthrough: missing or written by
    an older foodie.tiny_model -> built; current, of another seed (the user's choice) or not ours -> kept."""
    monkeypatch.setenv('FOODIE_WORK', str(tmp_path))
    model, _ = tiny_model.ensure_embedded_default(log=lambda line: None)
    assert model == tmp_path / 'tiny-internvl2' and tiny_model_is_current(model)
    weights = model / 'model.safetensors'
    built = weights.stat().st_mtime_ns
    recipe = json.loads((model / RECIPE_FILE).read_text())
    for made_by, rebuilt in (({**recipe, 'seed': 1}, False), ({**recipe, 'version': recipe['version'] - 1}, True)):
        (model / RECIPE_FILE).write_text(json.dumps(made_by))
        tiny_model.ensure_embedded_default(log=lambda line: None)
        assert (weights.stat().st_mtime_ns != built) == rebuilt
    assert tiny_model_is_current(model)
