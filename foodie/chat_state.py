"""One browser tab's conversation (the demo keeps one per session in gr.State): turns of a question, its images and
one answer per model shown ("model", or "base" and "tuned"). Uploads live in the session's folder and are deleted
when the conversation drops them or ends (``on_delete`` hears of each). An answer in flight holds the ``epoch`` it
started in: stop, regenerate, undo and clear bump it, so a late token never lands in a turn that was reset."""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

log = logging.getLogger(__name__)

EMPTY_ANSWER = "*(no answer: the model ended its reply at once)*"
STOPPED = "*(stopped)*"
MAX_IMAGES = 8  # per conversation: every image costs up to 13 tiles x 256 tokens of context


@dataclass
class Turn:
    question: str
    images: list[Path] = field(default_factory=list)
    answers: dict[str, str] = field(default_factory=dict)  # model -> text so far
    errors: dict[str, str] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)  # models whose answer is complete, failed or stopped
    stopped: set[str] = field(default_factory=set)

    def add(self, model: str, text: str) -> None:
        self.answers[model] = self.answers.get(model, "") + text

    def finish(self, model: str, error: str | None = None) -> None:
        self.answers.setdefault(model, "")
        self.errors.update({model: error} if error else {})
        self.done.add(model)

    def shown(self, model: str) -> str:
        """The answer as the chat shows it: "…" until the first token, then a cursor while streaming."""
        text = self.answers.get(model, "")
        if model in self.errors:
            return (text + "\n\n" if text else "") + f"⚠️ {self.errors[model]}"
        if model not in self.done:
            return text + " ▌" if text else "…"
        if model in self.stopped:
            return (text + " " if text else "") + STOPPED
        return text or EMPTY_ANSWER


class ChatState:
    def __init__(self, models: tuple[str, ...] = ("model",), *, temp_root: str | Path | None = None,
                 on_delete: Callable[[Path], None] | None = None):
        self.models, self.temp_root, self.on_delete = tuple(models), temp_root, on_delete
        self.turns: list[Turn] = []
        self.pending_images: list[Path] = []
        self.system_prompt: str | None = None  # None: the model's own
        self._session_dir: Path | None = None
        self.epoch, self.lock = 0, threading.RLock()

    def __deepcopy__(self, memo):  # gr.State deep-copies its initial value for every session: each starts empty
        return ChatState(self.models, temp_root=self.temp_root, on_delete=self.on_delete)

    # -- images and uploads ------------------------------------------------------------------------

    def images(self) -> list[Path]:
        return [p for t in self.turns for p in t.images] + self.pending_images

    def check_room(self, adding: int = 1) -> None:
        have = len(self.images())
        if have + adding > MAX_IMAGES:
            raise ValueError(f"this conversation has {have} image{'s' * (have != 1)}; one chat holds at most "
                             f"{MAX_IMAGES}, so {'an image' if adding == 1 else f'{adding} images'} more cannot join "
                             f"it. Send fewer, or press Clear to start a new chat")

    def attach(self, path: str | Path) -> None:
        with self.lock:
            self.check_room(1)
            self.pending_images.append(Path(path))

    def detach(self, path: str | Path) -> bool:
        """Take a pending image off the next question (an upload is deleted); False if it was not pending."""
        with self.lock:
            if Path(path) not in self.pending_images:
                return False
            self.pending_images.remove(Path(path))
            self._forget([Path(path)])
            return True

    @property
    def session_dir(self) -> Path:
        self._session_dir = self._session_dir or Path(tempfile.mkdtemp(prefix="foodie-chat-", dir=self.temp_root))
        return self._session_dir

    def new_upload_path(self, suffix: str = ".png") -> Path:
        """A generated name in the session folder (never the user's file name)."""
        suffix = suffix if suffix.startswith(".") and suffix[1:].isalnum() and len(suffix) <= 6 else ".img"
        return self.session_dir / f"{uuid.uuid4().hex}{suffix.lower()}"

    def redact(self, text: str) -> str:
        """``text`` without this session's folder path (messages name files only)."""
        folder = self._session_dir
        return text if folder is None else text.replace(f"{folder}{os.sep}", "").replace(str(folder), "<upload folder>")

    def _forget(self, paths) -> None:
        """Delete the session's uploads among ``paths`` (each is unique to one turn)."""
        for p in paths:
            if self._session_dir is not None and p.parent == self._session_dir:
                p.unlink(missing_ok=True)
                if self.on_delete is not None:
                    self.on_delete(p)

    # -- turns -------------------------------------------------------------------------------------

    def ask(self, question: str) -> Turn:
        """Start a turn with ``question`` and the pending images."""
        question = (question or "").strip()
        with self.lock:
            if not question and not self.pending_images:
                raise ValueError("type a question or add a dish image first")
            if self.turns and not self.is_answered(self.turns[-1]):
                raise ValueError("the previous question is still being answered; wait or press Stop")
            self.turns.append(Turn(question, self.pending_images))
            self.pending_images = []
            return self.turns[-1]

    def is_answered(self, turn: Turn) -> bool:
        return all(m in turn.done for m in self.models)

    def stop(self) -> Turn | None:
        """Cancel every answer in flight (what was said so far stays as the answer); the last turn."""
        with self.lock:
            self.epoch += 1
            for model in self.models if self.turns else ():
                if model not in self.turns[-1].done:
                    self.turns[-1].finish(model)
                    self.turns[-1].stopped.add(model)
            return self.turns[-1] if self.turns else None

    def _stop_last(self) -> Turn:
        if not (turn := self.stop()):
            raise ValueError("there is no question yet")
        return turn

    def regenerate(self) -> Turn:
        """Stop and drop the last turn's answers, to answer it again."""
        with self.lock:
            turn = self._stop_last()
            turn.answers, turn.errors, turn.done, turn.stopped = {}, {}, set(), set()
            return turn

    def undo(self) -> Turn:
        """Stop and remove the last turn; its images go back to pending."""
        with self.lock:
            turn = self._stop_last()
            self.turns.pop()
            self.pending_images = turn.images + self.pending_images
            return turn

    def clear(self) -> None:
        """Stop and forget every turn and pending image; deletes the session's uploads."""
        with self.lock:
            self.stop()
            dropped = self.images()
            self.turns, self.pending_images = [], []
            self._forget(dropped)

    # -- views -------------------------------------------------------------------------------------

    def request(self, model: str) -> list:
        """The conversation as ``model`` saw it (its own earlier answers) up to the last question."""
        from foodie.inference import Message
        with self.lock:
            out = [] if self.system_prompt is None else [Message("system", self.system_prompt)]
            for t in self.turns[:-1]:
                out += [Message("user", t.question, images=t.images), Message("assistant", t.answers.get(model, ""))]
            return out + [Message("user", self.turns[-1].question, images=self.turns[-1].images)]

    def messages(self, model: str) -> list[dict]:
        """One model's chat panel (gradio messages): each turn's images, its question, the answer; pending images."""
        with self.lock:
            out = []
            for t in self.turns:
                out += [{"role": "user", "content": {"path": str(p)}} for p in t.images]
                out += [{"role": "user", "content": t.question}] if t.question else []
                out.append({"role": "assistant", "content": t.shown(model)})
            return out + [{"role": "user", "content": {"path": str(p)}} for p in self.pending_images]

    def export(self, fmt: str = "md", names: dict[str, str] | None = None) -> str:
        """The conversation as Markdown (``md``) or JSON (``json``): questions, image file names, answers."""
        name = (names or {}).get
        with self.lock:
            turns = [dict(question=t.question, images=[p.name for p in t.images],
                          answers={name(m, m): t.answers.get(m, "") for m in self.models},
                          errors={name(m, m): t.errors[m] for m in self.models if m in t.errors}) for t in self.turns]
        if fmt == "json":
            return json.dumps(dict(system_prompt=self.system_prompt, turns=turns), ensure_ascii=False, indent=2) + "\n"
        md = ["# InternVL Foodie chat"] + ([f"*System prompt:* {self.system_prompt}"] if self.system_prompt else [])
        for i, t in enumerate(turns, 1):
            md.append(f"## {i}. {t['question'] or '(image only)'}")
            md += [f"*Images:* {', '.join(t['images'])}"] if t["images"] else []
            md += [f"**{m}:** {a}" + (f" ⚠️ {t['errors'][m]}" if m in t["errors"] else "")
                   for m, a in t["answers"].items()]
        return "\n\n".join(md) + "\n"

    def close(self) -> None:
        """The session ended: clear it and delete its upload folder (exports, uploads never sent)."""
        with self.lock:
            self.clear()
            if self._session_dir is not None:
                self._forget(list(self._session_dir.glob("*")))
                shutil.rmtree(self._session_dir, ignore_errors=True)
                self._session_dir = None


