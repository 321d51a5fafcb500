"""The demo end to end.

Browser tests (``e2e``): the test starts ``python demo/app.py`` itself (embedded tiny model, synthetic
FoodieQA, a free port on 127.0.0.1) and drives it in a real headless Chromium (Debian's ``chromium``,
through Playwright; never a downloaded browser): gallery pick, streamed answer, two tabs isolated,
uploads checked. Screenshots are kept in ``test-artifacts/``.

Handler tests: the page's own event handlers with the real tiny model, for what a browser cannot
easily provoke (compare mode's two streams, a model failing mid-conversation).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import pytest

from foodie import paths

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
BOT = '[data-testid="bot"]'
USER = '[data-testid="user"]'

pytestmark = pytest.mark.timeout(180)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.fixture(scope="module")
def server():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium); "
                    f".ci/run does this for CI")
    ARTIFACTS.mkdir(exist_ok=True)
    port = free_port()
    log_path = ARTIFACTS / "demo_e2e_server.log"
    log = open(log_path, "w")
    # No --model / --data-root: the app must serve the embedded default out of the box.
    proc = subprocess.Popen([sys.executable, str(REPO / "demo/app.py"), "--port", str(port)], cwd=REPO,
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 150  # first run builds the tiny model and the synthetic data
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"demo/app.py exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if http_status(url) == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"demo/app.py did not answer on {url}:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def long_follow_up(first_question: str, first_max_new_tokens: int) -> str:
    """A follow-up question the served model (the embedded default, greedy) answers at length.

    Random weights decide when a greedy answer ends: one question runs for hundreds of tokens, another
    ends after a few. The Stop test needs a long one, so it asks the same backend the page uses (same
    conversation) instead of assuming the draw of the tiny model."""
    from foodie.inference import GenerationParams, Message, load_backend
    from foodie.paths import tiny_model_dir

    backend = load_backend(tiny_model_dir(), backend="transformers")
    first = [Message("user", first_question)]
    first_answer = backend.generate([first], GenerationParams(max_new_tokens=first_max_new_tokens))[0]
    history = first + [Message("assistant", first_answer)]
    candidates = ["Tell me everything about it.", "Tell me more.", "Go on.", "And then?", "What else?",
                  "Describe it in detail, please."]
    for question in candidates:
        reply = backend.generate([history + [Message("user", question)]], GenerationParams(max_new_tokens=64))[0]
        if len(reply) > 100:
            return question
    pytest.fail(f"the embedded model ends every follow-up in {candidates} within 64 tokens: add a question")


def open_page(browser, url, max_new_tokens=48):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(url)
    page.wait_for_selector("#gallery-0 img", timeout=30_000)
    # Shorter answers keep the test fast (a random-weight model often runs on to the token limit).
    tokens = page.locator("#max-new-tokens input[type='number']")
    tokens.fill(str(max_new_tokens))
    tokens.press("Enter")
    return context, page


def record_answer_growth(page):
    """Record the length of the newest bot message at every DOM change (to see it stream)."""
    page.evaluate("""() => {
        window.__lengths = [];
        const chat = document.querySelector('#chat-model');
        new MutationObserver(() => {
            const bots = chat.querySelectorAll('[data-testid="bot"]');
            if (bots.length) window.__lengths.push(bots[bots.length - 1].innerText.length);
        }).observe(chat, {subtree: true, childList: true, characterData: true});
    }""")


def ask(page, text):
    box = page.locator("#question textarea")
    box.fill(text)
    box.press("Enter")


def wait_answer_done(page, n_answers, timeout=60):
    """Wait until the chat holds ``n_answers`` bot messages and the last one has stopped streaming."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        bots = page.locator(f"#chat-model {BOT}")
        if bots.count() >= n_answers:
            text = bots.nth(n_answers - 1).inner_text()
            if not text.rstrip().endswith("▌") and text.strip() not in ("", "…"):
                return text
        time.sleep(0.1)
    raise AssertionError(f"no finished answer after {timeout}s; chat: {page.locator('#chat-model').inner_text()!r}")


