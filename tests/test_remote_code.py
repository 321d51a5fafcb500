"""Our InternVL chat files (foodie/remote_code) beside OpenGVLab's InternViT and InternLM2 files, loaded the way users
load InternVL2-2B: AutoModel/AutoTokenizer, trust_remote_code=True, from the embedded checkpoint that carries them."""
import threading

import pytest
import torch
import torch.nn.functional as F

from foodie.remote_code.conversation import get_conv_template
from foodie.tiny_model import TINY_VISION

TILE = TINY_VISION['image_size']  # the tiny model's tile side (InternVL2-2B: 448)

SYSTEM = '你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。'
GREEDY = dict(max_new_tokens=8, do_sample=False)


@pytest.fixture(scope='module')
def loaded(drawn_model_dir):
    """The official chat()/generate() on our checkpoint; as drawn, so that every answer has some text."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(drawn_model_dir, trust_remote_code=True)
    model = AutoModel.from_pretrained(drawn_model_dir, trust_remote_code=True).eval()
    model.img_context_token_id = tokenizer.convert_tokens_to_ids('<IMG_CONTEXT>')
    return model, tokenizer


def tiles(n, seed=0):
    return torch.randn(n, 3, TILE, TILE, generator=torch.Generator().manual_seed(seed))


def image_prompt(model, tokenizer, questions_and_tiles):
    """Batch of prompts with images, left-padded as batch_chat does: (input_ids, attention_mask)."""
    queries = []
    for question, n in questions_and_tiles:
        template = get_conv_template(model.template)
        template.append_message(template.roles[0], '<image>\n' + question)
        template.append_message(template.roles[1], None)
        image = '<img>' + '<IMG_CONTEXT>' * model.num_image_token * n + '</img>'
        queries.append(template.get_prompt().replace('<image>', image, 1))
    tokenizer.padding_side = 'left'
    enc = tokenizer(queries, return_tensors='pt', padding=True)
    tokenizer.padding_side = 'right'
    return enc['input_ids'], enc['attention_mask']


def test_loads_as_internvl_chat_model(loaded):
    model, tokenizer = loaded
    assert type(model).__name__ == 'InternVLChatModel'
    assert type(model.language_model).__name__ == 'InternLM2ForCausalLM'
    assert type(model.vision_model).__name__ == 'InternVisionModel'
    assert model.num_image_token == (TILE // 14) ** 2 // 4  # patches per side, then pixel shuffle 0.5: 64 (2B: 256)
    assert model.template == 'internlm2-chat' and model.system_message == SYSTEM
    assert model.config.llm_config.attn_implementation == 'eager'  # the official fallback is the default
    # untied output head (InternVL2-2B's llm_config: tie_word_embeddings false)
    assert model.language_model.output.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    names = set(model.state_dict())
    for name in ['vision_model.embeddings.class_embedding', 'vision_model.embeddings.patch_embedding.weight',
                 'vision_model.embeddings.position_embedding', 'vision_model.encoder.layers.1.attn.qkv.weight',
                 'vision_model.encoder.layers.1.ls1', 'vision_model.encoder.layers.1.mlp.fc2.weight',
                 'mlp1.0.weight', 'mlp1.1.weight', 'mlp1.3.weight', 'language_model.model.tok_embeddings.weight',
                 'language_model.model.layers.1.attention.wqkv.weight', 'language_model.model.layers.1.ffn_norm.weight',
                 'language_model.model.norm.weight', 'language_model.output.weight']:
        assert name in names, name


def test_conversation_template_is_internvl2s():
    template = get_conv_template('internlm2-chat')
    template.append_message(template.roles[0], 'Q1')
    template.append_message(template.roles[1], 'A1')
    template.append_message(template.roles[0], 'Q2')
    template.append_message(template.roles[1], None)
    assert template.get_prompt() == (f'<|im_start|>system\n{SYSTEM}<|im_end|><|im_start|>user\nQ1<|im_end|>'
                                     '<|im_start|>assistant\nA1<|im_end|><|im_start|>user\nQ2<|im_end|>'
                                     '<|im_start|>assistant\n')
    assert template.sep == '<|im_end|>'
    with pytest.raises(KeyError, match='internlm2-chat'):
        get_conv_template('no-such-template')


def test_chat_with_one_image_and_history(loaded):
    model, tokenizer = loaded
    pixel_values = tiles(2)
    answer = model.chat(tokenizer, pixel_values, '这道菜是什么？', dict(GREEDY))
    assert isinstance(answer, str) and answer.strip()
    again, history = model.chat(tokenizer, pixel_values, '这道菜是什么？', dict(GREEDY), return_history=True)
    assert again == answer and history == [('<image>\n这道菜是什么？', answer)]
    second, history = model.chat(tokenizer, pixel_values, 'Which region is it from?', dict(GREEDY),
                                 history=history, return_history=True)
    assert len(history) == 2 and history[1] == ('Which region is it from?', second)
    text_only = model.chat(tokenizer, None, 'Hello', dict(GREEDY))
    assert isinstance(text_only, str)


def test_chat_with_several_images(loaded):
    model, tokenizer = loaded
    pixel_values = torch.cat([tiles(2, seed=1), tiles(3, seed=2)])
    question = 'Image-1: <image>\nImage-2: <image>\nAre they the same dish?'
    answer = model.chat(tokenizer, pixel_values, question, dict(GREEDY), num_patches_list=[2, 3])
    assert isinstance(answer, str) and answer.strip()
    with pytest.raises(ValueError, match='placeholders'):  # two images, one <image>: a clear error
        model.chat(tokenizer, pixel_values, 'Same dish?', dict(GREEDY), num_patches_list=[2, 3])
    with pytest.raises(ValueError, match='num_patches_list'):
        model.chat(tokenizer, pixel_values, question, dict(GREEDY), num_patches_list=[2, 2])


def test_batch_chat_equals_one_by_one(loaded):
    """Left padding and position ids are right: batched answers equal single answers."""
    model, tokenizer = loaded
    first, second = tiles(1, seed=3), tiles(2, seed=4)
    questions = ['这道菜是什么？', 'Which cuisine does this dish belong to? Answer in detail.']
    batched = model.batch_chat(tokenizer, torch.cat([first, second]), questions, dict(GREEDY),
                               num_patches_list=[1, 2])
    single = [model.chat(tokenizer, first, questions[0], dict(GREEDY)),
              model.chat(tokenizer, second, questions[1], dict(GREEDY))]
    assert batched == single
    assert tokenizer.padding_side == 'right'  # batch_chat leaves the tokenizer as it found it
    with pytest.raises(NotImplementedError):
        model.batch_chat(tokenizer, first, questions[:1], dict(GREEDY), history=[])


def test_forward_with_labels_trains_projector_and_llm(loaded):
    model, tokenizer = loaded
    input_ids, attention_mask = image_prompt(model, tokenizer, [('图中的菜叫什么名字？', 1), ('What dish?', 2)])
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, : input_ids.shape[1] - 4] = -100  # supervise the last tokens only
    model.train()
    try:
        out = model(pixel_values=tiles(3), input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                    image_flags=torch.ones(3, dtype=torch.long))
        assert torch.isfinite(out.loss) and out.loss.item() > 0
        out.loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters()}
        for name in ['mlp1.1.weight', 'mlp1.3.weight', 'language_model.model.layers.0.attention.wqkv.weight',
                     'language_model.output.weight', 'vision_model.encoder.layers.0.attn.qkv.weight']:
            assert grads[name] is not None and grads[name].abs().sum() > 0, name
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


def test_image_tokens_replace_img_context_embeddings(loaded):
    """Changing the image changes the logits; a blank tile flagged 0 is skipped (text-only samples)."""
    model, tokenizer = loaded
    input_ids, attention_mask = image_prompt(model, tokenizer, [('What dish?', 1)])
    with torch.no_grad():
        a = model(pixel_values=tiles(1, seed=5), input_ids=input_ids, attention_mask=attention_mask).logits
        b = model(pixel_values=tiles(1, seed=6), input_ids=input_ids, attention_mask=attention_mask).logits
        flagged = model(pixel_values=torch.cat([torch.zeros(1, 3, TILE, TILE), tiles(1, seed=5)]), input_ids=input_ids,
                        attention_mask=attention_mask, image_flags=torch.tensor([0, 1])).logits
    assert not torch.allclose(a, b)
    torch.testing.assert_close(flagged, a)


def test_kv_cache_generation_equals_greedy_without_cache(loaded):
    model, tokenizer = loaded
    input_ids, attention_mask = image_prompt(model, tokenizer, [('这道菜是什么？', 2)])
    pixel_values = tiles(2, seed=8)
    steps = 12
    generated = model.generate(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask,
                               max_new_tokens=steps, do_sample=False, eos_token_id=None, pad_token_id=2)
    assert generated.shape == (1, steps)  # only the new tokens, as the official generate returns
    with torch.no_grad():  # recompute every step from scratch
        embeds = model.get_input_embeddings()(input_ids)
        embeds[input_ids == model.img_context_token_id] = model.extract_feature(pixel_values).reshape(-1, 128)
        tokens = []
        for _ in range(steps):
            new = model.get_input_embeddings()(torch.tensor([tokens], dtype=torch.long))
            logits = model.language_model(inputs_embeds=torch.cat([embeds, new], dim=1), use_cache=False).logits
            tokens.append(int(logits[0, -1].argmax()))
    assert generated[0].tolist() == tokens


def test_generate_streams_with_text_iterator_streamer(loaded):
    from transformers import TextIteratorStreamer

    model, tokenizer = loaded
    input_ids, attention_mask = image_prompt(model, tokenizer, [('这道菜是什么？', 1)])
    pixel_values = tiles(1, seed=9)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault('ids', model.generate(
        pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask, streamer=streamer,
        **GREEDY)))
    thread.start()
    chunks = list(streamer)
    thread.join()
    assert ''.join(chunks) == tokenizer.decode(result['ids'][0], skip_special_tokens=True)
    assert len(chunks) > 1  # text arrives piece by piece


def test_packed_wqkv_is_grouped_per_kv_head(loaded):
    """wqkv rows are [kv head 0: q heads of group 0, k, v | kv head 1: ...], as the official layout."""
    model, _ = loaded
    attention = model.language_model.model.layers[0].attention
    heads, kv_heads, D = attention.num_heads, attention.num_key_value_heads, attention.head_dim
    group = heads // kv_heads
    W = attention.wqkv.weight.detach().view(kv_heads, group + 2, D, -1)
    Wq, Wk, Wv = W[:, :group].reshape(heads * D, -1), W[:, -2].reshape(kv_heads * D, -1), W[:, -1].reshape(
        kv_heads * D, -1)
    x = torch.randn(1, 5, attention.hidden_size, generator=torch.Generator().manual_seed(0))
    position_ids = torch.arange(5)[None]
    with torch.no_grad():
        causal = torch.full((5, 5), torch.finfo(x.dtype).min).triu(1)[None, None]
        out, _, _ = attention(x, attention_mask=causal, position_ids=position_ids)
        q = (x @ Wq.T).view(1, 5, heads, D).transpose(1, 2)
        k = (x @ Wk.T).view(1, 5, kv_heads, D).transpose(1, 2)
        v = (x @ Wv.T).view(1, 5, kv_heads, D).transpose(1, 2)
        inv_freq = 1.0 / (model.config.llm_config.rope_theta ** (torch.arange(0, D, 2).float() / D))
        angles = torch.arange(5).float()[:, None] * inv_freq
        cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
        rot = lambda t: t * cos + torch.cat([-t[..., D // 2:], t[..., :D // 2]], -1) * sin  # noqa: E731
        q, k = rot(q), rot(k)
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # query head h uses kv h//group
        expected = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(1, 5, -1)
        expected = attention.wo(expected)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)


def test_pixel_shuffle_v2_folds_2x2_patches(loaded):
    model, _ = loaded
    x = torch.randn(1, 4, 4, 3)
    y = model.pixel_shuffle(x, scale_factor=0.5)
    assert y.shape == (1, 2, 2, 12)
    for i in range(2):
        for j in range(2):
            expected = torch.cat([x[0, 2 * i, 2 * j], x[0, 2 * i, 2 * j + 1], x[0, 2 * i + 1, 2 * j],
                                  x[0, 2 * i + 1, 2 * j + 1]])
            torch.testing.assert_close(y[0, i, j], expected)


def test_vision_model_interpolates_positions_for_other_tile_sizes(loaded):
    model, _ = loaded
    other = 2 * TILE  # position embeddings are trained for TILE; twice the side needs interpolation
    with torch.no_grad():
        out = model.vision_model(pixel_values=torch.randn(1, 3, other, other)).last_hidden_state
        native = model.vision_model(pixel_values=tiles(1)).last_hidden_state
    assert out.shape == (1, (other // 14) ** 2 + 1, model.config.vision_config.hidden_size)
    assert native.shape == (1, (TILE // 14) ** 2 + 1, model.config.vision_config.hidden_size)


def test_flash_attention_request_falls_back_to_eager_without_flash_attn(tiny_model_dir):
    pytest.importorskip('transformers')
    try:
        import flash_attn  # noqa: F401
        pytest.skip('flash_attn is installed here')
    except ImportError:
        pass
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(tiny_model_dir, trust_remote_code=True)
    config.llm_config.attn_implementation = 'flash_attention_2'  # what XTuner's InternVL_V1_5 does
    model = AutoModel.from_pretrained(tiny_model_dir, config=config, trust_remote_code=True)
    assert model.config.llm_config.attn_implementation == 'eager'
    assert model.language_model.config.attn_implementation == 'eager'
    assert not model.config.vision_config.use_flash_attn


def test_save_pretrained_round_trip(loaded, tmp_path):
    """A loaded model saves into a folder that loads again (what merging a LoRA into a checkpoint relies on)."""
    from transformers import AutoModel

    model, tokenizer = loaded
    model.save_pretrained(tmp_path / 'saved')
    from foodie.tiny_model import REMOTE_CODE_FILES

    assert {f for f in REMOTE_CODE_FILES if not (tmp_path / 'saved' / f).exists()} == set()
    reloaded = AutoModel.from_pretrained(tmp_path / 'saved', trust_remote_code=True).eval()
    reloaded.img_context_token_id = model.img_context_token_id
    input_ids, attention_mask = image_prompt(model, tokenizer, [('What dish?', 1)])
    with torch.no_grad():
        a = model(pixel_values=tiles(1), input_ids=input_ids, attention_mask=attention_mask).logits
        b = reloaded(pixel_values=tiles(1), input_ids=input_ids, attention_mask=attention_mask).logits
    torch.testing.assert_close(a, b)
    assert reloaded.config.to_dict()['auto_map'] == model.config.to_dict()['auto_map']


def test_select_layer_and_precomputed_visual_features(loaded):
    model, tokenizer = loaded
    pixel_values = tiles(1, seed=11)
    input_ids, attention_mask = image_prompt(model, tokenizer, [('What dish?', 1)])
    with torch.no_grad():
        last = model.extract_feature(pixel_values)
        by_pixels = model.generate(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask,
                                   **GREEDY)
        by_features = model.generate(pixel_values=pixel_values, visual_features=last, input_ids=input_ids,
                                     attention_mask=attention_mask, **GREEDY)
        assert torch.equal(by_pixels, by_features)
        try:
            model.select_layer = -2  # features from the second-to-last ViT layer
            earlier = model.extract_feature(pixel_values)
        finally:
            model.select_layer = -1
    assert earlier.shape == last.shape == (1, model.num_image_token, model.config.llm_config.hidden_size)
    assert not torch.allclose(earlier, last)
    with pytest.raises(ValueError, match='IMG_CONTEXT'):  # a prompt without image tokens but an image
        model.generate(pixel_values=pixel_values, input_ids=input_ids[:, :5], **GREEDY)


def test_forward_single_tile_without_image_flags_keeps_the_loss(tiny_model_dir):
    """One tile and no image_flags (or flags of shape (1,)) must still train: the flags stay 1-D."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(tiny_model_dir, trust_remote_code=True, torch_dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir, trust_remote_code=True)
    model.img_context_token_id = tok.convert_tokens_to_ids("<IMG_CONTEXT>")
    tokens = model.num_image_token
    ids = tok("<img>" + "<IMG_CONTEXT>" * tokens + "</img> 这是什么菜？", return_tensors="pt").input_ids
    pixels = torch.randn(1, 3, TILE, TILE)
    losses = [model(pixel_values=pixels, input_ids=ids, labels=ids, image_flags=flags).loss
              for flags in (None, torch.ones(1, dtype=torch.long), torch.ones(1, 1, dtype=torch.long))]
    assert all(torch.isfinite(l) and l.item() > 0.1 for l in losses)
    assert torch.allclose(losses[0], losses[2]) and torch.allclose(losses[1], losses[2])
