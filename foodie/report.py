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


def _row(*cells) -> str:
    return "| " + " | ".join(map(str, cells)) + " |"


def comparability(metrics: dict) -> str:
    """One true sentence on whether these numbers can be set against the published ones."""
    q, cap = metrics["questions"], metrics.get("settings", {}).get("max_new_tokens", 512)
    if q["data"] != "FoodieQA":
        return f"These questions are {q['data']} data, not FoodieQA: no published result is shown beside them."
    if q["scope"] != "full test set":
        return (f"Measured on a {q['scope']}, not the full test set the published numbers use: differences of a "
                "few points against a published number mean nothing.")
    return (f"Measured on the full test set with the authors' template {metrics['template']} and their scoring rule"
            + (f", but answers were cut at {cap} new tokens (the authors allow 500-1024): close to the published "
               "protocol, not the same." if cap < 500 else ": the same protocol as the published numbers."))


def training_data_lines(metrics: dict) -> list[str]:
    """Which data trained each model (its provenance note), and whether that is the data evaluated here."""
    trained = [(m["label"], m["trained_on"]) for m in metrics["models"] if m.get("trained_on")]
    if not trained:
        return []
    here = Path(metrics["data_root"]).resolve()
    same = [label for label, t in trained if t.get("source") and Path(t["source"]).resolve() == here]
    lines = ["", "Training data: " + "; ".join(f"{_cell(label)}: {t['name']} (`{t.get('source', '?')}`)"
                                               for label, t in trained) + "."]
    if not same:
        return lines + ["The evaluated data is not the training data of any model here."]
    return lines + ([] if metrics["items_manifest"] else [f"**These questions include training data of "
                                                          f"{', '.join(same)}**: evaluate its held-out manifest "
                                                          "(--items) or another data set."])


def accuracy_table(metrics: dict) -> list[str]:
    """Per model and task (and overall): the headline with its interval, and the labelled figures beside it."""
    L = ["| model | task | accuracy % | 95% CI | letter right / no letter / n | seeded guess % | strict % | "
         "option text % (diagnostic) | guessing range (95%) |", "|---|---|---:|---|---:|---:|---:|---:|---|"]
    for m in metrics["models"]:
        for task, t in list(m["tasks"].items()) + ([("overall", m["overall"])] if len(m["tasks"]) > 1 else []):
            acc, rng = _pct(t["accuracy"]), "–".join(_pct(k / t["n"]) for k in t.get("chance", {}).get("range95", []))
            L.append(_row(_cell(m["label"]), TASK_NAMES.get(task, "**all**"), acc if rng else f"**{acc}**",
                          _ci(t["ci95"]), f"{t['letter_right']} / {t['no_letter']} / {t['n']}",
                          _pct(t["seeded_guess"]["accuracy"]), _pct(t["strict"]["accuracy"]),
                          _pct(t["option_text"]["accuracy"]), rng))
    return L


def differences_table(metrics: dict) -> list[str]:
    L = ["| model | vs. | scope | difference (points) | 95% CI (paired bootstrap) | only base right | "
         "only model right | McNemar p |", "|---|---|---|---:|---|---:|---:|---:|"]
    for c in metrics["comparisons"]:
        for scope, s in [(k, s) for k, s in c.items() if isinstance(s, dict)]:  # overall, then each task
            L.append(_row(_cell(c["other"]), _cell(c["base"]), TASK_NAMES.get(scope, "all"),
                          f"{100 * s['difference']:+.1f}", _ci(s["ci95"], "+"), s["base_only_correct"],
                          s["other_only_correct"], f"{s['mcnemar_p']:.3g}"))
    return L


