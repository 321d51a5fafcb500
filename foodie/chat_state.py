"""One browser tab's conversation with the food expert: turns, images per turn, clear, regenerate, undo.

Pure Python (no gradio): the demo keeps one ``ChatState`` per browser session in ``gr.State``, so two
tabs never share images or history. A conversation is a list of ``Turn``s; each turn is a user
question, the images attached to it, and one answer per model (one model normally, two in compare
mode, e.g. ``{"base": ..., "tuned": ...}``). Images picked before the question is sent wait in
``pending_images`` and join the next turn.

Uploaded files are copied into the session's own temporary folder under generated (uuid) names
(``new_upload_path``); ``clear()`` deletes them and ``close()`` removes that folder when the session
ends. ``on_delete`` hears of every upload deleted, so copies made elsewhere (a web server's cache)
go with it.

Waiting: a ``ModelGate`` lets a model answer a limited number of questions at a time; an answer
waiting for its turn shows "waiting for the model (N ahead)" in place of its text.

Streaming: ``stream_answers(state, {model: backend.stream, ...})`` answers the last turn with every
model at once (a thread per model) and yields whenever there is something new to draw. An answer
takes a token from ``begin_answer()`` and writes into its ``Turn`` under ``lock`` while
``cancelled(token)`` is false; stop, regenerate, undo and clear cancel every answer in flight first,
so a late token never lands in a turn that was reset or removed.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from collections import deque
from typing import Callable, Iterator

log = logging.getLogger(__name__)

EMPTY_ANSWER = "*(no answer: the model ended its reply at once)*"
STOPPED = "*(stopped)*"
MAX_IMAGES = 8  # per conversation: every image costs up to 13 tiles x 256 tokens of context


@dataclass
class Turn:
    """A user question, the images sent with it, and each model's answer (or error)."""
    question: str
    images: list[Path] = field(default_factory=list)
    answers: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    streaming: set[str] = field(default_factory=set)  # models whose answer is still being written
    stopped: set[str] = field(default_factory=set)  # models whose answer the user stopped
    waiting: dict[str, int] = field(default_factory=dict)  # model -> answers ahead of this one (none: started)

    def answered(self, model: str) -> bool:
        """Whether ``model`` has finished (or failed) its answer to this turn."""
        return (model in self.answers and model not in self.streaming) or model in self.errors

    def add(self, model: str, text: str) -> None:
        """Append streamed text to ``model``'s answer."""
        self.answers[model] = self.answers.get(model, "") + text
        self.streaming.add(model)
        self.waiting.pop(model, None)

    def fail(self, model: str, message: str) -> None:
        """Record that ``model`` could not answer (shown in the chat instead, after any partial text)."""
        self.errors[model] = message
        self.streaming.discard(model)
        self.waiting.pop(model, None)

    def finish(self, model: str) -> None:
        """Mark ``model``'s answer complete (an empty answer stays empty)."""
        self.answers.setdefault(model, "")
        self.streaming.discard(model)
        self.waiting.pop(model, None)


