"""How many steps does the tiny LLM need to learn the option look-up, beside a plain PyTorch GPT of its size?

The cleanest form of the skill a letter answer needs: an option list in the authors' format, then queries
" 川菜（" whose answer is the letter written before that word in the list:

    <s>（A) 豆腐\n（B) 川菜\n（C) 早餐\n（D) 鱼\n 川菜（B) 鱼（D) ...      (every letter after "（" is labelled)

Single-token words of the tiny tokenizer, built from ids (no tokenizer call per item, so a GPU is not starved).
`gpt` is torch.nn.TransformerEncoder with a causal mask and learned positions; `tiny` is the embedded model's
InternLM2 (OpenGVLab's file from the installed XTuner, as tiny_model.build_model builds it) with TINY_LLM's
settings, changed by --rope/--std/--width/--layers.

    python bench/tiny_lookup_drill.py tiny --steps 3000 --lr 1e-3
    python bench/tiny_lookup_drill.py gpt --device cuda --steps 20000 --seconds 150
"""
import argparse
import time

import torch

from foodie import tiny_model as tm

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument('which', choices=['gpt', 'tiny'])
ap.add_argument('--steps', type=int, default=1000)
ap.add_argument('--seconds', type=float, default=1e9, help='stop after this wall time')
ap.add_argument('--lr', type=float, default=1e-3)
ap.add_argument('--warmup', type=int, default=0)
ap.add_argument('--bs', type=int, default=32)
ap.add_argument('--queries', type=int, default=6)
ap.add_argument('--words', type=int, default=0, help='use only the first N words (0: all)')
ap.add_argument('--rope', type=float)
ap.add_argument('--std', type=float)
ap.add_argument('--emb-std', type=float, help='redraw the token embeddings with this std (a GPT draws N(0, 1))')
ap.add_argument('--width', type=int)
ap.add_argument('--layers', type=int)
ap.add_argument('--heads', type=int)
ap.add_argument('--kv-heads', type=int)
ap.add_argument('--bias', action='store_true', help='attention biases (InternLM2Config bias=True)')
ap.add_argument('--bias-std', type=float, help='draw the attention biases N(0, std) instead of zeros')
ap.add_argument('--emb-mean', type=float, help='add this times one random unit vector to every token embedding')
ap.add_argument('--every', type=int, default=250)
ap.add_argument('--device', default='cpu')
ap.add_argument('--threads', type=int, default=1)
ap.add_argument('--tag', default='')
a = ap.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
for key, value in dict(rope_theta=a.rope, initializer_range=a.std, num_hidden_layers=a.layers,
                       num_attention_heads=a.heads, num_key_value_heads=a.kv_heads, bias=a.bias or None).items():
    if value is not None:
        tm.TINY_LLM[key] = value
if a.width:
    tm.TINY_LLM.update(hidden_size=a.width, intermediate_size=2 * a.width)
tok = tm.build_tokenizer()
V = len(tok)


def enc(text):
    return tok(text, add_special_tokens=False).input_ids


pool = tm._WORDS_ZH.split() + tm._DISHES_ZH.split() + tm._WORDS_EN.split()
words = sorted({ids[0] for w in pool for ids in [enc(' ' + w)] if len(ids) == 1})
words = torch.tensor(words[:a.words] if a.words else words)
LP, RP, NL = enc('（')[0], enc(')')[0], enc('\n')[0]
LETTERS = torch.tensor([enc(L)[0] for L in 'ABCD'])


def batch(g, B):
    options = torch.stack([words[torch.randperm(len(words), generator=g)[:4]] for _ in range(B)])
    asked = torch.randint(0, 4, (B, a.queries), generator=g)
    full = lambda shape, v: torch.full(shape, v)  # noqa: E731
    head = torch.stack([full((B, 4), LP), LETTERS.expand(B, 4), full((B, 4), RP), options, full((B, 4), NL)], -1)
    qw = torch.gather(options, 1, asked)
    tail = torch.stack([qw, full(qw.shape, LP), LETTERS[asked], full(qw.shape, RP)], -1)
    ids = torch.cat([full((B, 1), tok.bos_token_id), head.reshape(B, 20), tail.reshape(B, -1)], 1)
    labels = torch.full_like(ids, -100)
    where = 21 + 4 * torch.arange(a.queries) + 2
    labels[:, where] = ids[:, where]
    return ids, labels


class GPT(torch.nn.Module):
    def __init__(self, d=128, layers=2, heads=4):
        super().__init__()
        self.emb, self.pos = torch.nn.Embedding(V, d), torch.nn.Embedding(512, d)
        layer = torch.nn.TransformerEncoderLayer(d, heads, 2 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.enc = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = torch.nn.Linear(d, V)

    def forward(self, ids):
        T = ids.shape[1]
        x = self.emb(ids) + self.pos(torch.arange(T, device=ids.device))
        mask = torch.nn.Transformer.generate_square_subsequent_mask(T, device=ids.device)
        return self.head(self.enc(x, mask=mask, is_causal=True))


dev = a.device
if a.which == 'gpt':
    net = GPT(a.width or 128, a.layers or 2, a.heads or 4).to(dev)
    forward = net
else:
    net = tm.build_model(0, vocab_size=V, dtype=torch.float32, device=dev).language_model
    forward = lambda ids: net(input_ids=ids).logits  # noqa: E731
    if a.emb_std:
        torch.nn.init.normal_(net.model.tok_embeddings.weight, std=a.emb_std)
    with torch.no_grad():
        if a.emb_mean:
            u = torch.randn(net.config.hidden_size)
            net.model.tok_embeddings.weight += a.emb_mean * u / u.norm()
        for name, p in net.named_parameters():
            if a.bias_std and name.endswith('bias'):
                p.normal_(std=a.bias_std)
opt = torch.optim.AdamW(net.parameters(), lr=a.lr, weight_decay=0)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / max(1, a.warmup)))
g, held_g = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
held = [t.to(dev) for t in batch(held_g, 256)]
t0 = time.time()
for step in range(a.steps):
    ids, labels = (t.to(dev) for t in batch(g, a.bs))
    logits = forward(ids)[:, :-1]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), labels[:, 1:].reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    opt.step()
    opt.zero_grad()
    sched.step()
    if (step + 1) % a.every == 0 or time.time() - t0 > a.seconds:
        with torch.no_grad():
            ids, labels = held
            logits, target = forward(ids)[:, :-1], labels[:, 1:]
            acc = (logits[target != -100].argmax(-1) == target[target != -100]).float().mean().item()
        print(f'{a.which}{a.tag} step {step + 1} loss {loss.item():.3f} acc {acc:.3f} {time.time() - t0:.0f} s',
              flush=True)
        if time.time() - t0 > a.seconds:
            break
