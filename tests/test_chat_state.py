"""The per-session conversation: turns, images per turn, clear, regenerate, undo, uploads, isolation."""
import copy
import threading
import time

import pytest

from foodie.chat_state import EMPTY_ANSWER, STOPPED, ChatState, stream_answers


def said(s, model):
    """What ``model`` is asked: (role, text, images) of each message of its request."""
    return [(m.role, m.text, m.images) for m in s.request(model)]


def test_images_join_the_next_question_and_turns_keep_their_own_images(tmp_path):
    s = ChatState()
    s.attach(tmp_path / "a.jpg")
    s.attach(tmp_path / "b.jpg")
    t1 = s.ask("这是什么菜？")
    assert t1.images == [tmp_path / "a.jpg", tmp_path / "b.jpg"] and s.pending_images == []
    s.turns[-1].add("model", "麻婆")
    s.turns[-1].add("model", "豆腐")
    s.turns[-1].finish("model")
    t2 = s.ask("What region is it from?")
    assert t2.images == []
    assert said(s, "model") == [("user", "这是什么菜？", [tmp_path / "a.jpg", tmp_path / "b.jpg"]),
                                ("assistant", "麻婆豆腐", []), ("user", "What region is it from?", [])]
    assert s.images() == [tmp_path / "a.jpg", tmp_path / "b.jpg"]


def test_messages_show_images_then_text_and_stream_cursor(tmp_path):
    s = ChatState()
    s.attach(tmp_path / "a.jpg")
    s.ask("what dish?")
    assert s.messages("model") == [
        {"role": "user", "content": {"path": str(tmp_path / "a.jpg")}},
        {"role": "user", "content": "what dish?"},
        {"role": "assistant", "content": "…"},
    ]
    s.turns[-1].add("model", "Dumplings")
    assert s.messages("model")[-1]["content"] == "Dumplings ▌"
    assert not s.is_answered(s.turns[-1])
    s.turns[-1].finish("model")
    assert s.messages("model")[-1] == {"role": "assistant", "content": "Dumplings"}
    s.attach(tmp_path / "b.jpg")  # a pending image is shown at the end
    assert s.messages("model")[-1] == {"role": "user", "content": {"path": str(tmp_path / "b.jpg")}}


def test_empty_question_without_image_is_refused_and_image_only_question_is_allowed(tmp_path):
    s = ChatState()
    with pytest.raises(ValueError, match="question"):
        s.ask("   ")
    s.attach(tmp_path / "a.jpg")
    assert s.ask("").images == [tmp_path / "a.jpg"]


def test_cannot_ask_while_the_previous_answer_is_unfinished():
    s = ChatState()
    s.ask("one")
    with pytest.raises(ValueError, match="still being answered"):
        s.ask("two")
    s.turns[-1].finish("model", "model error: out of memory")  # a failed answer counts as answered
    s.ask("two")


def test_regenerate_drops_only_the_last_answer():
    s = ChatState()
    s.ask("q1"); s.turns[-1].add("model", "a1"); s.turns[-1].finish("model")
    s.ask("q2"); s.turns[-1].add("model", "a2"); s.turns[-1].finish("model", "boom")
    turn = s.regenerate()
    assert turn.question == "q2" and turn.answers == {} and turn.errors == {}
    assert s.turns[0].answers == {"model": "a1"}
    assert said(s, "model") == [("user", "q1", []), ("assistant", "a1", []), ("user", "q2", [])]


def test_undo_returns_the_turn_and_puts_its_images_back(tmp_path):
    s = ChatState()
    s.attach(tmp_path / "a.jpg")
    s.ask("q1"); s.turns[-1].add("model", "a1"); s.turns[-1].finish("model")
    turn = s.undo()
    assert turn.question == "q1" and s.turns == [] and s.pending_images == [tmp_path / "a.jpg"]
    with pytest.raises(ValueError, match="no question"):
        s.undo()
    with pytest.raises(ValueError, match="no question"):
        s.regenerate()


