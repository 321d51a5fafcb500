"""The embedded default model: a tiny InternVL2 in the official checkpoint format, loading like OpenGVLab/InternVL2-2B;
a pure function of the seed: weights drawn at random, then its LLM pre-trained to read multiple choice by letter
(foodie/tiny_reader.py). Remote code: OpenGVLab's InternViT and InternLM2 files as the
installed XTuner 0.2.0 ships them (read at build time) beside the project's InternVL chat files (foodie/remote_code)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch
from huggingface_hub import save_torch_state_dict
from torch import nn

from foodie import paths
from foodie.atomic import atomic_path

REMOTE_CODE_DIR = Path(__file__).resolve().parent / 'remote_code'
REMOTE_CODE_FILES = ('configuration_intern_vit.py', 'configuration_internlm2.py', 'configuration_internvl_chat.py',
                     'conversation.py', 'modeling_intern_vit.py', 'modeling_internlm2.py', 'modeling_internvl_chat.py')
# Checkpoint file -> the installed XTuner 0.2.0's copy of OpenGVLab's file (pyproject.toml pins xtuner).
OFFICIAL_FILES = {name: f'_lite/modelings/{"internvl2" if "intern_vit" in name else "internlm2"}/{name}'
                  for name in REMOTE_CODE_FILES if 'intern_vit' in name or 'internlm2' in name}
# XTuner's InternViT copy computes the drop-path rates with numpy and keeps OpenGVLab's released line as a
# comment. The released line (what InternVL2-2B downloads with) is written back so the checkpoint behaves as
# the real one (e.g. it cannot be built on the meta device).
_XTUNER_DROP_PATH = (
    '        # TODO: error\n'
    '        # dpr = [x.item() for x in torch.linspace(0, config.drop_path_rate, config.num_hidden_layers)]\n'
    '        dpr = np.linspace(0.0, float(config.drop_path_rate), int(config.num_hidden_layers))\n')
_RELEASED_DROP_PATH = \
    '        dpr = [x.item() for x in torch.linspace(0, config.drop_path_rate, config.num_hidden_layers)]\n'


def xtuner_package_dir() -> Path:
    spec = importlib.util.find_spec('xtuner')
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError('the official InternVL2 modeling files are read from the installed XTuner 0.2.0, which '
                           'is not installed: pip install -e . (pyproject.toml pins xtuner==0.2.0)')
    return Path(list(spec.submodule_search_locations)[0])


def modeling_files() -> dict[str, bytes]:
    """The checkpoint's seven remote-code files: OpenGVLab's four from the installed XTuner, the chat glue ours."""
    files = {name: (REMOTE_CODE_DIR / name).read_bytes() for name in REMOTE_CODE_FILES if name not in OFFICIAL_FILES}
    root = xtuner_package_dir()
    for name, relative in OFFICIAL_FILES.items():
        if not (root / relative).is_file():
            raise RuntimeError(f'{root / relative} is missing: the official files come from XTuner 0.2.0 '
                               f'(pip install xtuner==0.2.0)')
        files[name] = (root / relative).read_bytes()
    vit = files['modeling_intern_vit.py'].decode('utf-8')
    if _XTUNER_DROP_PATH not in vit:
        raise RuntimeError(f'{root / OFFICIAL_FILES["modeling_intern_vit.py"]} is not the XTuner 0.2.0 file '
                           f'this code knows (its drop-path lines differ): install xtuner==0.2.0')
    files['modeling_intern_vit.py'] = vit.replace(_XTUNER_DROP_PATH, _RELEASED_DROP_PATH).encode('utf-8')
    return files


# InternVL2-2B as published: InternViT-300M-448px + MLP projector + InternLM2-chat-1.8B.
FULL_VISION = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                   image_size=448, patch_size=14, qkv_bias=True, norm_type='layer_norm', qk_normalization=False,
                   layer_norm_eps=1e-6, initializer_factor=1.0)
FULL_LLM = dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=8,
                intermediate_size=8192, vocab_size=92553, rope_theta=1000000, max_position_embeddings=32768,
                rope_scaling={'type': 'dynamic', 'factor': 2.0}, rms_norm_eps=1e-5, initializer_range=0.02, bias=False)
# 224-pixel tiles: 64 image tokens a tile instead of 256, which the random 2-layer LLM reads far better
# (docs/TRAINING.md, "What the embedded tiny model learns"); every tool reads force_image_size.
TINY_VISION = dict(FULL_VISION, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                   image_size=224, initializer_factor=0.1)
# LLM weights drawn with std 0.1, not 0.02: at 0.02 a 128-wide random LLM is nearly linear and LoRA hardly moves
# it (held-out 0.16 against 0.64-0.83 at 0.08-0.15, docs/TRAINING.md). vocab_size: the tiny tokenizer's.
# 8 heads of 16 (4 key/value heads, InternLM2's 2:1 grouping): the letter look-up is learned on every seed tried,
# with 4 heads on some only (docs/TRAINING.md, "A larger tiny LLM, with positions"). 4 layers, not 2: after the
# reading pre-training the quickstart's fine-tune reaches 0.92-0.96 held out, 2 layers 0.80-0.86 (docs/TRAINING.md).
TINY_LLM = dict(FULL_LLM, hidden_size=128, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                intermediate_size=256, initializer_range=0.1)
INIT_STD = 0.02
SHARD_BYTES = 2 * 1024 ** 3  # full-size weights (4.4 GB in bf16): three shards plus an index

# Ids 0-2 as in InternLM2; the chat and image tokens come last, in the official order.
BASE_SPECIAL_TOKENS = ('<unk>', '<s>', '</s>')
CHAT_TOKENS = ('<|plugin|>', '<|interpreter|>', '<|action_end|>', '<|action_start|>', '<|im_end|>', '<|im_start|>')
IMAGE_TOKENS = ('<img>', '</img>', '<IMG_CONTEXT>', '<quad>', '</quad>', '<ref>', '</ref>', '<box>', '</box>')
TINY_VOCAB_SIZE = 2048

# InternLM2's chat_template (tokenizer_config.json of InternVL2-2B); the model's chat() uses conversation.py.
CHAT_TEMPLATE = ("{{ bos_token }}{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
                 "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
                 "{{ '<|im_start|>assistant\n' }}{% endif %}")

_DISHES_ZH = (
    '北京烤鸭 宫保鸡丁 麻婆豆腐 小笼包 红烧肉 鱼香肉丝 回锅肉 水煮鱼 酸菜鱼 糖醋里脊 东坡肉 西湖醋鱼 '
    '佛跳墙 白切鸡 叉烧 肠粉 虾饺 烧卖 煲仔饭 兰州拉面 刀削面 热干面 炸酱面 担担面 重庆火锅 麻辣烫 '
    '臭豆腐 肉夹馍 凉皮 羊肉泡馍 油条 豆浆 煎饼果子 狗不理包子 锅包肉 地三鲜 酸菜白肉 大盘鸡 手抓饭 '
    '过桥米线 汽锅鸡 螺蛳粉 桂林米粉 沙县小吃 佛山扎蹄 潮汕牛肉丸 盐焗鸡 梅菜扣肉 剁椒鱼头 口味虾 '
    '毛氏红烧肉 腊味合蒸 蛋炒饭 扬州炒饭 饺子 馄饨 汤圆 粽子 月饼 年糕 春卷 麻球 驴打滚 糖葫芦 '
    '豆汁 卤煮 爆肚 涮羊肉 烤串 烤冷面 锅贴 生煎包 蟹粉小笼 葱油拌面 腌笃鲜 糖醋排骨 清蒸鲈鱼 '
    '蚝油生菜 干煸四季豆 酸辣土豆丝 西红柿炒鸡蛋 皮蛋豆腐 夫妻肺片 口水鸡 钵钵鸡 冒菜 串串香'
)
_DISHES_EN = (
    'Peking duck, Kung Pao chicken, mapo tofu, xiaolongbao soup dumplings, braised pork belly, fish-flavored '
    'shredded pork, twice-cooked pork, boiled fish in chili oil, sour cabbage fish, sweet and sour pork, '
    'Dongpo pork, West Lake fish in vinegar, Buddha jumps over the wall, white cut chicken, char siu, rice noodle '
    'rolls, shrimp dumplings, siu mai, claypot rice, Lanzhou beef noodles, knife-cut noodles, hot dry noodles, '
    'zhajiang noodles, dan dan noodles, Chongqing hot pot, spicy hot pot, stinky tofu, roujiamo, cold skin '
    'noodles, mutton soup with bread, fried dough sticks, soy milk, jianbing, steamed buns, crispy pork, '
    'dumplings, wontons, sweet rice balls, zongzi, mooncakes, rice cakes, spring rolls, candied hawthorn, '
    'scallion oil noodles, steamed sea bass, fried rice with egg, tomato and egg stir fry, spicy crayfish.'
)
_WORDS_ZH = (
    '中国 菜 菜系 美食 地区 省份 城市 口味 辣 甜 酸 咸 鲜 香 麻 苦 蒸 煮 炒 炸 烤 炖 焖 卤 拌 煎 '
    '米饭 面条 猪肉 牛肉 羊肉 鸡肉 鸭肉 鱼 虾 蟹 豆腐 鸡蛋 蔬菜 白菜 土豆 辣椒 花椒 生姜 大蒜 酱油 醋 糖 盐 '
    '川菜 粤菜 鲁菜 苏菜 浙菜 闽菜 湘菜 徽菜 北京 上海 广东 四川 湖南 江苏 浙江 福建 山东 陕西 云南 广西 '
    '新疆 东北 重庆 天津 湖北 安徽 河南 早餐 午餐 晚餐 小吃 点心 甜品 主食 汤 图片 图中 这道菜 这张图 '
    '是什么 哪里 哪个 哪种 主要 食材 做法 名字 叫什么 属于 来自 通常 什么时候 节日 春节 中秋节 端午节'
)
_WORDS_EN = (
    'the a an of in on with and or is are was this that which what where when how why who dish food image '
    'picture photo shows shown question answer option choice correct region province city cuisine flavor '
    'spicy sweet sour salty savory numbing fresh steamed boiled fried stir roasted braised stewed grilled baked '
    'rice noodle noodles pork beef lamb mutton chicken duck fish shrimp crab tofu egg vegetable cabbage potato '
    'chili pepper ginger garlic soy sauce vinegar sugar salt oil breakfast lunch dinner snack dessert soup '
    'festival spring autumn dragon boat lantern new year family restaurant street market traditional famous '
    'popular local northern southern eastern western central coastal mountain river lake sea ingredient recipe'
)
_TEMPLATES = (
    '你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。',
    'You are an AI assistant whose name is InternLM (书生·浦语).',
    '{q} 选项有: (A) {a}\n(B) {b}\n(C) {c}\n(D) {d}\n, 请根据上图从所提供的选项中选择一个正确答案，为（',
    '图中的菜是{a}。', '答案是{x}，图中的菜是{a}', '这道菜来自哪个地区？', '这道菜的主要食材是什么？',
    '图中的菜叫什么名字？', '这道菜属于哪个菜系？', '请描述这张图片。', '这道菜是怎么做的？',
    'What is the name of the dish in the image?', 'Which region is this dish from?',
    'What are the main ingredients of this dish?', 'Which cuisine does this dish belong to?',
    'Answer with the option letter from the given choices directly.', 'The answer is {x}.',
    'Please describe the image in detail.', 'The dish in the picture is {a}.',
    'Image-1: <image>\nImage-2: <image>\nImage-3: <image>\nImage-4: <image>\nWhich image shows {a}?',
)


def tokenizer_corpus() -> list[str]:
    """A fixed corpus of chat and Chinese/English food text: the tokenizer's training data."""
    dishes_zh, words = _DISHES_ZH.split(), _WORDS_ZH.split()
    dishes_en = [d.strip() for d in _DISHES_EN.rstrip('.').split(',')]
    lines = []
    for i, template in enumerate(_TEMPLATES):
        for j in range(8):
            k = 7 * i + 5 * j
            lines.append(template.format(
                q=f'{dishes_zh[k % len(dishes_zh)]}来自哪里？', x='ABCD'[j % 4],
                a=(dishes_zh if j % 2 else dishes_en)[k % len(dishes_en)],
                b=dishes_zh[(k + 1) % len(dishes_zh)], c=dishes_zh[(k + 2) % len(dishes_zh)],
                d=dishes_zh[(k + 3) % len(dishes_zh)]))
    lines += [f'<|im_start|>user\n{d}<|im_end|><|im_start|>assistant\n{w}{d}<|im_end|>'
              for d, w in zip(dishes_zh, words * 3)]
    lines += [' '.join(words[i:i + 12]) for i in range(0, len(words), 6)]
    words_en = _WORDS_EN.split()
    lines += [' '.join(words_en[i:i + 10]).capitalize() + '.' for i in range(0, len(words_en), 5)]
    return lines + [_DISHES_EN, _DISHES_ZH, ' 0123456789 ABCD abcd () [] {} <> ,.;:!? \n\t ']


