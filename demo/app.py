"""Chat with the food expert: a Gradio demo that is safe for several users at once.

    python demo/app.py                                   # embedded tiny model + synthetic FoodieQA
    python demo/app.py --model work/tuned --compare /models/InternVL2-2B --data-root /data/FoodieQA

One conversation per browser tab; uploads are served only to the browser that sent them and deleted on Clear, tab
close and exit; one public endpoint, ``ask`` (README "The demo from code").
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple
from urllib.parse import unquote

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no phoning home from a local demo
warnings.filterwarnings("ignore", message=".*HTTP_422_UNPROCESSABLE_ENTITY.*")  # gradio 6.17 + new starlette noise
import gradio as gr  # noqa: E402
from gradio import FileData  # noqa: E402
from PIL import Image  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402
from starlette.requests import HTTPConnection  # noqa: E402
from starlette.responses import PlainTextResponse  # noqa: E402

from foodie import cli  # noqa: E402
from foodie.atomic import atomic_path  # noqa: E402
from foodie.chat_state import ChatState, stream_answers  # noqa: E402
from foodie.image_tiling import ImageError, open_image  # noqa: E402
from foodie.inference import CHOICES, GenerationParams, Message, load_backend  # noqa: E402
from foodie.model_spec import ModelSpec  # noqa: E402
from foodie.prompts import user_text  # noqa: E402
from foodie.tiny_model import ensure_embedded_default as build_embedded_default  # noqa: E402

MAX_UPLOAD_MB = 20
MAX_QUESTION_CHARS = 4000  # a longer question is refused (it would only slow every user down)
EXAMPLES = [
    # FoodieQA's own single-image multiple-choice format (authors' template 0): the tuned model answers a letter.
    user_text("sivqa", "图片中的食物是哪个地区的特色美食？", ["川菜", "粤菜", "鲁菜", "苏菜"], "zh"),
    user_text("sivqa", "Which region is the food in the picture a specialty of?",
              ["Sichuan", "Cantonese", "Shandong", "Jiangsu"], "en"),
    "这道菜叫什么名字？是哪个菜系的？主要食材有哪些？",
    "Which of these two dishes is spicier, and why?",
]
REPETITION_PENALTY = 1.1  # InternVL's own chat demo default; 1.0 lets a small model loop ("炸酱面。炸酱面。...")
SLIDERS = {  # elem_id: low, high, default, step, label; in the order of answer()'s settings
    "temperature": (0.0, 1.5, 0.0, 0.05, "Temperature · 温度 (0 = greedy)"),
    "top-p": (0.05, 1.0, 0.9, 0.05, "Top-p"),
    "max-new-tokens": (8, 2048, 256, 8, "Max new tokens · 最大生成长度"),
    "repetition-penalty": (1.0, 2.0, REPETITION_PENALTY, 0.05, "Repetition penalty · 重复惩罚 (1 = off)"),
}
BUTTONS = {"stop": "Stop · 停止", "regenerate": "Regenerate · 重新生成", "undo": "Undo · 撤销", "clear": "Clear · 清空",
           "export": "Export · 导出"}
FIRST_DRAW_S = 0.15  # Send: how long the question waits to be drawn together with the first token
CLIENT_COOKIE = "foodie_client"  # a random id per browser, set by the page: session files are served to it only
HEAD = ("<script>if (!document.cookie.split('; ').some(c => c.startsWith('" + CLIENT_COOKIE + "='))) {"
        "const b = crypto.getRandomValues(new Uint8Array(16));"
        "document.cookie = '" + CLIENT_COOKIE + "=' + Array.from(b, x => x.toString(16).padStart(2, '0')).join('')"
        " + '; path=/; SameSite=Strict'; }</script>")
THEME = gr.themes.Default(primary_hue="orange", secondary_hue="amber")  # ships its fonts: nothing fetched online
CSS = """
.bubble-wrap img {max-height: 240px; width: auto !important; object-fit: contain}
#model-notice {border-left: 4px solid var(--color-accent); padding-left: 8px}
/* Sharing goes to Hugging Face Spaces only: dead in a local demo. */
button[title="Share"], button[aria-label="Share"], .share-button {display: none !important}
"""
EMBEDDED_NOTICE = ("**This is the embedded tiny test model, not InternVL2: its answers mean nothing** · 这是内置的微型"
                   "测试模型，回答没有意义。Start the demo with `--model DIR` · 请用 `--model DIR` 指定真实模型。")
# Chat-template and image markers: typed by a user they would pose as image slots or turn boundaries.
CONTROL_MARKUP = re.compile(r"<\|[^|<>]{1,40}\|>|</?(?:image|img|IMG_CONTEXT|quad|ref|box)>", re.IGNORECASE)


class ModelSlot(NamedTuple):
    key: str  # its answers in ChatState
    label: str
    backend: object
    spec: ModelSpec  # what the checkpoint is: its tile budget, its system prompt


def ensure_embedded_default(model: str | None, data_root: str | None) -> tuple[Path, Path]:
    """--model and --data-root as folders; left out, the embedded default (built when missing or stale)."""
    if data_root and not Path(data_root).is_dir():
        raise SystemExit(f"--data-root {data_root}: not a folder. Point it at a FoodieQA folder "
                         f"(sivqa_tidy.json + images/), or leave it out for the synthetic set.")
    tiny, synthetic = build_embedded_default(model=not model, data=not data_root,
                                             log=lambda line: print(f"[demo] {line}", flush=True))
    return (Path(model).expanduser().resolve() if model else tiny,
            Path(data_root).expanduser().resolve() if data_root else synthetic)


def generation_params(temperature: float, top_p: float, max_new_tokens: int,
                      repetition_penalty: float = 1.0, max_tiles: int = 0) -> GenerationParams:
    """The page's settings; temperature 0 is greedy, max_tiles 0 the checkpoint's own tile budget."""
    return GenerationParams(max_new_tokens=int(max_new_tokens), temperature=float(temperature) or 1.0,
                            top_p=float(top_p), do_sample=float(temperature) > 0,
                            repetition_penalty=float(repetition_penalty), max_tiles=int(max_tiles) or None)


# -- session files: who may fetch what ---------------------------------------------------------------

class SessionFiles:
    """Gradio serves every file in its upload cache (uploads, copies of what a chat shows) to any request naming
    it: here a session file or an upload is served only to the browser whose cookie sent it, 404 to others."""

    def __init__(self, cache_dir: Path | None = None):
        self.cache_dir, self.owner = cache_dir, {}  # owner: session file name (unique) or upload path -> client id

    def claim(self, key: str, request: gr.Request | None) -> None:
        self.owner[key] = (request.cookies.get(CLIENT_COOKIE) if request is not None else None) or ""

    def may_fetch(self, url_path: str, client: str | None) -> bool:
        target = url_path.split("file=", 1)[-1]
        owner = self.owner.get(target.rstrip("/").rsplit("/", 1)[-1], self.owner.get(os.path.abspath(target)))
        return owner is None or bool(client) and secrets.compare_digest(owner, client)

    def deleted(self, path: Path) -> None:
        """A session file was deleted: gradio's cached copies of it go too."""
        for copy in self.cache_dir.glob(f"*/{path.name}") if self.cache_dir is not None else []:
            self.discard_upload(copy)
        self.owner.pop(path.name, None)

    def discard_upload(self, path: str | Path) -> None:
        """Delete a file in gradio's cache (an upload copied into its session, or refused)."""
        path = Path(path)
        self.owner.pop(os.path.abspath(path), None)
        if self.cache_dir is not None and path.resolve().is_relative_to(self.cache_dir.resolve()):
            path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                path.parent.rmdir()

    def guard(self, app):
        """ASGI middleware: checks file requests; the upload route's answer (stored paths) says who owns which."""
        async def guarded(scope, receive, send):
            if scope["type"] != "http":
                return await app(scope, receive, send)
            path, client = unquote(scope["path"]), HTTPConnection(scope).cookies.get(CLIENT_COOKIE)
            if ("/file=" in path or "/file/" in path) and not self.may_fetch(path.replace("/file/", "/file="), client):
                return await PlainTextResponse("Not found", status_code=404)(scope, receive, send)
            if scope["method"] != "POST" or not path.rstrip("/").endswith("/upload"):
                return await app(scope, receive, send)
            body = []

            async def watch(message):
                if message["type"] == "http.response.body":
                    body.append(message.get("body", b""))
                    if not message.get("more_body"):
                        with contextlib.suppress(ValueError):
                            stored = json.loads(b"".join(body))
                            for f in stored if isinstance(stored, list) else []:
                                self.owner[os.path.abspath(f)] = client or ""
                await send(message)
            await app(scope, receive, watch)
        return guarded


