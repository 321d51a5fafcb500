"""Time to first token of the demo: how long after "Send" the first answer text exists.

    python bench/demo_ttft.py                       # embedded tiny model on this machine's CPU
    python bench/demo_ttft.py --model DIR --data-root DIR --backend lmdeploy --runs 20 --sessions 4

Cases: a text-only question, and a question about one dish photo from the data root: the first
question's photo and the first photo with the most tiles (the slowest to encode). Levels:

* ``backend``: ``foodie.inference`` ``stream()`` -> first non-empty text delta;
* ``demo``: what the page's answer handler runs -- a per-session ``ChatState``, ``ask``, then
  ``stream_answers`` (worker thread, queue, cancel token) -> first update holding answer text. A
  browser sees this plus one websocket hop.
* ``demo, N sessions``: N sessions ask at the same moment from N threads (as Gradio's workers do);
  every session's TTFT counts.
* ``--browser``: instead, the real page: starts ``demo/app.py`` (same --model/--data-root/--backend) and
  drives it in headless Chromium (Debian's ``chromium``, through Playwright). The clock runs in the page:
  from the Enter key to the first answer text drawn (not "…", not "waiting"), with one tab, then with
  ``--sessions`` tabs asking at once (every tab counts). The dish photo is the gallery's first dish.

    python bench/demo_ttft.py --browser                              # CPU, embedded tiny model
    python bench/demo_ttft.py --browser --model DIR --backend lmdeploy --sessions 2   # GPU

  ``--browser`` needs what the page needs (gradio, the project's cpu/gpu profile) and Debian's
  ``chromium``; a GPU host without them (the offline one's wheel set has neither) runs the in-process
  levels: ``--backend lmdeploy --sessions 2``.

Prints a table and writes ``work/bench/demo_ttft.json``. ``--limit 1.0`` exits non-zero when a median
is over the limit (the demo's target on CPU with the tiny model is < 1 s). Runs never overlap: each
waits until the previous one's generation threads have ended.
"""
from __future__ import annotations

import argparse
import functools
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

from foodie import paths  # noqa: E402
from foodie.atomic import write_json  # noqa: E402
from foodie.chat_state import ChatState, stream_answers  # noqa: E402


def default_inputs(model: str | None, data_root: str | None) -> tuple[Path, Path]:
    """--model/--data-root, or the embedded tiny model and synthetic data (built when missing)."""
    model_dir = Path(model) if model else paths.tiny_model_dir()
    data_dir = Path(data_root) if data_root else paths.demo_data_dir()
    if model is None and not (model_dir / "config.json").is_file():
        subprocess.run([sys.executable, str(REPO / "tools/make_tiny_model.py"), "--out", str(model_dir)], check=True)
    if data_root is None and not data_dir.is_dir():
        subprocess.run([sys.executable, str(REPO / "tools/make_demo_data.py"), "--out", str(data_dir)], check=True)
    return model_dir, data_dir


def wait_idle() -> None:
    """Let the generation threads of the last run end, so runs never overlap (and exit is clean)."""
    for t in threading.enumerate():
        if t is not threading.current_thread() and t.name.startswith(("foodie-generate", "answer-")):
            t.join()


def backend_ttft(backend, question, image, params) -> float:
    from foodie.inference import Message
    t0 = time.perf_counter()
    stream = backend.stream([Message("user", question, images=[image] if image else [])], params)
    try:
        for delta in stream:
            if delta:
                return time.perf_counter() - t0
    finally:
        stream.close()
    raise RuntimeError("the model produced no text at all; try more --max-new-tokens")


def demo_ttft(backend, question, image, params) -> float:
    state = ChatState(("model",))
    if image is not None:
        state.attach(image)
    t0 = time.perf_counter()
    state.ask(question)
    updates = stream_answers(state, {"model": functools.partial(backend.stream, params=params)})
    try:
        for _ in updates:
            if state.turns[-1].answers.get("model"):
                return time.perf_counter() - t0
    finally:
        updates.close()
        state.stop()
        state.close()
    raise RuntimeError("the model produced no text at all; try more --max-new-tokens")