def stream_answers(state: ChatState, answer_fns: dict[str, Callable[[list], Iterator[str]]], *,
                   names: dict[str, str] | None = None, min_interval_s: float = 0.05,
                   first_draw_s: float = 0.0) -> Iterator[None]:
    """Answer the last turn with every model at once (a thread each iterating ``answer_fns[model](request)``); yield
    to draw, at most every ``min_interval_s`` (a browser redraws the whole message), the first time after up to
    ``first_draw_s`` waiting for a first token (to draw it with the question). A failing model's error is its answer.
    Cancelling the turn or closing this generator closes the streams."""
    name = (names or {}).get
    with state.lock:
        if not state.turns or state.is_answered(state.turns[-1]):
            return
        turn, token = state.turns[-1], state.epoch
        requests = {model: state.request(model) for model in answer_fns}
    changed, over = threading.Event(), threading.Event()

    def write(change: Callable[[], object]) -> bool:  # False: this answer was cancelled, the turn is not ours
        with state.lock:
            if over.is_set() or state.epoch != token:
                return False
            change()
            changed.set()
            return True

    def work(model: str):
        error = None
        try:
            stream = answer_fns[model](requests[model])
            try:
                for delta in stream:
                    if not write(lambda: turn.add(model, delta)):
                        break
            finally:
                getattr(stream, "close", lambda: None)()  # the backend stops generating
        except Exception as e:  # noqa: BLE001 - a failing model is reported in the chat, the app goes on
            log.exception("model %s failed", name(model, model))
            error = f"Model error ({name(model, model)}): {type(e).__name__}: {state.redact(str(e))}"
        finally:
            write(lambda: turn.finish(model, error))

    for model in requests:
        threading.Thread(target=work, args=(model,), daemon=True, name=f"answer-{model}").start()
    try:
        changed.wait(first_draw_s)
        last = float("-inf")  # drawing the question does not delay the first token
        while True:
            with state.lock:
                ended = state.epoch != token or state.is_answered(turn)
                changed.clear()
            yield
            if ended:
                return
            while not changed.wait(min_interval_s) and state.epoch == token:
                pass
            time.sleep(max(0.0, last + min_interval_s - time.monotonic()))  # what arrives meanwhile is drawn together
            last = time.monotonic()
    finally:
        over.set()
