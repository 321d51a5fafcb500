"""Chat with the food expert: a Gradio demo that is safe for several users at once.

    python demo/app.py                                   # embedded tiny model + synthetic FoodieQA
    python demo/app.py --model work/tuned --compare /models/InternVL2-2B --data-root /data/FoodieQA

Every browser tab has its own conversation (``ChatState`` in ``gr.State``): images and history never
leak between tabs. Answers stream token by token from ``foodie.inference`` (transformers through a
streamer thread, LMDeploy through its async API). With ``--compare`` each question is answered by both
models side by side. Uploads are validated (size, decodability, decompression bombs) and copied into a
per-session temporary folder under generated names; they are deleted on Clear, when the tab closes and
when the server exits (gradio's own upload cache lives in this process's temp folder too), and served
only to the browser that sent them. The only other folders the app serves are the gallery's; it binds
127.0.0.1 and never opens a public share link.

Programmatic use: one named endpoint, ``ask`` (question + images -> answers); see README "The demo from
code". Every other event is private.
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `python demo/app.py` from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no phoning home from a local demo
warnings.filterwarnings("ignore", message=".*HTTP_422_UNPROCESSABLE_ENTITY.*")  # gradio 6.17 + new starlette noise
import gradio as gr  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

from foodie import cli  # noqa: E402
from foodie import paths  # noqa: E402
from foodie.atomic import atomic_path  # noqa: E402
from foodie.chat_state import ChatState, ModelGate, stream_answers  # noqa: E402
from foodie.image_tiling import ImageError, open_image  # noqa: E402
from foodie.prompts import sivqa_prompt  # noqa: E402

log = logging.getLogger("foodie.demo")

MAX_UPLOAD_MB = 20
MAX_QUESTION_CHARS = 4000  # a question longer than this is refused (it would only slow every user down)
DEFAULT_PORT = 7860
EXAMPLES = [
    # FoodieQA's own single-image multiple-choice format (authors' template 0): the tuned model answers a letter.
    sivqa_prompt("图片中的食物是哪个地区的特色美食？", ["川菜", "粤菜", "鲁菜", "苏菜"], "zh"),
    sivqa_prompt("Which region is the food in the picture a specialty of?",
                 ["Sichuan", "Cantonese", "Shandong", "Jiangsu"], "en"),
    "这道菜叫什么名字？是哪个菜系的？",
    "这道菜的主要食材有哪些？怎么做？",
    "What is this dish called, and which region of China is it from?",
    "Which of these two dishes is spicier, and why?",
]
FIRST_DRAW_S = 0.15  # Send: how long the question waits to be drawn together with the first token
REPETITION_PENALTY = 1.1  # InternVL's own chat demo default; 1.0 lets a small model loop ("炸酱面。炸酱面。...")
CLIENT_COOKIE = "foodie_client"  # a random id per browser, set by the page: uploads are served to it only
# Sets the browser's id before the page requests anything (crypto.getRandomValues also works over plain http).
HEAD = ("<script>if (!document.cookie.split('; ').some(c => c.startsWith('" + CLIENT_COOKIE + "='))) {"
        "const b = crypto.getRandomValues(new Uint8Array(16));"
        "document.cookie = '" + CLIENT_COOKIE + "=' + Array.from(b, x => x.toString(16).padStart(2, '0')).join('')"
        " + '; path=/; SameSite=Strict'; }</script>")
# gradio's Default theme ships its fonts (LocalFont): no browser fetches anything from the internet.
THEME = gr.themes.Default(primary_hue="orange", secondary_hue="amber")
CSS = """
#title h1 {margin-bottom: 0}
#title p {margin-top: 4px; color: var(--body-text-color-subdued)}
.dish-gallery .caption-label {font-size: 12px}
#controls button {min-width: 0}
.bubble-wrap img {max-height: 240px; width: auto !important; object-fit: contain}
#model-notice {border-left: 4px solid var(--color-accent); padding-left: 8px}
/* Sharing goes to Hugging Face Spaces only: dead in a local demo. */
button[title="Share"], button[aria-label="Share"], .share-button {display: none !important}
"""


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------

@dataclass
class ModelSlot:
    """One model shown in the page: its key in ChatState, its label and its inference backend."""
    key: str
    label: str
    backend: object


EMBEDDED_NOTICE = ("**This is the embedded tiny test model, not InternVL2** · 这是内置的微型测试模型，不是 InternVL2："
                   "its answers are not meaningful · 回答没有意义。Start the demo with `--model DIR` "
                   "(a real or fine-tuned checkpoint) · 请用 `--model DIR` 指定真实模型。")


def ensure_embedded_default(model: str | None, data_root: str | None) -> tuple[Path, Path | None]:
    """Resolve --model/--data-root; build the embedded tiny model / synthetic data when they are missing."""
    if model is None:
        model_dir = paths.tiny_model_dir()
        if not (model_dir / "config.json").is_file():
            print(f"[demo] no --model given and the embedded tiny model is missing: building it in {model_dir} ...",
                  flush=True)
            subprocess.run([sys.executable, str(REPO_ROOT / "tools/make_tiny_model.py"), "--out", str(model_dir)],
                           check=True)
        print(f"[demo] serving the embedded tiny random-weight model ({model_dir}); answers are gibberish. "
              f"Pass --model DIR for a real checkpoint.", flush=True)
    else:
        model_dir = Path(model).expanduser().resolve()
        if not (model_dir / "config.json").is_file():
            raise SystemExit(f"--model {model}: no config.json there. Point --model at an InternVL2 checkpoint folder "
                             f"(official format, e.g. the output of tools/convert_to_official.py).")
    if data_root is None:
        data_dir = paths.demo_data_dir()
        if not data_dir.is_dir():
            print(f"[demo] no --data-root given and the synthetic FoodieQA is missing: building it in {data_dir} ...",
                  flush=True)
            subprocess.run([sys.executable, str(REPO_ROOT / "tools/make_demo_data.py"), "--out", str(data_dir)],
                           check=True)
    else:
        data_dir = Path(data_root).expanduser().resolve()
        if not data_dir.is_dir():
            raise SystemExit(f"--data-root {data_root}: not a folder. Point it at a FoodieQA folder "
                             f"(sivqa_tidy.json + images/), or leave it out for the synthetic set.")
    return model_dir, data_dir


def load_slots(model_dir: Path, compare_dir: Path | None, backend: str) -> list[ModelSlot]:
    from foodie.inference import load_backend
    slots = []
    if compare_dir is not None:
        print(f"[demo] loading the comparison model {compare_dir} ...", flush=True)
        slots.append(ModelSlot("base", f"base · {compare_dir.name}", load_backend(compare_dir, backend=backend)))
    print(f"[demo] loading {model_dir} (backend {backend}) ...", flush=True)
    key, label = ("tuned", f"tuned · {model_dir.name}") if compare_dir is not None else ("model", model_dir.name)
    slots.append(ModelSlot(key, label, load_backend(model_dir, backend=backend)))
    return slots


def warm_up(slot: ModelSlot) -> None:
    """One short answer about a small picture, so the first user does not pay the backend's lazy start-up."""
    from foodie.inference import GenerationParams, Message
    picture = Image.new("RGB", (448, 448), (200, 120, 40))
    slot.backend.generate([[Message("user", "这是什么菜？", images=[picture])]], GenerationParams(max_new_tokens=2))


