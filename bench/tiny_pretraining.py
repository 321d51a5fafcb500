"""Can the embedded tiny LLM be taught to answer multiple choice by letter before fine-tuning? (measured: not yet)

InternVL2-2B answers the FoodieQA authors' prompt ("...选项有: （A) x\n（B) y ..., 为（") with an option letter
because its LLM was pre-trained on such reading. The embedded tiny model's 2-layer LLM is drawn at random, and
within the quickstart's CPU minutes of LoRA it learns the dishes but not to bind an option's text to its letter
(docs/TRAINING.md). This bench tries to give it that skill the way a base model has it: a short, deterministic
full-parameter pre-training of the LLM alone (ViT and projector stay random, so it cannot know the dishes) on
synthetic *text-only* multiple-choice reading in the chat format chat() uses:

    <img> 豆腐 北京 川菜 早餐</img>
    图片中的食物属于哪个菜系？ 选项有: （A) 粤菜\n（B) 湘菜\n（C) 川菜\n（D) 鲁菜\n, 请根据上图...为（   ->   C) 川菜

A passage of words stands where the image goes; exactly one option appears in it (the same tokens), and the
answer is that option's letter and text (the default `letter` answer style). The question is drawn apart from
passage and options. Optionally (--drill-share) a share of each batch is a look-up drill
("（A) 豆腐\n（B) 川菜\n... 川菜（B) 豆腐（A) ...") that supervises the text-to-letter binding a dozen times a
sequence instead of once.

Prints the held-out letter accuracy (256 fresh items, greedy first reply token; chance 0.25) every --eval-every
steps. Measured (docs/TRAINING.md): without the drill, 3,000 steps at batch 32 on the H200 left it at chance.

    python bench/tiny_pretraining.py --steps 1500 --eval-every 250 --device cuda
    python bench/tiny_pretraining.py --steps 3000 --drill-share 0.5 --seed 1
    python bench/tiny_lookup_drill.py tiny --heads 8 --kv-heads 4 --words 16 --bs 64 --steps 1250 --save lookup.pt
    python bench/tiny_pretraining.py --heads 8 --kv-heads 4 --init lookup.pt --steps 0      # measure it only
    python bench/tiny_pretraining.py --heads 8 --kv-heads 4 --init lookup.pt --steps 2500 --lr 1e-3 --drill-share 0.5
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch


from foodie import prompts  # noqa: E402
from foodie.tasks import LETTERS  # noqa: E402


@dataclass(frozen=True)
class ReadingRecipe:
    steps: int = 1500
    batch_size: int = 32
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.0
    passage_words: tuple[int, int] = (2, 6)  # words in the passage, the answer among them
    en_share: float = 0.25  # share of items in the authors' English template
    threads: int = 1  # float sums depend on the thread count: fixed, so the weights are reproducible
    drill_share: float = 0.0  # share of look-up drills in a batch (dense letter supervision)
    drill_queries: int = 12


# ----------------------------------------------------------------------------------------------------
# Synthetic items

QUESTIONS_ZH = (
    '图片中的食物是什么菜？', '图片中的食物属于哪个菜系？', '图片中的食物来自哪个地区？', '图片中的食物的主要食材是什么？',
    '图片中的食物主要用哪种烹饪方法制作？', '图中是什么？', '哪一项是对的？', '这是什么？', '图片里有什么？',
    '下面哪一个出现在图中？', '这道菜叫什么名字？', '这张图片说的是哪一个？',
)
QUESTIONS_EN = (
    'What dish is the food in the picture?', 'Which cuisine does the food in the picture belong to?',
    'Which region is the food in the picture from?', 'What is the main ingredient of the food in the picture?',
    'Which cooking method is mainly used for the food in the picture?', 'What is shown in the image?',
    'Which one is right?', 'What is this?', 'Which of these appears in the picture?',
)


def word_pools(words_zh: list[str], words_en: list[str]) -> dict[str, list[str]]:
    """Option texts: single words and two-word phrases (so options of several tokens occur)."""
    def pool(words, join):
        rng = random.Random(len(words))
        pairs = {join(rng.choice(words), rng.choice(words)) for _ in range(2 * len(words))}
        return sorted(set(words) | {p for p in pairs if p.split(' ')[0] != p.split(' ')[-1]})
    return {'zh': pool(words_zh, lambda a, b: a + b), 'en': pool(words_en, lambda a, b: f'{a} {b}')}


@dataclass
class ReadingItem:
    user: str  # the user turn (passage in <img></img>, then the authors' prompt)
    answer: str  # "C) 川菜"
    letter: str


def make_item(rng: random.Random, pools: dict[str, list[str]], recipe: ReadingRecipe) -> ReadingItem:
    lang = 'en' if rng.random() < recipe.en_share else 'zh'
    pool = pools[lang]
    options = rng.sample(pool, 4)
    answer = rng.randrange(4)
    others = [w for w in rng.sample(pool, recipe.passage_words[1] + 4) if w not in options]
    passage = others[:rng.randint(*recipe.passage_words) - 1] + [options[answer]]
    rng.shuffle(passage)
    question = rng.choice(QUESTIONS_EN if lang == 'en' else QUESTIONS_ZH)
    # Each passage word after a space, as each option stands after "（A) ": the same tokens.
    user = f'<img>{"".join(" " + w for w in passage)}</img>\n{prompts.user_text("sivqa", question, options, lang)}'
    return ReadingItem(user, f'{LETTERS[answer]}) {options[answer]}', LETTERS[answer])


def drill_ids(rng: random.Random, pools: dict[str, list[str]], recipe: ReadingRecipe, tokenizer):
    """A look-up drill: an option list, then words from it each followed by "（" and the word's letter
    ("（A) 豆腐\n（B) 川菜\n... 川菜（B) 豆腐（A) ..."). Every letter is a labelled token, so the binding of an
    option's text to its letter is supervised a dozen times a sequence instead of once."""
    lang = 'en' if rng.random() < recipe.en_share else 'zh'
    options = rng.sample(pools[lang], 4)
    enc = lambda text: tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    ids = [tokenizer.bos_token_id] + enc(prompts.format_choices(options))
    labels = [-100] * len(ids)
    for _ in range(recipe.drill_queries):
        k = rng.randrange(4)
        query = enc(f' {options[k]}（')
        letter = enc(LETTERS[k])
        close = enc(')')
        ids += query + letter + close
        labels += [-100] * len(query) + letter + [-100] * len(close)
    return ids, labels