class ChatState:
    """The conversation of one session. ``models`` names the answer slots (one per model shown)."""

    def __init__(self, models: tuple[str, ...] = ("model",), *, max_images: int = MAX_IMAGES,
                 temp_root: str | Path | None = None, on_delete: Callable[[Path], None] | None = None):
        if not models:
            raise ValueError("ChatState needs at least one model name")
        self.models = tuple(models)
        self.max_images = max_images
        self.turns: list[Turn] = []
        self.pending_images: list[Path] = []
        self.system_prompt: str | None = None  # None: the model's own
        self._temp_root = temp_root
        self._on_delete = on_delete
        self._session_dir: Path | None = None
        self._epoch = 0  # bumped by every cancel; an answer's token is the epoch it started in
        self.lock = threading.RLock()

    # -- images ------------------------------------------------------------------------------------

    def images(self) -> list[Path]:
        """Every image of the conversation in order (sent turns first, then pending ones)."""
        return [p for t in self.turns for p in t.images] + list(self.pending_images)

    def check_room(self, adding: int = 1) -> None:
        """Raise ValueError (saying how many there are) when ``adding`` more images would exceed ``max_images``."""
        have = len(self.images())
        if have + adding > self.max_images:
            what = "an image" if adding == 1 else f"{adding} images"
            raise ValueError(f"this conversation has {have} image{'s' if have != 1 else ''}; one chat holds at most "
                             f"{self.max_images}, so {what} more cannot join it. Send fewer, or press Clear to "
                             f"start a new chat")

    def attach(self, path: str | Path) -> Path:
        """Queue an image for the next question. Raises ValueError past ``max_images``."""
        path = Path(path)
        with self.lock:
            self.check_room(1)
            self.pending_images.append(path)
        return path

    def detach(self, path: str | Path) -> bool:
        """Take a queued (not yet sent) image off the next question; deletes it if it was an upload.
        Returns whether it was queued."""
        path = Path(path)
        with self.lock:
            if path not in self.pending_images:
                return False
            self.pending_images.remove(path)
            self._forget([path])
            return True

    @property
    def session_dir(self) -> Path:
        """This session's private folder for uploads (created on first use)."""
        if self._session_dir is None:
            self._session_dir = Path(tempfile.mkdtemp(prefix="foodie-chat-", dir=self._temp_root))
        return self._session_dir

    def new_upload_path(self, suffix: str = ".png") -> Path:
        """A fresh path inside the session folder with a generated name (never the user's file name)."""
        suffix = suffix if suffix.startswith(".") and suffix[1:].isalnum() and len(suffix) <= 6 else ".img"
        return self.session_dir / f"{uuid.uuid4().hex}{suffix.lower()}"

    def redact(self, text: str) -> str:
        """``text`` without this session's folder path (messages shown to the user name files only)."""
        if self._session_dir is None:
            return text
        return text.replace(f"{self._session_dir}{os.sep}", "").replace(str(self._session_dir), "<upload folder>")

    def _forget(self, paths) -> None:
        """Delete uploads of this session that the conversation no longer refers to."""
        if self._session_dir is None:
            return
        keep = set(self.images())
        for p in paths:
            if p not in keep and p.parent == self._session_dir:
                p.unlink(missing_ok=True)
                if self._on_delete is not None:
                    self._on_delete(p)

    # -- turns -------------------------------------------------------------------------------------

    def ask(self, question: str) -> Turn:
        """Start a turn with ``question`` and the pending images. Needs text or at least one image."""
        question = (question or "").strip()
        with self.lock:
            if not question and not self.pending_images:
                raise ValueError("type a question or add a dish image first")
            if self.turns and not self.is_answered(self.turns[-1]):
                raise ValueError("the previous question is still being answered; wait or press Stop")
            turn = Turn(question=question, images=list(self.pending_images))
            self.pending_images = []
            self.turns.append(turn)
            return turn

    def is_answered(self, turn: Turn) -> bool:
        return all(turn.answered(m) for m in self.models)

    def add_delta(self, model: str, text: str) -> None:
        """Append streamed text to the last turn's answer of ``model``."""
        with self.lock:
            self._last_turn().add(model, text)

    def fail(self, model: str, message: str) -> None:
        """Record that ``model`` could not answer the last turn (shown in the chat instead)."""
        with self.lock:
            self._last_turn().fail(model, message)

    def finish(self, model: str) -> None:
        """Mark ``model``'s answer to the last turn complete (an empty answer stays empty)."""
        with self.lock:
            self._last_turn().finish(model)

    def regenerate(self) -> Turn:
        """Drop the last turn's answers so it can be answered again (stops one in flight); returns it."""
        with self.lock:
            turn = self._last_turn()
            self.stop()
            turn.answers.clear()
            turn.errors.clear()
            turn.stopped.clear()
            return turn

    def undo(self) -> Turn:
        """Remove the last turn (stops its answer); its images go back to pending. Returns it."""
        with self.lock:
            turn = self._last_turn()
            self.stop()
            self.turns.pop()
            self.pending_images = turn.images + self.pending_images
            return turn

    def clear(self) -> None:
        """Forget every turn and pending image (stops any answer); deletes this session's uploads."""
        with self.lock:
            self.stop()
            dropped = self.images()
            self.turns, self.pending_images = [], []
            self._forget(dropped)

    def _last_turn(self) -> Turn:
        if not self.turns:
            raise ValueError("there is no question yet")
        return self.turns[-1]

    # -- stop --------------------------------------------------------------------------------------

    def begin_answer(self) -> int:
        """A token for an answer about to stream into the last turn (see ``cancelled``)."""
        with self.lock:
            return self._epoch

    def cancelled(self, token: int) -> bool:
        """Whether the answer holding ``token`` was stopped (by stop, regenerate, undo or clear)."""
        return token != self._epoch

    def stop(self) -> None:
        """Cancel every answer in flight; what was said so far stays as the (finished) answer."""
        with self.lock:
            self._epoch += 1
            if self.turns:
                turn = self.turns[-1]
                for model in self.models:
                    if not turn.answered(model):
                        turn.finish(model)
                        turn.stopped.add(model)

    # -- views -------------------------------------------------------------------------------------

    def model_inputs(self, model: str) -> tuple[list[tuple[str, list[Path], str]], str, list[Path]]:
        """What ``model`` needs to answer the last turn: (history, question, images).

        ``history`` holds (question, images, answer) of the earlier turns with that model's answers
        (a turn the model failed on counts as answered with an empty string); ``images`` are the
        last turn's images.
        """
        turn = self._last_turn()
        history = [(t.question, list(t.images), t.answers.get(model, "")) for t in self.turns[:-1]]
        return history, turn.question, list(turn.images)

    def request(self, model: str) -> list:
        """The conversation as ``model`` saw it, ending with the question to answer: a request for
        ``foodie.inference`` (user messages carry their images; earlier answers are that model's own)."""
        from foodie.inference import Message
        with self.lock:
            history, question, images = self.model_inputs(model)
        request = [] if self.system_prompt is None else [Message("system", self.system_prompt)]
        for q, imgs, a in history:
            request += [Message("user", q, images=imgs), Message("assistant", a)]
        request.append(Message("user", question, images=images))
        return request

    def messages(self, model: str) -> list[dict]:
        """The conversation as chat messages ({"role", "content"}) for one model's chat view.

        Images are file messages (``{"path": ...}``), one per image, before the turn's text; an answer
        still being written ends in a cursor (or is "…" before its first token); a model error becomes
        an assistant message with a warning sign after any partial text; pending images come last.
        """
        out: list[dict] = []
        with self.lock:
            for turn in self.turns:
                out += [{"role": "user", "content": {"path": str(p)}} for p in turn.images]
                if turn.question:
                    out.append({"role": "user", "content": turn.question})
                partial = turn.answers.get(model, "")
                if model in turn.errors:
                    out.append({"role": "assistant",
                                "content": (partial + "\n\n" if partial else "") + f"⚠️ {turn.errors[model]}"})
                elif not turn.answered(model):
                    ahead = turn.waiting.get(model)
                    out.append({"role": "assistant", "content": partial + " ▌" if partial else
                                "…" if ahead is None else waiting_text(ahead)})
                elif model in turn.stopped:
                    out.append({"role": "assistant", "content": (partial + " " if partial else "") + STOPPED})
                else:
                    out.append({"role": "assistant", "content": partial or EMPTY_ANSWER})
            out += [{"role": "user", "content": {"path": str(p)}} for p in self.pending_images]
        return out

    # -- lifetime ----------------------------------------------------------------------------------

    def export(self, fmt: str = "md", names: dict[str, str] | None = None) -> str:
        """The conversation as Markdown (``md``) or JSON (``json``): questions, image file names, answers."""
        names = names or {}
        with self.lock:
            turns = [dict(question=t.question, images=[p.name for p in t.images],
                          answers={names.get(m, m): t.answers.get(m, "") for m in self.models},
                          errors={names.get(m, m): t.errors[m] for m in self.models if m in t.errors})
                     for t in self.turns]
            system = self.system_prompt
        if fmt == "json":
            return json.dumps(dict(system_prompt=system, turns=turns), ensure_ascii=False, indent=2) + "\n"
        if fmt != "md":
            raise ValueError(f"unknown export format {fmt!r}: use 'md' or 'json'")
        lines = ["# InternVL Foodie chat", ""] + ([f"*System prompt:* {system}", ""] if system is not None else [])
        for i, t in enumerate(turns, 1):
            lines += [f"## {i}. {t['question'] or '(image only)'}", ""]
            lines += [f"*Images:* {', '.join(t['images'])}", ""] if t["images"] else []
            for model, text in t["answers"].items():
                error = t["errors"].get(model)
                lines += [f"**{model}:** {text}" + (f" ⚠️ {error}" if error else ""), ""]
        return "\n".join(lines)

    def close(self) -> None:
        """Stop any answer and remove this session's upload folder (called when the browser session ends)."""
        self.stop()
        if self._session_dir is not None:
            for p in self._session_dir.iterdir() if self._session_dir.is_dir() else []:
                if self._on_delete is not None:
                    self._on_delete(p)
            shutil.rmtree(self._session_dir, ignore_errors=True)
            self._session_dir = None

    def __deepcopy__(self, memo):
        # gr.State deep-copies its initial value; a conversation is never shared, so copies start empty.
        return ChatState(self.models, max_images=self.max_images, temp_root=self._temp_root,
                         on_delete=self._on_delete)


