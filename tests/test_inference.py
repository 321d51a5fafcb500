"""foodie.inference: the chat interface shared by the evaluation and the demo (transformers backend on CPU;
LMDeploy needs a GPU and is exercised by bench/eval_throughput.py and bench/demo_ttft.py there)."""
from __future__ import annotations

import threading
from dataclasses import replace

import pytest
import torch

from foodie.image_tiling import load_image
from foodie.inference import (GenerationParams, LMDeployBackend, Message, TransformersBackend, load_backend,
                              resolve_backend, tiles_per_image, with_image_placeholders)

GREEDY = GenerationParams(max_new_tokens=12)


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    # float32 also on a GPU: the exact-equality checks below (batched = one at a time, = chat()) would see bf16
    # flip near-tie tokens of the random-weight model (an H200 run in bf16 differed at the second answer).
    return load_backend(tiny_model_dir, backend="transformers", dtype="float32")


@pytest.fixture(scope="module")
def drawn_backend(drawn_model_dir):
    """The tiny model as drawn (conftest): its answers run long, so streaming has several deltas to yield."""
    return load_backend(drawn_model_dir, backend="transformers", dtype="float32")


@pytest.fixture(scope="module")
def photos(small_foodieqa_dir):
    return sorted((small_foodieqa_dir / "images").rglob("*.jpg"))


@pytest.fixture()
def wide_photo(tmp_path, photos):
    """A 1000x400 photo: 4 tiles + thumbnail, so prompts in a batch differ in length."""
    from PIL import Image
    with Image.open(photos[0]) as im:
        wide = im.resize((1000, 400))
    path = tmp_path / "wide.jpg"
    wide.save(path)
    return path


def capture_generate(model):
    """Wrap model.generate to record the tensors it is called with (and still generate)."""
    calls = []
    original = model.generate

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)
    return calls, spy, original


def chat_reference(backend, question, image=None, history=None):
    """The checkpoint's own chat(): (response, input_ids it generated from)."""
    model = backend.model
    calls, spy, original = capture_generate(model)
    model.generate = spy
    try:
        pixel_values = None
        if image is not None:
            pixel_values = load_image(image, input_size=backend.image_size,
                                      max_num=model.config.max_dynamic_patch).to(model.device, backend.dtype)
        response = model.chat(backend.tokenizer, pixel_values, question, dict(max_new_tokens=GREEDY.max_new_tokens,
                                                                             do_sample=False), history=history)
    finally:
        del model.generate
    return response, calls[0]["input_ids"]


def our_input_ids(backend, request):
    calls, spy, original = capture_generate(backend.model)
    backend.model.generate = spy
    try:
        text = backend.generate([request], GREEDY)[0]
    finally:
        del backend.model.generate
    return text, calls[0]["input_ids"]


def test_prompt_and_greedy_answer_equal_chat(backend, photos):
    """Same tokens in as the model's own chat() (system message, image tokens), same greedy answer out."""
    question = "图片中的食物是什么菜？"
    ref, ref_ids = chat_reference(backend, question, image=photos[3])
    ours, ids = our_input_ids(backend, [Message("user", question, images=[photos[3]])])
    assert torch.equal(ids, ref_ids)
    assert ours == ref
    # The image became <img> + num_image_token <IMG_CONTEXT> per tile + </img>, after the system prompt.
    img_ctx = backend.tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    tiles = load_image(photos[3], input_size=backend.image_size).shape[0]
    assert int((ids == img_ctx).sum()) == backend.model.num_image_token * tiles
    assert backend.render([Message("user", question)]).startswith("<|im_start|>system\n" + backend.model.system_message)