# ----------------------------------------------------------------------------------------------------
# Tokenising as chat() prompts

class ChatEncoder:
    """Token ids of a one-turn chat as the model's chat() builds it (its conversation template with its system
    message, the user turn, the assistant prompt), with the reply and the end of turn as the labelled tokens."""

    def __init__(self, tokenizer, new_conversation):
        self.tokenizer = tokenizer
        self.new_conversation = new_conversation  # () -> a conversation.py Conversation

    def prompt_ids(self, user: str) -> list[int]:
        conv = self.new_conversation()
        conv.append_message(conv.roles[0], user)
        conv.append_message(conv.roles[1], None)
        return self.tokenizer(conv.get_prompt(), add_special_tokens=True).input_ids

    def encode(self, item: ReadingItem) -> tuple[list[int], list[int]]:
        prompt = self.prompt_ids(item.user)
        end_of_turn = self.new_conversation().sep
        reply = self.tokenizer(item.answer + end_of_turn, add_special_tokens=False).input_ids
        return prompt + reply, [-100] * len(prompt) + reply


def conversation_factory(folder: Path, template_name: str):
    """The checkpoint's own conversation.py (read by path: no dynamic-module cache), as chat() uses it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location('foodie_checkpoint_conversation', Path(folder) / 'conversation.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return lambda: module.get_conv_template(template_name)


def _batch(encoded: list[tuple[list[int], list[int]]], pad_id: int):
    width = max(len(ids) for ids, _ in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), width), -100, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, (i, lab) in enumerate(encoded):
        ids[row, :len(i)] = torch.tensor(i)
        labels[row, :len(lab)] = torch.tensor(lab)
        mask[row, :len(i)] = 1
    return ids, labels, mask


# ----------------------------------------------------------------------------------------------------
# Training and measuring

def letter_accuracy(llm, encoder: ChatEncoder, items: list[ReadingItem], batch_size: int = 64) -> float:
    """Share of items whose greedy first reply token is the right letter."""
    tok = encoder.tokenizer
    letter_ids = {L: tok(L, add_special_tokens=False).input_ids[0] for L in LETTERS}
    hits = 0
    was_training = llm.training
    llm.eval()
    with torch.no_grad():
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            prompts_ = [encoder.prompt_ids(it.user) for it in chunk]
            ids, _, mask = _batch([(p, p) for p in prompts_], tok.pad_token_id)
            device = next(llm.parameters()).device
            hidden = llm.base_model(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
            last = hidden[torch.arange(len(chunk)), mask.sum(1).to(device) - 1]
            top = llm.get_output_embeddings()(last).argmax(-1).tolist()
            hits += sum(t == letter_ids[it.letter] for t, it in zip(top, chunk))
    llm.train(was_training)
    return hits / len(items)


def reply_loss(llm, ids, labels, mask):
    """Next-token cross-entropy on the labelled (reply) tokens; the LM head runs only where it is needed."""
    hidden = llm.base_model(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
    targets = labels[:, 1:]
    where = targets != -100
    logits = llm.get_output_embeddings()(hidden[where]).float()
    return torch.nn.functional.cross_entropy(logits, targets[where])


def drill_accuracy(llm, tokenizer, drills: list[tuple[list[int], list[int]]]) -> float:
    """Share of the drills' letters predicted right (greedy next token)."""
    was_training = llm.training
    llm.eval()
    with torch.no_grad():
        ids, labels, mask = _batch(drills, tokenizer.pad_token_id)
        device = next(llm.parameters()).device
        hidden = llm.base_model(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state[:, :-1]
        targets = labels[:, 1:].to(device)
        where = targets != -100
        right = (llm.get_output_embeddings()(hidden[where]).argmax(-1) == targets[where]).float().mean().item()
    llm.train(was_training)
    return right


def pretrain_reading(llm, encoder: ChatEncoder, pools: dict[str, list[str]], recipe: ReadingRecipe, seed: int,
                     progress: bool = False, eval_every: int = 0, log=print) -> list[dict]:
    """Full-parameter training of `llm` (float32) on synthetic multiple-choice reading; deterministic."""
    threads = torch.get_num_threads()
    torch.set_num_threads(recipe.threads)
    try:
        torch.manual_seed(seed)
        rng = random.Random(f'reading-{seed}')
        held = [make_item(random.Random(f'reading-held-{seed}-{k}'), pools, recipe) for k in range(256)]
        held_drills = [drill_ids(random.Random(f'drill-held-{seed}-{k}'), pools, recipe, encoder.tokenizer)
                       for k in range(64)]
        params = [p for p in llm.parameters()]
        device = params[0].device
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda i: min(1.0, (i + 1) / recipe.warmup) * 0.5 * (1 + math.cos(math.pi * i / recipe.steps)))
        history = []
        steps = range(recipe.steps)
        if progress:
            from tqdm import tqdm
            steps = tqdm(steps, desc='pre-training the tiny LLM (multiple-choice reading)', unit='step')
        llm.train()
        for step in steps:
            batch = [drill_ids(rng, pools, recipe, encoder.tokenizer) if rng.random() < recipe.drill_share
                     else encoder.encode(make_item(rng, pools, recipe)) for _ in range(recipe.batch_size)]
            ids, labels, mask = (t.to(device) for t in _batch(batch, encoder.tokenizer.pad_token_id))
            loss = reply_loss(llm, ids, labels, mask)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            if eval_every and ((step + 1) % eval_every == 0 or step + 1 == recipe.steps):
                row = dict(step=step + 1, loss=round(loss.item(), 4), held_out=letter_accuracy(llm, encoder, held),
                           drill=round(drill_accuracy(llm, encoder.tokenizer, held_drills), 3))
                history.append(row)
                log(json.dumps(row))
        llm.eval()
        for p in params:
            p.requires_grad_(False)
        return history
    finally:
        torch.set_num_threads(threads)


