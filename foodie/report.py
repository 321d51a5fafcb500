"""What an evaluation shows: report.md, accuracy.png and the console summary, each drawn from metrics.json."""
from __future__ import annotations

import json
import os
from pathlib import Path

from foodie.atomic import atomic_path
from foodie.scoring import PROTOCOL
from foodie.stats import CHANCE
from foodie.tasks import TASKS

TASK_NAMES = {name: task.title for name, task in TASKS.items()}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _ci(ci, sign: str = "") -> str:
    return f"[{100 * ci[0]:{sign}.1f}, {100 * ci[1]:{sign}.1f}]"


def _cell(text, width: int = 80) -> str:
    text = str(text).replace("\n", " ").replace("|", "\\|")
    return text if len(text) <= width else text[:width - 1] + "…"


def comparability(metrics: dict) -> str:
    """One true sentence on whether these numbers can be set against the published ones."""
    q = metrics.get("questions") or {}
    template = metrics.get("template", 0)
    cap = (metrics.get("settings") or {}).get("max_new_tokens")
    if q.get("data") == "synthetic":
        return ("These questions are the synthetic stand-in (drawings, not food): the numbers show the pipeline "
                "works and say nothing about FoodieQA; no published result is shown beside them.")
    if q.get("data") not in (None, "FoodieQA"):
        return f"These questions are not FoodieQA ({q['data']}): no published result is shown beside them."
    if q.get("scope") != "full test set":
        return (f"Measured on a {q.get('scope', 'part of the test set')}, not the full test set the published "
                "numbers use: the scoring rule is the authors', the questions are not all theirs, so differences "
                "of a few points against a published number mean nothing.")
    if isinstance(cap, int) and cap < 500:
        return (f"Measured on the full test set with the authors' template {template} and their scoring rule, but "
                f"answers were cut at {cap} new tokens (the authors allow 500-1024): close to the published "
                "protocol, not the same.")
    return (f"Measured on the full test set with the authors' template {template} and their scoring rule: the "
            "same protocol as the published numbers (the prompt each published model got is in the paper).")


def training_data_lines(metrics: dict) -> list[str]:
    """Which data trained each model (its provenance note), and whether that is the data evaluated here."""
    trained = [(m["label"], m["trained_on"]) for m in metrics["models"] if m.get("trained_on")]
    if not trained:
        return []
    here = Path(metrics["data_root"]).resolve()
    lines = ["", "Training data: " + "; ".join(f"{_cell(label)}: {t['name']} (`{t.get('source', '?')}`)"
                                               for label, t in trained) + "."]
    same = [label for label, t in trained if t.get("source") and Path(t["source"]).resolve() == here]
    if same and not metrics["items_manifest"]:
        lines.append(f"**These questions include training data of {', '.join(same)}**: evaluate its held-out "
                     "manifest (--items) or another data set.")
    elif not same:
        lines.append("The evaluated data is not the training data of any model here.")
    return lines


def accuracy_table(metrics: dict) -> list[str]:
    """Per model and task (and overall): the headline with its interval, and the labelled figures beside it."""
    L = ["| model | task | accuracy % | 95% CI | letter right / no letter / n | seeded guess % | strict % | "
         "option text % (diagnostic) | guessing range (95%) |", "|---|---|---:|---|---:|---:|---:|---:|---|"]
    for m in metrics["models"]:
        overall = [("overall", m["overall"])] if len(m["tasks"]) > 1 else []
        for task, t in list(m["tasks"].items()) + overall:
            name, acc, rng = "**all**", f"**{_pct(t['accuracy'])}**", ""
            if task != "overall":
                lo, hi = t["chance"]["range95"]
                name, acc = TASK_NAMES[task], _pct(t["accuracy"])
                rng = f"{_pct(lo / t['n'])}–{_pct(hi / t['n'])}" if t["n"] else "-"
            L.append(f"| {_cell(m['label'])} | {name} | {acc} | {_ci(t['ci95'])} | "
                     f"{t['letter_right']} / {t['no_letter']} / {t['n']} | {_pct(t['seeded_guess']['accuracy'])} | "
                     f"{_pct(t['strict']['accuracy'])} | {_pct(t['option_text']['accuracy'])} | {rng} |")
    return L


def differences_table(metrics: dict) -> list[str]:
    L = ["| model | vs. | scope | difference (points) | 95% CI (paired bootstrap) | only base right | "
         "only model right | McNemar p |", "|---|---|---|---:|---|---:|---:|---:|"]
    for c in metrics["comparisons"]:
        for scope in ["overall"] + [k for k in c if k in TASK_NAMES]:
            s = c[scope]
            L.append(f"| {_cell(c['other'])} | {_cell(c['base'])} | {TASK_NAMES.get(scope, 'all')} | "
                     f"{100 * s['difference']:+.1f} | {_ci(s['ci95'], '+')} | {s['base_only_correct']} | "
                     f"{s['other_only_correct']} | {s['mcnemar_p']:.3g} |")
    return L