def build_tokenizer(vocab_size: int = TINY_VOCAB_SIZE):
    """A byte-level BPE PreTrainedTokenizerFast: any text encodes; <s> is prepended like InternLM2's."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    added = CHAT_TOKENS + IMAGE_TOKENS
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(added), min_frequency=1, show_progress=False,
                                  special_tokens=list(BASE_SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(tokenizer_corpus(), trainer)
    if tok.get_vocab_size() != vocab_size - len(added):
        raise RuntimeError(f'the tokenizer corpus gives {tok.get_vocab_size()} BPE tokens, '
                           f'{vocab_size - len(added)} wanted: enlarge tokenizer_corpus()')
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in added])
    tok.post_processor = processors.TemplateProcessing(single='<s> $A', pair='<s> $A <s> $B',
                                                       special_tokens=[('<s>', tok.token_to_id('<s>'))])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token='<s>', eos_token='</s>', unk_token='<unk>', pad_token='</s>',
        additional_special_tokens=list(added), chat_template=CHAT_TEMPLATE, model_max_length=8192,
        clean_up_tokenization_spaces=False, padding_side='right')


def make_config(vocab_size: int = TINY_VOCAB_SIZE, full_size: bool = False):
    """The InternVLChatConfig of InternVL2-2B (full_size) or of the tiny model, as in config.json."""
    from foodie.remote_code.configuration_internvl_chat import InternVLChatConfig

    vision = dict(FULL_VISION if full_size else TINY_VISION)
    llm = dict(FULL_LLM) if full_size else dict(TINY_LLM, vocab_size=vocab_size)
    vision.update(architectures=['InternVisionModel'], use_flash_attn=True, drop_path_rate=0.0,
                  torch_dtype='bfloat16', auto_map={'AutoConfig': 'configuration_intern_vit.InternVisionConfig',
                                                    'AutoModel': 'modeling_intern_vit.InternVisionModel'})
    llm.update(architectures=['InternLM2ForCausalLM'], attn_implementation='eager',
               bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=False, torch_dtype='bfloat16',
               auto_map={'AutoConfig': 'configuration_internlm2.InternLM2Config',
                         'AutoModel': 'modeling_internlm2.InternLM2ForCausalLM',
                         'AutoModelForCausalLM': 'modeling_internlm2.InternLM2ForCausalLM'})
    return InternVLChatConfig(
        vision_config=vision, llm_config=llm, select_layer=-1, force_image_size=vision['image_size'],
        downsample_ratio=0.5, template='internlm2-chat', dynamic_image_size=True, use_thumbnail=True,
        ps_version='v2', min_dynamic_patch=1, max_dynamic_patch=12, torch_dtype='bfloat16', tie_word_embeddings=False,
        architectures=['InternVLChatModel'],
        auto_map={'AutoConfig': 'configuration_internvl_chat.InternVLChatConfig',
                  'AutoModel': 'modeling_internvl_chat.InternVLChatModel',
                  'AutoModelForCausalLM': 'modeling_internvl_chat.InternVLChatModel'})


def config_json(config) -> dict:
    """config.json content: the config's dict without private keys."""
    def clean(d):
        return {k: clean(v) if isinstance(v, dict) and k in ('vision_config', 'llm_config') else v
                for k, v in d.items() if not k.startswith('_') and not (k == 'attn_implementation' and v is None)}
    d = config.to_dict()
    config.dict_torch_dtype_to_str(d)  # torch.bfloat16 -> 'bfloat16', nested configs too
    return clean(d)


