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
ap.add_argument('--act', help='tiny: hidden_act (silu: SwiGLU as shipped; gelu: GeGLU)')
ap.add_argument('--ffn', type=int, help='tiny: intermediate_size (default 2 x width)')
ap.add_argument('--tokens', type=int, default=1, help='tokens per option text (2: two-token texts, as many of '
                                                         'the synthetic set\'s are)')
# The plain GPT with one of InternLM2's components at a time (none given: torch.nn.TransformerEncoder's block)
ap.add_argument('--gpt-rope', type=float, help='gpt: rotary positions with this theta instead of learned ones')
ap.add_argument('--gpt-rms', action='store_true', help='gpt: RMSNorm (no bias, no centring) instead of LayerNorm')
ap.add_argument('--gpt-swiglu', action='store_true', help='gpt: SwiGLU MLP instead of ReLU')
ap.add_argument('--gpt-nobias', action='store_true', help='gpt: no biases in attention and MLP')
ap.add_argument('--gpt-kv', type=int, help='gpt: grouped-query attention with this many key/value heads')
ap.add_argument('--gpt-std', type=float, help='gpt: every weight N(0, std), embeddings too, as InternLM2 draws them')
ap.add_argument('--every', type=int, default=250)
ap.add_argument('--device', default='cpu')
ap.add_argument('--threads', type=int, default=1)
ap.add_argument('--tag', default='')
ap.add_argument('--save', help='tiny: save the trained LLM state_dict here (a pre-training for bench/tiny_learning_seeds.sh LOOKUP=)')
ap.add_argument('--seed', type=int, default=0, help='seed of the model and of the training batches (held-out set fixed)')
a = ap.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(a.seed)
for key, value in dict(rope_theta=a.rope, initializer_range=a.std, num_hidden_layers=a.layers,
                       num_attention_heads=a.heads, num_key_value_heads=a.kv_heads, bias=a.bias or None,
                       hidden_act=a.act).items():
    if value is not None:
        tm.TINY_LLM[key] = value
if a.width:
    tm.TINY_LLM.update(hidden_size=a.width, intermediate_size=2 * a.width)
if a.ffn:
    tm.TINY_LLM.update(intermediate_size=a.ffn)
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
    n = a.tokens
    options = torch.stack([words[torch.randperm(len(words), generator=g)[:4 * n]] for _ in range(B)]).view(B, 4, n)
    asked = torch.randint(0, 4, (B, a.queries), generator=g)
    full = lambda shape, v: torch.full(shape, v)  # noqa: E731
    head = torch.cat([full((B, 4, 1), LP), LETTERS.view(1, 4, 1).expand(B, 4, 1), full((B, 4, 1), RP), options,
                      full((B, 4, 1), NL)], -1)
    qw = torch.gather(options, 1, asked[..., None].expand(B, a.queries, n))
    tail = torch.cat([qw, full((B, a.queries, 1), LP), LETTERS[asked][..., None], full((B, a.queries, 1), RP)], -1)
    ids = torch.cat([full((B, 1), tok.bos_token_id), head.reshape(B, -1), tail.reshape(B, -1)], 1)
    labels = torch.full_like(ids, -100)
    where = 1 + 4 * (n + 4) + (n + 3) * torch.arange(a.queries) + n + 1
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


class RMSNorm(torch.nn.Module):
    def __init__(self, d, eps=1e-5):
        super().__init__()
        self.weight, self.eps = torch.nn.Parameter(torch.ones(d)), eps

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


def rotate(x, theta):  # rotary positions, InternLM2's layout (halves rotated), x: [B, H, T, hd]
    T, hd = x.shape[-2], x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, hd, 2, device=x.device).float() / hd)
    ang = torch.outer(torch.arange(T, device=x.device).float(), inv)
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
    x1, x2 = x[..., :hd // 2], x[..., hd // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


class Block(torch.nn.Module):
    """The GPT's pre-norm block, with InternLM2's components switched in by the --gpt-* flags."""
    def __init__(self, d, heads):
        super().__init__()
        self.h, self.kv, self.hd = heads, a.gpt_kv or heads, d // heads
        norm = (lambda: RMSNorm(d)) if a.gpt_rms else (lambda: torch.nn.LayerNorm(d))
        bias = not a.gpt_nobias
        self.n1, self.n2 = norm(), norm()
        self.qkv = torch.nn.Linear(d, (self.h + 2 * self.kv) * self.hd, bias=bias)
        self.o = torch.nn.Linear(d, d, bias=bias)
        self.up = torch.nn.Linear(d, (4 if a.gpt_swiglu else 2) * d, bias=bias)
        self.down = torch.nn.Linear(2 * d, d, bias=bias)

    def forward(self, x):
        B, T, d = x.shape
        q, k, v = self.qkv(self.n1(x)).view(B, T, -1, self.hd).transpose(1, 2).split([self.h, self.kv, self.kv], 1)
        if a.gpt_rope:
            q, k = rotate(q, a.gpt_rope), rotate(k, a.gpt_rope)
        k, v = (t.repeat_interleave(self.h // self.kv, 1) for t in (k, v))
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o(y.transpose(1, 2).reshape(B, T, d))
        u = self.up(self.n2(x))
        if a.gpt_swiglu:
            gate, u = u.chunk(2, -1)
            u = torch.nn.functional.silu(gate) * u
        return x + self.down(torch.relu(u) if not a.gpt_swiglu else u)


class GPTVariant(torch.nn.Module):
    def __init__(self, d=128, layers=2, heads=4):
        super().__init__()
        self.emb = torch.nn.Embedding(V, d)
        self.pos = None if a.gpt_rope else torch.nn.Embedding(512, d)
        self.blocks = torch.nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.norm = RMSNorm(d) if a.gpt_rms else torch.nn.LayerNorm(d)
        self.head = torch.nn.Linear(d, V, bias=not a.gpt_nobias)
        if a.gpt_std:
            for name, p in self.named_parameters():
                if p.dim() == 2:
                    torch.nn.init.normal_(p, std=a.gpt_std)
                elif name.endswith('bias'):
                    torch.nn.init.zeros_(p)

    def forward(self, ids):
        x = self.emb(ids)
        if self.pos is not None:
            x = x + self.pos(torch.arange(ids.shape[1], device=ids.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


dev = a.device
if a.which == 'gpt':
    variant = a.gpt_rope or a.gpt_rms or a.gpt_swiglu or a.gpt_nobias or a.gpt_kv or a.gpt_std
    net = (GPTVariant if variant else GPT)(a.width or 128, a.layers or 2, a.heads or 4).to(dev)
    forward = net
else:
    net = tm.build_model(a.seed, vocab_size=V, dtype=torch.float32, device=dev).language_model
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
print(f'{a.which}{a.tag}: {sum(p.numel() for p in net.parameters()):,} parameters, {vars(a)}', flush=True)
g, held_g = torch.Generator().manual_seed(1000 + a.seed if a.seed else 0), torch.Generator().manual_seed(1)
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
if a.save and a.which == 'tiny':
    torch.save({k: v.cpu() for k, v in net.state_dict().items()}, a.save)