def waiting_text(ahead: int) -> str:
    """What an answer that waits for its model shows."""
    return f"⏳ waiting for the model ({ahead} ahead) · 排队等待模型（前面还有 {ahead} 个）"


class ModelGate:
    """Lets a model answer at most ``capacity`` questions at once; the others wait in arrival order.

    ``acquire`` reports how many answers are ahead (running or waiting earlier) while it waits, and
    gives up when ``cancelled()`` becomes true (the user stopped a waiting answer)."""

    def __init__(self, capacity: int = 1):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._cond = threading.Condition()
        self._running = 0
        self._queue: deque = deque()

    def acquire(self, on_wait: Callable[[int], None] = lambda ahead: None,
                cancelled: Callable[[], bool] = lambda: False, poll_s: float = 0.1) -> bool:
        """Take a place; True once this answer may run, False when cancelled while waiting."""
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            shown = None
            while True:
                if self._queue[0] is ticket and self._running < self.capacity:
                    self._queue.popleft()
                    self._running += 1
                    self._cond.notify_all()
                    return True
                if cancelled():
                    self._queue.remove(ticket)
                    self._cond.notify_all()
                    return False
                ahead = self._running + self._queue.index(ticket)
                if ahead != shown:
                    on_wait(ahead)
                    shown = ahead
                self._cond.wait(poll_s)

    def release(self) -> None:
        with self._cond:
            self._running -= 1
            self._cond.notify_all()

    @property
    def busy(self) -> int:
        """Answers running or waiting now."""
        with self._cond:
            return self._running + len(self._queue)