def main():
    from foodie import tiny_model as tm

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--eval-every', type=int, default=250)
    ap.add_argument('--device', default='cpu')
    for f in dataclasses.fields(ReadingRecipe):
        if f.type in ('int', 'float'):
            ap.add_argument(f'--{f.name.replace("_", "-")}', type=int if f.type == 'int' else float)
    ap.add_argument('--width', type=int, help='tiny LLM hidden size (intermediate = 2x)')
    ap.add_argument('--layers', type=int, help='tiny LLM layers')
    ap.add_argument('--heads', type=int, help='tiny LLM attention heads')
    ap.add_argument('--kv-heads', type=int, help='tiny LLM key/value heads')
    ap.add_argument('--rope-theta', type=float, help='tiny LLM rope_theta (InternLM2-1.8B: 1e6)')
    ap.add_argument('--std', type=float, help='tiny LLM init std (TINY_LLM initializer_range)')
    ap.add_argument('--bias', action='store_true', help='attention biases (InternLM2Config bias=True)')
    ap.add_argument('--init', help='start from these LLM weights (a bench/tiny_lookup_drill.py --save file, same '
                                   'settings); with --steps 0 only measure them')
    ap.add_argument('--save', help='save the trained LLM weights here (for --init)')
    args = ap.parse_args()
    changes = {f.name: getattr(args, f.name) for f in dataclasses.fields(ReadingRecipe)
               if getattr(args, f.name, None) is not None}
    recipe = ReadingRecipe(**changes)
    if args.width:
        tm.TINY_LLM.update(hidden_size=args.width, intermediate_size=2 * args.width)
    if args.layers:
        tm.TINY_LLM.update(num_hidden_layers=args.layers)
    if args.heads:
        tm.TINY_LLM.update(num_attention_heads=args.heads)
    if args.kv_heads:
        tm.TINY_LLM.update(num_key_value_heads=args.kv_heads)
    if args.rope_theta:
        tm.TINY_LLM.update(rope_theta=args.rope_theta)
    if args.std:
        tm.TINY_LLM.update(initializer_range=args.std)
    tm.TINY_LLM.update(bias=args.bias)
    tokenizer = tm.build_tokenizer()
    model = tm.build_model(args.seed, vocab_size=len(tokenizer), dtype=torch.float32, device=args.device)
    encoder = ChatEncoder(tokenizer, conversation_factory(tm.REMOTE_CODE_DIR, model.config.template))
    pools = word_pools(tm._WORDS_ZH.split() + tm._DISHES_ZH.split(), tm._WORDS_EN.split())
    print(f'recipe {recipe}; pools zh {len(pools["zh"])} en {len(pools["en"])}', flush=True)
    if args.init:
        model.language_model.load_state_dict(torch.load(args.init))
    if recipe.steps == 0:
        held = [make_item(random.Random(f'reading-held-{args.seed}-{k}'), pools, recipe) for k in range(256)]
        drills = [drill_ids(random.Random(f'drill-held-{args.seed}-{k}'), pools, recipe, tokenizer) for k in range(64)]
        print(json.dumps(dict(step=0, held_out=letter_accuracy(model.language_model, encoder, held),
                              drill=round(drill_accuracy(model.language_model, tokenizer, drills), 3))))
        return
    t0 = time.time()
    pretrain_reading(model.language_model, encoder, pools, recipe, args.seed,
                     eval_every=args.eval_every, log=lambda s: print(f'{time.time() - t0:7.1f} s {s}', flush=True))
    print(f'done in {time.time() - t0:.1f} s')
    if args.save:
        torch.save({k: v.cpu() for k, v in model.language_model.state_dict().items()}, args.save)


if __name__ == '__main__':
    main()