def concurrent_demo_ttft(backend, question, image, params, sessions: int) -> list[float]:
    results: list[float] = []
    start = threading.Barrier(sessions)

    def one():
        start.wait()
        results.append(demo_ttft(backend, question, image, params))

    threads = [threading.Thread(target=one, name=f"session-{i}") for i in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if len(results) != sessions:
        raise RuntimeError("a session failed; see the traceback above")
    return results


BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"]
# Runs in the page before the question is sent: the real Enter key starts the clock (captured before the
# page's own handler), a MutationObserver stops it at the first answer text drawn; the result lands in
# window.__ttft_ms.
ARM_CLOCK = """() => {
    window.__ttft_ms = null;
    const chat = document.querySelector('#chat-model, #chat-tuned');
    const before = chat.querySelectorAll('[data-testid="bot"]').length;
    let t0 = null;
    const box = document.querySelector('#question textarea');
    box.addEventListener('keydown', (e) => { if (e.key === 'Enter' && t0 === null) t0 = performance.now(); },
                         {capture: true, once: true});
    const observer = new MutationObserver(() => {
        const bots = chat.querySelectorAll('[data-testid="bot"]');
        if (t0 === null || bots.length <= before) return;
        const t = bots[bots.length - 1].innerText.trim();
        if (t !== '' && t !== '…' && !t.startsWith('⏳')) { observer.disconnect(); window.__ttft_ms = performance.now() - t0; }
    });
    observer.observe(chat, {subtree: true, childList: true, characterData: true});
}"""
ANSWER_DONE = """() => { const bots = document.querySelectorAll('#chat-model [data-testid="bot"], #chat-tuned [data-testid="bot"]');
    const t = bots.length ? bots[bots.length - 1].innerText.trim() : '';
    return t !== '' && t !== '…' && !t.startsWith('⏳') && !t.endsWith('▌'); }"""


def start_demo(args, model_dir: Path, data_dir: Path):
    """demo/app.py on a free port; returns (process, url) once it answers."""
    import socket
    import urllib.request
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (paths.work_dir() / "bench").mkdir(parents=True, exist_ok=True)
    log = open(paths.work_dir() / "bench" / "demo_ttft_server.log", "w")
    cmd = [sys.executable, str(REPO / "demo/app.py"), "--port", str(port), "--backend", args.backend,
           "--data-root", str(data_dir)] + (["--model", str(model_dir)] if args.model else [])
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 900
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"demo/app.py exited with {proc.returncode}; see {log.name}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return proc, url
        except OSError:
            time.sleep(1)
    proc.kill()
    raise SystemExit(f"demo/app.py did not answer on {url} within 15 min; see {log.name}")


def browser_rows(args, model_dir: Path, data_dir: Path) -> list[dict]:
    """TTFT in Chromium: one tab, then ``args.sessions`` tabs asking at the same moment."""
    import shutil

    from playwright.sync_api import sync_playwright
    from tqdm import tqdm

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    proc, url = start_demo(args, model_dir, data_dir)
    question = "这道菜叫什么名字？"
    rows = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=BROWSER_ARGS)

            def new_tab():
                page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
                page.goto(url)
                page.wait_for_selector("#gallery-0 img", timeout=120_000)
                tokens = page.locator("#max-new-tokens input[type='number']")
                tokens.fill(str(args.max_new_tokens))
                tokens.press("Enter")
                return page

            tabs = [new_tab() for _ in range(max(1, args.sessions))]
            cases = [("text only", False), ("gallery dish photo", True)]
            levels = [("browser, 1 tab", tabs[:1])] + ([(f"browser, {len(tabs)} tabs", tabs)] if len(tabs) > 1 else [])
            with tqdm(total=len(cases) * len(levels) * (args.runs + 1), desc="browser TTFT", unit="run") as bar:
                for case, with_photo in cases:
                    for level, pages in levels:
                        times = []
                        for i in range(args.runs + 1):
                            for page in pages:
                                page.locator("#clear").click()
                                page.wait_for_function("() => !document.querySelector('[data-testid=\"bot\"]')")
                                if with_photo:
                                    page.locator("#gallery-0 button.thumbnail-item").first.click()
                                    page.wait_for_selector("[data-testid='user'] img")
                                page.locator("#question textarea").fill(question)
                                page.evaluate(ARM_CLOCK)
                            time.sleep(1.0)  # the previous answer's last updates are drawn (nobody types that fast)
                            for page in pages:  # as close together as the browser takes key presses
                                page.locator("#question textarea").press("Enter")
                            got = []
                            for page in pages:
                                got.append(page.wait_for_function("() => window.__ttft_ms", timeout=600_000)
                                           .json_value() / 1000)
                                page.wait_for_function(ANSWER_DONE, timeout=600_000)
                            if i:  # the first run is a warm-up
                                times += got
                            bar.update()
                        times.sort()
                        rows.append(dict(case=case, level=level, samples=len(times),
                                         median_s=statistics.median(times),
                                         p90_s=times[max(0, round(0.9 * len(times)) - 1)],
                                         min_s=times[0], max_s=times[-1]))
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="checkpoint folder (default: the embedded tiny model, built if missing)")
    ap.add_argument("--data-root", help="FoodieQA folder for the dish photo (default: the synthetic set)")
    ap.add_argument("--backend", default="auto", choices=["auto", "transformers", "lmdeploy"])
    ap.add_argument("--runs", type=int, default=10, help="timed runs per case, after one warm-up (default 10)")
    ap.add_argument("--sessions", type=int, default=2, help="sessions asking at once in the concurrent case "
                                                            "(default 2; 1 skips it)")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--browser", action="store_true",
                    help="time the real page in headless Chromium instead of the in-process levels")
    ap.add_argument("--limit", type=float, default=None,
                    help="fail when a single-session median TTFT exceeds this many seconds")
    args = ap.parse_args(argv)

    from rich.console import Console
    from rich.table import Table
    from tqdm import tqdm

    from foodie.foodieqa import load_foodieqa
    from foodie.image_tiling import num_tiles
    from foodie.inference import GenerationParams, load_backend

    model_dir, data_dir = default_inputs(args.model, args.data_root)
    if args.browser:
        from foodie.inference import resolve_backend
        rows, load_s, backend_name = browser_rows(args, model_dir, data_dir), None, resolve_backend(args.backend)
        inputs = "the gallery's first dish"
    else:
        t0 = time.perf_counter()
        backend = load_backend(model_dir, backend=args.backend)
        load_s = time.perf_counter() - t0
        data = load_foodieqa(data_dir, tasks=["sivqa"], skip_bad=True)
        params = GenerationParams(max_new_tokens=args.max_new_tokens)
        # The first question's photo, and the first photo that uses the most tiles (the slowest to encode).
        max_tiles = getattr(backend, "max_tiles", None) or 12
        tiles = {rel: num_tiles(*data.image_sizes[rel], max_num=max_tiles) if rel in data.image_sizes else 0
                 for rel in dict.fromkeys(item.image for item in data.sivqa)}
        first = data.sivqa[0].image
        largest = max(tiles, key=lambda rel: tiles[rel])
        question = "这道菜叫什么名字？"
        cases = [("text only", question, None), (f"dish photo, {tiles[first]} tiles", question, data.path(first))]
        if tiles[largest] > tiles[first]:
            cases.append((f"dish photo, {tiles[largest]} tiles", question, data.path(largest)))
        levels = ["backend", "demo"] + ([f"demo, {args.sessions} sessions"] if args.sessions > 1 else [])
        rows = []
        with tqdm(total=len(cases) * len(levels) * (args.runs + 1), desc="TTFT runs", unit="run") as bar:
            for case, question, image in cases:
                for level in levels:
                    times: list[float] = []
                    for i in range(args.runs + 1):
                        if level == "backend":
                            got = [backend_ttft(backend, question, image, params)]
                        elif level == "demo":
                            got = [demo_ttft(backend, question, image, params)]
                        else:
                            got = concurrent_demo_ttft(backend, question, image, params, args.sessions)
                        wait_idle()
                        if i:  # the first run is a warm-up
                            times += got
                        bar.update()
                    times.sort()
                    rows.append(dict(case=case, level=level, samples=len(times), median_s=statistics.median(times),
                                     p90_s=times[max(0, round(0.9 * len(times)) - 1)], min_s=times[0], max_s=times[-1]))
        backend_name = backend.name
        inputs = f"photos {first} and {largest}"

    import os

    import torch
    machine = dict(cpu=platform.processor() or platform.machine(), cores=os.cpu_count(),
                   torch_threads=torch.get_num_threads(), load_avg_1min=round(os.getloadavg()[0], 1),
                   cuda=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                   python=platform.python_version(), torch=torch.__version__)
    device = f"GPU {machine['cuda']}" if machine["cuda"] else f"CPU, {machine['torch_threads']} torch threads"
    table = Table(title=f"Time to first token: {model_dir.name}, backend {backend_name}, {device}")
    for col in ("case", "level", "samples", "median s", "p90 s", "min s", "max s"):
        table.add_column(col, justify="left" if col in ("case", "level") else "right")
    for r in rows:
        table.add_row(r["case"], r["level"], str(r["samples"]), f"{r['median_s']:.3f}", f"{r['p90_s']:.3f}",
                      f"{r['min_s']:.3f}", f"{r['max_s']:.3f}")
    Console().print(table)
    print(f"model load {'(in the demo)' if load_s is None else f'{load_s:.1f} s'}; {inputs}; max_new_tokens {args.max_new_tokens}; "
          f"1-min load average at the end {machine['load_avg_1min']} on {machine['cores']} cores")
    out = paths.work_dir() / "bench" / "demo_ttft.json"
    write_json(out, dict(model=str(model_dir), backend=backend_name, machine=machine, load_s=load_s,
                         max_new_tokens=args.max_new_tokens, rows=rows))
    print(f"wrote {out}")
    if args.limit is not None:
        over = [r for r in rows if r["median_s"] > args.limit and "sessions" not in r["level"]
                and "tabs" not in r["level"]]
        if over:
            print(f"FAIL: median TTFT over {args.limit} s for " + ", ".join(f"{r['case']}/{r['level']}" for r in over))
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