def generation_params(temperature: float, top_p: float, max_new_tokens: int,
                      repetition_penalty: float = 1.0, max_tiles: int = 0):
    """The page's sliders -> GenerationParams; temperature 0 means greedy decoding, max_tiles 0 the
    checkpoint's own tile budget (config.json max_dynamic_patch: what a fine-tuned model trained with)."""
    from foodie.inference import GenerationParams
    return GenerationParams(max_new_tokens=int(max_new_tokens), temperature=float(temperature) or 1.0,
                            top_p=float(top_p), do_sample=float(temperature) > 0,
                            repetition_penalty=float(repetition_penalty), max_tiles=int(max_tiles) or None)


def default_system_prompt(backend) -> str | None:
    """The system prompt the model uses when none is given (its conversation template's), if known."""
    model = getattr(backend, "model", None)  # transformers: the checkpoint's own model code
    if getattr(model, "system_message", None) is not None:
        return model.system_message
    template = getattr(getattr(backend, "pipe", None), "chat_template", None)  # LMDeploy
    return getattr(template, "meta_instruction", None)


def answers_at_once(backend, concurrency: int) -> int:
    """How many answers a backend generates at the same time: the transformers backend one (it holds a
    lock per model), LMDeploy as many as the page lets run (its engine batches them)."""
    return 1 if getattr(backend, "name", "") == "transformers" else max(1, concurrency)


