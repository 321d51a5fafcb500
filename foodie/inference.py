"""One inference interface for InternVL2 checkpoints, shared by the evaluation and the demo.

    backend = load_backend("work/tiny-internvl2")                # 'auto': LMDeploy on a GPU, else transformers
    request = [Message("user", "这是什么菜？", images=["dish.jpg"])]
    backend.generate([request], GenerationParams())              # -> ["..."]  (a batch of requests)
    for delta in backend.stream(request, GenerationParams()):     # text as it is generated
        print(delta, end="")

A *request* is a conversation: a list of ``Message(role, text, images)`` ending with a user turn
(an optional leading ``system`` message replaces the model's system prompt; an
``assistant`` message after the last user turn is the start of the reply, which the model continues). Images are paths,
bytes or PIL images; they go through ``foodie.image_tiling`` (safe opening, dynamic tiling).
Where a user turn's text has no ``<image>`` placeholder, its images are put in front of it,
as the model's own ``chat()`` does (``<image>\\n`` for one image, ``Image-1: <image>\\n...``
for several).

Two backends:

* ``TransformersBackend`` (CPU and GPU): renders the prompt exactly as the checkpoint's own
  ``chat()`` does -- the checkpoint's conversation template and system message, each ``<image>``
  replaced by ``<img>`` + ``<IMG_CONTEXT>`` x 256 per tile + ``</img>`` -- and generates a whole
  batch at once (left padding). Greedy output equals ``model.chat()``'s.
* ``LMDeployBackend`` (GPU only): LMDeploy's pipeline with its PyTorch engine and the
  ``internvl2-internlm2`` chat template (the same prompt, tested), driven through its async
  ``generate`` API on one event loop that runs in its own thread -- the pipeline's internal one
  (lmdeploy >= 0.7), else ours -- so calls from any thread (Gradio's workers) never meet
  "Current event loop is different" (lmdeploy issue 2101).

Many questions (the evaluation): ``answer_all(backend, requests, params, batch_size)`` yields
``(indices, answers)`` a batch at a time. Images are decoded, tiled and normalised by
``foodie.image_tiling`` in worker threads *ahead* of the model (transformers on a GPU: the next batch
while the current one generates; LMDeploy: every request as soon as a worker is free, handed to the
engine as ready pixel values, so LMDeploy's own one-thread image preprocessing is skipped; on a CPU
each batch's images first, on every core, then the model on every core). Both backends, the
evaluation and the demo see exactly the same tiles.

``stream`` yields text deltas whose concatenation equals ``generate``'s answer (transformers:
each token's text as soon as it is complete; LMDeploy: its incremental detokeniser). Closing the
iterator early stops the generation.
"""
from __future__ import annotations

import asyncio
import importlib.util
import itertools
import json
import os
import queue
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Protocol, Sequence

from foodie.image_tiling import ImageLike, load_image

IMAGE_PLACEHOLDER = "<image>"
IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"
BACKENDS = ("auto", "transformers", "lmdeploy")


# ---------------------------------------------------------------------------------------------
# Requests and parameters
# ---------------------------------------------------------------------------------------------

@dataclass
class Message:
    """One turn of a conversation. ``role`` is 'system', 'user' or 'assistant'."""
    role: str
    text: str
    images: list[ImageLike] = field(default_factory=list)

    def __post_init__(self):
        if self.role not in ("system", "user", "assistant"):
            raise ValueError(f"Message role must be 'system', 'user' or 'assistant', got {self.role!r}")
        if self.images and self.role != "user":
            raise ValueError(f"only user messages can carry images, got {len(self.images)} on a {self.role} message")
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
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0 (1 = off), got {self.repetition_penalty}")
        if self.max_tiles is not None and self.max_tiles < 1:
            raise ValueError(f"max_tiles must be >= 1, got {self.max_tiles}")
        if self.do_sample and not (self.temperature > 0 and 0 < self.top_p <= 1):
            raise ValueError(f"sampling needs temperature > 0 and 0 < top_p <= 1, "
                             f"got temperature={self.temperature}, top_p={self.top_p}")


def _check_request(request: Request) -> tuple[str | None, list[Message]]:
    """Split off an optional leading system message; check roles alternate user/assistant ending with user."""
    msgs = list(request)
    if not msgs:
        raise ValueError("empty request: a request needs at least one user message")
    system = None
    if msgs[0].role == "system":
        system, msgs = msgs[0].text, msgs[1:]
    for i, m in enumerate(msgs):
        want = "user" if i % 2 == 0 else "assistant"
        if m.role != want:
            raise ValueError(f"message {i} of the conversation has role {m.role!r}, expected {want!r}: "
                             f"turns must alternate user/assistant (one optional system message first)")
    if not msgs:
        raise ValueError("the last message of a request must be a user message (the one to answer)")
    if msgs[-1].role == "assistant" and (len(msgs) < 2 or not msgs[-1].text):
        raise ValueError("a request ending with an assistant message (the start of the reply, which the "
                         "model continues) needs a user message before it and some text in it")
    return system, msgs


