"""Chat with the food expert: a Gradio demo that is safe for several users at once.

    python demo/app.py                                   # embedded tiny model + synthetic FoodieQA
    python demo/app.py --model work/tuned --compare /models/InternVL2-2B --data-root /data/FoodieQA

Every browser tab has its own conversation (``ChatState`` in ``gr.State``): images and history never
leak between tabs. Answers stream token by token from ``foodie.inference`` (transformers through a
streamer thread, LMDeploy through its async API). With ``--compare`` each question is answered by both
models side by side. Uploads are validated (size, decodability, decompression bombs) and copied into a
per-session temporary folder under generated names; the only folders the app serves are the
gallery's; it binds 127.0.0.1 and never opens a public share link.
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

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
from foodie.chat_state import ChatState, stream_answers  # noqa: E402
from foodie.image_tiling import ImageError, open_image  # noqa: E402

log = logging.getLogger("foodie.demo")

MAX_UPLOAD_MB = 20
MAX_QUESTION_CHARS = 4000  # a question longer than this is refused (it would only slow every user down)
EXAMPLES = [
    "这道菜叫什么名字？是哪个菜系的？",
    "这道菜的主要食材有哪些？怎么做？",
    "这道菜通常在什么场合吃？",
    "What is this dish called, and which region of China is it from?",
    "What are the main ingredients, and how is it cooked?",
    "Which of these two dishes is spicier, and why?",
]
# gradio's Default theme ships its fonts (LocalFont): no browser fetches anything from the internet.
THEME = gr.themes.Default(primary_hue="orange", secondary_hue="amber")
CSS = """
#title h1 {margin-bottom: 0}
#title p {margin-top: 4px; color: var(--body-text-color-subdued)}
.dish-gallery .caption-label {font-size: 12px}
#controls button {min-width: 0}
footer {display: none !important}
.bubble-wrap img {max-height: 240px; width: auto !important; object-fit: contain}
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


def generation_params(temperature: float, top_p: float, max_new_tokens: int):
    """The page's sliders -> GenerationParams; temperature 0 means greedy decoding."""
    from foodie.inference import GenerationParams
    return GenerationParams(max_new_tokens=int(max_new_tokens), temperature=float(temperature) or 1.0,
                            top_p=float(top_p), do_sample=float(temperature) > 0)


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


def make_handlers(slots: list[ModelSlot], gallery: Gallery, max_upload_bytes: int):
    keys = [s.key for s in slots]

    def views(state: ChatState):
        return [state.messages(k) for k in keys]

    def add_question(message: dict, state: ChatState):
        message = message or {}
        files = message.get("files") or []
        text = clean_user_text(message.get("text") or "")
        if len(text) > MAX_QUESTION_CHARS:
            raise refused(f"the question has {len(text):,} characters; the limit is {MAX_QUESTION_CHARS:,}. "
                          f"Shorten it.")
        saved: list[Path] = []
        try:
            for f in files:
                saved.append(save_upload(state, f if isinstance(f, str) else f["path"], max_upload_bytes))
                state.attach(saved[-1])
            state.ask(text)
        except (ValueError, gr.Error) as e:
            for p in saved:  # leave the chat as it was before this message
                if p in state.pending_images:
                    state.pending_images.remove(p)
                p.unlink(missing_ok=True)
            raise e if isinstance(e, gr.Error) else refused(str(e)) from None
        return gr.MultimodalTextbox(value=None), state

    def answer(state: ChatState, temperature: float, top_p: float, max_new_tokens: int):
        """Stream every model's answer to the last turn into the chat (model errors become chat messages)."""
        try:
            params = generation_params(temperature, top_p, max_new_tokens)
        except ValueError as e:
            with state.lock:
                if state.turns and not state.is_answered(state.turns[-1]):
                    for s in slots:
                        state.turns[-1].fail(s.key, f"Generation settings: {e}")
            yield (state, *views(state))
            return
        answer_fns = {s.key: functools.partial(s.backend.stream, params=params) for s in slots}
        for _ in stream_answers(state, answer_fns, names={s.key: s.label for s in slots}):
            yield (state, *views(state))
        yield (state, *views(state))

    def stop(state: ChatState):
        state.stop()

    def regenerate(state: ChatState):
        try:
            state.regenerate()
        except ValueError as e:
            raise refused(str(e)) from None
        return state

    def undo(state: ChatState):
        try:
            turn = state.undo()
        except ValueError as e:
            raise refused(str(e)) from None
        return (gr.MultimodalTextbox(value={"text": turn.question, "files": []}), state, *views(state))

    def clear(state: ChatState):
        state.clear()
        return (gr.MultimodalTextbox(value=None), state, *views(state))

    def pick_dish(cuisine: str):
        dishes = gallery[cuisine]

        def pick(state: ChatState, evt: gr.SelectData):
            # The index picks from the server's own list: a client cannot name an arbitrary file.
            index = evt.index if isinstance(evt.index, int) else evt.index[0]
            if not 0 <= index < len(dishes):
                raise refused("no such dish in the gallery")
            dish = dishes[index]
            try:
                open_image(dish.image)
                state.attach(dish.image)
            except (ImageError, ValueError) as e:
                raise refused(str(e)) from None
            gr.Info(f"{dish.name} added to the chat: now ask a question about it.", duration=4)
            return (state, *views(state))
        return pick

    return dict(add_question=add_question, answer=answer, stop=stop, regenerate=regenerate, undo=undo,
                clear=clear, pick_dish=pick_dish)