def check_port_free(host: str, port: int) -> None:
    """Exit with one line naming --port when ``port`` is taken (before the slow model load)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise SystemExit(f"[demo] port {port} on {host} is not free ({e.strerror}; another demo running?): "
                             f"pass another one, e.g. --port {port + 1}") from None


# ---------------------------------------------------------------------------------------------
# Session files: per-session uploads, gradio's copies of them, and who may fetch them
# ---------------------------------------------------------------------------------------------

class SessionFiles:
    """Which browser owns which session file, and the sessions alive now.

    Gradio copies every file a chat shows into its upload cache (``GRADIO_TEMP_DIR``, in this process's
    temp folder) and serves it to any request that names it. Here a session file (generated name) is
    served only to the browser whose ``foodie_client`` cookie sent it (``UploadGuard``), and when the
    session deletes it (Clear, tab closed), gradio's copies go too.
    """

    def __init__(self, cache_dir: Path | None = None):
        self.cache_dir = cache_dir
        self.owner: dict[str, str] = {}  # session file name (generated, unique) -> client id
        self.upload_owner: dict[str, str] = {}  # path of a file gradio's upload route stored -> client id
        self.sessions: dict[str, ChatState] = {}  # gradio session hash -> its conversation

    def claim(self, path: Path, request: "gr.Request | None") -> None:
        client = (request.cookies.get(CLIENT_COOKIE) if request is not None else None) or ""
        self.owner[path.name] = client

    def claim_uploads(self, stored: list, client: str | None) -> None:
        """Files the upload route just stored (the box's previews, before Send) belong to their browser."""
        for path in stored:
            if isinstance(path, str):
                self.upload_owner[os.path.abspath(path)] = client or ""

    def may_fetch(self, url_path: str, client: str | None) -> bool:
        """Whether a ``/file=...`` request may have the file: session files and uploads only for their owner."""
        target = url_path.split("file=", 1)[-1]
        owner = self.owner.get(target.rstrip("/").rsplit("/", 1)[-1])
        if owner is None:
            owner = self.upload_owner.get(os.path.abspath(target)) if target.startswith("/") else None
        return owner is None or bool(client) and secrets.compare_digest(owner, client)

    def join(self, state: ChatState, request: "gr.Request | None") -> None:
        """Remember the session's conversation, to close it when the tab goes away."""
        if request is not None and getattr(request, "session_hash", None):
            self.sessions[request.session_hash] = state

    def end(self, session_hash: str | None) -> None:
        """The tab closed (or reloaded): delete its uploads now (gradio keeps the state an hour)."""
        state = self.sessions.pop(session_hash, None) if session_hash else None
        if state is not None:
            state.close()

    def deleted(self, path: Path) -> None:
        """A session file was deleted: delete gradio's cached copies of it and forget its owner."""
        if self.cache_dir is not None and self.cache_dir.is_dir():
            for copy in self.cache_dir.glob(f"*/{path.name}"):
                copy.unlink(missing_ok=True)
                try:
                    copy.parent.rmdir()
                except OSError:
                    pass
        self.owner.pop(path.name, None)

    def discard_upload(self, path: str | Path) -> None:
        """Delete a file the browser uploaded into gradio's cache (accepted ones were copied, refused ones
        are not kept)."""
        p = Path(path)
        self.upload_owner.pop(os.path.abspath(p), None)
        if self.cache_dir is not None and p.resolve().is_relative_to(self.cache_dir.resolve()):
            p.unlink(missing_ok=True)
            try:
                p.parent.rmdir()
            except OSError:
                pass


class UploadGuard:
    """ASGI middleware: a session file or an upload is served only to the browser that owns it (404 to
    anyone else); the upload route's answer (the stored paths) tells which browser owns which upload."""

    def __init__(self, app, files: SessionFiles):
        self.app, self.files = app, files

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = unquote(scope.get("path", ""))
        cookies = dict(part.strip().split("=", 1) for value in
                       (v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"cookie")
                       for part in value.split(";") if "=" in part)
        client = cookies.get(CLIENT_COOKIE)
        if "/file=" in path or "/file/" in path:
            if not self.files.may_fetch(path.replace("/file/", "/file=", 1), client):
                await send({"type": "http.response.start", "status": 404,
                            "headers": [(b"content-type", b"text/plain")]})
                await send({"type": "http.response.body", "body": b"Not found"})
                return
        elif scope.get("method") == "POST" and path.rstrip("/").endswith("/upload"):
            body = []

            async def watch(message):
                if message["type"] == "http.response.body":
                    body.append(message.get("body", b""))
                    if not message.get("more_body"):
                        try:
                            stored = json.loads(b"".join(body))
                        except ValueError:
                            stored = []
                        self.files.claim_uploads(stored if isinstance(stored, list) else [], client)
                await send(message)
            return await self.app(scope, receive, watch)
        await self.app(scope, receive, send)


# ---------------------------------------------------------------------------------------------
# Gallery
# ---------------------------------------------------------------------------------------------

@dataclass
class Dish:
    """A gallery entry: the photo the model gets, its name, and the small copy the page shows."""
    image: Path
    name: str
    thumb: Path | None = None


Gallery = dict[str, list[Dish]]  # cuisine -> dishes


def load_gallery(data_root: Path | None, max_per_cuisine: int = 60) -> Gallery:
    """{cuisine: [Dish, ...]}: one photo per dish of the single-image questions of a FoodieQA folder."""
    if data_root is None:
        return {}
    from foodie.foodieqa import FoodieQAError, load_foodieqa
    try:
        data = load_foodieqa(data_root, skip_bad=True)
    except FoodieQAError as e:  # the chat works without a gallery
        print(f"[demo] WARNING: no dish gallery, {data_root} could not be read:\n{e}", flush=True)
        return {}
    if data.skipped:
        print(f"[demo] gallery: skipped {len(data.skipped)} bad items of {data_root} (first: {data.skipped[0]})",
              flush=True)
    groups: Gallery = {}
    seen: set[tuple[str, str]] = set()
    for item in data.sivqa:
        name = item.food_name or Path(item.image).stem
        if (item.cuisine, name) in seen:
            continue
        seen.add((item.cuisine, name))
        dishes = groups.setdefault(item.cuisine, [])
        if len(dishes) < max_per_cuisine:
            dishes.append(Dish(data.path(item.image), name))
    return dict(sorted(groups.items(), key=lambda kv: (kv[0] == "unknown", -len(kv[1]), kv[0])))


def served_files(gallery: Gallery) -> list[str]:
    """The gallery's original photos, file by file: what gradio may serve beyond its own files (allowed_paths).
    Never their folders: a folder would expose every file beside a photo, dotfiles included."""
    return sorted({str(d.image) for dishes in gallery.values() for d in dishes})


def make_thumbnails(gallery: Gallery, folder: Path, size: int = 320) -> None:
    """Small JPEG copies for the page (phone photos are megabytes each); the model still gets the originals."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, dish in enumerate(d for dishes in gallery.values() for d in dishes):
        try:
            with Image.open(dish.image) as img:
                img.draft("RGB", (2 * size, 2 * size))  # JPEG: decode at a fraction of the size, much faster
                small = ImageOps.exif_transpose(img)
                small.thumbnail((size, size))
                dest = folder / f"{i:04d}.jpg"
                small.convert("RGB").save(dest, quality=85)
            dish.thumb = dest
        except (OSError, ValueError) as e:  # the original is checked again when picked
            log.warning("no thumbnail for %s: %s", dish.image, e)


# ---------------------------------------------------------------------------------------------
# Event handlers (every one takes the session's ChatState; nothing conversational is global)
# ---------------------------------------------------------------------------------------------

# Chat-template and image markers: typed by a user they would pose as image slots or turn boundaries.
CONTROL_MARKUP = re.compile(r"<\|[^|<>]{1,40}\|>|</?(?:image|img|IMG_CONTEXT|quad|ref|box)>", re.IGNORECASE)


def clean_user_text(text: str) -> str:
    """The user's text without chat-template control markup (images are attached, never typed)."""
    return CONTROL_MARKUP.sub(" ", text or "").strip()


IMAGE_SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif",
                  "MPO": ".jpg"}