# -- gallery -----------------------------------------------------------------------------------------

@dataclass
class Dish:
    image: Path  # what the model gets
    name: str
    thumb: Path | None = None  # what the page shows


def load_gallery(data_root: Path | None, max_per_cuisine: int = 60) -> dict[str, list[Dish]]:
    """One photo per dish of the single-image questions of a FoodieQA folder, by cuisine."""
    from foodie.foodieqa import FoodieQAError, load_foodieqa
    try:
        data = load_foodieqa(data_root, skip_bad=True)
    except FoodieQAError as e:  # the chat works without a gallery
        print(f"[demo] WARNING: no dish gallery, {data_root} could not be read:\n{e}", flush=True)
        return {}
    if data.skipped:
        print(f"[demo] gallery: skipped {len(data.skipped)} bad items (first: {data.skipped[0]})", flush=True)
    groups: dict[str, list[Dish]] = {}  # cuisine -> dishes
    for item in data.sivqa:
        dishes, name = groups.setdefault(item.cuisine, []), item.food_name or Path(item.image).stem
        if len(dishes) < max_per_cuisine and name not in {d.name for d in dishes}:
            dishes.append(Dish(data.path(item.image), name))
    return dict(sorted(groups.items(), key=lambda kv: (kv[0] == "unknown", -len(kv[1]), kv[0])))


