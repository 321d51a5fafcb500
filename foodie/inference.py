"""One chat interface over InternVL2 checkpoints, shared by the evaluation and the demo: ``load_backend(dir)``
gives a backend with ``generate(requests, params)`` (a batch), ``stream(request, params)`` (text deltas; close()
stops it) and ``answer_all`` (many requests, images prepared ahead). A request is a conversation ending with a user
turn (a leading system message replaces the checkpoint's; a trailing assistant message starts the reply). Every
backend gives the model the prompt and tiles of ``chat()``.
"""
from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import inspect
import itertools
import multiprocessing
import os
import queue
import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

from foodie.image_tiling import ImageLike, load_image, load_tiles, normalise, open_image
from foodie.model_spec import IMG_CONTEXT, ModelSpec
from foodie.tasks import IMAGE_PLACEHOLDER


@dataclass
class Message:
    """One turn of a conversation. ``role`` is 'system', 'user' or 'assistant'."""
    role: str
    text: str
    images: list[ImageLike] = field(default_factory=list)

    def __post_init__(self):
        if self.role not in ("system", "user", "assistant") or (self.images and self.role != "user"):
            raise ValueError(f"a message is a 'system', 'user' or 'assistant' turn and only user messages can carry "
                             f"images, got {len(self.images)} image(s) on a {self.role!r} message")
        self.images = list(self.images)


Request = Sequence[Message]


@dataclass(frozen=True)
class GenerationParams:
    """Decoding settings. ``do_sample=False`` is greedy decoding (temperature and top_p unused)."""
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    do_sample: bool = False
    repetition_penalty: float = 1.0  # > 1 discourages repeating tokens already said (1 = off)
    max_tiles: int | None = None  # tile budget of a request (None: the backend's, i.e. the checkpoint's)

    def __post_init__(self):
        broken = [rule for rule, holds in (
            ("max_new_tokens must be >= 1", self.max_new_tokens >= 1),
            ("max_tiles must be >= 1 (None: the backend's)", self.max_tiles is None or self.max_tiles >= 1),
            ("repetition_penalty must be > 0 (1 = off)", self.repetition_penalty > 0),
            ("sampling needs temperature > 0", not self.do_sample or self.temperature > 0),
            ("sampling needs 0 < top_p <= 1", not self.do_sample or 0 < self.top_p <= 1)) if not holds]
        if broken:
            raise ValueError(f"{'; '.join(broken)}; got {self}")


def _check_request(request: Request, backend=None) -> tuple[str | None, list[Message]]:
    """(system text or None, the other turns), which must alternate user/assistant starting with user."""
    msgs = list(request)
    system = msgs.pop(0).text if msgs and msgs[0].role == "system" else None
    for i, m in enumerate(msgs):
        if m.role != ("user", "assistant")[i % 2]:
            raise ValueError(f"message {i} has role {m.role!r}: turns must alternate user/assistant, starting "
                             f"with user (one optional system message first)")
    if not msgs or (msgs[-1].role == "assistant" and not msgs[-1].text):
        raise ValueError("a request needs a user message, and a last assistant message (the start of the reply, "
                         "which the model continues) needs some text in it")
    if msgs[-1].role == "assistant" and not getattr(backend, "continues_reply", True):
        raise ValueError(f"the {backend.name} backend cannot continue a started reply (templates with a reply "
                         f"prefix, such as FoodieQA's --template 3): use --backend transformers")
    return system, msgs


def with_image_placeholders(text: str, n_images: int) -> str:
    """The user text with one ``<image>`` per image, as ``chat()`` expects (text that has them needs one each)."""
    have = text.count(IMAGE_PLACEHOLDER)
    if have and have != n_images:
        raise ValueError(f"the text has {have} {IMAGE_PLACEHOLDER} placeholder(s) but {n_images} image(s) "
                         f"were given: use one placeholder per image, or none to put the images first")
    if have or n_images == 0:
        return text
    return (f"{IMAGE_PLACEHOLDER}\n" if n_images == 1 else
            "".join(f"Image-{i + 1}: {IMAGE_PLACEHOLDER}\n" for i in range(n_images))) + text