def build_empty_model(config, device='meta'):
    """The model with parameters allocated on `device`, not initialised. Buffers are computed as the modeling code
    computes them: the rotary frequencies (`inv_freq`) are not in a checkpoint, and left uninitialised (all but
    zero: no positions at all) they made every model built here position-blind until 2026-11-30."""
    from accelerate import init_empty_weights

    from foodie.remote_code.modeling_internvl_chat import InternVLChatModel

    with init_empty_weights(include_buffers=False):
        model = InternVLChatModel(config)
    if str(device) == 'meta':
        return model
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    model = model.to_empty(device=device)
    for name, b in buffers.items():
        model.get_buffer(name).copy_(b)
    return model


def parameter_shapes(full_size: bool = True, vocab_size: int = TINY_VOCAB_SIZE) -> dict[str, tuple[int, ...]]:
    """{parameter name: shape}, from a model on the meta device (no memory, no weights)."""
    model = build_empty_model(make_config(vocab_size, full_size=full_size))
    return {name: tuple(p.shape) for name, p in model.state_dict().items()}


@torch.no_grad()
def init_weights(model: nn.Module, seed: int, progress: bool = False):
    """Deterministic random weights, one generator in model order: N(0, 0.02) for weights (the LLM's:
    N(0, llm_config.initializer_range)), zero biases, unit norms, ViT layer scales at initializer_factor."""
    from tqdm import tqdm

    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    llm_std = getattr(model.config.llm_config, 'initializer_range', INIT_STD)
    for name, module in tqdm(list(model.named_modules()), desc='init weights', disable=not progress, unit='module'):
        is_norm = isinstance(module, nn.LayerNorm) or type(module).__name__.endswith('RMSNorm')
        for pname, p in module.named_parameters(recurse=False):
            if pname == 'bias':
                p.zero_()
            elif is_norm:
                p.fill_(1.0)
            elif pname in ('ls1', 'ls2'):
                p.fill_(model.config.vision_config.initializer_factor)
            else:
                std = llm_std if name.startswith('language_model.') else INIT_STD
                p.copy_(torch.randn(p.shape, generator=generator, device=device, dtype=torch.float32) * std)