def reply_prefix(msgs: Sequence[Message]) -> str | None:
    """The text the reply must continue: a request may end with the start of the assistant's turn
    (FoodieQA templates such as "我选择（"); None when it ends with the user's turn."""
    return msgs[-1].text if msgs and msgs[-1].role == "assistant" else None


def with_image_placeholders(text: str, n_images: int) -> str:
    """The user text with one ``<image>`` placeholder per image, as the model's ``chat()`` expects.

    Text that already has placeholders must have exactly one per image.
    """
    have = text.count(IMAGE_PLACEHOLDER)
    if have:
        if have != n_images:
            raise ValueError(f"the text has {have} {IMAGE_PLACEHOLDER} placeholder(s) but {n_images} image(s) "
                             f"were given: use one placeholder per image, or none to put the images first")
        return text
    if n_images == 0:
        return text
    if n_images == 1:
        return f"{IMAGE_PLACEHOLDER}\n{text}"
    return "".join(f"Image-{i + 1}: {IMAGE_PLACEHOLDER}\n" for i in range(n_images)) + text


def tiles_per_image(max_tiles: int, n_images: int) -> int:
    """Tile budget per image: one image gets ``max_tiles``; several share them (at least one each).

    InternVL's own multi-image evaluation divides the budget the same way; four photos at 12 tiles
    each would be 13,000 tokens.
    """
    return max(1, max_tiles // max(1, n_images))


@dataclass(frozen=True)
class Tiling:
    """How a checkpoint wants its images: tile side, tile budget of a request, thumbnail."""
    image_size: int
    max_tiles: int
    min_tiles: int = 1
    use_thumbnail: bool = True

    def jobs(self, request: Request) -> list[tuple[ImageLike, int]]:
        """(image, its tile budget) for every image of a request, in prompt order."""
        images = [image for m in request for image in m.images]
        return [(image, tiles_per_image(self.max_tiles, len(images))) for image in images]

    def pixels(self, image: ImageLike, budget: int, dtype=None):
        """One image -> float tensor [tiles, 3, size, size] (``foodie.image_tiling.load_image``: bitwise
        the reference tiles), cast to ``dtype`` if given."""
        x = load_image(image, input_size=self.image_size, max_num=budget, min_num=min(self.min_tiles, budget),
                       use_thumbnail=self.use_thumbnail)
        return x if dtype is None else x.to(dtype)

    def for_params(self, params: "GenerationParams") -> "Tiling":
        """This tiling with the request's own tile budget, when ``params`` sets one."""
        return self if params.max_tiles is None else replace(self, max_tiles=params.max_tiles)

    def prepare(self, requests: Sequence[Request], workers: int = 1, dtype=None) -> list[list]:
        """Pixel values of every image of every request ([request][image]), over ``workers`` threads."""
        jobs = [(r, image, budget) for r, request in enumerate(requests) for image, budget in self.jobs(request)]
        if workers > 1 and len(jobs) > 1:
            with ThreadPoolExecutor(max_workers=min(workers, len(jobs)), thread_name_prefix="foodie-images") as pool:
                done = list(pool.map(lambda job: self.pixels(job[1], job[2], dtype), jobs))
        else:
            done = [self.pixels(image, budget, dtype) for _, image, budget in jobs]
        out: list[list] = [[] for _ in requests]
        for (r, _, _), x in zip(jobs, done):
            out[r].append(x)
        return out


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def image_workers_for(device: str = "cpu") -> int:
    """Threads that decode and tile images ahead of the model. Beside a GPU the model needs few cores:
    all but two, up to 8; on a CPU a quarter of the cores (where a caller overlaps them with the model)."""
    cores = _cores()
    return max(1, cores // 4) if str(device).startswith("cpu") else max(1, min(8, cores - 2))


def answer_all(backend: "ChatBackend", requests: Sequence[Request], params: GenerationParams = GenerationParams(),
               batch_size: int = 8) -> Iterator[tuple[list[int], list[str]]]:
    """Answers to many requests, ``(indices, answers)`` a batch of at most ``batch_size`` at a time (in
    any order). Uses the backend's own ``answer_all`` (images prepared ahead of the model) where it has
    one, else ``generate`` on consecutive chunks."""
    own = getattr(backend, "answer_all", None)
    if own is not None:
        yield from own(requests, params, batch_size)
        return
    for i in range(0, len(requests), batch_size):
        idx = list(range(i, min(i + batch_size, len(requests))))
        yield idx, backend.generate([requests[j] for j in idx], params)


def _as_answer(deltas: Iterator[str], sep: str | None = None) -> Iterator[str]:
    """Text deltas -> non-empty deltas whose concatenation is the answer as ``generate`` returns it:
    nothing from ``sep`` on, no leading or trailing whitespace. Trailing whitespace, and an ending
    that might be the start of ``sep``, wait until more text shows what they are."""
    text, emitted = "", ""
    for delta in deltas:
        text += delta
        if sep and sep in text:
            break
        ready = text.lstrip()
        for k in range(min(len(sep or "") - 1, len(ready)), 0, -1):
            if ready.endswith(sep[:k]):
                ready = ready[:-k]
                break
        ready = ready.rstrip()
        if len(ready) > len(emitted):
            yield ready[len(emitted):]
            emitted = ready
    final = (text.split(sep)[0] if sep else text).strip()
    if len(final) > len(emitted):
        yield final[len(emitted):]


# ---------------------------------------------------------------------------------------------
# The interface
# ---------------------------------------------------------------------------------------------

class ChatBackend(Protocol):
    name: str
    model_dir: Path

    def generate(self, requests: Sequence[Request], params: GenerationParams = GenerationParams()) -> list[str]:
        """Answers to a batch of requests, in order."""

    def stream(self, request: Request, params: GenerationParams = GenerationParams()) -> Iterator[str]:
        """The answer to one request as text deltas; closing the iterator stops generation."""

    def close(self) -> None:
        """Free the model."""


def lmdeploy_usable() -> bool:
    """LMDeploy importable and a CUDA GPU visible (no LMDeploy release runs on CPU)."""
    if importlib.util.find_spec("lmdeploy") is None:
        return False
    import torch
    return torch.cuda.is_available()


def resolve_backend(backend: str = "auto") -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "lmdeploy" if lmdeploy_usable() else "transformers"
    return backend


def load_backend(model_dir: str | os.PathLike, backend: str = "auto", device: str = "auto",
                 dtype: str = "auto", max_tiles: int | None = None, max_batch_size: int | None = None,
                 attn_implementation: str = "auto", image_workers: int | None = None,
                 max_prefill_tokens: int | None = None) -> ChatBackend:
    """Load an InternVL2 checkpoint (official format) behind the chat interface.

    backend: 'auto' (LMDeploy when importable and CUDA is available, else transformers),
    'transformers' or 'lmdeploy'. device/dtype apply to transformers ('auto': cuda+bfloat16 when
    available, else cpu+float32). max_tiles: tile budget of a request (default: the checkpoint's
    max_dynamic_patch; several images share it, see ``tiles_per_image``). attn_implementation
    (transformers): 'auto' (see ``pick_attention``), 'checkpoint' (leave config.json's choice), 'eager',
    'sdpa' or 'flash_attention_2'. image_workers: threads that prepare images ahead of the model
    (default ``image_workers_for``). LMDeploy engine: max_batch_size (sequences at once) and
    max_prefill_tokens (prompt tokens per prefill step); defaults in ``LMDeployBackend``.
    """
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir}: no config.json, not a model checkpoint folder. Pass the folder of an "
                                f"InternVL2 checkpoint (official format), e.g. one made by tools/make_tiny_model.py "
                                f"or tools/convert_to_official.py.")
    name = resolve_backend(backend)
    if name == "lmdeploy":
        if not lmdeploy_usable():
            raise RuntimeError("backend 'lmdeploy' needs the lmdeploy package and a CUDA GPU (no LMDeploy release "
                               "runs on CPU); install the gpu profile (make venv PROFILE=gpu) or use "
                               "--backend transformers")
        engine = {k: v for k, v in dict(max_batch_size=max_batch_size, max_prefill_tokens=max_prefill_tokens).items()
                  if v is not None}
        return LMDeployBackend(model_dir, max_tiles=max_tiles, image_workers=image_workers, **engine)
    return TransformersBackend(model_dir, device=device, dtype=dtype, max_tiles=max_tiles,
                               attn_implementation=attn_implementation, image_workers=image_workers)