# ---------------------------------------------------------------------------------------------
# Page
# ---------------------------------------------------------------------------------------------

def build_demo(slots: list[ModelSlot], gallery: Gallery, *,
               backend_name: str = "", max_upload_mb: int = MAX_UPLOAD_MB, temp_root: Path | None = None,
               concurrency: int = 4) -> gr.Blocks:
    h = make_handlers(slots, gallery, max_upload_mb * 2**20)
    template = ChatState(tuple(s.key for s in slots), temp_root=temp_root)
    with gr.Blocks(title="InternVL Foodie", analytics_enabled=False) as demo:
        gr.Markdown("# InternVL Foodie · 美食专家\nChat with the Chinese-food expert: pick a dish from the gallery or "
                    "upload photos, then ask in 中文 or English.", elem_id="title")
        state = gr.State(template, time_to_live=6 * 3600, delete_callback=ChatState.close)
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                with gr.Row():
                    chatbots = [gr.Chatbot(label=s.label, elem_id=f"chat-{s.key}", height=520,
                                           buttons=["copy"], feedback_options=None,
                                           placeholder="Pick a dish on the right or upload a photo, then ask.")
                                for s in slots]
                box = gr.MultimodalTextbox(file_types=["image"], file_count="multiple", elem_id="question",
                                           placeholder="Ask about the dish…  这是什么菜？", show_label=False,
                                           submit_btn="Send", sources=["upload"], autofocus=True)
                with gr.Row(elem_id="controls"):
                    stop_btn = gr.Button("Stop", variant="stop", size="sm", elem_id="stop")
                    regen_btn = gr.Button("Regenerate", size="sm", elem_id="regenerate")
                    undo_btn = gr.Button("Undo", size="sm", elem_id="undo")
                    clear_btn = gr.Button("Clear", size="sm", elem_id="clear")
                gr.Examples(examples=[[{"text": q, "files": []}] for q in EXAMPLES], inputs=[box],
                            label="Example questions · 示例问题", examples_per_page=len(EXAMPLES))
            with gr.Column(scale=2):
                gr.Markdown("### Dish gallery · 菜品\nClick a dish to put it into the chat.")
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
                with gr.Accordion("Generation settings", open=True):
                    temperature = gr.Slider(0.0, 1.5, value=0.0, step=0.05, label="Temperature (0 = greedy)",
                                            elem_id="temperature")
                    top_p = gr.Slider(0.05, 1.0, value=0.9, step=0.05, label="Top-p", elem_id="top-p")
                    max_new = gr.Slider(8, 2048, value=256, step=8, label="Max new tokens", elem_id="max-new-tokens")
                gr.Markdown("Models: " + " · ".join(f"`{s.label}`" for s in slots)
                            + (f" — backend `{backend_name}`" if backend_name else "")
                            + f"  \nUploads: images up to {max_upload_mb} MB, kept only for this session.")

        sampling = [state, temperature, top_p, max_new]
        chat_out = [state, *chatbots]
        answer_kw = dict(concurrency_limit=concurrency, concurrency_id="answer")
        # A refused message (bad upload, empty question) shows as a toast; the chat stays as it was.
        box.submit(h["add_question"], [box, state], [box, state], concurrency_limit=None, show_progress="hidden") \
            .success(h["answer"], sampling, chat_out, **answer_kw)
        regen_btn.click(h["regenerate"], [state], [state], concurrency_limit=None, show_progress="hidden") \
            .success(h["answer"], sampling, chat_out, **answer_kw)
        # Stop cancels this session's answer in flight: the chat keeps the partial answer at once, and the
        # worker closes the backend's stream so generation stops too.
        stop_btn.click(h["stop"], [state], None, concurrency_limit=None)
        undo_btn.click(h["undo"], [state], [box, *chat_out], concurrency_limit=None, show_progress="hidden")
        clear_btn.click(h["clear"], [state], [box, *chat_out], concurrency_limit=None)
        for c in chatbots:  # the chat's own trash icon clears the conversation too, not just the view
            c.clear(h["clear"], [state], [box, *chat_out], concurrency_limit=None)
        for cuisine, g in galleries:
            g.select(h["pick_dish"](cuisine), [state], chat_out, concurrency_limit=None, show_progress="hidden")
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
    ap.add_argument("--port", type=int, default=7860)
    ap.add_argument("--max-upload-mb", type=int, default=MAX_UPLOAD_MB)
    ap.add_argument("--concurrency", type=int, default=4, help="answers generated at the same time (all users)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="[demo] %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)

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
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill` ends the server through the cleanup below
    try:
        make_thumbnails(gallery, temp_root / "thumbnails")
        print(f"[demo] ready in {time.perf_counter() - t0:.1f}s: {sum(map(len, gallery.values()))} dishes in "
              f"{len(gallery)} cuisines", flush=True)
        demo = build_demo(slots, gallery, backend_name=slots[0].backend.name, max_upload_mb=args.max_upload_mb,
                          temp_root=temp_root, concurrency=args.concurrency)
        # The chat shows a picked dish's original photo: those files (resolved, inside the data root: load_foodieqa
        # refuses links out of it) are the only ones served beyond gradio's own; never their folders.
        gallery_files = served_files(gallery)
        demo.queue(default_concurrency_limit=args.concurrency)
        demo.launch(server_name=args.host, server_port=args.port, share=False, allowed_paths=gallery_files,
                    max_file_size=f"{args.max_upload_mb}mb", show_error=False, css=CSS, theme=THEME,
                    footer_links=[])
    finally:
        shutil.rmtree(temp_root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(cli.run(main))