def stream_answers(state: ChatState, answer_fns: dict[str, Callable[[list], Iterator[str]]], *,
                   names: dict[str, str] | None = None, min_interval_s: float = 0.05,
                   gates: dict[str, ModelGate] | None = None, first_draw_s: float = 0.0) -> Iterator[None]:
    """Answer the last turn of ``state`` with every model at once, each streaming in its own thread.

    ``answer_fns[model](request)`` returns an iterator of text deltas that stops generating when closed
    (``foodie.inference`` backends' ``stream``). Yields when the conversation changed, for the caller to
    redraw, at most once per ``min_interval_s`` (tokens arriving in between are drawn together: a browser
    re-renders the whole message on every update); ends when every model is done, or at once when the answer is cancelled (stop,
    regenerate, undo, clear) -- the threads then close their streams. A model that raises gets the
    error recorded in the turn (shown in the chat) and the others go on. Nothing happens when the last
    turn is already answered. ``gates[model]``, when given, is taken before ``model`` starts: while it
    waits, the turn shows how many answers are ahead. The first yield (the question, "…" for each answer)
    comes at once, or with ``first_draw_s`` > 0 as soon as the first token (or word from a gate) arrives,
    at the latest after ``first_draw_s``: a fast first token is then drawn in the same update as the
    question, one browser update earlier.
    """
    names = names or {}
    gates = gates or {}
    with state.lock:
        if not state.turns or state.is_answered(state.turns[-1]):
            return
        turn, token = state.turns[-1], state.begin_answer()
        requests = {}
        for model in answer_fns:
            try:
                requests[model] = state.request(model)
            except ValueError as e:
                turn.fail(model, f"Cannot ask {names.get(model, model)}: {e}")
    if first_draw_s <= 0:
        yield  # the question shows at once, with "…" for each answer
    drawn = first_draw_s <= 0
    events: queue.Queue = queue.Queue()
    over = threading.Event()  # this answer ended: done, cancelled, or the caller closed this generator

    def work(model: str):
        gate = gates.get(model)
        try:
            if gate is not None and not gate.acquire(lambda ahead: events.put((model, "waiting", ahead)),
                                                     lambda: over.is_set() or state.cancelled(token)):
                return
            try:
                stream = answer_fns[model](requests[model])
                try:
                    for delta in stream:
                        events.put((model, "delta", delta))
                        if over.is_set() or state.cancelled(token):
                            break
                finally:
                    getattr(stream, "close", lambda: None)()  # the backend stops generating
            finally:
                if gate is not None:
                    gate.release()
        except Exception as e:  # noqa: BLE001 - a failing model is reported in the chat, the app goes on
            log.exception("model %s failed", names.get(model, model))
            events.put((model, "error", f"Model error ({names.get(model, model)}): {type(e).__name__}: "
                                        f"{state.redact(str(e))}"))
        finally:
            events.put((model, "done", None))

    running = set(requests)
    for model in requests:
        threading.Thread(target=work, args=(model,), daemon=True, name=f"answer-{model}").start()
    last_yield = float("-inf")  # the first token is drawn at once
    changed = False
    try:
        while running:
            try:
                batch = [events.get(timeout=min_interval_s if drawn else first_draw_s)]
            except queue.Empty:
                batch = []
            while True:  # apply everything that arrived since the last look in one go
                try:
                    batch.append(events.get_nowait())
                except queue.Empty:
                    break
            with state.lock:
                if state.cancelled(token):  # the turn is no longer ours to write
                    running.clear()
                    batch = []
                for model, kind, payload in batch:
                    if kind == "delta":
                        turn.add(model, payload)
                    elif kind == "waiting":
                        turn.waiting[model] = payload
                    elif kind == "error":
                        turn.fail(model, payload)
                    else:
                        turn.finish(model)
                        running.discard(model)
            changed = changed or bool(batch)
            if not drawn or not running or (changed and time.monotonic() - last_yield >= min_interval_s):
                yield
                last_yield, changed, drawn = time.monotonic(), False, True
    finally:
        over.set()