def test_multi_turn_and_text_only_equal_chat(backend, photos):
    first = backend.generate([[Message("user", "这是什么菜？", images=[photos[5]])]], GREEDY)[0]
    history = [("<image>\n这是什么菜？", first)]
    ref, ref_ids = chat_reference(backend, "它来自哪个地区？", image=photos[5], history=history)
    request = [Message("user", "这是什么菜？", images=[photos[5]]), Message("assistant", first),
               Message("user", "它来自哪个地区？")]
    ours, ids = our_input_ids(backend, request)
    assert torch.equal(ids, ref_ids) and ours == ref

    ref, ref_ids = chat_reference(backend, "你好，请介绍一下川菜。")
    ours, ids = our_input_ids(backend, [Message("user", "你好，请介绍一下川菜。")])
    assert torch.equal(ids, ref_ids) and ours == ref


def test_batched_equals_one_at_a_time(backend, photos, wide_photo):
    """True batching (left padding, prompts of different lengths) gives the same greedy answers."""
    requests = [
        [Message("user", "图片中的食物是什么菜？", images=[wide_photo])],
        [Message("user", "这道菜属于哪个菜系？", images=[photos[1]])],
        [Message("user", "你好")],
        [Message("user", "Which image shows a dumpling?", images=photos[8:12])],
    ]
    calls, spy, original = capture_generate(backend.model)
    backend.model.generate = spy
    try:
        batched = backend.generate(requests, GREEDY)
    finally:
        del backend.model.generate
    mask = calls[0]["attention_mask"]
    assert mask.shape[0] == 4 and not bool(mask.all()), "expected one padded batch"
    assert bool(mask[:, -1].all()), "padding must be on the left"
    single = [backend.generate([r], GREEDY)[0] for r in requests]
    assert batched == single
    assert all(isinstance(t, str) for t in batched)


def test_stream_yields_the_same_answer_and_can_stop(drawn_backend, photos):
    request = [Message("user", "这是什么菜？", images=[photos[2]])]
    params = GenerationParams(max_new_tokens=20)
    deltas = list(drawn_backend.stream(request, params))
    assert len(deltas) > 1 and all(deltas)
    assert "".join(deltas) == drawn_backend.generate([request], params)[0]

    # Closing the stream early stops generation and frees the model for the next request.
    stream = drawn_backend.stream(request, GenerationParams(max_new_tokens=200))
    next(stream)
    stream.close()
    threads = [t for t in threading.enumerate() if t.name.startswith("foodie-generate")]
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert drawn_backend.generate([request], params)[0] == "".join(deltas)


@pytest.mark.parametrize("deltas", [
    ["  he", "llo ", " ", "world  ", "\n"],  # leading/trailing whitespace, held-back spaces
    ["答案", "是（B）", "<|im", "_end|>", "more"],  # a separator split over two deltas ends the answer
    ["a <", "|b"],  # an ending that only looked like the separator's start
    [" ", "", "\n"],  # nothing but whitespace
])
def test_streamed_deltas_join_to_the_trimmed_answer(deltas):
    from foodie.inference import _as_answer
    out = list(_as_answer(iter(deltas), "<|im_end|>"))
    assert all(out) and "".join(out) == "".join(deltas).split("<|im_end|>")[0].strip()


def test_sampling_follows_the_seed(backend, photos):
    request = [Message("user", "这是什么菜？", images=[photos[0]])]
    params = GenerationParams(max_new_tokens=12, do_sample=True, temperature=1.0, top_p=0.9)
    torch.manual_seed(0)
    a = backend.generate([request], params)[0]
    torch.manual_seed(0)
    assert backend.generate([request], params)[0] == a


def test_decode_skips_ids_the_tokenizer_lacks(backend):
    """A model can emit ids past its tokenizer (random weights, a padded vocabulary): decoding skips them."""
    tok = backend.tokenizer
    ids = tok("麻婆豆腐 and dumplings", add_special_tokens=False)["input_ids"]
    end = tok.convert_tokens_to_ids("<|im_end|>")
    noisy = [len(tok) + 7] + ids[:2] + [len(tok) + 100, 10 ** 6] + ids[2:] + [end] + ids
    assert backend.decode(noisy) == backend.decode(ids) == "麻婆豆腐 and dumplings"