def test_clear_forgets_everything_and_deletes_session_uploads(tmp_path):
    s = ChatState(temp_root=tmp_path)
    up = s.new_upload_path(".jpg")
    up.write_bytes(b"x")
    gallery_image = tmp_path / "gallery.jpg"
    gallery_image.write_bytes(b"y")
    s.attach(up); s.attach(gallery_image)
    s.ask("q"); s.turns[-1].finish("model")
    s.clear()
    assert s.turns == [] and s.pending_images == [] and s.messages("model") == []
    assert not up.exists(), "the session's own upload is deleted"
    assert gallery_image.exists(), "files outside the session folder are never deleted"


def test_upload_paths_are_generated_inside_a_private_session_folder(tmp_path):
    a, b = ChatState(temp_root=tmp_path), ChatState(temp_root=tmp_path)
    pa, pb = a.new_upload_path(".JPG"), b.new_upload_path("../../etc/passwd")
    assert pa.parent == a.session_dir and pb.parent == b.session_dir and a.session_dir != b.session_dir
    assert pa.suffix == ".jpg" and pb.suffix == ".img" and ".." not in pb.name
    assert len({a.new_upload_path(".png").name for _ in range(50)}) == 50
    folder = a.session_dir
    pa.write_bytes(b"x")
    a.close()
    assert not folder.exists()


def test_image_limit_per_conversation(tmp_path):
    """Images of earlier turns count: 5 sent, 3 pending, a 9th is refused."""
    s = ChatState()
    for i in range(5):
        s.attach(tmp_path / f"{i}.jpg")
    s.ask("q"); s.turns[-1].finish("model")
    for i in range(5, 8):
        s.attach(tmp_path / f"{i}.jpg")
    with pytest.raises(ValueError, match="has 8 images; one chat holds at most 8"):
        s.attach(tmp_path / "8.jpg")


def test_the_image_limit_message_counts_what_the_chat_really_has(tmp_path):
    """5 images in the chat and 4 more in one message: the refusal says 5, not the limit (8)."""
    s = ChatState()
    for i in range(5):
        s.attach(tmp_path / f"{i}.jpg")
    with pytest.raises(ValueError, match="has 5 images; one chat holds at most 8, so 4 images more"):
        s.check_room(4)
    s.check_room(3)  # exactly full is fine


def test_a_queued_image_can_be_taken_off_again_and_uploads_are_deleted(tmp_path):
    deleted = []
    s = ChatState(temp_root=tmp_path, on_delete=deleted.append)
    up = s.new_upload_path(".png")
    up.write_bytes(b"x")
    dish = tmp_path / "dish.jpg"
    dish.write_bytes(b"y")
    s.attach(dish); s.attach(up)
    assert s.detach(dish) and s.pending_images == [up]
    assert not s.detach(dish), "not queued any more"
    assert dish.exists() and deleted == [], "a gallery photo is never deleted"
    assert s.detach(up) and not up.exists() and deleted == [up]


def test_clear_and_close_tell_on_delete_about_every_upload(tmp_path):
    deleted = []
    s = ChatState(temp_root=tmp_path, on_delete=deleted.append)
    a, b = s.new_upload_path(".png"), s.new_upload_path(".png")
    a.write_bytes(b"a"); b.write_bytes(b"b")
    s.attach(a); s.ask("q"); s.turns[-1].finish("model")
    s.clear()
    assert deleted == [a]
    s.close()  # b was written but never attached: the session folder goes with it
    assert deleted == [a, b] and not b.exists()
    assert copy.deepcopy(s).on_delete == s.on_delete, "a session copy deletes the same way"


def test_export_as_markdown_and_json():
    import json
    s = ChatState(models=("base", "tuned"))
    s.system_prompt = "你是美食专家。"
    s.attach("/x/dish.jpg"); s.ask("这是什么菜？")
    s.turns[-1].add("base", "不知道"); s.turns[-1].finish("base")
    s.turns[-1].add("tuned", "北京烤鸭"); s.turns[-1].finish("tuned")
    data = json.loads(s.export("json", names={"base": "base · InternVL2-2B"}))
    assert data == {"system_prompt": "你是美食专家。", "turns": [
        {"question": "这是什么菜？", "images": ["dish.jpg"],
         "answers": {"base · InternVL2-2B": "不知道", "tuned": "北京烤鸭"}, "errors": {}}]}
    md = s.export("md")
    assert "## 1. 这是什么菜？" in md and "**tuned:** 北京烤鸭" in md and "dish.jpg" in md


