"""How fast does the embedded default learn? Held-out SIVQA accuracy along training, per setting.

Trains the CPU config's model (FoodieInternVL: the tiny InternVL2, LoRA on the LLM, projector trained)
with a plain PyTorch loop on the config's dataset (the same samples, template and tiling XTuner
uses), and every --eval-every iterations measures the held-out accuracy of the first answer token
(greedy: what chat() would start its reply with), overall and per question type, on held-out and
on training photos. Used to choose the CPU config's lr / iterations / answer style; the real check is
tests/test_quickstart.py::test_quickstart_runs_the_course_and_skips_finished_stages_on_rerun (xtuner train,
merge, eval_food).
Accuracy: the greedy reply (up to 32 tokens) read by the option-text diagnostic (foodie.scoring.option_text_reading;
not FoodieQA's rule, which reads only the first capital A-D).

    python bench/tiny_learning_sweep.py --work /tmp/sweep --lr 1e-3 3e-3 --style name letter
    python bench/tiny_learning_sweep.py --device cuda ...      # same dynamics, for quick sweeps

Prints one line per evaluation and a final table (setting, iterations, accuracy, CPU/wall time).
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def build_inputs(work: Path, style: str, photos_per_dish: int, seed: int):
    from foodie.data_conversion import ConversionOptions, convert_foodieqa
    from foodie.synthetic_data import make_demo_data
    from foodie.tiny_model import write_checkpoint

    model = work / "tiny-internvl2"
    if not (model / "config.json").exists():
        write_checkpoint(model, seed=0)
    demo = work / f"foodieqa-p{photos_per_dish}-s{seed}"
    if not demo.exists():
        make_demo_data(demo, seed=seed, photos_per_dish=photos_per_dish)
    data = work / f"xtuner-p{photos_per_dish}-s{seed}-{style}"
    if not (data / "train.json").exists():
        convert_foodieqa(demo, data, ConversionOptions(style=style, check_images=False))
    return model, demo, data


def run(setting: dict, args) -> dict:
    import torch
    from mmengine.config import Config
    from xtuner.dataset.collate_fns import default_collate_fn
    from xtuner.registry import BUILDER

    from foodie.evaluation import build_questions
    from foodie.image_tiling import load_image
    from foodie.model_spec import IMG_CONTEXT, ModelSpec
    from foodie.scoring import option_text_reading as parse_choice
    from foodie.xtuner_dataset import conversation_template

    model_dir, demo, data = build_inputs(args.work, setting["style"], setting["photos"], args.seed)
    os.environ.update(FOODIE_MODEL=str(model_dir), FOODIE_DATA=str(data))
    cfg = Config.fromfile(str(args.config))
    cfg.model.llm_lora.r = setting["r"]
    cfg.model.llm_lora.lora_alpha = 2 * setting["r"]
    tiles = cfg.train_dataloader.dataset.max_dynamic_patch or 1
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    model = BUILDER.build(cfg.model).to(args.device)
    dataset = BUILDER.build(cfg.train_dataloader.dataset)
    tok = model_tok = None
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
    template, system = conversation_template(str(model_dir))
    spec = ModelSpec.from_checkpoint(model_dir)
    ctx = tok.convert_tokens_to_ids(IMG_CONTEXT)
    stop = {tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id}

    held, root = build_questions(demo, tasks=["sivqa"], items=data / "held_out.json")
    held_ids = {q.question_id for q in held}
    everything, _ = build_questions(demo, tasks=["sivqa"])
    seen = [q for q in everything if q.question_id not in held_ids][: len(held)]

    def encode(questions):
        out = []
        for q in questions:
            pv = load_image(Path(root) / q.images[0], input_size=spec.tile_size, max_num=tiles)
            image = spec.image_tokens(pv.shape[0])
            text = template["SYSTEM"].format(system=system) + template["INSTRUCTION"].format(input=image + "\n" + q.prompt)
            out.append((tok(text, return_tensors="pt").input_ids, pv, q.answer, q.question_type, q.choices))
        return out

    sets = {"held_out": encode(held), "train_photos": encode(seen)}

    @torch.no_grad()
    def accuracy(items):
        model.eval()
        hits, by_type = 0, {}
        for ids, pv, answer, qtype, choices in items:
            ids, pv = ids.to(args.device), pv.to(args.device)
            llm = model.model.language_model
            emb = llm.get_input_embeddings()(ids).clone()
            emb[0, ids[0] == ctx] = model.model.extract_feature(pv).reshape(-1, emb.shape[-1])
            reply, past = [], None
            for _ in range(32):  # greedy, with the KV cache
                out = llm(inputs_embeds=emb, past_key_values=past, use_cache=True)
                past, top = out.past_key_values, int(out.logits[0, -1].argmax())
                if top in stop:
                    break
                reply.append(top)
                emb = llm.get_input_embeddings()(torch.tensor([[top]], device=args.device))
            ok = parse_choice(tok.decode(reply), choices) == answer
            hits += ok
            by_type.setdefault(qtype, []).append(ok)
        model.train()
        return hits / len(items), {k: round(sum(v) / len(v), 2) for k, v in sorted(by_type.items())}

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=setting["lr"], weight_decay=0.05)
    iters, warm = setting["iters"], 10
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(i, iters) / iters)))
    log = []
    t0, c0, it = time.time(), time.process_time(), 0
    acc0 = accuracy(sets["held_out"])
    print(f"{setting} it 0 held-out {acc0[0]:.2f}", flush=True)
    t0, c0 = time.time(), time.process_time()
    eval_time = 0.0
    while it < iters:
        order = list(range(len(dataset)))
        random.shuffle(order)
        for b in range(0, len(order) - args.batch + 1, args.batch):
            batch = default_collate_fn([dataset[i] for i in order[b:b + args.batch]])["data"]
            batch = {k: (v.to(args.device) if hasattr(v, "to") else v) for k, v in batch.items()}
            loss = model(batch)["loss"]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad()
            sched.step()
            it += 1
            if it % args.eval_every == 0 or it == iters:
                e0 = time.time()
                h, t = accuracy(sets["held_out"]), accuracy(sets["train_photos"])
                eval_time += time.time() - e0
                row = dict(it=it, loss=round(loss.item(), 3), held_out=round(h[0], 3), train_photos=round(t[0], 3),
                           by_type=h[1], train_s=round(time.time() - t0 - eval_time, 1),
                           cpu_s=round(time.process_time() - c0, 1))
                log.append(row)
                print(f"{setting} {json.dumps(row, ensure_ascii=False)}", flush=True)
            if it >= iters:
                break
    return dict(setting=setting, start=acc0[0], log=log)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=REPO / "work" / "sweep")
    ap.add_argument("--config", type=Path, default=REPO / "xtuner_configs" / "internvl_v2_tiny_lora_cpu.py")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--lr", type=float, nargs="+", default=[1e-3])
    ap.add_argument("--style", nargs="+", default=["name"])
    ap.add_argument("--photos", type=int, nargs="+", default=[20], help="synthetic photos per dish")
    ap.add_argument("--r", type=int, nargs="+", default=[128], help="LoRA rank (alpha = 2 r)")
    ap.add_argument("--iters", type=int, nargs="+", default=[600])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="write all results as JSON here")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    results = []
    for lr, style, photos, r, iters in itertools.product(args.lr, args.style, args.photos, args.r, args.iters):
        results.append(run(dict(lr=lr, style=style, photos=photos, r=r, iters=iters), args))
    print("\n| lr | style | photos/dish | r | iters | held-out start | held-out end | best (iter) | train-photo end | train s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for res in results:
        s, log = res["setting"], res["log"]
        best = max(log, key=lambda r: r["held_out"])
        print(f"| {s['lr']} | {s['style']} | {s['photos']} | {s['r']} | {s['iters']} | {res['start']:.2f} | "
              f"{log[-1]['held_out']:.2f} | {best['held_out']:.2f} ({best['it']}) | {log[-1]['train_photos']:.2f} | "
              f"{log[-1]['train_s']} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