# ---------------------------------------------------------------------------------------------
# transformers
# ---------------------------------------------------------------------------------------------

def _pick_device_dtype(device: str, dtype: str):
    import torch
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "bfloat16" if str(device).startswith("cuda") else "float32"
    torch_dtype = getattr(torch, dtype, None)
    if not isinstance(torch_dtype, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
    return device, torch_dtype


def pick_attention(requested: str | None, choice: str = "auto") -> str:
    """The attention implementation to ask the model code for.

    'auto': FlashAttention-2 where the checkpoint asks for it and flash_attn is installed, otherwise
    torch's scaled_dot_product_attention ('sdpa': exact, and on CPU many times faster than 'eager').
    Model code that does not know 'sdpa' (the official remote code picks flash or eager itself)
    simply keeps its own choice.
    """
    if choice != "auto":
        if choice not in ("eager", "sdpa", "flash_attention_2"):
            raise ValueError(f"attention must be auto, checkpoint, eager, sdpa or flash_attention_2, got {choice!r}")
        return choice
    if requested == "flash_attention_2" and importlib.util.find_spec("flash_attn") is not None:
        return requested
    return "sdpa"


class TransformersBackend:
    """The checkpoint's own remote code (trust_remote_code) driven with batched ``generate``."""

    name = "transformers"

    def __init__(self, model_dir: str | os.PathLike, device: str = "auto", dtype: str = "auto",
                 max_tiles: int | None = None, attn_implementation: str = "auto", image_workers: int | None = None):
        import torch
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        self.model_dir = Path(model_dir)
        self.device, self.dtype = _pick_device_dtype(device, dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir, trust_remote_code=True, use_fast=False)
        config = AutoConfig.from_pretrained(self.model_dir, trust_remote_code=True)
        llm_config = getattr(config, "llm_config", None)
        if llm_config is not None and attn_implementation != "checkpoint":
            llm_config.attn_implementation = pick_attention(getattr(llm_config, "attn_implementation", None),
                                                            attn_implementation)
        self.model = AutoModel.from_pretrained(self.model_dir, config=config, trust_remote_code=True,
                                               torch_dtype=self.dtype, low_cpu_mem_usage=True).eval().to(self.device)
        cfg = self.model.config
        self.max_tiles = max_tiles or (cfg.max_dynamic_patch if getattr(cfg, "dynamic_image_size", True) else 1)
        self.min_tiles = getattr(cfg, "min_dynamic_patch", 1)
        self.use_thumbnail = getattr(cfg, "use_thumbnail", True)
        self.image_size = cfg.force_image_size or cfg.vision_config.image_size
        self.tiling = Tiling(self.image_size, self.max_tiles, self.min_tiles, self.use_thumbnail)
        self.image_workers = image_workers or image_workers_for(self.device)
        # The conversation template module the checkpoint's model code itself uses.
        module = sys.modules[type(self.model).__module__]
        if not hasattr(module, "get_conv_template"):
            raise RuntimeError(f"{self.model_dir}: the model code {module.__name__} has no get_conv_template; "
                               f"is this an InternVL2 checkpoint in the official format?")
        self._get_conv_template = module.get_conv_template
        self.sep = self._get_conv_template(self.model.template).sep.strip()
        self.eos_token_id = self.tokenizer.convert_tokens_to_ids(self.sep)
        # Generation ends with the turn (<|im_end|>) or the tokenizer's end of text (</s>), as the
        # checkpoint's generation_config says: a short answer costs no more however long max_new_tokens is.
        self.stop_token_ids = [i for i in dict.fromkeys([self.eos_token_id, self.tokenizer.eos_token_id])
                               if i is not None]
        self.img_context_token_id = self.tokenizer.convert_tokens_to_ids(IMG_CONTEXT)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.vocab_limit = len(self.tokenizer)
        self._lock = threading.Lock()  # one generation at a time on this model
        self._torch = torch

    # -- prompt -------------------------------------------------------------------------------
    def render(self, request: Request, num_tiles: Sequence[int] | None = None) -> str:
        """The prompt text exactly as the checkpoint's ``chat()`` builds it.

        ``num_tiles`` (one count per image, in order) expands each ``<image>`` into image tokens;
        without it the placeholders stay (handy for showing the prompt).
        """
        system, msgs = _check_request(request)
        prefix = reply_prefix(msgs)
        template = self._get_conv_template(self.model.template)
        template.system_message = self.model.system_message if system is None else system
        for m in msgs[:-1] if prefix is not None else msgs:
            text = with_image_placeholders(m.text, len(m.images)) if m.role == "user" else m.text
            template.append_message(template.roles[0 if m.role == "user" else 1], text)
        template.append_message(template.roles[1], None)
        prompt = template.get_prompt() + (prefix or "")
        if num_tiles is not None:
            n_tokens = self.model.num_image_token
            for n in num_tiles:
                prompt = prompt.replace(IMAGE_PLACEHOLDER, IMG_START + IMG_CONTEXT * n_tokens * n + IMG_END, 1)
        return prompt

    def _pixels(self, requests: Sequence[Request], workers: int | None = None,
                tiling: Tiling | None = None) -> list[list]:
        """Pixel values of every request's images. Decoding and resizing photos is single-threaded work:
        spread over ``workers`` threads (default: every core, up to 8, as nothing else runs meanwhile)."""
        return (tiling or self.tiling).prepare(requests, workers or max(self.image_workers, min(8, _cores())))

    def _prepare(self, requests: Sequence[Request], pixels: list[list] | None = None, tiling: Tiling | None = None):
        """Tokens (left-padded), attention mask and pixel values for a batch of requests."""
        pixels = self._pixels(requests, tiling=tiling) if pixels is None else pixels
        prompts = [self.render(request, [t.shape[0] for t in p]) for request, p in zip(requests, pixels)]
        self.tokenizer.padding_side = "left"
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True)
        flat = [t for p in pixels for t in p]
        pixel_values = self._torch.cat(flat).to(self.device, self.dtype) if flat else None
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device), pixel_values

    def _generate_kwargs(self, params: GenerationParams) -> dict:
        kw = dict(max_new_tokens=params.max_new_tokens, do_sample=params.do_sample,
                  eos_token_id=self.stop_token_ids, pad_token_id=self.tokenizer.pad_token_id,
                  repetition_penalty=params.repetition_penalty)
        if params.do_sample:
            kw.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
        else:  # silence "temperature is set but do_sample=False" from the checkpoint's generation_config
            kw.update(temperature=None, top_p=None, top_k=None)
        return kw

    def decode(self, ids) -> str:
        """Generated ids -> text, robustly: stops at the end-of-turn token, skips ids the tokenizer lacks."""
        ids = [int(i) for i in ids]
        if self.eos_token_id in ids:
            ids = ids[:ids.index(self.eos_token_id)]
        ids = [i for i in ids if 0 <= i < self.vocab_limit]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return text.split(self.sep)[0].strip()

    # -- the interface --------------------------------------------------------------------------
    def generate(self, requests: Sequence[Request], params: GenerationParams = GenerationParams(),
                 pixels: list[list] | None = None) -> list[str]:
        """Answers to a batch of requests (``pixels``: their images already prepared, see ``_pixels``)."""
        if not requests:
            return []
        with self._lock, self._torch.inference_mode():
            input_ids, attention_mask, pixel_values = self._prepare(requests, pixels, self.tiling.for_params(params))
            self.model.img_context_token_id = self.img_context_token_id
            out = self.model.generate(pixel_values=pixel_values, input_ids=input_ids,
                                      attention_mask=attention_mask, **self._generate_kwargs(params))
        # The model generates from input embeddings, so the output holds only the new tokens.
        return [self.decode(row) for row in out.tolist()]

    def answer_all(self, requests: Sequence[Request], params: GenerationParams = GenerationParams(),
                   batch_size: int = 8, prefetch: bool | None = None) -> Iterator[tuple[list[int], list[str]]]:
        """Batches of ``batch_size`` in order. ``prefetch`` (default: on a GPU) prepares the next batch's
        images in ``image_workers`` threads while the current one generates. On a CPU each batch's images
        are prepared on every core first, then the model gets every core: overlapping the two made 100
        questions on 2 quiet cores 2x slower (17.9 s against 8.6 s, docs/PERFORMANCE.md)."""
        chunks = [list(range(i, min(i + batch_size, len(requests)))) for i in range(0, len(requests), batch_size)]
        if not (prefetch if prefetch is not None else not str(self.device).startswith("cpu")):
            for chunk in chunks:
                yield chunk, self.generate([requests[i] for i in chunk], params)
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="foodie-prefetch") as ahead:
            def prepare(chunk):
                return self._pixels([requests[i] for i in chunk], self.image_workers, self.tiling.for_params(params))
            upcoming = ahead.submit(prepare, chunks[0]) if chunks else None
            for k, chunk in enumerate(chunks):
                pixels = upcoming.result()
                if k + 1 < len(chunks):
                    upcoming = ahead.submit(prepare, chunks[k + 1])
                yield chunk, self.generate([requests[i] for i in chunk], params, pixels=pixels)

    def stream(self, request: Request, params: GenerationParams = GenerationParams()) -> Iterator[str]:
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        backend = self

        class _Streamer(TextIteratorStreamer):
            """TextIteratorStreamer that passes on every token's text at once (not word by word), stops at
            the end-of-turn token and skips ids the tokenizer lacks."""

            def put(self, value):
                if self.next_tokens_are_prompt:  # the (empty) prompt: the model generates from embeddings
                    return super().put(value)
                ids = value.reshape(-1).tolist()
                if backend.eos_token_id in ids:
                    ids = ids[:ids.index(backend.eos_token_id)]
                ids = [i for i in ids if 0 <= i < backend.vocab_limit]
                if not ids:
                    return
                self.token_cache.extend(ids)
                text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
                if text.endswith("\ufffd"):  # part of a multi-byte character: wait for the rest
                    return
                printable = text[self.print_len:]
                self.print_len += len(printable)
                self.on_finalized_text(printable)

        class _StopOnEvent(StoppingCriteria):
            def __init__(self, event: threading.Event):
                self.event = event

            def __call__(self, input_ids, scores, **kwargs):
                return backend._torch.full((input_ids.shape[0],), self.event.is_set(), dtype=backend._torch.bool,
                                           device=input_ids.device)

        streamer = _Streamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        stop = threading.Event()
        error: list[BaseException] = []

        def run():
            try:
                with self._torch.inference_mode():
                    input_ids, attention_mask, pixel_values = self._prepare([request],
                                                                            tiling=self.tiling.for_params(params))
                    self.model.img_context_token_id = self.img_context_token_id
                    self.model.generate(pixel_values=pixel_values, input_ids=input_ids,
                                        attention_mask=attention_mask, streamer=streamer,
                                        stopping_criteria=StoppingCriteriaList([_StopOnEvent(stop)]),
                                        **self._generate_kwargs(params))
            except BaseException as e:  # surfaced in the consumer below
                error.append(e)
                streamer.end()
            finally:
                self._lock.release()

        def raw_deltas():
            while True:
                try:
                    delta = streamer.text_queue.get(timeout=0.2)
                except queue.Empty:
                    if not thread.is_alive() and streamer.text_queue.empty():
                        return
                    continue
                if delta is streamer.stop_signal:
                    return
                yield delta

        self._lock.acquire()
        thread = threading.Thread(target=run, name="foodie-generate", daemon=True)
        thread.start()
        try:
            yield from _as_answer(raw_deltas(), self.sep)  # as chat() trims its answer
            stop.set()  # (a separator in the text ends the answer early)
            thread.join()
            if error:
                raise error[0]
        finally:
            stop.set()  # the consumer went away (or we are done): stop generating

    def close(self) -> None:
        self.model = None
        if self._torch.cuda.is_available():
            self._torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
