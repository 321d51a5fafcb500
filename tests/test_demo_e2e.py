"""The demo end to end.

Browser tests (``e2e``): the test starts ``python demo/app.py`` itself (embedded tiny model, synthetic
FoodieQA, a free port on 127.0.0.1) and drives it in a real headless Chromium (Debian's ``chromium``,
through Playwright; never a downloaded browser; ``make test`` installs it): gallery pick, streamed
answer, two tabs isolated, a waiting tab's place in the queue, uploads checked and private to their session (gone
after Clear and after the tab closes), the page's controls. Screenshots are kept in ``test-artifacts/``.

The API: ``gradio_client`` in a second process calls the one named endpoint ``ask``.

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
from urllib.parse import quote, urljoin, urlparse

import pytest

from foodie import paths

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
BOT = '[data-testid="bot"]'
UNREACHABLE = (403, 404)  # the app's guard answers 404; gradio answers 403 for a file that is gone
USER = '[data-testid="user"]'

pytestmark = pytest.mark.timeout(180)


def demo_files(name: str) -> list[Path]:
    """Files called ``name`` anywhere in a running demo's temp folders (session uploads, gradio's cache)."""
    return [p for root in Path(tempfile.gettempdir()).glob("foodie-demo-*") for p in root.rglob(name)]


def plain_get(url: str, cookie: str | None = None) -> int:
    """Status of a GET without the browser (no session; optionally with a cookie header)."""
    request = urllib.request.Request(quote(url, safe=":/=?&%"), headers={"Cookie": cookie} if cookie else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


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


class ServedUrl(str):
    """The page's URL; ``work``: the FOODIE_WORK folder the server runs with (its embedded model and data)."""
    work: Path


@pytest.fixture(scope="module")
def server(drawn_model_dir, tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium); "
                    f".ci/run does this for CI")
    ARTIFACTS.mkdir(exist_ok=True)
    port = free_port()
    log_path = ARTIFACTS / "demo_e2e_server.log"
    log = open(log_path, "w")
    # No --model / --data-root: the app must serve the embedded default out of the box. Its work folder holds the
    # tiny model as drawn (a folder of other settings is kept, not rebuilt): streaming and Stop need long answers,
    # and the embedded default's LLM ends every reply but a letter at once.
    work = tmp_path_factory.mktemp("demo-work")
    shutil.copytree(drawn_model_dir, work / "tiny-internvl2")
    proc = subprocess.Popen([sys.executable, str(REPO / "demo/app.py"), "--port", str(port)], cwd=REPO,
                            stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "FOODIE_WORK": str(work)})
    url = ServedUrl(f"http://127.0.0.1:{port}")
    url.work = work
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


def long_follow_up(backend, first_question: str, first_max_new_tokens: int) -> str:
    """A follow-up question the served model (the tiny model as drawn, greedy) answers at length.

    Random weights decide when a greedy answer ends: one question runs for hundreds of tokens, another
    ends after a few. The Stop test needs a long one, so it asks ``backend`` (the same model, as the page
    serves it; same conversation) instead of assuming the draw of the tiny model."""
    from foodie.inference import GenerationParams, Message

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


def set_number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type='number']")
    box.fill(str(value))
    box.press("Enter")