def test_a_custom_system_prompt_leads_every_request():
    s = ChatState()
    s.ask("q")
    assert [m.role for m in s.request("model")] == ["user"]  # the model's own system prompt
    s.system_prompt = "Answer with one letter."
    request = s.request("model")
    assert request[0].role == "system" and request[0].text == "Answer with one letter."


def test_compare_mode_keeps_one_answer_per_model_and_separate_histories():
    s = ChatState(models=("base", "tuned"))
    s.ask("q1")
    s.turns[-1].add("base", "dunno"); s.turns[-1].finish("base")
    assert not s.is_answered(s.turns[-1])
    s.turns[-1].add("tuned", "Peking duck"); s.turns[-1].finish("tuned")
    s.ask("q2")
    assert said(s, "base")[1] == ("assistant", "dunno", []) and said(s, "tuned")[1] == ("assistant", "Peking duck", [])
    assert s.messages("tuned")[1] == {"role": "assistant", "content": "Peking duck"}


def test_model_error_is_shown_in_the_chat_after_partial_text():
    s = ChatState()
    s.ask("q"); s.turns[-1].add("model", "Half an ans"); s.turns[-1].finish("model", "Model error: CUDA out of memory")
    assert s.messages("model")[-1] == {"role": "assistant",
                                       "content": "Half an ans\n\n⚠️ Model error: CUDA out of memory"}


def test_stop_keeps_the_partial_answer_and_cancels_the_answer_in_flight():
    s = ChatState()
    s.ask("q")
    token = s.epoch
    s.turns[-1].add("model", "Half")
    s.stop()
    assert s.epoch != token and s.is_answered(s.turns[-1])
    assert s.messages("model")[-1] == {"role": "assistant", "content": "Half " + STOPPED}
    assert s.turns[-1].answers["model"] == "Half"  # the model's history holds no marker
    s.ask("q2")  # the next question is accepted


@pytest.mark.parametrize("action", ["regenerate", "undo", "clear"])
def test_regenerate_undo_and_clear_cancel_a_streaming_answer(action):
    s = ChatState()
    s.ask("q1"); s.turns[-1].finish("model")
    s.ask("q2")
    token = s.epoch
    s.turns[-1].add("model", "partial")
    getattr(s, action)()
    assert s.epoch != token, "a late token of the old answer must not land in the reset conversation"
    if action == "regenerate":
        assert s.turns[-1].answers == {} and not s.is_answered(s.turns[-1])
    if action == "undo":
        assert [t.question for t in s.turns] == ["q1"]


def test_each_session_copy_starts_empty(tmp_path):
    # gr.State deep-copies its initial value for every browser session.
    template = ChatState(models=("base", "tuned"))
    template.attach(tmp_path / "a.jpg")
    session = copy.deepcopy(template)
    assert session.models == ("base", "tuned") and session.images() == [] and session is not template


def test_redact_hides_the_session_folder_in_messages(tmp_path):
    s = ChatState(temp_root=tmp_path)
    assert s.redact("nothing uploaded yet") == "nothing uploaded yet"
    p = s.new_upload_path(".jpg")
    assert s.redact(f"{p}: image file not found") == f"{p.name}: image file not found"


# ---------------------------------------------------------------------------------------------
# stream_answers: every model's answer streamed into the conversation, cancellable
# ---------------------------------------------------------------------------------------------

def words(*parts, delay=0.01, closed=None, fail_after=None):
    """An answer function: streams ``parts``; records in ``closed`` when its stream is closed."""
    def answer(request):
        def gen():
            try:
                for i, p in enumerate(parts):
                    if fail_after is not None and i == fail_after:
                        raise RuntimeError("CUDA out of memory")
                    time.sleep(delay)
                    yield p
            finally:
                if closed is not None:
                    closed.set()
        answer.requests.append(request)
        return gen()
    answer.requests = []
    return answer