def render_report(metrics: dict, chart_name: str | None = "accuracy.png") -> str:
    models, lang, q, pub = metrics["models"], metrics["lang"], metrics["questions"], metrics["published"]
    cap = metrics.get("settings", {}).get("max_new_tokens")
    length = "" if cap is None else f"; answers up to {cap} new tokens, greedy" + (
        " (**below the authors' 500**: a longer answer is cut there)" if cap < 500 else "")
    manifest = f" (manifest `{metrics['items_manifest']}`)" if metrics["items_manifest"] else ""
    L = ["# FoodieQA evaluation", "",
         f"Language: **{lang}**; prompt: the authors' template **{metrics['template']}**{length}; data: "
         f"`{metrics['data_root']}` ({q['data']}); questions: **{q['scope']}**{manifest}.",
         *training_data_lines(metrics),
         "", f"**Accuracy** is the {PROTOCOL}. Beside it: *seeded guess* (one fixed random letter per letterless "
             "response: whole right answers), *strict* (no letter = wrong) and *option text*, a diagnostic that also "
             "reads the option an answer names in words (never FoodieQA accuracy). Intervals are 95% (Wilson). "
         + comparability(metrics), "", "## Accuracy", "", *accuracy_table(metrics),
         "", f"*Guessing range*: the accuracies a model answering at random ({CHANCE:.0%}) reaches 95% of the time "
             "on this many questions; a result inside it is indistinguishable from chance.", ""]
    L += [f"![accuracy by model and task]({chart_name})", ""] if chart_name else []
    if metrics["comparisons"]:
        L += ["## Differences (paired, same questions)", "", *differences_table(metrics), "",
              "Difference: of the accuracy above. Right/wrong counts and McNemar's test use the seeded guess. A "
              "difference whose interval contains 0 (or McNemar p >= 0.05) is not established by this many "
              "questions.", ""]
    for key, title in (("by_question_type", "question type"), ("by_cuisine", "cuisine")):
        L += [f"## Accuracy by {title}", "", _row("task", title, "n", *(_cell(m["label"], 30) for m in models)),
              "|---|---|---:|" + "---:|" * len(models)]
        for task in dict.fromkeys(t for m in models for t in m["tasks"]):
            got = [m["tasks"].get(task, {}).get(key, {}) for m in models]
            L += [_row(TASK_NAMES[task], _cell(g, 40), max(s[g]["n"] for s in got if g in s),
                       *(f"{_pct(s[g]['accuracy'])} ({s[g]['letter_right']} right, {s[g]['no_letter']} no letter)"
                         if g in s else "-" for s in got)) for g in dict.fromkeys(g for s in got for g in s)]
        L.append("")
    lacking = [(m, task, t) for m in models for task, t in m["tasks"].items() if t["no_letter"]]
    L += ["## Responses without a letter", ""] + ([] if lacking else ["None: every response has a letter by the "
                                                                      "authors' rule.", ""])
    for m, task, t in lacking:
        L += [f"**{_cell(m['label'])}**, {TASK_NAMES[task]}: {t['no_letter']} of {t['n']} responses have no letter "
              "by the authors' rule (each counts 1/4). Examples:", "",
              *(f"- `{ex['item_id']}`: {json.dumps(_cell(ex['response'], 120), ensure_ascii=False)}"
                for ex in t["no_letter_examples"]), ""]
    if pub["results"]:
        L += ["## Published FoodieQA results (full test set)", "", f"By the authors on the **full test set** "
              f"({pub['source']}); {pub['marks']}. {comparability(metrics)}", ""]
    else:
        L += ["## Published FoodieQA results", "", f"Not shown: {pub['why_not']}.", ""]
    for task, rows in pub["results"].items():
        note = pub.get(f"{task}_note")  # how the authors' rows of this task were measured, if it differs
        L += [f"**{TASK_NAMES[task]}, {lang}**" + (f" ({note})" if note else ""), "",
              "| model | accuracy % | measured on |", "|---|---:|---|",
              *(_row(r["model"], f"{r['accuracy']:.2f}{r['mark']}", "full test set, by the authors"
                     + (f"; {r['note']}" if r["note"] else "")) for r in rows),
              *(_row(f"**{_cell(m['label'])}** (ours)", _pct(m["tasks"][task]["accuracy"]),
                     f"{q['scope']}, {q['data']}, n={m['tasks'][task]['n']}") for m in models if task in m["tasks"]),
              ""]
    return "\n".join(L).rstrip() + "\n"


