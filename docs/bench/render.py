#!/usr/bin/env python3
"""Markdown tables from `pi bench e2e --json` and `pi bench pareto --json` output (stdlib only).

    python3 docs/bench/render.py docs/bench/resnet18-lan.json [more.json ...]
"""
import json
import sys


def mb(b):
    return f"{b / 1e6:,.1f}"


def e2e(r):
    out = [f"net **{r['net']['name']}**, {r['repeat']} inferences per point; latency median [min–max]", ""]
    out.append("| ReLUs | offline s | online s | total s | offline MB (up / down) | online MB (up / down) | rounds |")
    out.append("|---:|---|---|---:|---|---|---:|")
    for p in r["points"]:
        st = lambda s: f"{s['median']:.3f} [{s['min']:.3f}–{s['max']:.3f}]"
        ob, nb = p["offline_bytes"], p["online_bytes"]
        out.append(
            f"| {p['relus']:,} | {st(p['offline_s'])} | {st(p['online_s'])} | {p['total_s']['median']:.3f} "
            f"| {mb(ob['total'])} ({mb(ob['client_to_server'])} / {mb(ob['server_to_client'])}) "
            f"| {mb(nb['total'])} ({mb(nb['client_to_server'])} / {mb(nb['server_to_client'])}) | {p['online_rounds']} |"
        )
    out += ["", "Where the time goes (seconds per inference, mean; link = wall time neither party spent computing):", ""]
    out.append("| ReLUs | offline: HE | GC + OT | link | other | online: linear | GC eval | link | other |")
    out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for p in r["points"]:
        o, n = p["offline"], p["online"]
        out.append(
            f"| {p['relus']:,} | {o['he_s']:.3f} | {o['gc_ot_s']:.3f} | {o['link_s']:.3f} | {o['other_s']:.3f} "
            f"| {n['linear_s']:.3f} | {n['gc_eval_s']:.3f} | {n['link_s']:.3f} | {n['other_s']:.3f} |"
        )
    out += ["", "Least-squares fit, latency = intercept + per-ReLU cost × ReLUs:", ""]
    out.append("| phase | intercept s | per ReLU µs | R² |")
    out.append("|---|---:|---:|---:|")
    for ph in ["offline", "online", "total"]:
        f = r["fit"][ph]
        if f:
            out.append(f"| {ph} | {f['intercept_s']:.3f} | {f['per_relu_s'] * 1e6:.2f} | {f['r2']:.4f} |")
    return "\n".join(out)


def pareto(r):
    out = [
        f"net **{r['net']['name']}**, {r['count']} private inferences per model; "
        "\\* = Pareto-optimal (f32 accuracy on the whole test set vs latency)",
        "",
        "| model | method | budget | ReLUs | acc PI | agree f32 | acc f32 | online s | total s | online MB | total MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in sorted(r["models"], key=lambda m: (m["method"], -m["relus"])):
        star = lambda b: "\\*" if b else ""
        out.append(
            f"| {m['model'].split('/')[-1]} | {m['method']} | {m['budget'] or ''} | {m['relus']:,} "
            f"| {100 * m['accuracy_pi']:.0f}% | {100 * m['agreement_f32']:.0f}% | {100 * m['accuracy_f32']:.2f}% "
            f"| {m['online_s']['median']:.3f}{star(m['pareto_online'])} | {m['total_s']['median']:.3f}{star(m['pareto_total'])} "
            f"| {mb(m['online_bytes']['total'])} | {mb(m['online_bytes']['total'] + m['offline_bytes']['total'])} |"
        )
    return "\n".join(out)


for path in sys.argv[1:]:
    r = json.load(open(path))
    print(f"<!-- {path} -->")
    print(pareto(r) if "models" in r else e2e(r))
    print()