def open_page(browser, url, max_new_tokens=48):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(url)
    page.wait_for_selector("#gallery-0 img", timeout=30_000)
    # Shorter answers keep the test fast (a random-weight model often runs on to the token limit).
    set_number(page, "max-new-tokens", max_new_tokens)
    set_number(page, "repetition-penalty", 1)  # decode as long_follow_up() does (the page's default is 1.1)
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
            if not text.rstrip().endswith("▌") and text.strip() not in ("", "…") and not text.startswith("⏳"):
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
def test_uploads_are_validated_private_to_their_session_and_gone_after_clear(server, browser, tmp_path):
    from PIL import Image

    ctx, page = open_page(browser, server)
    try:
        photo = tmp_path / "my dinner.png"
        Image.new("RGB", (320, 200), (200, 120, 40)).save(photo)
        bomb = tmp_path / "bomb.png"
        png_bomb(bomb)

        # A real photo is accepted, shown in the chat, and served under a generated name. Before Send, its
        # preview in the box (gradio's upload cache) is served to this browser only.
        page.locator('#question input[type="file"]').set_input_files(str(photo))
        preview = urljoin(server, page.wait_for_selector("#question img", timeout=15_000).get_attribute("src"))
        assert page.request.get(preview).status == 200 and plain_get(preview) == 404
        ask(page, "what is this?")
        img = page.wait_for_selector(f"#chat-model {USER} img", timeout=15_000)
        src = urljoin(server, img.get_attribute("src"))
        assert "dinner" not in src, src
        wait_answer_done(page, 1)
        # The server keeps it in a per-session folder of its own temp folder, under a uuid name; gradio's
        # copy of the upload under the user's file name is gone once it was copied.
        copies = [p for p in Path(tempfile.gettempdir()).glob("foodie-demo-*/foodie-chat-*/*")
                  if p.read_bytes() == photo.read_bytes()]
        assert copies and all(re.fullmatch(r"[0-9a-f]{32}\.png", p.name) for p in copies), copies
        assert demo_files(photo.name) == []
        # Served to this tab's browser only: plain HTTP without the session gets nothing.
        assert page.request.get(src).status == 200
        assert plain_get(src) == 404

        # A decompression bomb is refused with a message naming the file; nothing enters the chat.
        page.locator('#question input[type="file"]').set_input_files(str(bomb))
        page.wait_for_selector("#question img, #question .thumbnail-item", timeout=15_000)
        ask(page, "and this?")
        page.wait_for_selector("text=/bomb\\.png: refused/", timeout=15_000)
        assert page.locator(f"#chat-model {USER}").count() == 2  # the photo and its question only
        assert "and this?" not in page.locator("#chat-model").inner_text()
        assert page.get_by_text("Error", exact=True).count() == 0, "a refusal put error badges on the page"
        assert demo_files(bomb.name) == [], "a refused upload is not kept"

        # Nothing outside the gallery and the app's own files is served.
        for secret in (REPO / "pyproject.toml", paths.tiny_model_dir() / "config.json", Path("/etc/passwd")):
            assert http_status(f"{server}/gradio_api/file={secret}") in (403, 404), secret
        gallery_image = sorted((server.work / paths.demo_data_dir().name / "images").rglob("*.*"))[0]
        assert http_status(f"{server}/gradio_api/file={gallery_image}") == 200
        page.screenshot(path=str(ARTIFACTS / "demo_e2e_upload.png"), full_page=True)

        # Clear deletes the upload: the session folder's file and every copy of it in gradio's cache.
        page.locator("#clear").click()
        page.wait_for_function(f"() => !document.querySelector('#chat-model {USER}')", timeout=10_000)
        assert page.request.get(src).status in UNREACHABLE
        assert [p for p in copies if p.exists()] == [] and demo_files(copies[0].name) == []
    except BaseException:
        page.screenshot(path=str(ARTIFACTS / "demo_e2e_failure_upload.png"), full_page=True)
        raise
    finally:
        ctx.close()


@pytest.mark.e2e
def test_an_upload_is_gone_when_its_tab_closes(server, browser, tmp_path):
    from PIL import Image

    ctx, page = open_page(browser, server, max_new_tokens=8)
    photo = tmp_path / "lunch.png"
    Image.new("RGB", (200, 160), (20, 120, 200)).save(photo)
    page.locator('#question input[type="file"]').set_input_files(str(photo))
    page.wait_for_selector("#question img", timeout=15_000)
    ask(page, "what is this?")
    src = urljoin(server, page.wait_for_selector(f"#chat-model {USER} img", timeout=15_000).get_attribute("src"))
    wait_answer_done(page, 1)
    name = src.rstrip("/").rsplit("/", 1)[-1]
    cookie = "; ".join(f"{c['name']}={c['value']}" for c in ctx.cookies())
    assert plain_get(src, cookie) == 200 and demo_files(name), "this browser may fetch its own upload"
    ctx.close()  # the tab goes away: gradio's unload event ends the session
    deadline = time.time() + 30
    while time.time() < deadline and (plain_get(src, cookie) not in UNREACHABLE or demo_files(name)):
        time.sleep(0.5)
    assert plain_get(src, cookie) in UNREACHABLE, "the upload is still served after its tab closed"
    assert demo_files(name) == [], "the upload (or gradio's copy) is still on disk after its tab closed"