def print_summary(metrics: dict, console) -> None:
    """The accuracy (and differences) tables on the console, as in the report."""
    from rich.markdown import Markdown

    title = (f"**FoodieQA accuracy ({metrics['lang']}, template {metrics['template']}, "
             f"{metrics['questions']['scope']}), authors' rule, 95% CI**")
    tables = accuracy_table(metrics) + ([""] + differences_table(metrics) if metrics["comparisons"] else [])
    console.print(Markdown("\n".join([title, ""] + tables)))


def render_chart(metrics: dict, dest: str | os.PathLike) -> Path:
    """Bars of the headline per task and model, 95% intervals, the chance line; beside them, only for a run on
    the real FoodieQA, the published numbers of one task (grey, full test set) with ours labelled by scope."""
    import numpy as np
    from matplotlib import font_manager, rc_context
    from matplotlib.figure import Figure

    cjk = [f.name for f in font_manager.fontManager.ttflist if any(
        k in f.name for k in ("Noto Sans CJK", "WenQuanYi", "SimHei", "Source Han Sans"))]
    models, lang, q, results = metrics["models"], metrics["lang"], metrics["questions"], metrics["published"]["results"]
    tasks = list(dict.fromkeys(t for m in models for t in m["tasks"]))
    pub_task = next((t for t in tasks if results.get(t)), None)
    with rc_context({"font.sans-serif": cjk[:1] + ["DejaVu Sans"], "axes.titlesize": 9.5, "legend.fontsize": 8}):
        fig = Figure(figsize=(6 + 5 * bool(pub_task) + 0.6 * len(models), 4.8))
        axes = fig.subplots(1, 1 + bool(pub_task), squeeze=False)[0]
        ax, width = axes[0], 0.8 / len(models)
        for j, m in enumerate(models):
            shown = [(i, m["tasks"][t]) for i, t in enumerate(tasks) if t in m["tasks"]]
            ys = np.array([100 * t["accuracy"] for _, t in shown])
            ci = 100 * np.array([t["ci95"] for _, t in shown])
            bars = ax.bar([i + (j - (len(models) - 1) / 2) * width for i, _ in shown], ys, width * 0.95, capsize=3,
                          yerr=np.clip([ys - ci[:, 0], ci[:, 1] - ys], 0, None), label=m["label"])  # >= 0: rounding
            ax.bar_label(bars, [f"{y:.1f}" + (f"\n{t['no_letter']} no letter" if t["no_letter"] else "")
                                for y, (_, t) in zip(ys, shown)], fontsize=7, padding=2)
        ax.axhline(100 * CHANCE, color="grey", linestyle="--", linewidth=1, label=f"chance ({CHANCE:.0%})")
        ax.set_xticks(range(len(tasks)), [f"{TASK_NAMES[t]}\n(n={models[0]['tasks'].get(t, {}).get('n', 0)})"
                                          for t in tasks])
        ax.set(ylim=(0, 130), yticks=range(0, 101, 20), ylabel="accuracy (%), authors' rule",  # room for the labels
               title=f"FoodieQA accuracy ({lang}, template {metrics['template']}), 95% CI\n"
                     f"{q['scope']}, {q['data']} data")
        ax.legend(loc="upper left", ncol=len(models) + 1, frameon=False)
        if pub_task:  # best at the top: ours (in the models' colours, labelled by scope) among the authors' (grey)
            rows = [(f"{r['model']}{r['mark']}", r["accuracy"], "0.75") for r in results[pub_task]] + [
                (f"{m['label']} (ours, {q['scope']}, n={m['tasks'][pub_task]['n']})",
                 100 * m["tasks"][pub_task]["accuracy"], f"C{j}") for j, m in enumerate(models)
                if pub_task in m["tasks"]]
            names, values, colours = zip(*sorted(rows, key=lambda row: row[1]))
            axes[1].bar_label(axes[1].barh(names, values, color=colours), fmt="%.1f", fontsize=8, padding=2)
            axes[1].axvline(100 * CHANCE, color="grey", linestyle="--", linewidth=1)
            axes[1].set(xlim=(0, 110), xlabel="accuracy (%)",
                        title=f"{TASK_NAMES[pub_task]} ({lang}): grey = published by the authors,\nfull test set")
            axes[1].tick_params(axis="y", labelsize=8)
        fig.tight_layout()
        with atomic_path(Path(dest)) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
    return Path(dest)