def test_stream_answers_streams_every_model_into_its_own_slot():
    s = ChatState(models=("base", "tuned"))
    s.ask("q1"); s.turns[-1].add("base", "b1"); s.turns[-1].finish("base"); s.turns[-1].add("tuned", "t1"); s.turns[-1].finish("tuned")
    s.ask("q2")
    base, tuned = words("no", "idea", delay=0.08), words("Peking", " duck", delay=0.08)
    seen = []
    for _ in stream_answers(s, {"base": base, "tuned": tuned}):
        seen.append((s.messages("base")[-1]["content"], s.messages("tuned")[-1]["content"]))
    assert s.turns[-1].answers == {"base": "noidea", "tuned": "Peking duck"} and s.is_answered(s.turns[-1])
    assert seen[0] == ("…", "…"), "the question shows before the first token"
    assert any(t.endswith("▌") for _, t in seen), "partial answers are shown while streaming"
    # Each model is asked with its own earlier answers.
    assert [m.text for m in base.requests[0]] == ["q1", "b1", "q2"]
    assert [m.text for m in tuned.requests[0]] == ["q1", "t1", "q2"]


def test_stream_answers_records_a_failing_model_and_lets_the_other_finish():
    s = ChatState(models=("base", "tuned"))
    s.ask("q")
    list(stream_answers(s, {"base": words("a", "b", "c", fail_after=2), "tuned": words("ok")},
                        names={"base": "InternVL2-2B"}))
    turn = s.turns[-1]
    assert turn.answers["base"] == "ab" and turn.errors["base"].startswith("Model error (InternVL2-2B): RuntimeError")
    assert turn.answers["tuned"] == "ok" and s.is_answered(turn)
    assert s.messages("base")[-1]["content"] == "ab\n\n⚠️ " + turn.errors["base"]


def test_stop_ends_the_stream_at_once_and_closes_the_model_stream():
    s = ChatState()
    s.ask("q")
    closed = threading.Event()
    updates = stream_answers(s, {"model": words(*["tok "] * 10_000, delay=0.005, closed=closed)})
    next(updates)
    while not s.turns[-1].answers.get("model"):
        next(updates)
    s.stop()
    t0 = time.time()
    rest = list(updates)
    assert time.time() - t0 < 1 and len(rest) <= 1
    assert closed.wait(2), "the model's stream was not closed: it would keep generating"
    partial = s.turns[-1].answers["model"]
    time.sleep(0.05)
    assert s.turns[-1].answers["model"] == partial and s.is_answered(s.turns[-1])


def test_closing_the_updates_generator_stops_the_model_too():
    # gradio closes the handler's generator when the browser goes away.
    s = ChatState()
    s.ask("q")
    closed = threading.Event()
    updates = stream_answers(s, {"model": words(*["tok "] * 10_000, delay=0.005, closed=closed)})
    next(updates); next(updates)
    updates.close()
    assert closed.wait(2)


def test_stream_answers_does_nothing_for_an_answered_turn():
    s = ChatState()
    assert list(stream_answers(s, {"model": words("x")})) == []
    s.ask("q"); s.turns[-1].finish("model")
    fn = words("x")
    assert list(stream_answers(s, {"model": fn})) == [] and fn.requests == []


def test_an_empty_answer_is_shown_as_such_not_as_an_empty_bubble():
    s = ChatState()
    s.ask("q"); s.turns[-1].finish("model")
    assert s.messages("model")[-1] == {"role": "assistant", "content": EMPTY_ANSWER}


def test_first_draw_waits_briefly_for_the_first_token_to_draw_it_with_the_question():
    fast = ChatState()
    fast.ask("q")
    updates = stream_answers(fast, {"model": lambda r: iter(["Dumplings"])}, first_draw_s=2.0)
    next(updates)
    assert fast.messages("model")[-1]["content"].startswith("Dumplings"), "one update: question and token"
    list(updates)

    def slow(request):
        time.sleep(1.0)
        yield "late"

    waiting = ChatState()
    waiting.ask("q")
    updates = stream_answers(waiting, {"model": slow}, first_draw_s=0.1)
    t0 = time.monotonic()
    next(updates)
    assert time.monotonic() - t0 < 0.8 and waiting.messages("model")[-1]["content"] == "…"
    list(updates)
    assert waiting.messages("model")[-1]["content"] == "late"