def with_budget(spec: ModelSpec, max_tiles: int | None) -> ModelSpec:  # None: the checkpoint's own
    return replace(spec, max_tiles=max_tiles or spec.max_tiles)


def tiles_per_image(max_tiles: int, n_images: int) -> int:
    """Images share a request's budget, one tile at least (InternVL's multi-image evaluation: 4 x 12 tiles is 13k
    tokens)."""
    return max(1, max_tiles // max(1, n_images))


def pixel_values(spec: ModelSpec, requests: Sequence[Request], workers: int = 1, dtype=None,
                 device=None) -> list[list]:
    """[request][image] -> [tiles, 3, size, size], bitwise the official ``load_image`` (a request's images share
    ``spec.max_tiles``), cast to ``dtype`` if given, over ``workers`` threads (1: the caller's). With ``device`` the
    threads only tile (uint8) and the normalising runs there, each thread on a CUDA stream of its own, finished on
    return."""
    def one(image, budget):
        grid = dict(input_size=spec.tile_size, max_num=budget, min_num=min(spec.min_tiles, budget),
                    use_thumbnail=spec.use_thumbnail)
        if device is None:
            x = load_image(image, **grid)
            return x if dtype is None else x.to(dtype)
        tiles = load_tiles(image, **grid)
        with _thread_stream(device) as finish:
            return finish(normalise(tiles, dtype, device))

    images = [[image for m in request for image in m.images] for request in requests]
    if workers <= 1:  # LMDeployBackend calls from its own image workers, a request at a time: no thread per call
        return [[one(x, tiles_per_image(spec.max_tiles, len(xs))) for x in xs] for xs in images]
    with ThreadPoolExecutor(workers, thread_name_prefix="foodie-images") as pool:
        done = [[pool.submit(one, x, tiles_per_image(spec.max_tiles, len(xs))) for x in xs] for xs in images]
    return [[x.result() for x in request] for request in done]


_streams = threading.local()


@contextlib.contextmanager
def _thread_stream(device):
    """On a CUDA device: this thread's own stream (the engine's streams never wait on it); ``finish(x)`` waits
    for the stream's work, so ``x`` is ready for any stream. Elsewhere nothing. (The memory of ``x`` returns to this
    stream's pool when LMDeploy drops the request, after the step that read it has copied its tokens to the host.)"""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        yield lambda x: x
        return
    key = f"s{device.index}"
    stream = getattr(_streams, key, None) or torch.cuda.Stream(device)
    setattr(_streams, key, stream)
    with torch.cuda.stream(stream):
        yield lambda x: (stream.synchronize(), x)[1]


def image_workers_for(device: str = "cpu") -> int:
    """Image threads: every core up to 8 (on a CPU the model waits for them); beside a GPU two fewer."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores - (0 if str(device).startswith("cpu") else 2)))


def answer_all(backend, requests: Sequence[Request], params: GenerationParams = GenerationParams(),
               batch_size: int = 8) -> Iterator[tuple[list[int], list[str]]]:
    """``(indices, answers)`` of at most ``batch_size`` requests at a time, in any order: the backend's own
    ``answer_all`` (images prepared ahead of the model) where it has one, else ``generate``."""
    if hasattr(backend, "answer_all"):
        return backend.answer_all(requests, params, batch_size)
    batches = [list(range(i, min(i + batch_size, len(requests)))) for i in range(0, len(requests), batch_size)]
    return ((idx, backend.generate([requests[i] for i in idx], params)) for idx in batches)


class _Stopped(Exception):  # ends a generation whose stream was closed
    pass


def _stream(start, sep: str | None = None) -> Iterator[str]:
    """The deltas that ``start(on_delta, stop)`` (which returns a future) reports, trimmed as ``generate`` trims;
    closing this generator sets ``stop`` and cancels the future. An error of the generation is raised here."""
    deltas, stop = queue.Queue(), threading.Event()
    future = start(deltas.put, stop)
    future.add_done_callback(lambda _: deltas.put(None))
    try:
        yield from _as_answer(iter(deltas.get, None), sep)
        stop.set()  # (a separator in the text ends the answer early)
        with contextlib.suppress(_Stopped):
            future.result()
    finally:
        stop.set()
        future.cancel()


def _as_answer(deltas: Iterator[str], sep: str | None = None) -> Iterator[str]:
    """Text deltas -> non-empty deltas that join to the answer as ``generate`` returns it: nothing from ``sep``
    on, no outer whitespace. Trailing whitespace, and an ending that might start ``sep``, wait for more text."""
    text, emitted = "", ""
    for delta in deltas:
        text += delta
        if sep and sep in text:
            break
        ready = text.lstrip()
        held = next((k for k in range(min(len(sep or "") - 1, len(ready)), 0, -1) if ready.endswith(sep[:k])), 0)
        ready = ready[:len(ready) - held].rstrip()
        if len(ready) > len(emitted):
            yield ready[len(emitted):]
            emitted = ready
    final = (text.split(sep)[0] if sep else text).strip()
    if len(final) > len(emitted):
        yield final[len(emitted):]


class TransformersBackend:
    """The checkpoint's own remote code (CPU and GPU), one batched ``generate`` (left padding) at a time. Attention:
    FlashAttention-2 where the checkpoint asks for it and has it, else SDPA (exact; on CPU far faster than eager)."""

    name, continues_reply, concurrent = "transformers", True, False  # concurrent: answers several streams at once
    usable = staticmethod(lambda: True)

    def __init__(self, model_dir: str | os.PathLike, max_tiles: int | None = None, device: str = "auto",
                 dtype: str = "auto", image_workers: int | None = None):
        import torch
        from transformers import AutoModel, AutoTokenizer

        from foodie.sdpa_attention import use_sdpa

        self.model_dir, self._torch = Path(model_dir), torch
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        dtype = ("bfloat16" if str(self.device).startswith("cuda") else "float32") if dtype == "auto" else dtype
        self.dtype = getattr(torch, dtype, None)
        if not isinstance(self.dtype, torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir, trust_remote_code=True, use_fast=False)
        self.model = AutoModel.from_pretrained(self.model_dir, trust_remote_code=True, torch_dtype=self.dtype,
                                               low_cpu_mem_usage=True).eval().to(self.device)
        use_sdpa(self.model)  # its eager attention through SDPA: same logits (foodie/sdpa_attention.py)
        self.spec = with_budget(ModelSpec.from_checkpoint(self.model_dir), max_tiles)
        self.image_size, self.max_tiles = self.spec.tile_size, self.spec.max_tiles
        self.image_workers = image_workers or image_workers_for("cpu")
        self._conversation = self.spec.conversation()  # the checkpoint's own template (its conversation.py)
        self.sep = self._conversation.sep.strip()
        self.eos_token_id = self.tokenizer.convert_tokens_to_ids(self.sep)
        # A reply ends with the turn (<|im_end|>) or the text (</s>), as the checkpoint's generation_config says.
        ends = (self.eos_token_id, self.tokenizer.eos_token_id)
        self.stop_token_ids = [i for i in dict.fromkeys(ends) if i is not None]
        self.img_context_token_id = self.model.img_context_token_id = self.tokenizer.convert_tokens_to_ids(IMG_CONTEXT)
        self.vocab_limit = len(self.tokenizer)  # (slow tokenizers count their vocabulary on every len())
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self._lock = threading.Lock()

    def render(self, request: Request, num_tiles: Sequence[int] | None = None) -> str:
        """The prompt text as the checkpoint's ``chat()`` builds it; ``num_tiles`` (one count per image)
        expands each ``<image>`` into image tokens, without it the placeholders stay (for showing)."""
        system, msgs = _check_request(request)
        prefix = msgs[-1].text if msgs[-1].role == "assistant" else None  # FoodieQA's "我选择（"
        template = self._conversation.copy()
        template.system_message = self._conversation.system_message if system is None else system
        for m in msgs[:-1] if prefix is not None else msgs:
            text = with_image_placeholders(m.text, len(m.images)) if m.role == "user" else m.text
            template.append_message(template.roles[0 if m.role == "user" else 1], text)
        template.append_message(template.roles[1], None)
        prompt = template.get_prompt() + (prefix or "")
        for n in num_tiles or ():
            prompt = prompt.replace(IMAGE_PLACEHOLDER, self.spec.image_tokens(n), 1)
        return prompt

    def _prepare(self, requests: Sequence[Request], params: GenerationParams = GenerationParams()):
        """Tokens (left-padded), attention mask and pixel values of a batch. The images first, on every core up
        to 8, then the model on every core: overlapping them made 100 questions on 2 quiet cores 2x slower."""
        pixels = pixel_values(with_budget(self.spec, params.max_tiles), requests, self.image_workers)
        prompts = [self.render(request, [t.shape[0] for t in p]) for request, p in zip(requests, pixels)]
        self.tokenizer.padding_side = "left"
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True)
        flat = [t for p in pixels for t in p]
        tiles = self._torch.cat(flat).to(self.device, self.dtype) if flat else None
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device), tiles

    def _generate_kwargs(self, params: GenerationParams) -> dict:
        sampling = (dict(temperature=params.temperature, top_p=params.top_p, top_k=0) if params.do_sample
                    else dict(temperature=None, top_p=None, top_k=None))  # (silences the generation_config's)
        return dict(max_new_tokens=params.max_new_tokens, do_sample=params.do_sample, eos_token_id=self.stop_token_ids,
                    pad_token_id=self.tokenizer.pad_token_id, repetition_penalty=params.repetition_penalty, **sampling)

    def decode(self, ids, strip: bool = True) -> str:
        """Generated ids -> text up to the end of the turn, skipping ids the tokenizer lacks (random weights)."""
        ids = [int(i) for i in ids]
        ids = ids[:ids.index(self.eos_token_id)] if self.eos_token_id in ids else ids
        text = self.tokenizer.decode([i for i in ids if 0 <= i < self.vocab_limit], skip_special_tokens=True)
        return text.split(self.sep)[0].strip() if strip else text

    def generate(self, requests: Sequence[Request], params: GenerationParams = GenerationParams(),
                 **generate_kwargs) -> list[str]:
        if not requests:
            return []
        with self._lock, self._torch.inference_mode():
            input_ids, attention_mask, tiles = self._prepare(requests, params)
            out = self.model.generate(pixel_values=tiles, input_ids=input_ids, attention_mask=attention_mask,
                                      **self._generate_kwargs(params), **generate_kwargs)
        return [self.decode(row) for row in out.tolist()]  # generated from embeddings: only the new tokens

    def stream(self, request: Request, params: GenerationParams = GenerationParams()) -> Iterator[str]:
        def start(on_delta, stop):
            ids, sent = [], [""]

            class Streamer:  # generate() hands it the (empty: embeddings) prompt, then each new token
                def put(_, value):
                    if stop.is_set():
                        raise _Stopped
                    ids.extend(value.reshape(-1).tolist())
                    text = self.decode(ids, strip=False)
                    if not text.endswith("\ufffd"):  # else part of a multi-byte character: wait for the rest
                        on_delta(text[len(sent[0]):])
                        sent[0] = text

                def end(_):
                    pass

            pool = ThreadPoolExecutor(1, thread_name_prefix="foodie-generate")
            future = pool.submit(self.generate, [request], params, streamer=Streamer())
            pool.shutdown(wait=False)  # its thread ends with the generation
            return future
        return _stream(start, self.sep)  # trimmed as chat() trims

    def close(self) -> None:
        self.model = None
        self._torch.cuda.empty_cache()  # (a no-op without CUDA)


class PreparedImage(NamedTuple):  # an image we tiled: what our LMDeploy requests carry in place of a PIL image
    pixel_values: object


def pass_prepared_images(vision_model, tokens_per_tile: int) -> bool:
    """Let LMDeploy's InternVL preprocessor pass ``PreparedImage`` pixel values through as the entries its own
    ``preprocess`` appends; others go its way. False (nothing changed) where it is not the one of LMDeploy 0.9."""
    stock = getattr(vision_model, "preprocess", None)
    if not (stock and hasattr(vision_model, "collect_images") and hasattr(vision_model, "image_token_id")
            and getattr(vision_model, "image_tokens_per_patch", tokens_per_tile) == tokens_per_tile):
        return False

    def preprocess(messages):
        images = [image for image, _ in vision_model.collect_images(messages)]
        if not images or not all(isinstance(image, PreparedImage) for image in images):
            return stock(messages)
        messages.append(dict(role="preprocess", content=[dict(
            pixel_values=x, image_tokens=x.shape[0] * tokens_per_tile, image_token_id=vision_model.image_token_id,
            image_size=tuple(x.shape[-1:-3:-1])) for x, in images]))
        return messages

    vision_model.preprocess = preprocess
    return True


def engine_model(pipe):
    """The model module of an LMDeploy pipeline's PyTorch engine running in this process (None elsewhere)."""
    agent = getattr(getattr(getattr(pipe, "engine", None), "executor", None), "model_agent", None)
    runner = getattr(agent, "patched_model", None)
    return runner.get_model() if hasattr(runner, "get_model") else runner


def compile_engine_vision(pipe) -> bool:
    """Switch on the vision encoder's ``torch.compile`` that LMDeploy's InternVL model carries (``compile_model``)
    but LMDeploy 0.9 never calls (``graph_runner.py``: "recovery it when torch.compile is stable"). The engine must
    run in this process (one GPU, no tensor parallel). False where there is no such model or method."""
    model = engine_model(pipe)
    if not hasattr(model, "compile_model"):
        return False
    model.compile_model()
    return bool(getattr(model, "compile_vit", False))


class LMDeployBackend:
    """LMDeploy's pipeline (PyTorch engine) on its own event loop thread (calls from any thread are safe). Our
    ``image_workers`` tile images up to ``2 * max_batch_size`` requests ahead (LMDeploy 0.9 tiles in one thread: ~5
    questions/s on an H200 at 13 tiles); its default 4,096 ``max_prefill_tokens`` prefills one question at a time."""

    name, continues_reply, concurrent = "lmdeploy", False, True
    needs = ("the lmdeploy package and a CUDA GPU (no LMDeploy release runs on CPU); install the gpu profile "
             "(make venv PROFILE=gpu) or use --backend transformers")

    @staticmethod
    def usable() -> bool:
        import torch
        return importlib.util.find_spec("lmdeploy") is not None and torch.cuda.is_available()

    def __init__(self, model_dir: str | os.PathLike, max_tiles: int | None = None, max_batch_size: int = 128,
                 max_prefill_tokens: int = 32768, session_len: int = 16384, cache_max_entry_count: float = 0.5,
                 image_workers: int | None = None, dtype: str = "auto", compile_vision: bool = False,
                 pin_memory: bool = False, cudnn_benchmark: bool = False, gpu_normalise: bool = True,
                 fused_vit: bool = False):
        from lmdeploy import ChatTemplateConfig, PytorchEngineConfig, pipeline

        from foodie.lmdeploy_fused_vit import InternVLChatModelFusedViT, use_fused_vit

        if dtype not in ("auto", "bfloat16", "float16"):
            raise ValueError(f"dtype {dtype!r}: LMDeploy runs bfloat16 or float16 (auto: the checkpoint's); for "
                             f"float32 use --backend transformers")
        self.model_dir = Path(model_dir)
        self.spec = with_budget(ModelSpec.from_checkpoint(model_dir), max_tiles)
        self.max_tiles = self.spec.max_tiles
        self.engine_config = PytorchEngineConfig(session_len=session_len, max_batch_size=max_batch_size,
                                                 cache_max_entry_count=cache_max_entry_count,
                                                 max_prefill_token_num=max_prefill_tokens, dtype=dtype)
        # fused_vit: InternViT with its layer scales folded and GELU in the fc1 product, 6% fewer kernel-ms a
        # question, a gain inside the run-to-run spread, agreement unmeasured: off (docs/PERFORMANCE.md, session 12)
        use_fused_vit(fused_vit)
        self.pipe = pipeline(str(self.model_dir), backend_config=self.engine_config, log_level="ERROR",
                             chat_template_config=ChatTemplateConfig(self.spec.lmdeploy_template))
        if fused_vit and not isinstance(engine_model(self.pipe), InternVLChatModelFusedViT):
            raise RuntimeError(f"fused_vit: LMDeploy's engine for {self.model_dir} did not build the fused InternViT "
                               f"(needs an InternVL2 checkpoint and the engine in this process: one GPU, no tensor "
                               f"parallel)")
        self.loop = self.pipe.internal_thread.loop  # the PyTorch engine binds to the loop that first uses it
        self._session_ids = itertools.count(1 << 20)  # clear of the ids the pipeline hands out itself
        self.image_workers = image_workers or image_workers_for("cuda")
        self._pool = ThreadPoolExecutor(self.image_workers, thread_name_prefix="foodie-images")
        self.max_in_flight, self._slots = 2 * max_batch_size, None  # requests being prepared or generated
        self._dtype = self.pipe.engine.model_config.dtype
        self.prepares_images = pass_prepared_images(self.pipe.vl_encoder.model, self.spec.tokens_per_tile)
        # Our image workers only tile; the normalising (bitwise the CPU's) runs on the engine's GPU: a quarter of
        # the bytes to copy and about two thirds less CPU time a question (docs/PERFORMANCE.md, session 9).
        self.normalise_on = "cuda" if gpu_normalise and self.prepares_images else None
        # pixel values on the host the engine copies without waiting (none are on the host when the GPU normalises)
        self.pin_memory = pin_memory and self.prepares_images and self.normalise_on is None
        if cudnn_benchmark:  # the patch-embedding convolution: cuDNN picks its fastest algorithm per shape
            import torch
            torch.backends.cudnn.benchmark = True
        if compile_vision and not compile_engine_vision(self.pipe):
            raise RuntimeError(f"compile_vision: LMDeploy's engine for {self.model_dir} has no vision encoder it can "
                               f"compile here (needs the engine in this process: one GPU, no tensor parallel)")


    def _messages(self, request: Request, pixels: list | None = None, max_tiles: int | None = None) -> list[dict]:
        """Our request -> LMDeploy's OpenAI-style messages, with ``PreparedImage`` of ``pixels`` (the request's
        images' pixel values, in order) where our placeholders are, else PIL images."""
        system, msgs = _check_request(request, self)
        budget = tiles_per_image(max_tiles or self.max_tiles, sum(len(m.images) for m in msgs))
        prepared = iter(pixels or ())
        out = [] if system is None else [dict(role="system", content=system)]
        for m in msgs:
            if not m.images:
                out.append(dict(role=m.role, content=m.text))
                continue
            # LMDeploy wraps each <IMAGE_TOKEN> in <img>...</img>, as chat() does with <image>.
            text = with_image_placeholders(m.text, len(m.images)).replace(IMAGE_PLACEHOLDER, "<IMAGE_TOKEN>")
            images = [dict(type="image_data", image_data=dict(max_dynamic_patch=budget, data=PreparedImage(
                next(prepared)) if pixels else open_image(image))) for image in m.images]
            out.append(dict(role="user", content=[dict(type="text", text=text), *images]))
        return out

    async def _pixels(self, request: Request, spec: ModelSpec) -> list | None:
        """The request's pixel values from an image worker (None: no images, or LMDeploy's own image path)."""
        if not (self.prepares_images and any(m.images for m in request)):
            return None
        pixels = (await asyncio.wrap_future(self._pool.submit(pixel_values, spec, [request], 1, self._dtype,
                                                              self.normalise_on)))[0]
        return [x.pin_memory() for x in pixels] if self.pin_memory else pixels

    async def _answer(self, request: Request, params: GenerationParams, on_delta=None) -> str:
        from lmdeploy import GenerationConfig
        sampling = dict(temperature=params.temperature, top_p=params.top_p, top_k=0) if params.do_sample else {}
        config = GenerationConfig(max_new_tokens=params.max_new_tokens, do_sample=params.do_sample,
                                  skip_special_tokens=True, repetition_penalty=params.repetition_penalty, **sampling)
        spec = with_budget(self.spec, params.max_tiles)
        self._slots = self._slots or asyncio.Semaphore(self.max_in_flight)
        async with self._slots:  # bounds the prepared pixel values waiting in memory
            messages = self._messages(request, await self._pixels(request, spec), spec.max_tiles)
            parts = []
            async for out in self.pipe.generate(messages, next(self._session_ids), gen_config=config,
                                                stream_response=on_delta is not None, sequence_start=True,
                                                sequence_end=True, do_preprocess=True):
                if getattr(out, "finish_reason", None) == "error":
                    raise RuntimeError(f"LMDeploy failed on this request: {out.response}")
                parts.append(out.response or "")
                if on_delta is not None and out.response:
                    on_delta(out.response)
            return "".join(parts)

    def _submit(self, requests: Sequence[Request], params: GenerationParams, on_delta=None) -> list:
        for r in requests:
            _check_request(r, self)  # bad requests fail here, before anything runs
        return [asyncio.run_coroutine_threadsafe(self._answer(r, params, on_delta), self.loop) for r in requests]

    def generate(self, requests: Sequence[Request], params: GenerationParams = GenerationParams()) -> list[str]:
        return [f.result().strip() for f in self._submit(requests, params)]

    def answer_all(self, requests: Sequence[Request], params: GenerationParams = GenerationParams(),
                   batch_size: int = 8) -> Iterator[tuple[list[int], list[str]]]:
        """Every request goes to the engine at once (it batches them); answers in groups as they finish."""
        futures = {f: i for i, f in enumerate(self._submit(requests, params))}
        done = ((futures[f], f.result().strip()) for f in as_completed(futures))
        try:
            while group := list(itertools.islice(done, batch_size)):
                yield [i for i, _ in group], [a for _, a in group]
        finally:
            for future in futures:
                future.cancel()  # the consumer went away or one failed: stop the rest

    def stream(self, request: Request, params: GenerationParams = GenerationParams()) -> Iterator[str]:
        return _stream(lambda on_delta, stop: self._submit([request], params, on_delta)[0])  # cancel: LMDeploy ends it

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.pipe.close()


_replica = None  # the backend of a replica process


def _answer_share(device: str, model_dir: str, name: str, options: dict, requests, indices, params, batch_size,
                  outbox) -> None:
    """A replica's job: load its backend on its GPU (once), answer its share, each batch onto ``outbox``."""
    global _replica
    if _replica is None:  # device: an index into the GPUs this process's parent sees
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        os.environ["CUDA_VISIBLE_DEVICES"] = visible.split(",")[int(device)] if visible else device
        _replica = load_backend(model_dir, name, **options)
    for idx, answers in answer_all(_replica, requests, params, batch_size):
        outbox.put(([indices[i] for i in idx], answers))


class Replicas:
    """The backend ``name`` once per entry of ``devices``, each in a process that sees only that GPU; ``answer_all``
    deals the requests out in turn (data parallel). For the evaluation: a chat streams from one backend."""

    def __init__(self, model_dir: str | os.PathLike, name: str, devices: Sequence[int | str], **options):
        self.model_dir, self.name, self._options = Path(model_dir), name, options
        self.devices = [str(d) for d in devices]
        ctx = multiprocessing.get_context("spawn")
        self._pools = [ProcessPoolExecutor(1, ctx) for _ in devices]
        self._manager = ctx.Manager()
        self._outbox = self._manager.Queue()

    def answer_all(self, requests: Sequence[Request], params: GenerationParams = GenerationParams(),
                   batch_size: int = 8) -> Iterator[tuple[list[int], list[str]]]:
        n, indices = len(self._pools), list(range(len(requests)))
        jobs = [pool.submit(_answer_share, device, str(self.model_dir), self.name, self._options, requests[k::n],
                            indices[k::n], params, batch_size, self._outbox)
                for k, (pool, device) in enumerate(zip(self._pools, self.devices))]
        waiting = len(requests)
        while waiting:
            with contextlib.suppress(queue.Empty):
                idx, answers = self._outbox.get(timeout=1)
                waiting -= len(idx)
                yield idx, answers
            for job in jobs:
                if job.done():
                    job.result()  # a replica's error is raised here

    def close(self) -> None:
        for pool in self._pools:
            pool.shutdown(cancel_futures=True)
        self._manager.shutdown()


BACKENDS = {"lmdeploy": LMDeployBackend, "transformers": TransformersBackend}  # in the order 'auto' tries them
CHOICES = ("auto", *BACKENDS)


def resolve_backend(backend: str = "auto") -> str:
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(CHOICES)}")
    return next(name for name, cls in BACKENDS.items() if cls.usable()) if backend == "auto" else backend