def test_multi_image_tile_budget(backend, wide_photo):
    assert tiles_per_image(12, 1) == 12 and tiles_per_image(12, 4) == 3 and tiles_per_image(2, 4) == 1
    _, _, pixel_values = backend._prepare([[Message("user", "哪张图是饺子？", images=[wide_photo] * 4)]])
    per_image = load_image(wide_photo, input_size=backend.image_size,
                           max_num=tiles_per_image(backend.max_tiles, 4)).shape[0]
    assert pixel_values.shape[0] == 4 * per_image <= 4 * (tiles_per_image(backend.max_tiles, 4) + 1)
    assert per_image < load_image(wide_photo, input_size=backend.image_size, max_num=backend.max_tiles).shape[0]


def test_image_placeholders():
    assert with_image_placeholders("q", 0) == "q"
    assert with_image_placeholders("q", 1) == "<image>\nq"
    assert with_image_placeholders("q", 2) == "Image-1: <image>\nImage-2: <image>\nq"
    assert with_image_placeholders("A <image> B <image>", 2) == "A <image> B <image>"
    with pytest.raises(ValueError, match="1 <image> placeholder.*2 image"):
        with_image_placeholders("<image> q", 2)


def test_bad_requests_are_refused_clearly(backend, tmp_path):
    with pytest.raises(ValueError, match="must alternate"):
        backend.generate([[Message("user", "a"), Message("user", "b")]])
    with pytest.raises(ValueError, match="must alternate"):
        backend.generate([[Message("assistant", "b")]])
    with pytest.raises(ValueError, match="start of the reply"):
        backend.generate([[Message("user", "a"), Message("assistant", "")]])
    with pytest.raises(ValueError, match="only user messages"):
        Message("assistant", "a", images=["x.jpg"])
    for bad, rule in ((dict(max_new_tokens=0), "max_new_tokens must"), (dict(max_tiles=0), "max_tiles must"),
                      (dict(do_sample=True, top_p=0), "top_p"), (dict(repetition_penalty=0), "repetition_penalty")):
        with pytest.raises(ValueError, match=rule) as refused:  # names the rule broken, only that one
            GenerationParams(**bad)
        assert str(refused.value).count(" must ") + str(refused.value).count(" needs ") == 1
    with pytest.raises(Exception, match="missing.jpg"):
        backend.generate([[Message("user", "a", images=[tmp_path / "missing.jpg"])]])
    # A system message replaces the checkpoint's system prompt.
    assert backend.render([Message("system", "You are a chef."), Message("user", "hi")]).startswith(
        "<|im_start|>system\nYou are a chef.")


def test_generation_ends_with_the_turn_or_the_text(backend):
    """<|im_end|> and </s> both stop a reply (the authors allow 500+ new tokens: only a model that never
    ends its turn pays for them); what follows an end is not part of the answer."""
    tok = backend.tokenizer
    im_end, eos = tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id
    stops = backend._generate_kwargs(GenerationParams(max_new_tokens=512))["eos_token_id"]
    assert im_end in stops and eos in stops and im_end != eos
    word = tok.encode("好", add_special_tokens=False)
    assert backend.decode(word + [im_end] + word) == backend.decode(word + [eos]) == backend.decode(word) == "好"


def test_a_started_reply_is_continued(backend):
    """FoodieQA templates that start the assistant's turn ("我选择（"): the prompt ends inside that turn,
    and the answer returned is only what the model adds."""
    plain = backend.render([Message("user", "hi")])
    started = backend.render([Message("user", "hi"), Message("assistant", "我选择（")])
    assert started == plain + "我选择（" and plain.endswith("<|im_start|>assistant\n")
    out = backend.generate([[Message("user", "hi"), Message("assistant", "我选择（")]], GenerationParams(max_new_tokens=3))
    assert len(out) == 1 and not out[0].startswith("我选择（")