@pytest.mark.e2e
def test_regenerate_stop_and_a_waiting_tab_in_the_browser(server, browser, demo_app):
    ctx, page = open_page(browser, server, max_new_tokens=24)
    ctx_b, other = open_page(browser, server, max_new_tokens=8)
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
        ask(page, long_follow_up(demo_app[1], "What is Peking duck?", 24))
        page.wait_for_function(f"() => {{ const b = document.querySelectorAll('#chat-model {BOT}'); "
                               f"return b.length === 2 && b[1].innerText.length > 20; }}", timeout=30_000)
        # Another tab asks meanwhile: the transformers backend answers one at a time; the waiting tab shows its
        # place in the page's queue.
        ask(other, "What is Peking duck?")
        other.wait_for_selector("#chat-model >> text=/queue: 1\\/1/", timeout=10_000)
        other.screenshot(path=str(ARTIFACTS / "demo_e2e_waiting_tab.png"), full_page=True)
        page.locator("#stop").dispatch_event("click")  # no wait for layout: the chat is busy re-rendering
        assert wait_answer_done(other, 1, timeout=30).strip(), "the waiting tab got no answer"
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
        other.screenshot(path=str(ARTIFACTS / "demo_e2e_failure_waiting.png"), full_page=True)
        raise
    finally:
        ctx.close()
        ctx_b.close()


@pytest.mark.e2e
def test_page_controls_examples_gallery_toggle_limits_export(server, browser, tmp_path):
    """The fixed defects stay fixed: banner, bilingual labels, empty Undo, dish toggle, examples keep
    attachments, the real image count in the refusal, no Share buttons, export private to the session."""
    from PIL import Image

    ctx, page = open_page(browser, server, max_new_tokens=8)
    try:
        assert "embedded tiny test model" in page.locator("#model-notice").inner_text()
        assert "清空" in page.locator("#clear").inner_text() and "Clear" in page.locator("#clear").inner_text()
        assert page.locator("#max-tiles input[type='number']").input_value() == "12"  # the checkpoint's own
        page.get_by_text("System prompt · 系统提示").click()
        assert page.locator("#system-prompt textarea").input_value().strip()  # the model's own, editable

        # Undo with nothing to undo: a toast, and no error badge on the chat.
        page.locator("#undo").click()
        page.wait_for_selector("text=Nothing to undo", timeout=30_000)  # the server may answer slowly on a busy CPU
        assert page.get_by_text("Error", exact=True).count() == 0

        # A dish clicked twice is taken off again (never attached twice); two dishes make two images.
        dishes = page.locator("#gallery-0 button.thumbnail-item")
        dishes.nth(0).click()
        page.wait_for_function(f"() => document.querySelectorAll('#chat-model {USER} img').length === 1")
        dishes.nth(0).click()
        page.wait_for_function(f"() => document.querySelectorAll('#chat-model {USER} img').length === 0")
        dishes.nth(0).click()
        page.wait_for_function(f"() => document.querySelectorAll('#chat-model {USER} img').length === 1")
        dishes.nth(1).click()
        page.wait_for_function(f"() => document.querySelectorAll('#chat-model {USER} img').length === 2")

        # An example question keeps the photo already attached in the box.
        photo = tmp_path / "snack.png"
        Image.new("RGB", (300, 220), (220, 180, 40)).save(photo)
        page.locator('#question input[type="file"]').set_input_files(str(photo))
        page.wait_for_selector("#question img", timeout=15_000)
        page.locator("#examples button").first.click()
        page.wait_for_function("() => document.querySelector('#question textarea').value.startsWith('图片中的食物')")
        assert "选项有" in page.locator("#question textarea").input_value()  # FoodieQA's multiple-choice format
        assert page.locator("#question img").count() == 1, "the example removed the attached photo"
        page.locator("#question textarea").press("Enter")
        wait_answer_done(page, 1)
        assert page.locator(f"#chat-model {USER} img").count() == 3
        shares = page.locator("button[aria-label='Share'], button[title='Share']")
        assert all(not shares.nth(i).is_visible() for i in range(shares.count())), "a dead Share button is shown"

        # Six more images in one message: the refusal counts the three the chat has.
        more = []
        for i in range(6):
            more.append(tmp_path / f"more{i}.png")
            Image.new("RGB", (64, 64), (i * 40, 90, 90)).save(more[-1])
        page.locator('#question input[type="file"]').set_input_files([str(p) for p in more])
        page.wait_for_function("() => document.querySelectorAll('#question img').length === 6", timeout=20_000)
        ask(page, "and these?")
        page.wait_for_selector("text=/has 3 images; one chat holds at most 8, so 6 images more/", timeout=15_000)
        assert page.locator(f"#chat-model {BOT}").count() == 1
        assert page.get_by_text("Error", exact=True).count() == 0, "a refusal put error badges on the page"

        # Export: Markdown and JSON of the chat, for this browser only.
        page.locator("#export").click()
        page.wait_for_selector("#export-files a", timeout=15_000)
        links = [urljoin(server, a.get_attribute("href")) for a in page.locator("#export-files a").all()]
        assert {Path(urlparse(u).path).suffix for u in links} == {".md", ".json"}, links
        for link in links:
            response = page.request.get(link)
            assert response.status == 200 and "图片中的食物" in response.text()
            assert plain_get(link) == 404
        page.screenshot(path=str(ARTIFACTS / "demo_e2e_controls.png"), full_page=True)
    except BaseException:
        page.screenshot(path=str(ARTIFACTS / "demo_e2e_failure_page_controls.png"), full_page=True)
        raise
    finally:
        ctx.close()