def served_files(gallery: dict[str, list[Dish]]) -> list[str]:
    """The gallery's photos, file by file (gradio's allowed_paths): never their folders, which would expose
    every file beside a photo, dotfiles included."""
    return sorted({str(d.image) for dishes in gallery.values() for d in dishes})


def make_thumbnails(gallery: dict[str, list[Dish]], folder: Path, size: int = 320) -> None:
    """Small JPEG copies for the page (phone photos are megabytes each); the model still gets the originals."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, dish in enumerate(d for dishes in gallery.values() for d in dishes):
        try:
            small = open_image(dish.image, draft_size=(2 * size, 2 * size))  # a JPEG decodes at a fraction
            small.thumbnail((size, size))
            small.save(folder / f"{i:04d}.jpg", quality=85)
            dish.thumb = folder / f"{i:04d}.jpg"
        except (ImageError, OSError) as e:  # the page shows the original then; the model reports it if broken
            print(f"[demo] WARNING: no thumbnail for {dish.image}: {e}", flush=True)


# -- event handlers (each takes the session's ChatState; nothing conversational is global) ------------

def files_of(message: dict | None) -> list[str]:
    return [f if isinstance(f, str) else f["path"] for f in (message or {}).get("files") or []]


def save_upload(state: ChatState, path: str) -> Path:
    """Check an upload (gradio refuses one over MAX_UPLOAD_MB); copy it into the session under a generated name."""
    src = Path(path)
    try:
        open_image(src)  # decodes it fully; refuses bombs and non-images
        with Image.open(src) as img:  # the real format names the copy, not the user's file name
            suffix = {"JPEG": ".jpg", "MPO": ".jpg"}.get(img.format, f".{(img.format or 'img').lower()}")
    except ImageError as e:
        raise ValueError(str(e).replace(str(src), src.name)) from None
    dest = state.new_upload_path(suffix)
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
    return dest


def make_handlers(slots: list[ModelSlot], gallery: dict[str, list[Dish]], *, files: SessionFiles | None = None,
                  temp_root: Path | None = None) -> dict:
    keys, names = [s.key for s in slots], {s.key: s.label for s in slots}
    files = files or SessionFiles()
    system_default = (slots[-1].spec.system_message or "").strip()

    def chat(state: ChatState) -> tuple:
        return (state, *[state.messages(k) for k in keys])

    def unchanged(n: int) -> tuple:  # n outputs besides the chat panels
        return tuple(gr.skip() for _ in range(n + len(keys)))

    def add_question(message: dict | None, state: ChatState, request: gr.Request = None):
        """The message's uploads into the session, then its question; a refusal (gr.Error) changes nothing."""
        text, uploads, saved = CONTROL_MARKUP.sub(" ", (message or {}).get("text") or "").strip(), files_of(message), []
        try:
            if len(text) > MAX_QUESTION_CHARS:
                raise ValueError(f"the question has {len(text):,} characters; the limit is {MAX_QUESTION_CHARS:,}. "
                                 f"Shorten it.")
            state.check_room(len(uploads))
            for f in uploads:
                saved.append(save_upload(state, f))
                files.claim(saved[-1].name, request)
                state.attach(saved[-1])
            state.ask(text)
        except ValueError as e:
            for p in saved:
                state.detach(p)
            raise gr.Error(str(e), print_exception=False) from None  # a toast, no traceback in the console
        finally:
            for f in uploads:  # gradio's copy: copied into the session, or refused
                files.discard_upload(f)

    def answer(state: ChatState, temperature: float, top_p: float, max_new_tokens: int,
               repetition_penalty: float = 1.0, max_tiles: int = 0, system_prompt: str | None = None,
               first_draw_s: float = 0.0):
        prompt = (system_prompt or "").strip()
        state.system_prompt = prompt if prompt and prompt != system_default else None
        params = generation_params(temperature, top_p, max_new_tokens, repetition_penalty, max_tiles)
        fns = {s.key: lambda request, s=s: s.backend.stream(request, params) for s in slots}
        for _ in stream_answers(state, fns, names=names, first_draw_s=first_draw_s):
            yield chat(state)

    def send(message: dict, state: ChatState, request: gr.Request, *settings):
        """Question and answers in one event (one round trip less than two); a refusal is a toast."""
        try:
            add_question(message, state, request)
        except gr.Error as e:
            gr.Warning(e.message, duration=8)
            yield unchanged(2)
            return
        for i, update in enumerate(answer(state, *settings, FIRST_DRAW_S)):
            yield (gr.MultimodalTextbox(value=None) if i == 0 else gr.skip(), *update)

    def regenerate(state: ChatState, *settings):
        if not state.turns:
            gr.Info("Nothing to regenerate yet · 还没有可重新生成的回答", duration=3)
            yield unchanged(1)
            return
        state.regenerate()
        yield from answer(state, *settings)

    def undo(state: ChatState):
        if not state.turns:  # a toast, not an error badge on the chat panels
            gr.Info("Nothing to undo · 没有可撤销的内容", duration=3)
            return unchanged(2)
        return (gr.MultimodalTextbox(value={"text": state.undo().question, "files": []}), *chat(state))

    def stop(state: ChatState):
        state.stop()
        return chat(state)

    def clear(state: ChatState):
        state.clear()
        return (gr.MultimodalTextbox(value=None), *chat(state))

    def pick_dish(cuisine: str):
        def pick(state: ChatState, evt: gr.SelectData):
            """A click puts the dish into the chat, a second click takes it off."""
            dish = gallery[cuisine][evt.index if isinstance(evt.index, int) else evt.index[0]]  # the server's own list
            if state.detach(dish.image):
                gr.Info(f"{dish.name} removed · 已移除", duration=3)
            elif dish.image in state.images():
                gr.Info(f"{dish.name} is already in this chat · 这道菜已在对话中", duration=3)
            else:
                try:
                    state.attach(dish.image)
                    gr.Info(f"{dish.name} added: now ask about it (click it again to remove it) · "
                            f"已加入对话，再点一次可移除", duration=4)
                except ValueError as e:
                    gr.Warning(str(e), duration=8)
            return chat(state)
        return pick

    def fill_example(index: int, message: dict | None):  # photos already attached stay
        return gr.MultimodalTextbox(value={"text": EXAMPLES[index], "files": files_of(message)})

    def export(state: ChatState, request: gr.Request = None):
        """Markdown and JSON files in the session folder: private, gone with the session."""
        out = [state.session_dir / f"foodie-chat-{secrets.token_hex(6)}.{fmt}" for fmt in ("md", "json")]
        for path in out:
            path.write_text(state.export(path.suffix[1:], names), encoding="utf-8")
            files.claim(path.name, request)
        return gr.File(value=[str(p) for p in out], visible=True)

    def ask(question: str, images: list[FileData] | None = None, max_new_tokens: int = 256) -> dict:
        """The API: a question (and images) in a fresh conversation -> {"answer", "answers"}, streamed. A model
        error is the answer text, marked with a warning sign as in the chat."""
        state = ChatState(tuple(keys), temp_root=temp_root)
        try:
            add_question({"text": question, "files": images}, state)
            for _ in answer(state, 0.0, 1.0, max_new_tokens or 256, REPETITION_PENALTY):
                turn = state.turns[-1]
                answers = {k: f"⚠️ {turn.errors[k]}" if k in turn.errors else turn.answers.get(k, "") for k in keys}
                yield {"answer": answers[keys[-1]], "answers": answers}
        finally:
            state.close()

    return dict(add_question=add_question, answer=answer, send=send, stop=stop, regenerate=regenerate,
                undo=undo, clear=clear, pick_dish=pick_dish, fill_example=fill_example, export=export, ask=ask)