def render_report(metrics: dict, chart_name: str | None = "accuracy.png") -> str:
    models, lang, q = metrics["models"], metrics["lang"], metrics.get("questions") or {}
    cap = (metrics.get("settings") or {}).get("max_new_tokens")
    length = "" if not isinstance(cap, int) else f"; answers up to {cap} new tokens, greedy" + (
        " (**below the authors' 500**: a longer answer is cut there)" if cap < 500 else "")
    manifest = f" (manifest `{metrics['items_manifest']}`)" if metrics["items_manifest"] else ""
    L = ["# FoodieQA evaluation", "",
         f"Language: **{lang}**; prompt: the authors' template **{metrics.get('template', 0)}**{length}; data: "
         f"`{metrics['data_root']}` ({q.get('data', 'FoodieQA')}); questions: **{q.get('scope', '?')}**{manifest}."]
    L += training_data_lines(metrics)
    L += ["", f"**Accuracy** is the {PROTOCOL}. Beside it: *seeded guess* (one fixed random letter per letterless "
              "response: whole right answers), *strict* (no letter = wrong) and *option text*, a diagnostic that "
              "also reads the option an answer names in words (never FoodieQA accuracy). Intervals are 95% "
              "(Wilson). " + comparability(metrics), "", "## Accuracy", ""]
    L += accuracy_table(metrics)
    L += ["", f"*Guessing range*: the accuracies a model answering at random ({CHANCE:.0%}) reaches 95% of the time "
              "on this many questions; a result inside it is indistinguishable from chance.", ""]
    L += [f"![accuracy by model and task]({chart_name})", ""] if chart_name else []
    if metrics["comparisons"]:
        L += ["## Differences (paired, same questions)", ""] + differences_table(metrics)
        L += ["", "Difference: of the accuracy above. Right/wrong counts and McNemar's test use the seeded guess. "
                  "A difference whose interval contains 0 (or McNemar p >= 0.05) is not established by this "
                  "many questions.", ""]
    tasks = list(dict.fromkeys(t for m in models for t in m["tasks"]))
    for key, title in (("by_question_type", "question type"), ("by_cuisine", "cuisine")):
        L += [f"## Accuracy by {title}", ""]
        for task in tasks:
            got = [m["tasks"].get(task, {}).get(key, {}) for m in models]
            L += [f"**{TASK_NAMES[task]}**", "", f"| {title} | n | " + " | ".join(_cell(m["label"], 30)
                                                                             for m in models) + " |",
                  "|---|---:|" + "---:|" * len(models)]
            for g in dict.fromkeys(g for groups in got for g in groups):
                cells = [f"{_pct(s[g]['accuracy'])} ({s[g]['letter_right']} right, {s[g]['no_letter']} no letter)"
                         if g in s else "-" for s in got]
                L.append(f"| {_cell(g, 40)} | {max(s[g]['n'] for s in got if g in s)} | " + " | ".join(cells) + " |")
            L.append("")
    L += ["## Responses without a letter", ""]
    for m in models:
        for task, t in m["tasks"].items():
            if t["no_letter"]:
                L += [f"**{_cell(m['label'])}**, {TASK_NAMES[task]}: {t['no_letter']} of {t['n']} responses have "
                      f"no letter by the authors' rule (each counts 1/4). Examples:", ""]
                L += [f"- `{ex['item_id']}`: {json.dumps(_cell(ex['response'], 120), ensure_ascii=False)}"
                      for ex in t["no_letter_examples"]] + [""]
    if not any(t["no_letter"] for m in models for t in m["tasks"].values()):
        L += ["None: every response has a letter by the authors' rule.", ""]
    pub = metrics["published"]
    if pub.get("results"):
        L += ["## Published FoodieQA results (full test set)", "",
              f"By the authors on the **full test set** ({pub['source']}); {pub['marks']}. " + comparability(metrics),
              ""]
        for task, rows in pub["results"].items():
            note = pub.get(f"{task}_note")  # how the authors' rows of this task were measured, if it differs
            L += [f"**{TASK_NAMES[task]}, {lang}**" + (f" ({note})" if note else ""), "",
                  "| model | accuracy % | measured on |", "|---|---:|---|"]
            L += [f"| {r['model']} | {r['accuracy']:.2f}{r['mark']} | full test set, by the authors"
                  + (f"; {r['note']}" if r["note"] else "") + " |" for r in rows]
            q_label = f"{q.get('scope', 'questions here')}, {q.get('data', 'FoodieQA')}"
            L += [f"| **{_cell(m['label'])}** (ours) | {_pct(m['tasks'][task]['accuracy'])} | {q_label}, "
                  f"n={m['tasks'][task]['n']} |" for m in models if task in m["tasks"]] + [""]
    elif pub.get("why_not"):
        L += ["## Published FoodieQA results", "", f"Not shown: {pub['why_not']}.", ""]
    return "\n".join(L).rstrip() + "\n"