def refused(message: str) -> gr.Error:
    """A user-facing refusal: shown as a toast in the page, no traceback in the server console."""
    return gr.Error(message, print_exception=False)


def save_upload(state: ChatState, path: str, max_bytes: int) -> Path:
    """Validate an uploaded file and copy it into the session folder under a generated name."""
    src = Path(path)
    shown = src.name  # the name the user picked; the server path is never shown
    size = src.stat().st_size
    if size > max_bytes:
        raise refused(f"{shown}: {size / 2**20:.1f} MB is over the {max_bytes / 2**20:.0f} MB upload limit. "
                      f"Send a smaller photo.")
    try:
        open_image(src)  # decodes it fully; refuses bombs and non-images
        with Image.open(src) as img:  # the real format names the copy, not the user's file name
            suffix = IMAGE_SUFFIXES.get(img.format or "", src.suffix)
    except ImageError as e:
        raise refused(str(e).replace(str(src), shown)) from None
    dest = state.new_upload_path(suffix)
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
    return dest


def make_handlers(slots: list[ModelSlot], gallery: Gallery, max_upload_bytes: int, *,
                  files: SessionFiles | None = None, concurrency: int = 4, system_default: str | None = None):
    keys = [s.key for s in slots]
    names = {s.key: s.label for s in slots}
    files = files or SessionFiles()
    gate_of: dict[int, ModelGate] = {}  # one gate per backend object (compare mode may show one twice)
    gates = {s.key: gate_of.setdefault(id(s.backend), ModelGate(answers_at_once(s.backend, concurrency)))
             for s in slots}

    def views(state: ChatState):
        return [state.messages(k) for k in keys]

    def add_question(message: dict, state: ChatState, request: gr.Request = None):
        files.join(state, request)
        message = message or {}
        uploads = [f if isinstance(f, str) else f["path"] for f in message.get("files") or []]
        try:
            text = clean_user_text(message.get("text") or "")
            if len(text) > MAX_QUESTION_CHARS:
                raise refused(f"the question has {len(text):,} characters; the limit is {MAX_QUESTION_CHARS:,}. "
                              f"Shorten it.")
            saved: list[Path] = []
            try:
                state.check_room(len(uploads))
                for f in uploads:
                    saved.append(save_upload(state, f, max_upload_bytes))
                    files.claim(saved[-1], request)
                    state.attach(saved[-1])
                state.ask(text)
            except (ValueError, gr.Error) as e:
                for p in saved:  # leave the chat as it was before this message
                    state.detach(p)
                    p.unlink(missing_ok=True)
                    files.deleted(p)
                raise e if isinstance(e, gr.Error) else refused(str(e)) from None
        finally:
            for f in uploads:  # gradio's copy of the upload: copied into the session, or refused
                files.discard_upload(f)
        return gr.MultimodalTextbox(value=None), state

    def answer(state: ChatState, temperature: float, top_p: float, max_new_tokens: int,
               repetition_penalty: float = 1.0, max_tiles: int = 0, system_prompt: str | None = None,
               first_draw_s: float = 0.0):
        """Stream every model's answer to the last turn into the chat (model errors become chat messages)."""
        try:
            params = generation_params(temperature, top_p, max_new_tokens, repetition_penalty, max_tiles)
        except ValueError as e:
            with state.lock:
                if state.turns and not state.is_answered(state.turns[-1]):
                    for s in slots:
                        state.turns[-1].fail(s.key, f"Generation settings: {e}")
            yield (state, *views(state))
            return
        system_prompt = (system_prompt or "").strip()
        state.system_prompt = None if not system_prompt or system_prompt == (system_default or "").strip() \
            else system_prompt
        answer_fns = {s.key: functools.partial(s.backend.stream, params=params) for s in slots}
        for _ in stream_answers(state, answer_fns, names=names, gates=gates, first_draw_s=first_draw_s):
            yield (state, *views(state))
        yield (state, *views(state))

    def send(message: dict, state: ChatState, temperature: float, top_p: float, max_new_tokens: int,
             repetition_penalty: float = 1.0, max_tiles: int = 0, system_prompt: str | None = None,
             request: gr.Request = None):
        """Send: the question joins the chat and the answers stream, in one event (one round trip less
        before the first token than two chained events). A refused message (bad upload, too many images,
        empty question) is a warning toast and changes nothing: no error badge covers the chat."""
        try:
            add_question(message, state, request)
        except gr.Error as e:
            gr.Warning(e.message, duration=8)
            yield tuple(gr.skip() for _ in range(2 + len(keys)))
            return
        first = True
        # The question is drawn with the first token when that comes within FIRST_DRAW_S (one page update
        # less before the answer shows), else alone with "…".
        for update in answer(state, temperature, top_p, max_new_tokens, repetition_penalty, max_tiles,
                             system_prompt, FIRST_DRAW_S):
            yield (gr.MultimodalTextbox(value=None) if first else gr.skip(), *update)
            first = False

    def stop(state: ChatState):
        state.stop()

    def regenerate(state: ChatState):
        if not state.turns:
            gr.Info("Nothing to regenerate yet · 还没有可重新生成的回答", duration=3)
            return gr.skip()  # the answer step that follows finds nothing to answer
        state.regenerate()
        return state

    def undo(state: ChatState):
        if not state.turns:  # a toast, not an error on both chat panels
            gr.Info("Nothing to undo · 没有可撤销的内容", duration=3)
            return (gr.skip(), gr.skip(), *[gr.skip() for _ in keys])
        turn = state.undo()
        return (gr.MultimodalTextbox(value={"text": turn.question, "files": []}), state, *views(state))

    def clear(state: ChatState, request: gr.Request = None):
        files.join(state, request)
        state.clear()
        return (gr.MultimodalTextbox(value=None), state, *views(state))

    def end_session(request: gr.Request):
        files.end(request.session_hash)

    def pick_dish(cuisine: str):
        dishes = gallery[cuisine]

        def pick(state: ChatState, evt: gr.SelectData, request: gr.Request = None):
            files.join(state, request)
            # The index picks from the server's own list: a client cannot name an arbitrary file.
            index = evt.index if isinstance(evt.index, int) else evt.index[0]
            if not 0 <= index < len(dishes):
                raise refused("no such dish in the gallery")
            dish = dishes[index]
            if state.detach(dish.image):  # a second click on a picked dish takes it off again
                gr.Info(f"{dish.name} removed · 已移除", duration=3)
                return (state, *views(state))
            if dish.image in state.images():
                gr.Info(f"{dish.name} is already in this chat · 这道菜已在对话中", duration=3)
                return (state, *views(state))
            try:
                open_image(dish.image)
                state.attach(dish.image)
            except (ImageError, ValueError) as e:  # a toast; no error badge over the chat
                gr.Warning(str(e), duration=8)
                return (state, *views(state))
            gr.Info(f"{dish.name} added: now ask about it (click it again to remove it) · "
                    f"已加入对话，再点一次可移除", duration=4)
            return (state, *views(state))
        return pick

    def fill_example(index: int, message: dict | None):
        """An example question into the box; photos already attached stay."""
        kept = [f if isinstance(f, str) else f["path"] for f in (message or {}).get("files") or []]
        return gr.MultimodalTextbox(value={"text": EXAMPLES[index], "files": kept})

    def export(state: ChatState, request: gr.Request = None):
        """The conversation as Markdown and JSON files (in the session folder: gone with the session)."""
        if not state.turns:
            gr.Info("Nothing to export yet · 还没有对话", duration=3)
            return gr.skip()
        out = []
        for fmt in ("md", "json"):
            path = state.session_dir / f"foodie-chat-{secrets.token_hex(6)}.{fmt}"
            with atomic_path(path) as tmp:
                Path(tmp).write_text(state.export(fmt, names), encoding="utf-8")
            files.claim(path, request)
            out.append(str(path))
        return gr.File(value=out, visible=True)

    def ask(question: str, images: list | None, max_new_tokens: float = 256):
        """The API: one question (and images) in a fresh conversation -> {"answer", "answers"}; streams."""
        state = ChatState(tuple(keys), temp_root=template_root.get("dir"))
        uploads = [f if isinstance(f, str) else f["path"] for f in images or []]
        try:
            try:
                state.check_room(len(uploads))
                for f in uploads:
                    state.attach(save_upload(state, f, max_upload_bytes))
                state.ask(clean_user_text(question or "")[:MAX_QUESTION_CHARS])
            except ValueError as e:
                raise refused(str(e)) from None
            params = generation_params(0.0, 1.0, int(max_new_tokens or 256), REPETITION_PENALTY)
            fns = {s.key: functools.partial(s.backend.stream, params=params) for s in slots}
            for _ in stream_answers(state, fns, names=names, gates=gates):
                yield api_answers(state, keys)
            yield api_answers(state, keys)
        finally:
            state.close()
            for f in uploads:
                files.discard_upload(f)

    template_root: dict = {}  # the folder for the API's one-question sessions (set by build_demo)
    return dict(add_question=add_question, answer=answer, send=send, stop=stop, regenerate=regenerate, undo=undo,
                clear=clear, pick_dish=pick_dish, fill_example=fill_example, export=export, ask=ask,
                end_session=end_session, gates=gates, files=files, template_root=template_root)