def replicas_per_gpu(name: str) -> int:
    """Backends per GPU for the evaluation: two LMDeploy engines on a card of 48 GiB or more (they fill each other's
    gaps: on one H200 16.4 questions/s against 10.0 for one, docs/PERFORMANCE.md), else one."""
    import torch
    if name != "lmdeploy" or not torch.cuda.is_available():
        return 1
    smallest = min(torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count()))
    return 2 if smallest >= 48 * 2 ** 30 else 1


def load_backend(model_dir: str | os.PathLike, backend: str = "auto", devices: Sequence[int] | str | None = None,
                 per_gpu: int | None = None, **options):
    """An InternVL2 checkpoint behind the chat interface; ``options`` go to the backend where its ``__init__`` takes
    them. ``devices``: GPU indices or 'all' (every visible GPU), each running ``per_gpu`` backends (default 1;
    with 'all': ``replicas_per_gpu``); two or more in all run as ``Replicas``."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir}: no config.json, not a model checkpoint folder. Pass the folder of an "
                                f"InternVL2 checkpoint (official format), e.g. one made by tools/make_tiny_model.py "
                                f"or tools/convert_to_official.py.")
    name = resolve_backend(backend)
    cls = BACKENDS[name]
    if not cls.usable():
        raise RuntimeError(f"backend {name!r} needs {cls.needs}")
    if devices == "all":
        import torch
        devices, per_gpu = list(range(torch.cuda.device_count())), per_gpu or replicas_per_gpu(name)
    devices = [d for d in devices or () for _ in range(per_gpu or 1)]
    takes = inspect.signature(cls).parameters
    if len(devices) > 1:
        cache = takes.get("cache_max_entry_count")  # an engine's KV-cache share: engines sharing a card split it
        if cache is not None and options.get("cache_max_entry_count") is None:
            options["cache_max_entry_count"] = cache.default / (per_gpu or 1)
        return Replicas(model_dir, name, devices, **options)
    return cls(model_dir, **{k: v for k, v in options.items() if k in takes and v is not None})