# LMDeploy (GPU)
# ---------------------------------------------------------------------------------------------

class _LoopThread:
    """An asyncio event loop running forever in a daemon thread."""

    def __init__(self):
        ready: Future = Future()

        def main():
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            ready.set_result(loop)
            loop.run_forever()

        threading.Thread(target=main, name="foodie-lmdeploy-loop", daemon=True).start()
        self.loop: asyncio.AbstractEventLoop = ready.result()


class PreparedImage:
    """An image already decoded, tiled and normalised by ``foodie.image_tiling``: what our LMDeploy
    requests carry in place of a PIL image, so that the engine gets ready pixel values."""

    __slots__ = ("pixel_values",)

    def __init__(self, pixel_values):
        self.pixel_values = pixel_values

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.pixel_values.shape[-1:-3:-1])


def pass_prepared_images(vision_model, tokens_per_tile: int) -> bool:
    """Let an LMDeploy InternVL image preprocessor (``pipe.vl_encoder.model``) pass our prepared pixel
    values through; False (nothing changed) where it does not look like the one this was written for.

    LMDeploy's ``preprocess(messages)`` turns each image into ``dict(pixel_values, image_tokens,
    image_token_id, image_size)`` and appends them as a 'preprocess' message; for requests whose
    images are all ``PreparedImage`` we produce exactly that, anything else goes to its own code.
    """
    stock = getattr(vision_model, "preprocess", None)
    if stock is None or not hasattr(vision_model, "collect_images") or not hasattr(vision_model, "image_token_id"):
        return False
    if getattr(vision_model, "image_tokens_per_patch", tokens_per_tile) != tokens_per_tile:
        return False

    def preprocess(messages):
        images = vision_model.collect_images(messages)
        if not images or not all(isinstance(image, PreparedImage) for image, _ in images):
            return stock(messages)
        messages.append(dict(role="preprocess", content=[
            dict(pixel_values=image.pixel_values, image_tokens=image.pixel_values.shape[0] * tokens_per_tile,
                 image_token_id=vision_model.image_token_id, image_size=image.size) for image, _ in images]))
        return messages

    vision_model.preprocess = preprocess
    return True