@pytest.mark.e2e
def test_gradio_client_asks_from_a_second_process(server, tmp_path):
    """The one documented endpoint: a question and a dish photo in, the answer out; nothing else listed."""
    photo = tmp_path / "client-dish-photo.jpg"
    shutil.copyfile(sorted((paths.demo_data_dir() / "images").rglob("*.jpg"))[0], photo)
    script = f"""
import json
from gradio_client import Client, handle_file
client = Client({server!r}, verbose=False)
api = client.view_api(return_format="dict", print_info=False)
result = client.predict(question="这道菜叫什么名字？", images=[handle_file({str(photo)!r})], max_new_tokens=8,
                        api_name="/ask")
print(json.dumps(dict(named=sorted(api["named_endpoints"]), unnamed=len(api["unnamed_endpoints"]),
                      inputs=[p["parameter_name"] for p in api["named_endpoints"]["/ask"]["parameters"]],
                      result=result)))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["named"] == ["/ask"] and out["unnamed"] == 0, out
    assert out["inputs"] == ["question", "images", "max_new_tokens"]
    result = out["result"]
    assert set(result) == {"answer", "answers"} and set(result["answers"]) == {"model"}
    assert isinstance(result["answer"], str) and result["answer"].strip() and "⚠️" not in result["answer"]
    assert demo_files(photo.name) == [], "the API's upload is kept after the answer"


def test_a_busy_port_gets_one_line_naming_port(app_module, monkeypatch):
    """The command stops with one line (SystemExit's message: no traceback) before any model is loaded."""
    monkeypatch.setattr(app_module, "ensure_embedded_default", lambda *_: pytest.fail("a model was loaded first"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # GRADIO_SERVER_PORT is the default of --port: one run checks both.
        monkeypatch.setenv("GRADIO_SERVER_PORT", str(port))
        with pytest.raises(SystemExit) as stopped:
            app_module.main([])
    line = stopped.value.code
    assert isinstance(line, str) and "\n" not in line and f"port {port}" in line and "--port" in line, line


def test_make_test_stops_with_the_one_command_when_it_cannot_install(tmp_path):
    """Not root and no chromium: the set-up step of `make test` stops before the suite, naming the command."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "id").write_text("#!/bin/sh\necho 1000\n")
    (fake_bin / "id").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}", "FOODIE_CHROMIUM": "no-such-chromium"}
    done = subprocess.run(["sh", str(REPO / "tools/test_system_deps.sh")], env=env, capture_output=True, text=True)
    assert done.returncode == 1
    assert "sudo apt-get install -y chromium" in done.stderr
    makefile = (REPO / "Makefile").read_text()
    recipe = makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert recipe.index("tools/test_system_deps.sh") < recipe.index("pytest"), "the check runs before the suite"


# ---------------------------------------------------------------------------------------------
# Handlers with the real tiny model (no browser)
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def app_module():
    import importlib.util
    spec = importlib.util.spec_from_file_location("foodie_demo_app", REPO / "demo/app.py")
    app = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = app
    spec.loader.exec_module(app)
    return app


@pytest.fixture(scope="module")
def demo_app(app_module, drawn_model_dir):
    """(the app module, the tiny model as drawn on the transformers backend -- as `server` serves it --, the
    synthetic data folder, its spec)."""
    app = app_module
    model_dir, data_dir = app.ensure_embedded_default(str(drawn_model_dir), None)
    from foodie.inference import load_backend
    from foodie.model_spec import ModelSpec
    return app, load_backend(model_dir, backend="transformers"), data_dir, ModelSpec.from_checkpoint(model_dir)


def run_turn(handlers, state, text, max_new_tokens=64):
    handlers["add_question"]({"text": text, "files": []}, state)
    updates = list(handlers["answer"](state, 0.0, 1.0, max_new_tokens))
    return updates


def test_compare_mode_streams_both_models_side_by_side(demo_app):
    app, backend, data_dir, spec = demo_app
    slots = [app.ModelSlot("base", "base", backend, spec), app.ModelSlot("tuned", "tuned", backend, spec)]
    handlers = app.make_handlers(slots, {})
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

    app, backend, data_dir, spec = demo_app
    handlers = app.make_handlers([app.ModelSlot("model", "tiny", backend, spec)], {})
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


def test_ask_in_compare_mode_returns_both_answers_under_stable_names(demo_app):
    app, backend, data_dir, spec = demo_app
    slots = [app.ModelSlot("base", "base · InternVL2-2B", backend, spec),
             app.ModelSlot("tuned", "tuned · any-folder", backend, spec)]
    handlers = app.make_handlers(slots, {})
    photo = sorted((data_dir / "images").rglob("*.jpg"))[0]
    result = list(handlers["ask"]("这道菜叫什么名字？", [str(photo)], 8))[-1]
    assert set(result) == {"answer", "answers"} and set(result["answers"]) == {"base", "tuned"}
    assert result["answer"] == result["answers"]["tuned"] and result["answers"]["base"].strip()
    assert photo.exists(), "a file outside gradio's upload folder is never deleted"
    with pytest.raises(app.gr.Error, match="has 0 images; one chat holds at most 8, so 9 images"):
        list(handlers["ask"]("too many", [str(photo)] * 9, 8))


def test_the_tile_budget_the_page_uses_is_the_checkpoints_own_unless_changed(demo_app, tmp_path):
    """A tuned model's merged config carries the budget it trained with (foodie.merge): the page starts
    with it, no flag; the page's control changes the tiles a photo is cut into."""
    import gradio as gr
    from PIL import Image

    from foodie.inference import Message, load_backend
    from foodie.model_spec import ModelSpec
    app, backend, data_dir, spec = demo_app
    tuned = tmp_path / "tuned"
    shutil.copytree(backend.model_dir, tuned)
    config = json.loads((tuned / "config.json").read_text())
    config["max_dynamic_patch"] = 1  # as foodie.merge writes it for the CPU config
    (tuned / "config.json").write_text(json.dumps(config))
    tuned_backend = load_backend(tuned, backend="transformers")
    demo = app.build_demo([app.ModelSlot("model", "tuned", tuned_backend, ModelSpec.from_checkpoint(tuned))], {})
    slider = next(b for b in demo.blocks.values() if isinstance(b, gr.Slider) and b.elem_id == "max-tiles")
    assert slider.value == 1

    wide = tmp_path / "wide.png"
    Image.new("RGB", (1800, 600), (120, 60, 30)).save(wide)
    request = [Message("user", "这是什么菜？", images=[wide])]
    def tiles(page_value):
        params = app.generation_params(0.0, 1.0, 8, 1.1, page_value)
        return tuned_backend._prepare([request], params)[2].shape[0]
    assert tiles(0) == 1  # 0: the checkpoint's own budget (1 tile, no thumbnail)
    assert tiles(6) == 4  # a 3:1 photo within 6 tiles: 3x1 tiles + the thumbnail