def api_answers(state: ChatState, keys: list[str]) -> dict:
    """The ``ask`` endpoint's output: the --model's answer, and every model's (compare mode: base and tuned).
    A model error is the answer text, marked with a warning sign, as in the chat."""
    turn = state.turns[-1]
    answers = {k: (f"⚠️ {turn.errors[k]}" if k in turn.errors else turn.answers.get(k, "")) for k in keys}
    return {"answer": answers[keys[-1]], "answers": answers}


# ---------------------------------------------------------------------------------------------
# Page
# ---------------------------------------------------------------------------------------------

def build_demo(slots: list[ModelSlot], gallery: Gallery, *,
               backend_name: str = "", max_upload_mb: int = MAX_UPLOAD_MB, temp_root: Path | None = None,
               concurrency: int = 4, notice: str | None = None, files: SessionFiles | None = None) -> gr.Blocks:
    files = files or SessionFiles()
    system_default = default_system_prompt(slots[-1].backend)
    h = make_handlers(slots, gallery, max_upload_mb * 2**20, files=files, concurrency=concurrency,
                      system_default=system_default)
    h["template_root"]["dir"] = temp_root
    template = ChatState(tuple(s.key for s in slots), temp_root=temp_root, on_delete=files.deleted)
    own_tiles = {s.label: getattr(s.backend, "max_tiles", None) for s in slots}
    one_budget = len(set(own_tiles.values())) == 1 and None not in own_tiles.values()
    private = dict(api_visibility="private")
    with gr.Blocks(title="InternVL Foodie", analytics_enabled=False) as demo:
        gr.Markdown("# InternVL Foodie · 美食专家\nChat with the Chinese-food expert: pick a dish from the gallery or "
                    "upload photos, then ask in 中文 or English. · 从右侧选一道菜或上传照片，然后用中文或英文提问。",
                    elem_id="title")
        if notice:
            gr.Markdown(notice, elem_id="model-notice")
        state = gr.State(template, time_to_live=6 * 3600, delete_callback=ChatState.close)
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                with gr.Row():
                    chatbots = [gr.Chatbot(label=s.label, elem_id=f"chat-{s.key}", height=520,
                                           buttons=["copy"], feedback_options=None, latex_delimiters=[],
                                           placeholder="Pick a dish on the right or upload a photo, then ask. · "
                                                       "选一道菜或上传照片，然后提问。")
                                for s in slots]
                box = gr.MultimodalTextbox(file_types=["image"], file_count="multiple", elem_id="question",
                                           placeholder="Ask about the dish… · 这是什么菜？", show_label=False,
                                           submit_btn="Send · 发送", sources=["upload"], autofocus=True)
                with gr.Row(elem_id="controls"):
                    stop_btn = gr.Button("Stop · 停止", variant="stop", size="sm", elem_id="stop")
                    regen_btn = gr.Button("Regenerate · 重新生成", size="sm", elem_id="regenerate")
                    undo_btn = gr.Button("Undo · 撤销", size="sm", elem_id="undo")
                    clear_btn = gr.Button("Clear · 清空", size="sm", elem_id="clear")
                    export_btn = gr.Button("Export · 导出", size="sm", elem_id="export")
                export_files = gr.File(label="Chat export (Markdown, JSON) · 对话导出", visible=False,
                                       elem_id="export-files", interactive=False)
                examples = gr.Dataset(components=[gr.Textbox(visible=False)], samples=[[q] for q in EXAMPLES],
                                      label="Example questions (click: photos stay attached) · 示例问题",
                                      type="index", elem_id="examples", samples_per_page=len(EXAMPLES))
            with gr.Column(scale=2):
                gr.Markdown("### Dish gallery · 菜品\nClick a dish to put it into the chat; click again to take it "
                            "off. · 点击菜品加入对话，再点一次移除。")
                galleries = []
                if gallery:
                    with gr.Tabs(elem_id="cuisines"):
                        for i, (cuisine, dishes) in enumerate(gallery.items()):
                            with gr.Tab(f"{cuisine} ({len(dishes)})", elem_id=f"cuisine-{i}"):
                                g = gr.Gallery(value=[(str(d.thumb or d.image), d.name) for d in dishes], columns=3,
                                               height=300, allow_preview=False, show_label=False,
                                               elem_id=f"gallery-{i}", elem_classes=["dish-gallery"],
                                               object_fit="cover", buttons=[], interactive=False)
                                galleries.append((cuisine, g))
                else:
                    gr.Markdown("*No gallery: start with `--data-root` pointing at a FoodieQA folder.*")
                with gr.Accordion("Generation settings · 生成设置", open=True):
                    temperature = gr.Slider(0.0, 1.5, value=0.0, step=0.05, label="Temperature · 温度 (0 = greedy)",
                                            elem_id="temperature")
                    top_p = gr.Slider(0.05, 1.0, value=0.9, step=0.05, label="Top-p", elem_id="top-p")
                    max_new = gr.Slider(8, 2048, value=256, step=8, label="Max new tokens · 最大生成长度",
                                        elem_id="max-new-tokens")
                    repetition = gr.Slider(1.0, 2.0, value=REPETITION_PENALTY, step=0.05,
                                           label="Repetition penalty · 重复惩罚 (1 = off)", elem_id="repetition-penalty")
                    budget_info = ", ".join(f"{label}: {n}" for label, n in own_tiles.items())
                    max_tiles = gr.Slider(0, max(24, *[n or 0 for n in own_tiles.values()]), value=next(iter(own_tiles.values())) if one_budget else 0, step=1,
                                          label=f"Max tiles per question · 最大图块数 (448×448 each; 0 = each "
                                                f"checkpoint's own: {budget_info})", elem_id="max-tiles")
                with gr.Accordion("System prompt · 系统提示", open=False):
                    system_prompt = gr.Textbox(value=system_default or "", lines=3, show_label=False,
                                               placeholder="(the model's own system prompt) · 模型默认的系统提示",
                                               elem_id="system-prompt")
                gr.Markdown("Models · 模型: " + " · ".join(f"`{s.label}`" for s in slots)
                            + (f" — backend `{backend_name}`" if backend_name else "")
                            + f"  \nUploads · 上传: images up to {max_upload_mb} MB, deleted on Clear and when "
                              f"this tab closes · 清空或关闭页面即删除。")
        # The API: hidden inputs and output, one named endpoint.
        with gr.Group(visible=False):
            api_question = gr.Textbox(label="question")
            api_images = gr.File(label="images", file_count="multiple", file_types=["image"])
            api_tokens = gr.Number(value=256, label="max_new_tokens", precision=0)
            api_answers = gr.JSON(label="answers")
            api_button = gr.Button(visible=False)

        sampling = [state, temperature, top_p, max_new, repetition, max_tiles, system_prompt]
        chat_out = [state, *chatbots]
        answer_kw = dict(concurrency_limit=concurrency, concurrency_id="answer", **private)
        # A refused message (bad upload, empty question) shows as a toast; the chat stays as it was.
        # show_progress="minimal": a waiting question shows its place in the page's queue (past --concurrency).
        box.submit(h["send"], [box, *sampling], [box, *chat_out], show_progress="minimal", **answer_kw)
        regen_btn.click(h["regenerate"], [state], [state], concurrency_limit=None, show_progress="hidden",
                        **private).success(h["answer"], sampling, chat_out, **answer_kw)
        # Stop cancels this session's answer in flight: the chat keeps the partial answer at once, and the
        # worker closes the backend's stream so generation stops too.
        stop_btn.click(h["stop"], [state], None, concurrency_limit=None, **private)
        undo_btn.click(h["undo"], [state], [box, *chat_out], concurrency_limit=None, show_progress="hidden",
                       **private)
        clear_btn.click(h["clear"], [state], [box, *chat_out], concurrency_limit=None, **private)
        export_btn.click(h["export"], [state], [export_files], concurrency_limit=None, **private)
        examples.click(h["fill_example"], [examples, box], [box], concurrency_limit=None, show_progress="hidden",
                       **private)
        for c in chatbots:  # the chat's own trash icon clears the conversation too, not just the view
            c.clear(h["clear"], [state], [box, *chat_out], concurrency_limit=None, **private)
        for cuisine, g in galleries:
            g.select(h["pick_dish"](cuisine), [state], chat_out, concurrency_limit=None, show_progress="hidden",
                     **private)
        api_button.click(h["ask"], [api_question, api_images, api_tokens], [api_answers], api_name="ask",
                         concurrency_limit=concurrency, concurrency_id="answer",
                         api_description="Ask the food expert: a question and dish photos in, "
                                         "{answer, answers} out (compare mode: answers.base and answers.tuned).")
        demo.unload(h["end_session"])
    return demo


