"""The quickstart's letter-style fine-tune, fast: when does the embedded tiny model learn to answer by letter?

The real path (xtuner_configs/internvl_v2_tiny_lora_cpu.py) trains LoRA on every LLM linear layer and the projector
(mlp1) with the ViT frozen, one 224-px tile a photo. The ViT is frozen, so its output for each photo is computed
once here (`prep`, on any machine) and the training loop (`run`) only runs mlp1 + the LLM: the same mathematics as
the real path (LoRA r 128 / alpha 256 / dropout 0.05 through PEFT, AdamW, lr 1e-3 with a linear warm-up of 100
steps, grad-norm clip 1, loss on the reply tokens), thousands of steps a minute on a GPU. Measured: held-out SIVQA
letter accuracy (the greedy first reply token is the right letter; the authors' rule reads this letter).

Options: `--perm random` rewrites each training question with its options shuffled every time it is drawn
(the answer letter moves with its option); `--perm K` draws from K fixed orders a question (the first is the
training file's); `--pretrain N` first trains the LLM alone (full parameters) on a reading task whose query stands
where the image goes: the 64 image positions hold the token embeddings of 1-5 attribute words, the authors' prompt
offers four options, one of them among those words, and the reply is its letter (`--turns T` asks T such
questions in one conversation: denser letter supervision).

Measured (docs/TRAINING.md, session 9): at session 9's shipped settings (4 heads, batch 4, lr 1e-3, cosine over
2,500 steps) 0.25-0.26, as `make quickstart` then; with 8 heads (4 key/value heads), --perm random and lr 3e-4 at
batch 64, 0.87 by 1,500 steps and 0.895-0.957 from 1,750 on one H200. Session 10: after a reading pre-training of
1,000 batches (one word at the image positions) the batch-4 fine-tune reaches 0.63-0.81 (2 layers), 0.79-0.84 (4
layers): bench/results/tiny_reader_h200_2026-12-01_s10.md.

    python bench/tiny_real_path.py prep --data-root work/foodieqa-synthetic --out feats.pt
    python bench/tiny_real_path.py run feats.pt --heads 4 --kv-heads 2 --steps 2500 --cosine --every 500   # session 9's
    python bench/tiny_real_path.py run feats.pt --heads 8 --kv-heads 4 --perm random --lr 3e-4 --bs 64 \
        --steps 4000 --every 250 --device cuda
    python bench/tiny_real_path.py run feats.pt --heads 8 --kv-heads 4 --pretrain 3000 --turns 4 --device cuda
"""
from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
import time
from pathlib import Path

import torch

from foodie import prompts
from foodie.tasks import LETTERS

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: the text-only pre-training's helpers
from tiny_pretraining import _batch as batchify, conversation_factory, word_pools  # noqa: E402

OPTION_LINE = re.compile(r'（([A-D])\) (.*)\n')


def prep(args):
    """ViT features (before mlp1) of every photo, and the training and held-out questions as text."""
    from foodie import tiny_model as tm
    from foodie.image_tiling import load_image
    from foodie.data_conversion import ConversionOptions, convert_foodieqa

    torch.set_num_threads(1)
    out_dir = Path(args.out).with_suffix('.xtuner')
    convert_foodieqa(args.data_root, out_dir, ConversionOptions(check_images=False))
    train = json.loads((out_dir / 'train.json').read_text())
    manifest = json.loads((out_dir / 'held_out.json').read_text())
    model = tm.build_model(args.seed, vocab_size=len(tm.build_tokenizer()), dtype=torch.float32)
    images, feats = {}, []

    def feature(path):
        if path not in images:
            pv = load_image(path, input_size=model.config.force_image_size, max_num=1)
            with torch.no_grad():
                v = model.vision_model(pixel_values=pv, return_dict=True).last_hidden_state[:, 1:, :]
                h = int(v.shape[1] ** 0.5)
                v = model.pixel_shuffle(v.reshape(1, h, h, -1), scale_factor=model.downsample_ratio)
                feats.append(v.reshape(-1, v.shape[-1]).half())
            images[path] = len(feats) - 1
        return images[path]

    def split(user):
        head, rest = user.split('选项有: ', 1)
        options = [m.group(2) for m in OPTION_LINE.finditer(rest)]
        return head.replace('<image>\n', ''), options

    rows = []
    for s in train:
        q, options = split(s['conversations'][0]['value'])
        letter = s['conversations'][1]['value'][0]
        rows.append(dict(image=feature(s['image']), question=q, options=options, answer=LETTERS.index(letter)))
    held = []
    for it in manifest['items']['sivqa']:
        held.append(dict(image=feature(str(Path(manifest['data_root']) / it['food_meta']['food_file'])),
                         question=it['question'], options=it['choices'], answer=int(it['answer'])))
    torch.save(dict(train=rows, held=held, feats=torch.stack(feats)), args.out)
    print(f'{len(rows)} training, {len(held)} held-out questions, {len(feats)} photos -> {args.out}')