def build_model(seed: int = 0, full_size: bool = False, device='cpu', dtype=torch.bfloat16,
                vocab_size: int = TINY_VOCAB_SIZE, progress: bool = False):
    """A random-weight InternVLChatModel, a pure function of the seed."""
    model = build_empty_model(make_config(vocab_size, full_size=full_size), device=device)
    init_weights(model, seed, progress=progress)
    return model.to(dtype).eval()


def _write_json(path: Path, obj):
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + '\n', encoding='utf-8')


RECIPE_FILE = 'foodie_tiny_model.json'  # how the folder was made (an extra file; loaders ignore it)
# 2: the LLM drawn with std 0.1 (TINY_LLM initializer_range); 3: 224-pixel tiles; 4: 8 heads, reading pre-training;
# 5: 4 layers
GENERATOR_VERSION = 5
READER_WORDS = sorted(set(_WORDS_ZH.split() + _DISHES_ZH.split()))  # the reading pre-training's option texts


def recipe(seed: int = 0, full_size: bool = False, reader: bool = True) -> dict:
    from foodie import tiny_reader

    made = {'generator': 'foodie.tiny_model', 'version': GENERATOR_VERSION, 'seed': seed, 'full_size': full_size,
            'modeling': 'official'}
    return {**made, 'reading_pretraining': tiny_reader.settings()} if reader and not full_size else made