class LMDeployBackend:
    """LMDeploy pipeline (PyTorch engine, ``internvl2-internlm2`` template); GPU only.

    Images are prepared by ``image_workers`` threads of ours (``foodie.image_tiling``, cast to the
    engine's dtype), at most ``2 * max_batch_size`` requests ahead of the engine, and handed over as
    pixel values: LMDeploy (0.9) would otherwise decode in the caller and tile every image of every
    request in one thread, which kept a 13-tile evaluation at ~5 questions/s on an H200. Where the
    installed LMDeploy does not have the preprocessing hook this relies on, images go the stock way.
    Engine: ``max_prefill_tokens`` prompt tokens per prefill step (LMDeploy's default 4,096 admits one
    3,400-token question at a time: the vision encoder and prefill then run at batch 1).
    """

    name = "lmdeploy"

    def __init__(self, model_dir: str | os.PathLike, max_tiles: int | None = None, max_batch_size: int = 128,
                 max_prefill_tokens: int = 32768, session_len: int = 16384, cache_max_entry_count: float = 0.5,
                 image_workers: int | None = None, prepare_images: bool = True):
        import lmdeploy
        from lmdeploy import ChatTemplateConfig, PytorchEngineConfig, pipeline

        from foodie.image_tiling import tiling_of

        self.model_dir = Path(model_dir)
        cfg = json.loads((self.model_dir / "config.json").read_text())
        self.max_tiles = max_tiles or (cfg.get("max_dynamic_patch", 12) if cfg.get("dynamic_image_size", True) else 1)
        image_size, self.tokens_per_tile = tiling_of(self.model_dir)
        self.tiling = Tiling(image_size, self.max_tiles, cfg.get("min_dynamic_patch", 1), cfg.get("use_thumbnail", True))
        kwargs = {}
        if "thread_safe" in getattr(lmdeploy.VisionConfig, "__dataclass_fields__", {}):
            # lmdeploy 0.5.1-0.6.4 needed this against issue 2101; harmless later.
            kwargs["vision_config"] = lmdeploy.VisionConfig(thread_safe=True)
        self.engine_config = PytorchEngineConfig(session_len=session_len, max_batch_size=max_batch_size,
                                                 cache_max_entry_count=cache_max_entry_count,
                                                 max_prefill_token_num=max_prefill_tokens)
        self.pipe = pipeline(str(self.model_dir), backend_config=self.engine_config,
                             chat_template_config=ChatTemplateConfig("internvl2-internlm2"),
                             log_level="ERROR", **kwargs)
        # One event loop for every call: the pipeline's own one where it has it (lmdeploy >= 0.7),
        # else ours. The PyTorch engine binds to the loop that first uses it.
        internal = getattr(self.pipe, "internal_thread", None)
        self.loop = internal.loop if internal is not None else _LoopThread().loop
        self._session_ids = itertools.count(1 << 20)  # clear of the ids the pipeline hands out itself
        self.image_workers = image_workers or image_workers_for("cuda")
        self._pool = ThreadPoolExecutor(max_workers=self.image_workers, thread_name_prefix="foodie-images")
        self.max_in_flight = 2 * max_batch_size
        self._slots: asyncio.Semaphore | None = None  # made on the loop: requests being prepared or generated
        dtype = getattr(getattr(getattr(self.pipe, "engine", None), "model_config", None), "dtype", None)
        import torch
        self._dtype = dtype if isinstance(dtype, torch.dtype) else None  # the engine casts otherwise
        self.prepares_images = prepare_images and self._take_over_preprocessing()

    def _take_over_preprocessing(self) -> bool:
        model = getattr(getattr(self.pipe, "vl_encoder", None), "model", None)
        return model is not None and pass_prepared_images(model, self.tokens_per_tile)

    @staticmethod
    def _check(request: Request) -> tuple[str | None, list[Message]]:
        system, msgs = _check_request(request)
        if reply_prefix(msgs) is not None:
            raise ValueError("the LMDeploy backend cannot continue a started reply (templates with a reply "
                             "prefix, such as FoodieQA's --template 3): use --backend transformers")
        return system, msgs

    def _messages(self, request: Request, pixels: list | None = None, max_tiles: int | None = None) -> list[dict]:
        """Our request -> LMDeploy's OpenAI-style messages, with images where our placeholders are:
        ``PreparedImage`` from ``pixels`` (its images' pixel values, in order) or else PIL images."""
        from foodie.image_tiling import open_image

        system, msgs = self._check(request)
        n_images = sum(len(m.images) for m in msgs)
        prepared = iter(pixels) if pixels is not None else None
        out = [] if system is None else [dict(role="system", content=system)]
        for m in msgs:
            if m.role == "assistant" or not m.images:
                out.append(dict(role=m.role, content=m.text))
                continue
            # LMDeploy wraps each <IMAGE_TOKEN> in <img>...</img>, as chat() does with <image>.
            text = with_image_placeholders(m.text, len(m.images)).replace(IMAGE_PLACEHOLDER, "<IMAGE_TOKEN>")
            content = [dict(type="text", text=text)]
            for image in m.images:
                picture = PreparedImage(next(prepared)) if prepared is not None else open_image(image)
                data = dict(data=picture, max_dynamic_patch=tiles_per_image(max_tiles or self.max_tiles, n_images))
                content.append(dict(type="image_data", image_data=data))
            out.append(dict(role="user", content=content))
        return out

    def _prepare(self, request: Request, tiling: Tiling | None = None) -> list[dict]:
        """Messages with their images decoded and tiled (runs in an image worker)."""
        tiling = tiling or self.tiling
        if self.prepares_images and any(m.images for m in request):
            return self._messages(request, tiling.prepare([request], 1, self._dtype)[0], tiling.max_tiles)
        return self._messages(request, max_tiles=tiling.max_tiles)

    def _gen_config(self, params: GenerationParams):
        from lmdeploy import GenerationConfig
        kw = dict(max_new_tokens=params.max_new_tokens, do_sample=params.do_sample, skip_special_tokens=True,
                  repetition_penalty=params.repetition_penalty)
        if params.do_sample:  # top_k=0: no top-k cut, as in the transformers backend
            kw.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
        return GenerationConfig(**kw)

    async def _answer(self, request: Request, gen_config, on_delta=None, tiling: Tiling | None = None) -> str:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_in_flight)
        async with self._slots:  # bounds the prepared pixel values waiting in memory
            messages = await asyncio.wrap_future(self._pool.submit(self._prepare, request, tiling))
            parts = []
            async for out in self.pipe.generate(messages, next(self._session_ids), gen_config=gen_config,
                                                stream_response=on_delta is not None, sequence_start=True,
                                                sequence_end=True, do_preprocess=True):
                if getattr(out, "finish_reason", None) == "error":
                    raise RuntimeError(f"LMDeploy failed on this request: {out.response}")
                if out.response:
                    parts.append(out.response)
                    if on_delta is not None:
                        on_delta(out.response)
            return "".join(parts)

    def generate(self, requests: Sequence[Request], params: GenerationParams = GenerationParams()) -> list[str]:
        if not requests:
            return []
        for r in requests:
            self._check(r)  # bad requests fail here, in the caller, before anything runs
        gen_config, tiling = self._gen_config(params), self.tiling.for_params(params)

        async def run_all():
            return await asyncio.gather(*(self._answer(r, gen_config, tiling=tiling) for r in requests))

        return [t.strip() for t in asyncio.run_coroutine_threadsafe(run_all(), self.loop).result()]

    def answer_all(self, requests: Sequence[Request], params: GenerationParams = GenerationParams(),
                   batch_size: int = 8) -> Iterator[tuple[list[int], list[str]]]:
        """Every request goes to the engine at once (it batches them itself); answers come back in
        groups of ``batch_size`` in the order they finish."""
        from concurrent.futures import as_completed

        for r in requests:
            self._check(r)
        gen_config = self._gen_config(params)
        tiling = self.tiling.for_params(params)
        futures = {asyncio.run_coroutine_threadsafe(self._answer(r, gen_config, tiling=tiling), self.loop): i
                   for i, r in enumerate(requests)}
        try:
            idx, answers = [], []
            for future in as_completed(futures):
                idx.append(futures[future])
                answers.append(future.result().strip())
                if len(idx) >= batch_size:
                    yield idx, answers
                    idx, answers = [], []
            if idx:
                yield idx, answers
        finally:
            for future in futures:
                future.cancel()  # the consumer went away or one failed: stop the rest

    def stream(self, request: Request, params: GenerationParams = GenerationParams()) -> Iterator[str]:
        self._check(request)
        deltas: queue.Queue = queue.Queue()
        done = object()

        async def run():
            try:
                await self._answer(request, self._gen_config(params), on_delta=deltas.put,
                                   tiling=self.tiling.for_params(params))
            finally:
                deltas.put(done)

        future = asyncio.run_coroutine_threadsafe(run(), self.loop)
        try:
            yield from _as_answer(iter(deltas.get, done))  # trimmed like generate()'s answers
            future.result()  # re-raise an engine error here
        finally:
            if not future.done():
                future.cancel()  # the consumer went away: LMDeploy cancels the session

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.pipe.close()