def test_backend_choice_on_cpu(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_backend("auto") == "transformers"
    assert resolve_backend("transformers") == "transformers"
    with pytest.raises(ValueError, match="unknown backend"):
        resolve_backend("vllm")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(RuntimeError, match="CUDA GPU"):
        load_backend(tmp_path, backend="lmdeploy")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_backend(tmp_path / "nowhere")


def test_backend_is_the_checkpoints_own_code(backend, tiny_model_dir):
    assert isinstance(backend, TransformersBackend) and backend.name == "transformers"
    assert backend.model_dir == tiny_model_dir
    # The conversation template comes from the checkpoint's remote code, not from this project.
    assert type(backend.model).__module__.startswith("transformers_modules.")


# ---------------------------------------------------------------------------------------------
# LMDeploy (GPU machines only; CI has none: run `pytest tests/test_inference.py -k lmdeploy` there)
# ---------------------------------------------------------------------------------------------

needs_lmdeploy = pytest.mark.skipif(not LMDeployBackend.usable(), reason="LMDeploy needs its package and a CUDA GPU")


@pytest.fixture(scope="module")
def lmdeploy_backend(tiny_model_dir):
    b = load_backend(tiny_model_dir, backend="lmdeploy", max_batch_size=4)
    yield b
    b.close()


@needs_lmdeploy
def test_lmdeploy_prompt_equals_ours(lmdeploy_backend, backend, photos):
    """LMDeploy's internvl2-internlm2 template + image tokens give the prompt our transformers backend gives."""
    from lmdeploy.vl.model.internvl import InternVLVisionModel

    requests = [
        [Message("user", "这是什么菜？", images=[photos[0]])],
        [Message("user", "哪张图是饺子？", images=photos[1:5])],
        [Message("user", "这是什么菜？", images=[photos[0]]), Message("assistant", "麻婆豆腐"),
         Message("user", "它来自哪个地区？")],
        [Message("system", "You are a chef."), Message("user", "hi")],
    ]
    for request in requests:
        messages = lmdeploy_backend._messages(request)
        for m in messages:  # what LMDeploy's image loading turns image_data items into
            if isinstance(m["content"], list):
                m["content"] = [{"type": "image"} if c["type"] == "image_data" else c for c in m["content"]]
        theirs, token = InternVLVisionModel.proc_messages(messages, lmdeploy_backend.pipe.chat_template, True)
        ours = backend.render(request).replace("<image>", f"<img>{token}</img>")
        assert theirs == ours


@needs_lmdeploy
def test_lmdeploy_generate_stream_and_threads(lmdeploy_backend, photos):
    requests = [[Message("user", "这是什么菜？", images=[p])] for p in photos[:3]] + [[Message("user", "你好")]]
    answers = lmdeploy_backend.generate(requests, GREEDY)
    assert len(answers) == 4 and all(isinstance(a, str) for a in answers)
    # One request alone, either way: the same greedy answer (batch composition may change bf16 sums).
    alone = lmdeploy_backend.generate(requests[:1], GREEDY)[0]
    assert "".join(lmdeploy_backend.stream(requests[0], GREEDY)) == alone

    # Streams from several threads at once (Gradio's workers): no "Current event loop is different".
    results, errors = {}, []

    def worker(i):
        try:
            results[i] = "".join(lmdeploy_backend.stream(requests[i], GREEDY))
        except Exception as e:  # noqa: BLE001
            errors.append(e)
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and sorted(results) == [0, 1, 2, 3]
    assert all(isinstance(t, str) for t in results.values())


def test_lmdeploy_gets_our_pixel_values_unchanged(tiny_model_dir, photos, wide_photo):
    """Our prepared images pass LMDeploy's InternVL preprocessor as exactly what its own code makes of
    the same files (tile count, image tokens, pixel values bitwise); other requests still go its way.
    Runs where LMDeploy's Python package is importable (no GPU needed)."""
    internvl = pytest.importorskip("lmdeploy.vl.model.internvl")
    from PIL import Image
    from transformers import AutoConfig

    from foodie.inference import PreparedImage, pass_prepared_images, pixel_values
    from foodie.model_spec import ModelSpec

    config = AutoConfig.from_pretrained(tiny_model_dir, trust_remote_code=True)
    theirs = internvl.InternVLVisionModel(str(tiny_model_dir), hf_config=config, backend="pytorch")
    theirs.build_preprocessor()
    ours = internvl.InternVLVisionModel(str(tiny_model_dir), hf_config=config, backend="pytorch")
    ours.build_preprocessor()
    spec = ModelSpec.from_checkpoint(tiny_model_dir)
    per_tile = spec.tokens_per_tile
    assert pass_prepared_images(ours, per_tile)

    def message(images):
        return [dict(role="user", content=[dict(type="text", text="<IMAGE_TOKEN>\n?")]
                     + [dict(type="image", image=im, max_dynamic_patch=budget) for im, budget in images])]

    for files in ([wide_photo], [photos[0], wide_photo]):
        request = [Message("user", "?", images=files)]
        budgets = [tiles_per_image(spec.max_tiles, len(files))] * len(files)
        pixels = pixel_values(spec, [request])[0]
        got = ours.preprocess(message([(PreparedImage(x), b) for x, b in zip(pixels, budgets)]))[-1]["content"]
        want = theirs.preprocess(message([(Image.open(f), b) for f, b in zip(files, budgets)]))[-1]["content"]
        assert [g["image_tokens"] for g in got] == [w["image_tokens"] for w in want]
        assert got[-1]["image_tokens"] > per_tile  # the wide photo: several tiles + thumbnail
        for g, w in zip(got, want):
            assert g["image_token_id"] == w["image_token_id"]
            assert g["pixel_values"].dtype == w["pixel_values"].dtype
            assert torch.equal(g["pixel_values"], w["pixel_values"])
    # A PIL image (not prepared by us) still takes LMDeploy's own path.
    stock = ours.preprocess(message([(Image.open(wide_photo), 6)]))[-1]["content"]
    assert torch.equal(stock[0]["pixel_values"], pixel_values(replace(spec, max_tiles=6),
                                                                      [[Message("user", "?", images=[wide_photo])]])[0][0])



def test_pixel_values_normalised_on_a_device_equal_the_cpu_path(tiny_model_dir, photos, wide_photo):
    """LMDeployBackend(gpu_normalise=True) hands the engine pixel values normalised where it runs (workers
    only tile): the same values and dtype as the CPU path, per request and image (a CPU device stands in)."""
    from foodie.inference import pixel_values
    from foodie.model_spec import ModelSpec
    spec = ModelSpec.from_checkpoint(tiny_model_dir)
    requests = [[Message("user", "?", images=[wide_photo])], [Message("user", "?", images=[photos[0], wide_photo])]]
    for dtype in (None, torch.bfloat16):
        want = pixel_values(spec, requests, 2, dtype)
        got = pixel_values(spec, requests, 2, dtype, device="cpu")
        assert [len(r) for r in got] == [1, 2]
        for g, w in zip(sum(got, []), sum(want, [])):
            assert g.dtype == w.dtype and torch.equal(g, w)

def test_answer_all_covers_every_request_as_generate_does(backend, photos, wide_photo):
    """The evaluation's run loop: every request answered once, in batches of at most batch_size, each
    answer what generate() gives for the same batch."""
    from foodie.inference import answer_all
    requests = [[Message("user", "这是什么菜？", images=[p])] for p in (photos[0], wide_photo, photos[1])]
    requests += [[Message("user", "哪张图是饺子？", images=photos[2:4])], [Message("user", "你好")]]
    got = list(answer_all(backend, requests, GREEDY, batch_size=2))
    assert [idx for idx, _ in got] == [[0, 1], [2, 3], [4]]
    for idx, answers in got:
        assert answers == backend.generate([requests[i] for i in idx], GREEDY)


def test_lmdeploy_answer_all_feeds_prepared_images_and_bounds_what_waits(tiny_model_dir, photos, wide_photo,
                                                                         monkeypatch):
    """LMDeployBackend.answer_all without LMDeploy (a stand-in pipeline): every request answered once, in
    groups of at most batch_size, its images handed over as our prepared tiles, never more than
    max_in_flight requests prepared or generating at once, and an engine error reaches the caller."""
    import asyncio
    import itertools
    import random
    import sys
    import types
    from concurrent.futures import ThreadPoolExecutor

    from foodie.inference import PreparedImage
    from foodie.model_spec import ModelSpec

    state = dict(now=0, most=0)
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    class Pipe:
        async def generate(self, messages, session_id, **kwargs):
            images = [c["image_data"]["data"] for m in messages if isinstance(m["content"], list)
                      for c in m["content"] if c["type"] == "image_data"]
            assert all(isinstance(i, PreparedImage) for i in images)
            texts = [c["text"] for m in messages if isinstance(m["content"], list) for c in m["content"]
                     if c["type"] == "text"]
            text = texts[0].split("\n")[-1] if texts else messages[-1]["content"]  # after "<IMAGE_TOKEN>\n"
            if "boom" in text:
                yield type("Out", (), dict(response="engine failed", finish_reason="error"))()
                return
            await asyncio.sleep(random.random() / 100)  # finish out of order
            yield type("Out", (), dict(response=f" {text}:{[i.pixel_values.shape[0] for i in images]} ",
                                       finish_reason="stop"))()

    monkeypatch.setitem(sys.modules, "lmdeploy", types.SimpleNamespace(GenerationConfig=dict))
    b = object.__new__(LMDeployBackend)
    b.pipe, b.loop, b._session_ids = Pipe(), loop, itertools.count()
    b._pool, b.max_in_flight, b._slots = ThreadPoolExecutor(2), 3, None
    b.prepares_images, b._dtype, b.max_tiles, b.pin_memory, b.normalise_on = True, None, 12, False, None
    b.spec = replace(ModelSpec.from_checkpoint(tiny_model_dir), max_tiles=12)
    prepare = b._pixels

    lock = threading.Lock()

    async def counting(request, *args):  # count requests between "being prepared" and "answered"
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        return await prepare(request, *args)
    b._pixels = counting
    answer = b._answer

    async def answered(*args, **kwargs):
        try:
            return await answer(*args, **kwargs)
        finally:
            with lock:
                state["now"] -= 1
    b._answer = answered

    requests = [[Message("user", f"q{i}", images=[wide_photo if i % 3 == 0 else photos[i]])] for i in range(9)]
    got = list(b.answer_all(requests, GREEDY, batch_size=4))
    assert [len(idx) for idx, _ in got] == [4, 4, 1]
    answers = {i: a for idx, ans in got for i, a in zip(idx, ans)}
    assert sorted(answers) == list(range(9))
    for i, a in answers.items():  # stripped; the wide photo is several tiles + thumbnail, the small ones one
        assert a.startswith(f"q{i}:[") and a == a.strip() and (a != f"q{i}:[1]") == (i % 3 == 0)
    assert state["most"] <= 3
    with pytest.raises(RuntimeError, match="engine failed"):
        list(b.answer_all(requests[:2] + [[Message("user", "boom")]], GREEDY, batch_size=4))


@pytest.mark.slow  # two processes each load the model: ~100 s on 2 busy cores
def test_replicas_answer_every_request_as_one_backend_does(backend, tiny_model_dir, photos):
    """Data parallel (``devices``: one backend per GPU, each in a process of its own; here two on the CPU):
    every request answered once, each answer what the backend in this process gives."""
    requests = [[Message("user", "这是什么菜？", images=[p])] for p in photos[:3]] + [[Message("user", "你好")]]
    replicas = load_backend(tiny_model_dir, backend="transformers", devices=[0, 0])
    try:
        got = list(replicas.answer_all(requests, GREEDY, batch_size=1))
        assert sorted(i for idx, _ in got for i in idx) == [0, 1, 2, 3]
        assert {i: a for idx, ans in got for i, a in zip(idx, ans)} == {
            i: backend.generate([r], GREEDY)[0] for i, r in enumerate(requests)}
        with pytest.raises(Exception, match="missing.jpg"):  # a replica's error reaches the caller
            list(replicas.answer_all([[Message("user", "?", images=["missing.jpg"])]] * 2, GREEDY))
    finally:
        replicas.close()


def test_a_third_backend_is_one_registry_entry(tiny_model_dir, monkeypatch):
    """A serving backend is a class in BACKENDS: 'auto' tries them in order, load_backend hands it the options
    its __init__ names (the others belong to other backends), and the evaluation's answer_all drives it."""
    from foodie import inference

    class Echo:
        name, continues_reply = "echo", True
        usable = staticmethod(lambda: True)

        def __init__(self, model_dir, max_tiles=None):
            self.model_dir, self.max_tiles = model_dir, max_tiles

        def generate(self, requests, params=GREEDY):
            return [request[-1].text for request in requests]

    monkeypatch.setattr(inference, "BACKENDS", {"echo": Echo, **inference.BACKENDS})
    assert resolve_backend("auto") == resolve_backend("echo") == "echo"
    echo = load_backend(tiny_model_dir, dtype="float32", max_tiles=3, image_workers=2)
    assert isinstance(echo, Echo) and echo.max_tiles == 3
    requests = [[Message("user", "a")], [Message("user", "b")]]
    assert list(inference.answer_all(echo, requests, GREEDY, batch_size=1)) == [([0], ["a"]), ([1], ["b"])]


def test_per_gpu_replicas_split_the_lmdeploy_cache(tiny_model_dir, monkeypatch):
    """``per_gpu`` backends on each listed GPU, each in a process of its own (Replicas); LMDeploy engines that share
    a card split the KV-cache share one engine takes (half the free memory), unless it is given."""
    from foodie import inference

    class Engine:
        name = "lmdeploy"
        usable = staticmethod(lambda: True)

        def __init__(self, model_dir, cache_max_entry_count=0.5):
            self.cache_max_entry_count = cache_max_entry_count

    monkeypatch.setattr(inference, "BACKENDS", {"lmdeploy": Engine})
    replicas = load_backend(tiny_model_dir, backend="lmdeploy", devices=[0, 1], per_gpu=2)
    given = load_backend(tiny_model_dir, backend="lmdeploy", devices=[0], per_gpu=3, cache_max_entry_count=0.3)
    try:
        assert replicas.devices == ["0", "0", "1", "1"] and replicas._options["cache_max_entry_count"] == 0.25
        assert given.devices == ["0"] * 3 and given._options["cache_max_entry_count"] == 0.3
    finally:
        replicas.close()
        given.close()
    one = load_backend(tiny_model_dir, backend="lmdeploy", devices=[0])
    assert isinstance(one, Engine) and one.cache_max_entry_count == 0.5
    assert inference.replicas_per_gpu("transformers") == 1  # one process per GPU where engines do not overlap


def test_compile_vision_reaches_lmdeploys_own_switch_or_says_it_cannot():
    """compile_vision calls the compile_model of the engine's InternVL model (LMDeploy 0.9 leaves it uncalled);
    with no such model in this process (tensor parallel: the model lives in workers) it reports False, which
    LMDeployBackend turns into an error instead of a silently uncompiled run."""
    import types

    from foodie.inference import compile_engine_vision

    class Model:
        compile_vit = False

        def compile_model(self):
            self.compile_vit = True

    model = Model()
    runner = types.SimpleNamespace(get_model=lambda: model)
    pipe = types.SimpleNamespace(engine=types.SimpleNamespace(executor=types.SimpleNamespace(
        model_agent=types.SimpleNamespace(patched_model=runner))))
    assert compile_engine_vision(pipe) and model.compile_vit
    remote = types.SimpleNamespace(engine=types.SimpleNamespace(executor=types.SimpleNamespace()))  # no model_agent
    assert not compile_engine_vision(remote)