# -- page --------------------------------------------------------------------------------------------

def build_demo(slots: list[ModelSlot], gallery: dict[str, list[Dish]], *, concurrency: int = 4,
               notice: str | None = None, files: SessionFiles | None = None, temp_root: Path | None = None):
    files = files or SessionFiles()
    h = make_handlers(slots, gallery, files=files, temp_root=temp_root)
    budgets = {s.label: s.spec.max_tiles for s in slots}
    with gr.Blocks(title="InternVL Foodie", analytics_enabled=False) as demo:
        gr.Markdown("# InternVL Foodie · 美食专家\nPick a dish or upload photos, then ask in 中文 or English. · "
                    "选一道菜或上传照片，然后用中文或英文提问。")
        if notice:
            gr.Markdown(notice, elem_id="model-notice")
        template = ChatState(tuple(s.key for s in slots), temp_root=temp_root, on_delete=files.deleted)
        state = gr.State(template, time_to_live=6 * 3600, delete_callback=ChatState.close)
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                with gr.Row():
                    chatbots = [gr.Chatbot(label=s.label, elem_id=f"chat-{s.key}", height=520, buttons=["copy"],
                                           feedback_options=None, latex_delimiters=[]) for s in slots]
                box = gr.MultimodalTextbox(file_types=["image"], file_count="multiple", elem_id="question",
                                           placeholder="Ask about the dish… · 这是什么菜？", show_label=False,
                                           submit_btn="Send · 发送", sources=["upload"], autofocus=True)
                with gr.Row(elem_id="controls"):
                    buttons = {name: gr.Button(label, size="sm", elem_id=name,
                                               variant="stop" if name == "stop" else "secondary")
                               for name, label in BUTTONS.items()}
                export_files = gr.File(label="Chat export (Markdown, JSON) · 对话导出", visible=False,
                                       elem_id="export-files", interactive=False)
                examples = gr.Dataset(components=[gr.Textbox(visible=False)], samples=[[q] for q in EXAMPLES],
                                      label="Example questions (click: photos stay attached) · 示例问题",
                                      type="index", elem_id="examples", samples_per_page=len(EXAMPLES))
            with gr.Column(scale=2):
                gr.Markdown("### Dish gallery · 菜品\nClick to add a dish, again to remove it · 点击加入，再点移除")
                with gr.Tabs(elem_id="cuisines"):
                    galleries = []
                    for i, (cuisine, dishes) in enumerate(gallery.items()):
                        with gr.Tab(f"{cuisine} ({len(dishes)})", elem_id=f"cuisine-{i}"):
                            galleries.append((cuisine, gr.Gallery(
                                value=[(str(d.thumb or d.image), d.name) for d in dishes], columns=3, height=300,
                                allow_preview=False, show_label=False, elem_id=f"gallery-{i}",
                                object_fit="cover", buttons=[], interactive=False)))
                with gr.Accordion("Generation settings · 生成设置", open=True):
                    sliders = [gr.Slider(low, high, value=value, step=step, label=label, elem_id=elem_id)
                               for elem_id, (low, high, value, step, label) in SLIDERS.items()]
                    # Starts at the checkpoint's own tile budget (compare mode with two budgets: 0, each its own).
                    max_tiles = gr.Slider(0, max(24, *budgets.values()), step=1, elem_id="max-tiles",
                                          value=slots[0].spec.max_tiles if len(set(budgets.values())) == 1 else 0,
                                          label=f"Max tiles per question · 最大图块数 (0 = each checkpoint's own: "
                                                f"{', '.join(f'{k}: {n}' for k, n in budgets.items())})")
                with gr.Accordion("System prompt · 系统提示", open=False):
                    system_prompt = gr.Textbox(value=slots[-1].spec.system_message or "", lines=3, show_label=False,
                                               placeholder="(the model's own system prompt) · 模型默认的系统提示",
                                               elem_id="system-prompt")
                gr.Markdown(f"Backend `{slots[-1].backend.name}`. Uploads (≤ {MAX_UPLOAD_MB} MB) are deleted on Clear "
                            f"and when this tab closes · 上传的图片在清空或关闭页面时删除。")
        settings, chat_out = [*sliders, max_tiles, system_prompt], [state, *chatbots]
        quick = dict(concurrency_limit=None, show_progress="hidden", api_visibility="private")
        # Answers at once: --concurrency where every backend batches (its `concurrent`), else one. A question past
        # that waits in the page's queue, which shows its place.
        at_once = dict(concurrency_id="answer", concurrency_limit=concurrency if all(
            getattr(s.backend, "concurrent", False) for s in slots) else 1)
        answering = dict(show_progress="minimal", api_visibility="private", **at_once)
        asked = [box.submit(h["send"], [box, state, *settings], [box, *chat_out], **answering),
                 buttons["regenerate"].click(h["regenerate"], [state, *settings], chat_out, **answering)]
        # Stop leaves a waiting question out of the queue; a running one keeps its text and its stream is closed.
        buttons["stop"].click(h["stop"], [state], chat_out, cancels=asked, **quick)
        buttons["undo"].click(h["undo"], [state], [box, *chat_out], **quick)
        buttons["export"].click(h["export"], [state], [export_files], **quick)
        examples.click(h["fill_example"], [examples, box], [box], **quick)
        for clear in [buttons["clear"].click, *(c.clear for c in chatbots)]:  # a chat's trash icon clears it too
            clear(h["clear"], [state], [box, *chat_out], **quick)
        for cuisine, g in galleries:
            g.select(h["pick_dish"](cuisine), [state], chat_out, **quick)
        gr.api(h["ask"], api_name="ask", **at_once, api_description="Ask the food expert: a question and dish "
               "photos in, {answer, answers} out (compare mode: answers.base and answers.tuned).")

        def end_session(request: gr.Request):  # tab closed: delete its uploads now (gradio keeps state an hour)
            demo.state_holder.delete_state(request.session_hash)
        demo.unload(end_session)
    return demo