# ----------------------------------------------------------------------------------------------------

class Encoder:
    def __init__(self, tm, template):
        self.tok = tm.build_tokenizer()
        self.new_conv = conversation_factory(tm.REMOTE_CODE_DIR, template)
        self.img_ctx = self.tok.convert_tokens_to_ids('<IMG_CONTEXT>')
        self.sep = self.new_conv().sep
        self.letter_ids = [self.tok(L, add_special_tokens=False).input_ids[0] for L in LETTERS]
        conv = self.new_conv()
        self.head_ids = self.tok(conv.system_template.format(system_message=conv.system_message) + conv.sep,
                                 add_special_tokens=True).input_ids
        self.roles = conv.roles

    def encode_batch(self, batch):
        """Many conversations at once, one tokenizer call: the template's pieces meet at special tokens
        (role, <|im_end|>), so their tokens concatenate to the whole prompt's (checked in `check`)."""
        texts = []
        for turns in batch:
            for user, answer in turns:
                texts.append(self.roles[0] + user + self.sep + self.roles[1])
                texts.append((answer + self.sep) if answer is not None else '')
        toks = iter(self.tok(texts, add_special_tokens=False).input_ids)
        out = []
        for turns in batch:
            ids, labels = list(self.head_ids), [-100] * len(self.head_ids)
            for user, answer in turns:
                u, a = next(toks), next(toks)
                ids += u + a
                labels += [-100] * len(u) + a
            out.append((ids, labels))
        return out

    def check(self, turns):
        assert self.encode_batch([turns])[0] == self.encode(turns), 'fast encoding differs from the template'

    def user(self, question, options):
        return f'<img>{"<IMG_CONTEXT>" * 64}</img>\n' + prompts.user_text('sivqa', question, options, 'zh')

    def encode(self, turns):
        """turns: [(user, answer or None)] -> ids, labels (the answers and their end of turn labelled)."""
        conv = self.new_conv()
        ids, labels = [], []
        for user, answer in turns:
            conv.append_message(conv.roles[0], user)
            conv.append_message(conv.roles[1], None)
            full = self.tok(conv.get_prompt(), add_special_tokens=True).input_ids
            assert full[:len(ids)] == ids, 'the history re-tokenised differently'
            labels += [-100] * (len(full) - len(ids))
            ids = full
            if answer is None:
                break
            reply = self.tok(answer + self.sep, add_special_tokens=False).input_ids
            ids = ids + reply
            labels += reply
            conv.messages[-1][1] = answer
        return ids, labels