def reader_llm_state(seed: int, tokenizer, code_dir: Path, progress: bool = False) -> tuple[dict, float]:
    """(the tiny LLM of `seed` after foodie.tiny_reader's pre-training, float32; its reading accuracy), from
    paths.cache_dir() when it was computed before with the same settings (a few minutes on a CPU otherwise)."""
    import hashlib

    from safetensors import safe_open
    from safetensors.torch import save_file
    from tqdm import tqdm

    from foodie import tiny_reader

    key = json.dumps(dict(recipe(seed), llm=TINY_LLM, vision=TINY_VISION, vocab=len(tokenizer), words=READER_WORDS,
                          torch=torch.__version__.split('+')[0]), sort_keys=True, ensure_ascii=False)
    path = paths.cache_dir() / f'tiny-reader-seed{seed}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors'
    if path.is_file():
        with safe_open(str(path), 'pt') as f:
            return {k: f.get_tensor(k) for k in f.keys()}, float(f.metadata()['reading_accuracy'])
    llm = build_model(seed, dtype=torch.float32, vocab_size=len(tokenizer)).language_model
    items = tiny_reader.Items(tokenizer, code_dir, make_config().template, READER_WORDS)
    with tqdm(total=tiny_reader.STEPS, desc='tiny LLM: reading pre-training (once; cached)', unit='batch',
              disable=not progress) as bar:
        accuracy = tiny_reader.pretrain(llm, items, seed, lambda step, loss: (bar.update(), bar.set_postfix(
            loss=f'{loss:.3f}', refresh=False)))
    state = {k: v.detach().contiguous() for k, v in llm.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={'reading_accuracy': f'{accuracy:.4f}', 'key': key})
    return state, accuracy