def print_summary(metrics: dict, console) -> None:
    """The accuracy (and differences) tables on the console, as in the report."""
    from rich.markdown import Markdown

    q = metrics.get("questions") or {}
    title = (f"**FoodieQA accuracy ({metrics['lang']}, template {metrics.get('template', 0)}, {q.get('scope', '')}), "
             "authors' rule, 95% CI**")
    tables = accuracy_table(metrics) + ([""] + differences_table(metrics) if metrics["comparisons"] else [])
    console.print(Markdown("\n".join([title, ""] + tables)))


def render_chart(metrics: dict, dest: str | os.PathLike) -> Path:
    """Bars of the headline per task and model, 95% intervals, the chance line; beside them, only for a run on
    the real FoodieQA, the published numbers of one task (grey, full test set) with ours labelled by scope."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import font_manager

    cjk = [f.name for f in font_manager.fontManager.ttflist if any(
        k in f.name for k in ("Noto Sans CJK", "WenQuanYi", "SimHei", "Source Han Sans"))]
    models, lang, q = metrics["models"], metrics["lang"], metrics.get("questions") or {}
    tasks = list(dict.fromkeys(t for m in models for t in m["tasks"]))
    results = metrics["published"].get("results") or {}
    pub_task = next((t for t in tasks if results.get(t)), None)
    with plt.rc_context({"font.sans-serif": cjk[:1] + ["DejaVu Sans"]}):
        ncols = 2 if pub_task else 1
        fig, axes = plt.subplots(1, ncols, figsize=(1 + 5 * ncols + 0.6 * len(models), 4.8), squeeze=False)
        ax, width = axes[0][0], 0.8 / max(1, len(models))
        for j, m in enumerate(models):
            shown = [(i, m["tasks"][t]) for i, t in enumerate(tasks) if t in m["tasks"]]
            xs = [i + (j - (len(models) - 1) / 2) * width for i, _ in shown]
            ys = [100 * t["accuracy"] for _, t in shown]
            errs = [[max(0.0, y - 100 * t["ci95"][0]) for y, (_, t) in zip(ys, shown)],  # >= 0 after rounding
                    [max(0.0, 100 * t["ci95"][1] - y) for y, (_, t) in zip(ys, shown)]]
            ax.bar(xs, ys, width * 0.95, yerr=errs, capsize=3, label=m["label"])
            for x, y, hi, (_, t) in zip(xs, ys, errs[1], shown):
                ax.text(x, min(y + hi + 1, 101), f"{y:.1f}" + (f"\n{t['no_letter']} no letter" if t["no_letter"]
                                                               else ""), ha="center", va="bottom", fontsize=7)
        ax.axhline(100 * CHANCE, color="grey", linestyle="--", linewidth=1, label=f"chance ({CHANCE:.0%})")
        ax.set_xticks(range(len(tasks)), [f"{TASK_NAMES[t]}\n(n={models[0]['tasks'].get(t, {}).get('n', 0)})"
                                          for t in tasks])
        ax.set_ylim(0, 130)  # room above 100 for the value labels, under the legend and the title
        ax.set_yticks(range(0, 101, 20))
        ax.set_ylabel("accuracy (%), authors' rule")
        ax.set_title(f"FoodieQA accuracy ({lang}, template {metrics.get('template', 0)}), 95% CI\n"
                     f"{q.get('scope', '')}, {q.get('data', '')} data", fontsize=10)
        ax.legend(fontsize=8, loc="upper left", ncol=len(models) + 1, frameon=False)
        if pub_task:
            ours = [(f"{m['label']} (ours, {q.get('scope', '')}, n={m['tasks'][pub_task]['n']})",
                     100 * m["tasks"][pub_task]["accuracy"], f"C{j}") for j, m in enumerate(models)
                    if pub_task in m["tasks"]]
            rows = sorted(ours + [(f"{r['model']}{r['mark']}", r["accuracy"], "0.75") for r in results[pub_task]],
                          key=lambda row: -row[1])
            ax2 = axes[0][1]
            ax2.barh(range(len(rows)), [v for _, v, _ in rows], color=[c for _, _, c in rows])
            for y, (_, v, _) in enumerate(rows):
                ax2.text(v + 1, y, f"{v:.1f}", va="center", fontsize=8)
            ax2.set_yticks(range(len(rows)), [name for name, _, _ in rows], fontsize=8)
            ax2.invert_yaxis()
            ax2.axvline(100 * CHANCE, color="grey", linestyle="--", linewidth=1)
            ax2.set_xlim(0, 110)
            ax2.set_xlabel("accuracy (%)")
            ax2.set_title(f"{TASK_NAMES[pub_task]} ({lang}): grey = published by the authors,\nfull test set",
                          fontsize=9)
        fig.tight_layout()
        with atomic_path(Path(dest)) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
        plt.close(fig)
    return Path(dest)