def forward_hidden(llm, ids, mask, img_ctx, image_embeds):
    """The LLM body's last hidden states, image_embeds [B, 64, H] at the <IMG_CONTEXT> positions of sequence b
    (repeated when a conversation holds the image once a turn), as InternVLChatModel.forward places them."""
    emb = llm.get_input_embeddings()(ids).clone()
    n = (ids == img_ctx).sum(1).tolist()
    emb[ids == img_ctx] = torch.cat([image_embeds[b].repeat(n[b] // 64, 1) for b in range(len(ids))]).to(emb.dtype)
    body = llm.base_model.model.model if hasattr(llm, 'peft_config') else llm.base_model
    return body(inputs_embeds=emb, attention_mask=mask).last_hidden_state


def head(llm):
    return llm.get_output_embeddings()


def loss_of(llm, ids, labels, mask, img_ctx, image_embeds):
    hidden = forward_hidden(llm, ids, mask, img_ctx, image_embeds)[:, :-1]
    targets = labels[:, 1:]
    where = targets != -100
    return torch.nn.functional.cross_entropy(head(llm)(hidden[where]).float(), targets[where])


@torch.no_grad()
def first_letter_accuracy(llm, enc, rows, image_embeds_of, device):
    """(greedy first reply token is the right letter, the right letter is the likeliest of A-D)."""
    was = llm.training
    llm.eval()
    hits = hits4 = 0
    for start in range(0, len(rows), 64):
        chunk = rows[start:start + 64]
        enc_rows = enc.encode_batch([[(r['user'], None)] for r in chunk])
        ids, _, mask = (t.to(device) for t in batchify(enc_rows, enc.tok.pad_token_id))
        hidden = forward_hidden(llm, ids, mask, enc.img_ctx, image_embeds_of(chunk))
        last = hidden[torch.arange(len(chunk), device=device), mask.sum(1) - 1]
        logits = head(llm)(last)
        top = logits.argmax(-1).tolist()
        top4 = logits[:, enc.letter_ids].argmax(-1).tolist()
        for r, t, t4 in zip(chunk, top, top4):
            hits += t == enc.letter_ids[r['answer']]
            hits4 += t4 == r['answer']
    llm.train(was)
    return round(hits / len(rows), 3), round(hits4 / len(rows), 3)


# ----------------------------------------------------------------------------------------------------
# Reading pre-training with the query where the image goes

def word_list(tm, pool='phrases'):
    """Option texts of the pre-training: the tiny tokenizer's Chinese words, or those and two-word phrases
    (bench/tiny_pretraining.py's pool: options of several tokens occur)."""
    if pool == 'words':
        return tm.READER_WORDS
    return word_pools(tm.READER_WORDS, tm._WORDS_EN.split())['zh']


def pretrain_item(rng, words, attr, turns):
    k = rng.randint(*attr)
    pool = rng.sample(words, k + 3 * turns + 8)
    attrs, rest = pool[:k], pool[k:]
    qs = []
    for t in range(turns):
        answer_word = attrs[t % k] if t < k else rng.choice(attrs)
        distract = rng.sample(rest, 3)
        options = distract[:]
        pos = rng.randrange(4)
        options.insert(pos, answer_word)
        qs.append((rng.choice(QUESTIONS), options, pos))
    return attrs, qs


QUESTIONS = ('图片中的食物是什么菜？', '图片中的食物属于哪个菜系？', '图片中的食物来自哪个地区？',
             '图片中的食物的主要食材是什么？', '图片中的食物主要用哪种烹饪方法制作？', '图中是什么？', '这是什么？')


def attr_embeds(llm, tok, attrs_batch, device, mix=False, noise=0.0):
    """The 64 image positions: the attribute words' token embeddings, cycled (mix: their mean at every position;
    noise: Gaussian noise of that many times the embeddings' standard deviation added)."""
    emb = llm.get_input_embeddings()
    rows = []
    for attrs in attrs_batch:
        ids = [i for w in attrs for i in tok(w, add_special_tokens=False).input_ids]
        rows.append(emb(torch.tensor(ids, device=device)).mean(0).expand(64, -1) if mix
                    else emb(torch.tensor((ids * (64 // len(ids) + 1))[:64], device=device)))
    out = torch.stack(rows)
    return out + noise * emb.weight.std() * torch.randn_like(out) if noise else out


def pretrain(llm, enc, tm, args, device, log):
    words = word_list(tm, args.pool)
    rng = random.Random(f'pt-{args.seed}')
    held_rng = random.Random(f'pt-held-{args.seed}')
    held = [pretrain_item(held_rng, words, tuple(args.attr), 1) for _ in range(256)]
    params = [p for n, p in llm.named_parameters()]
    for p in params:
        p.requires_grad_(True)
    if args.freeze_emb:
        llm.get_input_embeddings().weight.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in params if p.requires_grad], lr=args.pt_lr, weight_decay=0.0)
    decay = (lambda i: 0.5 * (1 + math.cos(math.pi * i / args.pretrain))) if args.pt_cosine else (lambda i: 1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / 100) * decay(i))

    def held_acc():
        llm.eval()
        with torch.no_grad():
            hits = 0
            for s in range(0, 256, 64):
                chunk = held[s:s + 64]
                rows = enc.encode_batch([[(enc.user(q, o), None)] for _, [(q, o, _)] in chunk])
                ids, _, mask = (t.to(device) for t in batchify(rows, enc.tok.pad_token_id))
                img = attr_embeds(llm, enc.tok, [a for a, _ in chunk], device, args.pt_mix)
                hidden = forward_hidden(llm, ids, mask, enc.img_ctx, img)
                last = hidden[torch.arange(len(chunk), device=device), mask.sum(1) - 1]
                top = head(llm)(last)[:, enc.letter_ids].argmax(-1).tolist()
                hits += sum(t == qs[0][2] for t, (_, qs) in zip(top, chunk))
        llm.train()
        return round(hits / 256, 3)

    t0 = time.time()
    llm.train()
    for step in range(args.pretrain):
        items = [pretrain_item(rng, words, tuple(args.attr), args.turns) for _ in range(args.pt_bs)]
        rows = enc.encode_batch([[(enc.user(q, o), f'{LETTERS[p]}) {o[p]}') for q, o, p in qs] for _, qs in items])
        if step == 0:
            enc.check([(enc.user(q, o), f'{LETTERS[p]}) {o[p]}') for q, o, p in items[0][1]])
        ids, labels, mask = (t.to(device) for t in batchify(rows, enc.tok.pad_token_id))
        img = attr_embeds(llm, enc.tok, [a for a, _ in items], device, args.pt_mix, args.pt_noise)  # repeated in every turn's <img> span
        loss = loss_of(llm, ids, labels, mask, enc.img_ctx, img)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in params if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        if (step + 1) % args.pt_every == 0 or step + 1 == args.pretrain:
            log(dict(phase='pretrain', step=step + 1, s=round(time.time() - t0, 1), loss=round(loss.item(), 4),
                     reading=held_acc()))
        if args.seconds and time.time() - T_START > args.pt_seconds:
            log(dict(phase='pretrain', stopped=step + 1, reading=held_acc()))
            break
    for p in params:
        p.requires_grad_(False)
    llm.eval()


# ----------------------------------------------------------------------------------------------------

T_START = time.time()


def run(args):
    from foodie import tiny_model as tm

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    tm.TINY_LLM.update(num_attention_heads=args.heads, num_key_value_heads=args.kv_heads)
    if args.layers:
        tm.TINY_LLM.update(num_hidden_layers=args.layers)
    device = torch.device(args.device)
    data = torch.load(args.feats)
    feats = data['feats'].float().to(device)
    enc = Encoder(tm, 'internlm2-chat')
    model = tm.build_model(args.seed, vocab_size=len(enc.tok), dtype=torch.float32, device=device)
    llm, mlp1 = model.language_model, model.mlp1
    out = open(args.log, 'a') if args.log else None

    def log(row):
        row = dict(name=args.name, **row)
        print(json.dumps(row), flush=True)
        if out:
            out.write(json.dumps(row) + '\n')
            out.flush()

    if args.init:
        llm.load_state_dict(torch.load(args.init, map_location=device))
    if args.pretrain:
        pretrain(llm, enc, tm, args, device, log)
        if args.save:
            torch.save({k: v.cpu() for k, v in llm.state_dict().items()}, args.save)
    for p in model.parameters():
        p.requires_grad_(False)
    if args.full:
        for n, p in llm.named_parameters():
            if 'tok_embeddings' not in n:
                p.requires_grad_(True)
    else:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            log(dict(note='peft missing: full fine-tune instead of LoRA'))
            args.full = True
    if args.freeze_llm:
        pass  # the projector alone learns to speak to the pre-trained reader
    elif args.full:
        for n, p in llm.named_parameters():
            if 'tok_embeddings' not in n:
                p.requires_grad_(True)
    else:
        names = sorted({n.split('.')[-1] for n, m in llm.named_modules() if isinstance(m, torch.nn.Linear)})
        llm = get_peft_model(llm, LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.05, target_modules=names))
    for p in mlp1.parameters():
        p.requires_grad_(True)
    params = [p for p in list(llm.parameters()) + list(mlp1.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.999), weight_decay=0.0)
    total = args.steps

    def lr_at(i):
        warm = min(1.0, 1e-3 + (1 - 1e-3) * i / args.warmup)
        return warm * (0.5 * (1 + math.cos(math.pi * min(i, total) / total)) if args.cosine else 1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)

    rng = random.Random(f'ft-{args.seed}')
    train = data['train']
    orders = {}

    def options_of(k, row):
        if args.perm == 'none':
            return row['options'], row['answer']
        idx = list(range(len(row['options'])))
        if args.perm == 'random':
            rng.shuffle(idx)
        else:
            if k not in orders:
                r = random.Random(f'orders-{k}')
                orders[k] = [idx] + [r.sample(idx, len(idx)) for _ in range(int(args.perm) - 1)]
            idx = rng.choice(orders[k])
        return [row['options'][i] for i in idx], idx.index(row['answer'])

    held = [dict(r, user=enc.user(r['question'], r['options'])) for r in data['held']]
    proj = lambda rows: mlp1(feats[[r['image'] for r in rows]])  # noqa: E731
    log(dict(phase='finetune', step=0, held=first_letter_accuracy(llm, enc, held, proj, device)))
    t0 = time.time()
    llm.train()
    step = 0
    order = []
    while step < total:
        if len(order) < args.bs:
            perm = list(range(len(train)))
            rng.shuffle(perm)
            order += perm
        batch_idx, order = order[:args.bs], order[args.bs:]
        convs, imgs = [], []
        for k in batch_idx:
            row = train[k]
            options, ans = options_of(k, row)
            convs.append([(enc.user(row['question'], options), f'{LETTERS[ans]}) {options[ans]}')])
            imgs.append(row['image'])
        if step == 0:
            enc.check(convs[0])
        rows = enc.encode_batch(convs)
        ids, labels, mask = (t.to(device) for t in batchify(rows, enc.tok.pad_token_id))
        loss = loss_of(llm, ids, labels, mask, enc.img_ctx, mlp1(feats[imgs]))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        step += 1
        if step % args.every == 0 or step == total:
            log(dict(phase='finetune', step=step, s=round(time.time() - t0, 1), loss=round(loss.item(), 4),
                     held=first_letter_accuracy(llm, enc, held, proj, device)))
        if args.seconds and time.time() - T_START > args.seconds:
            log(dict(phase='finetune', stopped=step, held=first_letter_accuracy(llm, enc, held, proj, device)))
            break


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest='cmd', required=True)
    p = sub.add_parser('prep')
    p.add_argument('--data-root', default='work/foodieqa-synthetic')
    p.add_argument('--out', default='feats.pt')
    p.add_argument('--seed', type=int, default=0)
    r = sub.add_parser('run')
    r.add_argument('feats')
    r.add_argument('--name', default='run')
    r.add_argument('--log')
    r.add_argument('--seed', type=int, default=0)
    r.add_argument('--device', default='cpu')
    r.add_argument('--threads', type=int, default=1)
    r.add_argument('--heads', type=int, default=8)  # foodie.tiny_model.TINY_LLM's (4 / 2 until session 10)
    r.add_argument('--kv-heads', type=int, default=4)
    r.add_argument('--layers', type=int)
    r.add_argument('--steps', type=int, default=2500)
    r.add_argument('--bs', type=int, default=4)
    r.add_argument('--lr', type=float, default=1e-3)
    r.add_argument('--warmup', type=int, default=100)
    r.add_argument('--cosine', action='store_true', help='cosine to 0 at --steps (the config); default constant')
    r.add_argument('--every', type=int, default=500)
    r.add_argument('--perm', default='none', help="none | random | K (fixed orders a question)")
    r.add_argument('--lora-r', type=int, default=128, help='LoRA rank (alpha twice it, as the configs)')
    r.add_argument('--full', action='store_true', help='full fine-tune of the LLM linear layers instead of LoRA')
    r.add_argument('--seconds', type=float, default=0, help='stop (and measure) after this many seconds in all')
    r.add_argument('--init', help='LLM weights to start from (a --save file)')
    r.add_argument('--save', help='write the pre-trained LLM weights here')
    r.add_argument('--pretrain', type=int, default=0)
    r.add_argument('--pt-seconds', type=float, default=1e9)
    r.add_argument('--pt-bs', type=int, default=32)
    r.add_argument('--pt-lr', type=float, default=1e-3)
    r.add_argument('--pt-cosine', action='store_true')
    r.add_argument('--pt-every', type=int, default=250)
    r.add_argument('--turns', type=int, default=1)
    r.add_argument('--attr', type=int, nargs=2, default=(1, 5), help='attribute words at the image positions')
    r.add_argument('--freeze-emb', action='store_true')
    r.add_argument('--freeze-llm', action='store_true', help='fine-tune the projector (mlp1) alone, no LoRA')
    r.add_argument('--pt-mix', action='store_true', help='image positions: the mean of the attribute embeddings')
    r.add_argument('--pt-noise', type=float, default=0.0, help='noise on the image positions (x embedding std)')
    r.add_argument('--pool', default='phrases', choices=('words', 'phrases'))
    args = ap.parse_args()
    prep(args) if args.cmd == 'prep' else run(args)


if __name__ == '__main__':
    main()