def main(argv=None):
    ap = cli.ArgumentParser(description=__doc__.split("\n\n")[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="InternVL2 checkpoint folder (official format), e.g. your fine-tuned, merged "
                                    "model; default: the embedded tiny model")
    ap.add_argument("--compare", help="a second checkpoint answering side by side, labelled 'base' (left) while "
                                      "--model is labelled 'tuned' (right): pass the base InternVL2-2B here")
    ap.add_argument("--backend", default="auto", choices=["auto", "lmdeploy", "transformers"])
    ap.add_argument("--data-root", help="FoodieQA folder for the dish gallery; default: the synthetic set")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    ap.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT") or DEFAULT_PORT),
                    help=f"port to serve on (default: $GRADIO_SERVER_PORT, else {DEFAULT_PORT})")
    ap.add_argument("--max-upload-mb", type=int, default=MAX_UPLOAD_MB)
    ap.add_argument("--concurrency", type=int, default=4,
                    help="answers in progress at the same time, all users together (default 4); the transformers "
                         "backend generates one of them at a time per model, LMDeploy batches them")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="[demo] %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)

    check_port_free(args.host, args.port)  # before the slow model load
    model_dir, data_dir = ensure_embedded_default(args.model, args.data_root)
    compare_dir = None
    if args.compare:
        compare_dir = Path(args.compare).expanduser().resolve()
        if not (compare_dir / "config.json").is_file():
            raise SystemExit(f"--compare {args.compare}: no config.json there. Point it at an InternVL2 checkpoint "
                             f"folder (e.g. the base InternVL2-2B).")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"[demo] WARNING: binding {args.host}: anyone who can reach this machine on port {args.port} can use "
              f"the demo and upload images. Put it behind your own access control.", flush=True)
    t0 = time.perf_counter()
    try:
        slots = load_slots(model_dir, compare_dir, args.backend)
    except (RuntimeError, OSError, ValueError) as e:
        raise SystemExit(f"[demo] cannot load the model: {e}") from None
    for slot in slots:
        warm_up(slot)
    gallery = load_gallery(data_dir)

    # This process's temp folder: gallery thumbnails, and one upload folder per browser session
    # (gradio displays files from the system temp dir, its own cache and allowed_paths only).
    temp_root = Path(tempfile.mkdtemp(prefix="foodie-demo-"))
    # Gradio's upload cache (every upload, and its copy of every file a chat shows) lives in this folder
    # too, so nothing a user sent outlives the server.
    gradio_cache = temp_root / "gradio"
    gradio_cache.mkdir()
    os.environ["GRADIO_TEMP_DIR"] = str(gradio_cache)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill` ends the server through the cleanup below
    try:
        make_thumbnails(gallery, temp_root / "thumbnails")
        print(f"[demo] ready in {time.perf_counter() - t0:.1f}s: {sum(map(len, gallery.values()))} dishes in "
              f"{len(gallery)} cuisines", flush=True)
        files = SessionFiles(gradio_cache)
        demo = build_demo(slots, gallery, backend_name=slots[0].backend.name, max_upload_mb=args.max_upload_mb,
                          temp_root=temp_root, concurrency=args.concurrency, files=files,
                          notice=EMBEDDED_NOTICE if args.model is None else None)
        # The chat shows a picked dish's original photo: those files (resolved, inside the data root: load_foodieqa
        # refuses links out of it) are the only ones served beyond gradio's own; never their folders.
        gallery_files = served_files(gallery)
        demo.queue(default_concurrency_limit=args.concurrency)
        from starlette.middleware import Middleware
        try:
            demo.launch(server_name=args.host, server_port=args.port, share=False, allowed_paths=gallery_files,
                        max_file_size=f"{args.max_upload_mb}mb", show_error=False, css=CSS, theme=THEME,
                        footer_links=["api"], head=HEAD,
                        app_kwargs={"middleware": [Middleware(UploadGuard, files=files)]})
        except OSError as e:  # the port was taken while the model loaded
            raise SystemExit(f"[demo] cannot serve on {args.host}:{args.port} ({e}): pass another port, "
                             f"e.g. --port {args.port + 1}") from None
    finally:
        shutil.rmtree(temp_root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(cli.run(main))
