#!/usr/bin/env python3
"""Assembles the budget x method table from the committed reports (reports/*.json, written by
run.py) and prints it as markdown. Python 3 standard library only:

    python3 experiments/fair/table.py > /tmp/table.md
"""

import glob
import json
import os
import re
import statistics

HERE = os.path.dirname(os.path.abspath(__file__))
BUDGETS = [8000, 4000, 2000, 1000, 500]
METHODS = [("snl", "SNL (pixel)"), ("random", "random pixels"), ("layer", "whole layers")]
TOTAL = 20384
# The authors' PyTorch code on the same task (lambda 1e-3 held while the count falls, 3 finetuning
# epochs, 90.44% teacher): budget -> (ReLUs kept, test accuracy).
REFERENCE = {4000: (3812, 0.8746), 2000: (1974, 0.8686), 1000: (976, 0.8631)}
# The previous table (baselines finetuned 3 epochs only, SNL with --min-decrease 0.05, one seed):
# SNL's lead over random pixels in points, to show whether matched epochs shrink it.
OLD_LEAD_OVER_RANDOM = {4000: 87.19 - 82.21, 2000: 85.11 - 80.43, 1000: 85.03 - 78.84}
NAME = re.compile(r"^(?P<method>[a-z0-9-]+?)-(?P<budget>\d+)-s(?P<seed>\d+)\.json$")


def load(folder):
    """{(method, budget): {seed: report}} for every report in folder."""
    runs = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
        m = NAME.match(os.path.basename(path))
        if not m:
            continue
        with open(path) as f:
            rep = json.load(f)
        key = (m["method"], int(m["budget"]))
        runs.setdefault(key, {})[int(m["seed"])] = rep
    return runs


def pct(x):
    return f"{100 * x:.2f}"


def spread(values):
    """'mean ± sample std' in percent (no ± with one value)."""
    mean = statistics.mean(values)
    if len(values) < 2:
        return f"{pct(mean)}%"
    return f"{pct(mean)} ± {pct(statistics.stdev(values))}%"


def cell(reps, key="test_acc_finetuned"):
    if not reps:
        return "not run yet"
    values = [r[key] for r in reps.values() if r.get(key) is not None]
    if not values:
        return "n/a"
    relus = statistics.mean(r["relus_after"] for r in reps.values())
    return f"{spread(values)} (n={len(values)}; {relus:,.0f})"


def lead(snl, other):
    """SNL minus the baseline: difference of means, and of the paired per-seed differences."""
    if not snl or not other:
        return "not run yet"
    seeds = sorted(set(snl) & set(other))
    paired = [snl[s]["test_acc_finetuned"] - other[s]["test_acc_finetuned"] for s in seeds]
    if not paired:
        return "no common seed"
    return f"{'+' if statistics.mean(paired) >= 0 else ''}{spread(paired)} pt (n={len(paired)})".replace("%", "")