def write_checkpoint(out, seed: int = 0, full_size: bool = False, device='cpu', force: bool = False,
                     reader: bool = True, progress: bool = False) -> Path:
    """Write the checkpoint folder to `out` atomically; an existing non-empty `out` only with force=True. The tiny
    model's LLM first learns to read a multiple-choice question (foodie.tiny_reader; `reader=False`: left as drawn);
    the full-size model is random throughout."""
    out = Path(out)
    code = modeling_files()  # fails early, before any weights are drawn
    if str(device) == 'meta':
        raise ValueError("device='meta' builds no weights; use parameter_shapes() to list them")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f'{out} exists and is not a folder: choose another --out')
    if out.is_dir() and any(out.iterdir()) and not force:
        raise FileExistsError(f'{out} exists and is not empty: pass --force to replace it, or choose another --out')
    tokenizer = build_tokenizer()
    model = build_model(seed, full_size=full_size, device=device, vocab_size=len(tokenizer), progress=full_size)
    with atomic_path(out, is_dir=True) as tmp:
        _write_json(tmp / 'config.json', config_json(make_config(len(tokenizer), full_size=full_size)))
        _write_json(tmp / 'generation_config.json', {'bos_token_id': 1, 'pad_token_id': 2,
                                                     'eos_token_id': [2, tokenizer.convert_tokens_to_ids('<|im_end|>')]})
        for fname, content in code.items():
            (tmp / fname).write_bytes(content)
        if reader and not full_size:
            state, _ = reader_llm_state(seed, tokenizer, tmp, progress)
            model.language_model.load_state_dict(state)  # cast to the checkpoint's bfloat16
        tokenizer.save_pretrained(tmp)
        for fname in ('tokenizer_config.json', 'special_tokens_map.json'):  # sorted keys, no run-specific data
            _write_json(tmp / fname, json.loads((tmp / fname).read_text(encoding='utf-8')))
        # model.safetensors, or shards of SHARD_BYTES plus model.safetensors.index.json
        save_torch_state_dict({k: v.cpu() for k, v in model.state_dict().items()}, tmp, max_shard_size=SHARD_BYTES)
        _write_json(tmp / RECIPE_FILE, recipe(seed, full_size, reader))
        tmp.chmod(0o755)
        for f in tmp.iterdir():
            f.chmod(0o644)
    return out


def _outdated(folder: Path, recipe_file: str, generator: str, version: int) -> bool:
    """Missing, or written by an older version of `generator`; a folder of another seed or settings (the user's
    choice) and any folder not written by it are kept."""
    try:
        made = json.loads((folder / recipe_file).read_text(encoding='utf-8'))
        made = made.get('recipe', made)  # the synthetic data nests its recipe
    except (OSError, ValueError, AttributeError):
        return not folder.is_dir() or not any(folder.iterdir())
    return made.get('generator') == generator and made.get('version') != version


def ensure_embedded_default(model: bool = True, data: bool = False, log=print) -> tuple[Path, Path]:
    """(paths.tiny_model_dir(), paths.demo_data_dir()), building those asked for when missing or made by older
    code: the one place every stage builds them."""
    from foodie import synthetic_data

    model_dir, data_dir = paths.tiny_model_dir(), paths.demo_data_dir()
    if model and _outdated(model_dir, RECIPE_FILE, 'foodie.tiny_model', GENERATOR_VERSION):
        log(f'building the embedded tiny model in {model_dir} (python tools/make_tiny_model.py --force) ...')
        write_checkpoint(model_dir, force=True, progress=True)
    if data and _outdated(data_dir, synthetic_data.RECIPE_FILE, 'foodie.synthetic_data',
                          synthetic_data.GENERATOR_VERSION):
        log(f'building the synthetic FoodieQA in {data_dir} (python tools/make_demo_data.py --force) ...')
        synthetic_data.make_demo_data(data_dir, force=True, progress=True)
    return model_dir, data_dir
