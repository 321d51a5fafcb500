"""One browser tab's conversation with the food expert: turns, images per turn, clear, regenerate, undo.

Pure Python (no gradio): the demo keeps one ``ChatState`` per browser session in ``gr.State``, so two
tabs never share images or history. A conversation is a list of ``Turn``s; each turn is a user
question, the images attached to it, and one answer per model (one model normally, two in compare
mode, e.g. ``{"base": ..., "tuned": ...}``). Images picked before the question is sent wait in
``pending_images`` and join the next turn.

Uploaded files are copied into the session's own temporary folder under generated (uuid) names
(``new_upload_path``); ``close()`` removes that folder when the session ends.
"""
from __future__ import annotations

import shutil
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

MAX_IMAGES = 8  # per conversation: every image costs up to 13 tiles x 256 tokens of context


@dataclass
class Turn:
    """A user question, the images sent with it, and each model's answer (or error)."""
    question: str
    images: list[Path] = field(default_factory=list)
    answers: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def answered(self, model: str) -> bool:
        return model in self.answers or model in self.errors


class ChatState:
    """The conversation of one session. ``models`` names the answer slots (one per model shown)."""

    def __init__(self, models: tuple[str, ...] = ("model",), *, max_images: int = MAX_IMAGES,
                 temp_root: str | Path | None = None):
        if not models:
            raise ValueError("ChatState needs at least one model name")
        self.models = tuple(models)
        self.max_images = max_images
        self.turns: list[Turn] = []
        self.pending_images: list[Path] = []
        self._temp_root = temp_root
        self._session_dir: Path | None = None
        self._stop = threading.Event()

    # -- images ------------------------------------------------------------------------------------

    def images(self) -> list[Path]:
        """Every image of the conversation in order (sent turns first, then pending ones)."""
        return [p for t in self.turns for p in t.images] + list(self.pending_images)

    def attach(self, path: str | Path) -> Path:
        """Queue an image for the next question. Raises ValueError past ``max_images``."""
        if len(self.images()) >= self.max_images:
            raise ValueError(f"this conversation already has {self.max_images} images, the most one chat "
                             f"can hold; press Clear to start a new one")
        path = Path(path)
        self.pending_images.append(path)
        return path

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

    def _forget(self, paths) -> None:
        """Delete uploads of this session that the conversation no longer refers to."""
        if self._session_dir is None:
            return
        keep = set(self.images())
        for p in paths:
            if p not in keep and p.parent == self._session_dir:
                p.unlink(missing_ok=True)

    # -- turns -------------------------------------------------------------------------------------

    def ask(self, question: str) -> Turn:
        """Start a turn with ``question`` and the pending images. Needs text or at least one image."""
        question = (question or "").strip()
        if not question and not self.pending_images:
            raise ValueError("type a question or add a dish image first")
        if self.turns and not self.is_answered(self.turns[-1]):
            raise ValueError("the previous question is still being answered; wait or press Stop")
        turn = Turn(question=question, images=list(self.pending_images))
        self.pending_images = []
        self.turns.append(turn)
        self._stop.clear()
        return turn

    def is_answered(self, turn: Turn) -> bool:
        return all(turn.answered(m) for m in self.models)

    def add_delta(self, model: str, text: str) -> None:
        """Append streamed text to the last turn's answer of ``model``."""
        turn = self._last_turn()
        turn.answers[model] = turn.answers.get(model, "") + text

    def fail(self, model: str, message: str) -> None:
        """Record that ``model`` could not answer the last turn (shown in the chat instead)."""
        self._last_turn().errors[model] = message

    def finish(self, model: str) -> None:
        """Mark ``model``'s answer to the last turn complete (an empty answer stays empty)."""
        self._last_turn().answers.setdefault(model, "")

    def regenerate(self) -> Turn:
        """Drop the last turn's answers so it can be answered again; returns that turn."""
        turn = self._last_turn()
        turn.answers.clear()
        turn.errors.clear()
        self._stop.clear()
        return turn

    def undo(self) -> Turn:
        """Remove the last turn; its images go back to pending. Returns it (to refill the textbox)."""
        turn = self._last_turn()
        self.turns.pop()
        self.pending_images = turn.images + self.pending_images
        return turn

    def clear(self) -> None:
        """Forget every turn and pending image; deletes this session's uploads."""
        dropped = self.images()
        self.turns, self.pending_images = [], []
        self._forget(dropped)
        self._stop.clear()

    def _last_turn(self) -> Turn:
        if not self.turns:
            raise ValueError("there is no question yet")
        return self.turns[-1]

    # -- stop --------------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Ask the answer being streamed to stop (the streaming loop polls ``stop_requested``)."""
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

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

    def messages(self, model: str, *, streaming: bool = False) -> list[dict]:
        """The conversation as chat messages ({"role", "content"}) for one model's chat view.

        Images are file messages (``{"path": ...}``), one per image, before the turn's text; a model
        error becomes an assistant message starting with a warning sign; pending images come last.
        """
        out: list[dict] = []
        for i, turn in enumerate(self.turns):
            out += [{"role": "user", "content": {"path": str(p)}} for p in turn.images]
            if turn.question:
                out.append({"role": "user", "content": turn.question})
            last = i == len(self.turns) - 1
            if model in turn.errors:
                partial = turn.answers.get(model, "")
                out.append({"role": "assistant",
                            "content": (partial + "\n\n" if partial else "") + f"⚠️ {turn.errors[model]}"})
            elif model in turn.answers:
                cursor = " ▌" if streaming and last else ""
                out.append({"role": "assistant", "content": turn.answers[model] + cursor})
            elif last and streaming:
                out.append({"role": "assistant", "content": "…"})
        out += [{"role": "user", "content": {"path": str(p)}} for p in self.pending_images]
        return out

    # -- lifetime ----------------------------------------------------------------------------------

    def close(self) -> None:
        """Remove this session's upload folder (called when the browser session ends)."""
        if self._session_dir is not None:
            shutil.rmtree(self._session_dir, ignore_errors=True)
            self._session_dir = None

    def __deepcopy__(self, memo):
        # gr.State deep-copies its initial value; a conversation is never shared, so copies start empty.
        return ChatState(self.models, max_images=self.max_images, temp_root=self._temp_root)