def main():
    runs = load(os.path.join(HERE, "reports"))
    teacher = os.path.join(HERE, "teacher.train.json")
    out = []
    if os.path.exists(teacher):
        with open(teacher) as f:
            t = json.load(f)
        out.append(f"Teacher: small-cnn, {t['relus']:,} ReLUs, {pct(t['test_acc'])}% test accuracy "
                   f"({t['train_images']:,} training images, best of {len(t['epochs'])} epochs).\n")
    out.append("### Test accuracy after finetuning (mean ± sample std over seeds; n seeds; mean ReLUs kept)\n")
    out.append("| budget | " + " | ".join(label for _, label in METHODS) + " | SNL lead over random | (old table) | SNL lead over layers |")
    out.append("|---|" + "---|" * (len(METHODS) + 3))
    for b in BUDGETS:
        row = [f"{b:,} ({100 * b / TOTAL:.1f}%)"]
        row += [cell(runs.get((m, b), {})) for m, _ in METHODS]
        snl = runs.get(("snl", b), {})
        old = f"+{OLD_LEAD_OVER_RANDOM[b]:.2f} pt" if b in OLD_LEAD_OVER_RANDOM else "-"
        row += [lead(snl, runs.get(("random", b), {})), old, lead(snl, runs.get(("layer", b), {}))]
        out.append("| " + " | ".join(row) + " |")
    out.append("\nLead: mean ± sample std of the per-seed differences (same seed), in percentage points. "
               "(old table): the previous table's lead, baselines finetuned 3 epochs only, one seed.\n")

    out.append("### Training epochs after the teacher (per budget, mean over seeds)\n")
    out.append("| budget | SNL mask epochs | SNL finetuning epochs | baseline finetuning epochs | "
               "SNL lambda at stop | SNL converged |")
    out.append("|---|---|---|---|---|---|")
    for b in BUDGETS:
        snl = runs.get(("snl", b), {})
        base = {**runs.get(("random", b), {}), **runs.get(("layer", b), {})}
        if snl:
            mask = statistics.mean(len(r["snl_epochs"]) for r in snl.values())
            ft = statistics.mean(len(r["finetune_epochs"]) for r in snl.values())
            lam = statistics.mean(r["lambda_trajectory"][-1] if r["lambda_trajectory"] else 0 for r in snl.values())
            conv = all(r["snl_converged"] for r in snl.values())
            snl_cells = [f"{mask:.1f}", f"{ft:.0f}", None, f"{lam:.2e}", "yes" if conv else "NO"]
        else:
            snl_cells = ["not run yet", "not run yet", None, "", ""]
        snl_cells[2] = (f"{statistics.mean(len(r['finetune_epochs']) for r in base.values()):.1f}"
                        if base else "not run yet")
        out.append(f"| {b:,} | " + " | ".join(snl_cells) + " |")

    out.append("\n### Before finetuning: test accuracy right after binarising, without and with BatchNorm "
               "recalibration (mean over seeds)\n")
    out.append("| budget | " + " | ".join(f"{label}: binarised / recalibrated" for _, label in METHODS) + " |")
    out.append("|---|" + "---|" * len(METHODS))
    for b in BUDGETS:
        row = [f"{b:,}"]
        for m, _ in METHODS:
            reps = runs.get((m, b), {})
            if not reps:
                row.append("not run yet")
                continue
            binar = statistics.mean(r["test_acc_binarised"] for r in reps.values())
            recal = [r["test_acc_recalibrated"] for r in reps.values() if r.get("test_acc_recalibrated") is not None]
            row.append(f"{pct(binar)}% / " + (f"{pct(statistics.mean(recal))}%" if recal else "off"))
        out.append("| " + " | ".join(row) + " |")

    out.append("\n### SNL against the reference implementation (same task, authors' PyTorch code)\n")
    out.append("| budget | reference | ours (mean over seeds) | difference |")
    out.append("|---|---|---|---|")
    for b, (relus, acc) in REFERENCE.items():
        snl = runs.get(("snl", b), {})
        if snl:
            mean = statistics.mean(r["test_acc_finetuned"] for r in snl.values())
            kept = statistics.mean(r["relus_after"] for r in snl.values())
            ours = f"{pct(mean)}% ({kept:,.0f}; n={len(snl)})"
            diff = f"{100 * (mean - acc):+.2f} pt"
        else:
            ours, diff = "not run yet", ""
        out.append(f"| {b:,} | {pct(acc)}% ({relus:,}) | {ours} | {diff} |")

    ablations = load(os.path.join(HERE, "ablations"))
    if ablations:
        names = sorted({m for m, _ in ablations})
        out.append("\n### Ablations (seed 0; same mask learning as SNL seed 0, different finetuning)\n")
        out.append("| budget | SNL seed 0 | " + " | ".join(names) + " |")
        out.append("|---|---|" + "---|" * len(names))
        for b in BUDGETS:
            base = runs.get(("snl", b), {}).get(0)
            row = [f"{b:,}", f"{pct(base['test_acc_finetuned'])}%" if base else "not run yet"]
            for n in names:
                rep = ablations.get((n, b), {}).get(0)
                row.append(f"{pct(rep['test_acc_finetuned'])}%" if rep else "not run yet")
            out.append("| " + " | ".join(row) + " |")
    print("\n".join(out))


if __name__ == "__main__":
    main()
