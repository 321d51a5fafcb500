"""The embedded tiny LLM's one skill before any fine-tune: answering a multiple-choice question by its letter.

InternVL2-2B answers FoodieQA by option letter before it is fine-tuned; a randomly drawn tiny LLM does not, and the
quickstart's CPU fine-tune is too short to teach it both the dishes and the letter (docs/TRAINING.md, "A reading
skill before the fine-tune"). So ``foodie.tiny_model`` first trains the tiny LLM alone on synthetic items without
any photo: the 64 image positions of the authors' prompt hold the token embeddings of one word, the four options
offer that word and three others, and the reply is ``<letter>) <word>``. The fine-tune then has to make a photo look
like the words that describe it. No item links a dish to its attributes (the word is its own answer), so the model
knows nothing of the dishes before the fine-tune: held-out accuracy stays at chance.

Deterministic: items come from a seeded generator and the LLM's starting weights from its seed.
"""
from __future__ import annotations

import random
from pathlib import Path

import torch
from transformers.dynamic_module_utils import get_class_from_dynamic_module

from foodie import prompts
from foodie.tasks import LETTERS

STEPS = 1500          # batches of the pre-training (about 5 minutes on 2 CPU cores with 4 layers)
BATCH = 32            # items a batch
LR = 1e-3             # AdamW, constant after a linear warm-up
WARMUP = 100
IMAGE_POSITIONS = 64  # <IMG_CONTEXT> tokens of one 224-px tile after the pixel shuffle
QUESTIONS = ('图片中的食物是什么菜？', '图片中的食物属于哪个菜系？', '图片中的食物来自哪个地区？',
             '图片中的食物的主要食材是什么？', '图片中的食物主要用哪种烹饪方法制作？', '图中是什么？', '这是什么？')


def settings() -> dict:
    """What the pre-training's result depends on besides the starting weights and words (the cache key)."""
    return dict(steps=STEPS, batch=BATCH, lr=LR, warmup=WARMUP, questions=list(QUESTIONS), version=1)


class Items:
    """Reading items in the checkpoint's chat format: token ids, labels (the reply and its end of turn) and the
    word whose embeddings fill the image positions."""

    def __init__(self, tokenizer, code_dir: Path, template: str, words: list[str]):
        get_conv_template = get_class_from_dynamic_module('conversation.get_conv_template', str(code_dir))
        self.conv = lambda: get_conv_template(template)  # the checkpoint's own conversation.py, as chat() renders
        self.tok, self.words = tokenizer, sorted(set(words))
        self.image = f'<img>{"<IMG_CONTEXT>" * IMAGE_POSITIONS}</img>\n'
        self.img_ctx = tokenizer.convert_tokens_to_ids('<IMG_CONTEXT>')
        self.letter_ids = [tokenizer(L, add_special_tokens=False).input_ids[0] for L in LETTERS]
        self.image_ids = {w: self._cycled(tokenizer(w, add_special_tokens=False).input_ids) for w in self.words}

    def draw(self, rng: random.Random):
        """(question, options, index of the answer, the word at the image positions)."""
        word, *others = rng.sample(self.words, 4)
        options, answer = list(others), rng.randrange(4)
        options.insert(answer, word)
        return rng.choice(QUESTIONS), options, answer, word

    def encode(self, question, options, answer=None):
        """ids and labels of one turn, as the model's chat() renders it (labels: the reply, when given)."""
        conv = self.conv()
        conv.append_message(conv.roles[0], self.image + prompts.user_text('sivqa', question, options, 'zh'))
        conv.append_message(conv.roles[1], None)
        ids = self.tok(conv.get_prompt(), add_special_tokens=True).input_ids
        if answer is None:
            return ids, [-100] * len(ids)
        reply = self.tok(f'{LETTERS[answer]}) {options[answer]}{conv.sep}', add_special_tokens=False).input_ids
        return ids + reply, [-100] * len(ids) + reply

    def batch(self, items, with_answer=True):
        rows = [self.encode(q, o, a if with_answer else None) for q, o, a, _ in items]
        width = max(len(ids) for ids, _ in rows)
        ids = torch.full((len(rows), width), self.tok.pad_token_id)
        labels = torch.full((len(rows), width), -100)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, (i, lab) in enumerate(rows):
            ids[r, :len(i)], labels[r, :len(lab)], mask[r, :len(i)] = torch.tensor(i), torch.tensor(lab), 1
        return ids, labels, mask

    @staticmethod
    def _cycled(ids):
        return (ids * (IMAGE_POSITIONS // len(ids) + 1))[:IMAGE_POSITIONS]  # a word of several tokens, cycled


def hidden_states(llm, items: Items, batch, ids, mask):
    """The LLM's last hidden states with each item's word embeddings at its <IMG_CONTEXT> positions."""
    embed = llm.get_input_embeddings()
    x = embed(ids).clone()
    words = torch.tensor([items.image_ids[w] for *_, w in batch])
    x[ids == items.img_ctx] = embed(words).reshape(-1, x.shape[-1])
    return llm.model(inputs_embeds=x, attention_mask=mask).last_hidden_state


@torch.no_grad()
def reading_accuracy(llm, items: Items, batch) -> float:
    """Share of items whose likeliest first reply token among A-D is the answer's letter."""
    ids, _, mask = items.batch(batch, with_answer=False)
    last = hidden_states(llm, items, batch, ids, mask)[torch.arange(len(batch)), mask.sum(1) - 1]
    picked = llm.get_output_embeddings()(last)[:, items.letter_ids].argmax(-1)
    return (picked == torch.tensor([a for _, _, a, _ in batch])).float().mean().item()


def pretrain(llm, items: Items, seed: int = 0, progress=None) -> float:
    """Train every parameter of `llm` (float32, in place) on STEPS batches of reading items; returns the reading
    accuracy on 256 items drawn apart from the training ones. `progress(step, loss)` is called now and then."""
    rng, held_rng = random.Random(f'reader-{seed}'), random.Random(f'reader-held-{seed}')
    held = [items.draw(held_rng) for _ in range(256)]
    llm.train()
    opt = torch.optim.AdamW(llm.parameters(), lr=LR, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / WARMUP))
    for step in range(STEPS):
        batch = [items.draw(rng) for _ in range(BATCH)]
        ids, labels, mask = items.batch(batch)
        hidden = hidden_states(llm, items, batch, ids, mask)[:, :-1]
        targets = labels[:, 1:]
        where = targets != -100
        loss = torch.nn.functional.cross_entropy(llm.get_output_embeddings()(hidden[where]), targets[where])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(llm.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        if progress:
            progress(step + 1, loss.item())
    llm.eval()
    return reading_accuracy(llm, items, held)