def png_bomb(path: Path, side: int = 9_500):
    """A tiny PNG file that claims side x side pixels: 9500**2 is just over the 89.5 M pixel limit."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = zlib.compress(b"\x00" * 1024)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", raw) + chunk(b"IEND", b""))


@pytest.mark.e2e
def test_gallery_pick_streamed_answer_and_two_isolated_tabs(server, browser, tmp_path):
    ctx_a, a = open_page(browser, server, max_new_tokens=160)  # long enough to see it stream
    ctx_b, b = open_page(browser, server)
    try:
        # Tab A: one click on a dish puts its photo into the chat.
        a.locator("#gallery-0 button.thumbnail-item").first.click()
        a.wait_for_selector(f"#chat-model {USER} img", timeout=15_000)
        dish_src = a.locator(f"#chat-model {USER} img").first.get_attribute("src")
        record_answer_growth(a)
        t0 = time.time()
        ask(a, "这道菜叫什么名字？是哪个菜系的？")
        # Tab B chats at the same time, text only.
        ask(b, "What is Peking duck?")
        a.wait_for_function("() => window.__lengths.some(n => n > 1)", timeout=30_000)
        first_text_s = time.time() - t0
        answer_a = wait_answer_done(a, 1)
        answer_b = wait_answer_done(b, 1)
        lengths = a.evaluate("window.__lengths")

        # Streamed: the answer grew over several updates before it was complete (and obeyed the
        # page's max-new-tokens setting: a random-weight model rarely stops earlier).
        growth = sorted({n for n in lengths if 1 < n < len(answer_a)})
        assert len(growth) >= 3, f"answer arrived in {len(growth)} partial updates, not streamed: {lengths}"
        assert answer_a.strip() and answer_b.strip()

        # Isolation: neither tab sees the other's image or history.
        chat_a, chat_b = a.locator("#chat-model").inner_text(), b.locator("#chat-model").inner_text()
        assert "Peking duck" not in chat_a
        assert "这道菜叫什么名字" not in chat_b
        assert b.locator(f"#chat-model {USER} img").count() == 0, "tab B shows tab A's dish photo"
        assert a.locator(f"#chat-model {USER}").count() == 2  # A's photo and A's question, nothing else

        # A second turn in A keeps A's history (multi-turn) and still nothing leaks into B.
        ask(a, "What are the main ingredients?")
        wait_answer_done(a, 2)
        assert a.locator(f"#chat-model {USER} img").first.get_attribute("src") == dish_src
        assert b.locator(f"#chat-model {USER}").count() == 1

        ARTIFACTS.mkdir(exist_ok=True)
        a.screenshot(path=str(ARTIFACTS / "demo_e2e_tab_a.png"), full_page=True)

        # Clear in A empties A only.
        a.locator("#clear").click()
        a.wait_for_function(f"() => !document.querySelector('#chat-model {BOT}')", timeout=10_000)
        assert b.locator(f"#chat-model {BOT}").count() == 1

        b.screenshot(path=str(ARTIFACTS / "demo_e2e_tab_b.png"), full_page=True)
        (ARTIFACTS / "demo_e2e_timing.json").write_text(json.dumps(
            {"browser_first_answer_text_s": round(first_text_s, 3), "updates_seen": len(lengths)}) + "\n")
    except BaseException:
        a.screenshot(path=str(ARTIFACTS / "demo_e2e_failure_tab_a.png"), full_page=True)
        b.screenshot(path=str(ARTIFACTS / "demo_e2e_failure_tab_b.png"), full_page=True)
        raise
    finally:
        ctx_a.close()
        ctx_b.close()


@pytest.mark.e2e
def test_uploads_are_validated_and_only_gallery_files_are_served(server, browser, tmp_path):
    from PIL import Image

    ctx, page = open_page(browser, server)
    try:
        photo = tmp_path / "my dinner.png"
        Image.new("RGB", (320, 200), (200, 120, 40)).save(photo)
        bomb = tmp_path / "bomb.png"
        png_bomb(bomb)

        # A real photo is accepted, shown in the chat, and served under a generated name.
        page.locator('#question input[type="file"]').set_input_files(str(photo))
        page.wait_for_selector("#question img", timeout=15_000)
        ask(page, "what is this?")
        img = page.wait_for_selector(f"#chat-model {USER} img", timeout=15_000)
        src = img.get_attribute("src")
        assert "dinner" not in src, src
        wait_answer_done(page, 1)
        # The server keeps it in a per-session folder of its own temp folder, under a uuid name.
        copies = [p for p in Path(tempfile.gettempdir()).glob("foodie-demo-*/foodie-chat-*/*")
                  if p.read_bytes() == photo.read_bytes()]
        assert copies and all(re.fullmatch(r"[0-9a-f]{32}\.png", p.name) for p in copies), copies

        # A decompression bomb is refused with a message naming the file; nothing enters the chat.
        page.locator('#question input[type="file"]').set_input_files(str(bomb))
        page.wait_for_selector("#question img, #question .thumbnail-item", timeout=15_000)
        ask(page, "and this?")
        page.wait_for_selector("text=/bomb\\.png: refused/", timeout=15_000)
        assert page.locator(f"#chat-model {USER}").count() == 2  # the photo and its question only
        assert "and this?" not in page.locator("#chat-model").inner_text()

        # Nothing outside the gallery and the app's own files is served.
        for secret in (REPO / "pyproject.toml", paths.tiny_model_dir() / "config.json", Path("/etc/passwd")):
            assert http_status(f"{server}/gradio_api/file={secret}") in (403, 404), secret
        gallery_image = sorted((paths.demo_data_dir() / "images").rglob("*.*"))[0]
        assert http_status(f"{server}/gradio_api/file={gallery_image}") == 200
        page.screenshot(path=str(ARTIFACTS / "demo_e2e_upload.png"), full_page=True)
    except BaseException:
        page.screenshot(path=str(ARTIFACTS / "demo_e2e_failure_upload.png"), full_page=True)
        raise
    finally:
        ctx.close()


@pytest.mark.e2e
def test_regenerate_and_stop_in_the_browser(server, browser):
    ctx, page = open_page(browser, server, max_new_tokens=24)
    try:
        ask(page, "What is Peking duck?")
        first = wait_answer_done(page, 1)
        # Regenerate answers the same question again (greedy: the same text), in place.
        # A MutationObserver records every text the chat shows: a short greedy answer can be redrawn
        # faster than any polling, so the placeholder is caught as a DOM change, not by a poll.
        page.evaluate("""(sel) => { window.__seen = []; const chat = document.querySelector('#chat-model');
            new MutationObserver(() => { const b = chat.querySelector(sel);
                window.__seen.push(b ? b.innerText.trim() : ''); })
              .observe(chat, {subtree: true, childList: true, characterData: true}); }""", BOT)
        page.locator("#regenerate").click()
        page.wait_for_function("() => window.__seen.some(t => t === '…')", timeout=10_000)
        assert wait_answer_done(page, 1) == first
        assert page.locator(f"#chat-model {USER}").count() == 1

        # Stop: a long answer stops growing at once, keeps its text, and the chat takes the next question.
        tokens = page.locator("#max-new-tokens input[type='number']")
        tokens.fill("2048")
        tokens.press("Enter")
        ask(page, long_follow_up("What is Peking duck?", 24))
        page.wait_for_function(f"() => {{ const b = document.querySelectorAll('#chat-model {BOT}'); "
                               f"return b.length === 2 && b[1].innerText.length > 20; }}", timeout=30_000)
        page.locator("#stop").dispatch_event("click")  # no wait for layout: the chat is busy re-rendering
        stopped = wait_answer_done(page, 2, timeout=10)
        assert stopped.rstrip().endswith("(stopped)"), stopped[-80:]
        time.sleep(1.0)
        assert page.locator(f"#chat-model {BOT}").nth(1).inner_text() == stopped, "the answer kept growing"
        tokens.fill("16")
        tokens.press("Enter")
        ask(page, "Thanks!")
        wait_answer_done(page, 3)
    except BaseException:
        page.screenshot(path=str(ARTIFACTS / "demo_e2e_failure_controls.png"), full_page=True)
        raise
    finally:
        ctx.close()


# ---------------------------------------------------------------------------------------------
# Handlers with the real tiny model (no browser)
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_app():
    import importlib.util
    spec = importlib.util.spec_from_file_location("foodie_demo_app", REPO / "demo/app.py")
    app = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = app
    spec.loader.exec_module(app)
    model_dir, data_dir = app.ensure_embedded_default(None, None)
    from foodie.inference import load_backend
    return app, load_backend(model_dir, backend="transformers"), data_dir


def run_turn(handlers, state, text, max_new_tokens=64):
    handlers["add_question"]({"text": text, "files": []}, state)
    updates = list(handlers["answer"](state, 0.0, 1.0, max_new_tokens))
    return updates


def test_compare_mode_streams_both_models_side_by_side(demo_app):
    app, backend, data_dir = demo_app
    slots = [app.ModelSlot("base", "base", backend), app.ModelSlot("tuned", "tuned", backend)]
    handlers = app.make_handlers(slots, {}, 2**20)
    state = app.ChatState(("base", "tuned"))
    updates = run_turn(handlers, state, "What is Peking duck?")
    final_base, final_tuned = updates[-1][1], updates[-1][2]
    assert final_base[0] == final_tuned[0] == {"role": "user", "content": "What is Peking duck?"}
    base, tuned = final_base[-1]["content"], final_tuned[-1]["content"]
    assert base and tuned and "▌" not in base + tuned
    # Same weights and greedy decoding: the two columns must agree, each built from its own stream.
    assert base == tuned
    partial = [u for u in updates if u[1][-1]["content"].endswith("▌") or u[2][-1]["content"].endswith("▌")]
    assert partial, "the answers were not streamed"
    state.close()


def test_a_model_error_is_shown_in_the_chat_and_the_next_turn_works(demo_app, tmp_path):
    from PIL import Image

    app, backend, data_dir = demo_app
    handlers = app.make_handlers([app.ModelSlot("model", "tiny", backend)], {}, 2**20)
    state = app.ChatState(("model",), temp_root=tmp_path)
    photo = state.new_upload_path(".png")
    Image.new("RGB", (64, 64), (10, 200, 10)).save(photo)
    state.attach(photo)
    state.ask("what is this?")
    photo.unlink()  # the file vanished (e.g. a temp cleaner) before the model read it
    updates = list(handlers["answer"](state, 0.0, 1.0, 8))
    last = updates[-1][1][-1]
    assert last["role"] == "assistant" and last["content"].startswith("⚠️ Model error (tiny)")
    assert str(photo.name) in last["content"]
    assert str(state.session_dir) not in last["content"], "server paths are not shown to the user"
    # The conversation goes on after Undo of the broken turn.
    state.undo()
    state.pending_images.clear()
    run_turn(handlers, state, "and now?", max_new_tokens=8)
    assert state.is_answered(state.turns[-1]) and not state.turns[-1].errors