def main(argv=None):
    ap = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="InternVL2 checkpoint folder, e.g. your merged model (default: the embedded one)")
    ap.add_argument("--compare", help="a second checkpoint answering side by side as 'base' (e.g. InternVL2-2B); "
                                      "--model is then 'tuned'")
    ap.add_argument("--backend", default="auto", choices=CHOICES)
    ap.add_argument("--data-root", help="FoodieQA folder for the dish gallery; default: the synthetic set")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    ap.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT") or 7860),
                    help="port to serve on (default: $GRADIO_SERVER_PORT, else 7860)")
    ap.add_argument("--concurrency", type=int, default=4, help="answers LMDeploy generates at once, all users "
                                                               "together (the transformers backend: one)")
    args = ap.parse_args(argv)

    try:  # one line naming --port when the port is taken, before the slow model load
        socket.create_server((args.host, args.port), family=socket.AF_INET6 if ":" in args.host else socket.AF_INET
                             ).close()
    except OSError as e:
        raise SystemExit(f"[demo] port {args.port} on {args.host} is not free ({e.strerror}; another demo running?): "
                         f"pass another one, e.g. --port {args.port + 1}") from None
    model_dir, data_dir = ensure_embedded_default(args.model, args.data_root)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"[demo] WARNING: binding {args.host}: anyone who can reach this machine on port {args.port} can use "
              f"the demo and upload images. Put it behind your own access control.", flush=True)
    t0, slots = time.perf_counter(), []
    folders = [("base", Path(args.compare).resolve()), ("tuned", model_dir)] if args.compare else [("model", model_dir)]
    for key, folder in folders:
        try:
            spec, backend = ModelSpec.from_checkpoint(folder), load_backend(folder, backend=args.backend)
        except (RuntimeError, OSError, ValueError) as e:  # SpecError (a ValueError) names a missing config.json
            raise SystemExit(f"[demo] cannot load {folder}: {e}") from None
        print(f"[demo] loaded {folder} (backend {backend.name}, tile budget {spec.max_tiles})", flush=True)
        # One short answer about a small picture: the first user does not pay the backend's lazy start-up.
        backend.generate([[Message("user", "这是什么菜？", images=[Image.new("RGB", (448, 448), (200, 120, 40))])]],
                         GenerationParams(max_new_tokens=2))
        slots.append(ModelSlot(key, folder.name if key == "model" else f"{key} · {folder.name}", backend, spec))
    gallery = load_gallery(data_dir)

    # Thumbnails, session folders and gradio's upload cache: nothing a user sent outlives the server.
    temp_root = Path(tempfile.mkdtemp(prefix="foodie-demo-"))
    os.environ["GRADIO_TEMP_DIR"] = str(temp_root / "gradio")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill` ends the server through the cleanup below
    try:
        make_thumbnails(gallery, temp_root / "thumbnails")
        print(f"[demo] ready in {time.perf_counter() - t0:.1f}s: {sum(map(len, gallery.values()))} dishes in "
              f"{len(gallery)} cuisines", flush=True)
        files = SessionFiles(temp_root / "gradio")
        demo = build_demo(slots, gallery, concurrency=args.concurrency, files=files, temp_root=temp_root,
                          notice=EMBEDDED_NOTICE if args.model is None else None)
        # Beyond gradio's own files, only the gallery's photos are served (inside the data root: load_foodieqa
        # refuses links out of it).
        demo.queue(default_concurrency_limit=args.concurrency).launch(
            server_name=args.host, server_port=args.port, share=False, allowed_paths=served_files(gallery),
            max_file_size=f"{MAX_UPLOAD_MB}mb", show_error=False, css=CSS, theme=THEME, footer_links=["api"],
            head=HEAD, app_kwargs={"middleware": [Middleware(files.guard)]})
    finally:
        shutil.rmtree(temp_root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(cli.run(main))
