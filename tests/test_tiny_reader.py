"""The tiny LLM's reading pre-training (foodie/tiny_reader.py): what the embedded model can do before any fine-tune."""
import random

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from foodie import prompts, tiny_model, tiny_reader
from foodie.tasks import LETTERS


@pytest.fixture(scope='module')
def items(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir, trust_remote_code=True)
    return tiny_reader.Items(tok, tiny_model_dir, 'internlm2-chat', tiny_model.READER_WORDS)


def llm_of(folder):
    return AutoModel.from_pretrained(folder, trust_remote_code=True, torch_dtype=torch.float32).language_model.eval()


def test_the_embedded_llm_answers_by_the_letter_of_the_option_at_the_image(tiny_model_dir, items):
    """Items it never saw (another generator): the saved checkpoint (bfloat16) picks the right letter; the same
    LLM as drawn, before the pre-training, picks at chance."""
    rng = random.Random('test-reading')
    batch = [items.draw(rng) for _ in range(128)]
    assert tiny_reader.reading_accuracy(llm_of(tiny_model_dir), items, batch) >= 0.85
    drawn = tiny_model.build_model(0, dtype=torch.float32, vocab_size=len(items.tok)).language_model
    assert tiny_reader.reading_accuracy(drawn, items, batch) <= 0.40


def test_items_are_the_authors_prompt_in_the_chat_format_with_the_reply_labelled(items):
    question, options, answer, word = items.draw(random.Random(0))
    assert options[answer] == word and len(set(options)) == 4
    ids, labels = items.encode(question, options, answer)
    text = items.tok.decode(ids)
    assert prompts.user_text('sivqa', question, options, 'zh') in text  # the authors' template 0, as evaluated
    assert ids.count(items.img_ctx) == tiny_reader.IMAGE_POSITIONS
    reply = [i for i, lab in zip(ids, labels) if lab != -100]
    assert items.tok.decode(reply) == f'{LETTERS[answer]}) {word}<|im_end|>'
    assert labels[:len(ids) - len(reply)] == [-100] * (len(ids) - len(reply))


def test_pretraining_is_deterministic(items, monkeypatch):
    monkeypatch.setattr(tiny_reader, 'STEPS', 3)
    runs = []
    for _ in range(2):
        llm = tiny_model.build_model(0, dtype=torch.float32, vocab_size=len(items.tok)).language_model
        tiny_reader.pretrain(llm, items, seed=0)
        runs.append(llm.state_dict())
    drawn = tiny_model.build_model(0, dtype=torch.float32, vocab_size=len(items.tok)).language_model.state_dict()
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert any(not torch.equal(runs[0][k], drawn[k]) for k in drawn)
