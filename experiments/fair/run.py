#!/usr/bin/env python3
"""Runs the budget x method table with matched training epochs (see README.md).

For each seed: one SNL run (`pi linearize --method snl`, all budgets share its mask learning),
then, per budget, `--method random` and `--method layer` finetuned for SNL's mask epochs at that
budget (same seed) plus SNL's finetuning epochs. One run at a time, in priority order; a run whose
report is already in reports/ is skipped, so the queue can be restarted and can span sessions.

Python 3 standard library only. Usage (from anywhere):

    nohup nice -n 19 python3 experiments/fair/run.py >> /tmp/exp/fair/queue.log 2>&1 &

`--dry-run` prints the queue and the commands without running anything.
"""

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
REPORTS = os.path.join(HERE, "reports")
ABLATIONS = os.path.join(HERE, "ablations")
FAMILY = os.path.join(ROOT, "models", "family")
TEACHER_REPORT = os.path.join(HERE, "teacher.train.json")

BUDGETS = [8000, 4000, 2000, 1000, 500]
FAMILY_SEED = 0
# Settings shared by every run: the teacher, the data subset (first 20,000 training images of the
# split drawn with seed 0, the teacher's own split, so the 5,000 validation images are never
# trained on), the loss and finetuning recipe.
FINETUNE_EPOCHS = 3
COMMON = [
    "--train-limit", "20000",
    "--val-size", "5000",
    "--split-seed", "0",
    "--no-progress",
]
SNL_FLAGS = [
    "--lambda", "1e-3",
    "--min-decrease", "0",
    "--warmup-epochs", "6",
    "--max-epochs", "200",
    "--finetune-epochs", str(FINETUNE_EPOCHS),
]
# Priority order (one run at a time on 2 cores): (method, seed, budgets). Random at 1,000 and 500
# ReLUs is matched to SNL's 78 and 127 mask epochs (about 1 and 1.7 hours); an SNL seed takes
# about 2.5 hours for all five budgets, 1 to 1.5 hours down to 1,000 (`--only snl-s1 --budgets
# 8000,4000,2000,1000`), and a run must finish inside the session that starts it.
QUEUE = [
    ("snl", 0, BUDGETS), ("random", 0, [8000, 4000, 2000, 1000]), ("snl", 1, BUDGETS),
    ("random", 0, [500]), ("snl", 2, BUDGETS), ("layer", 0, BUDGETS),
    ("random", 1, BUDGETS), ("random", 2, BUDGETS), ("layer", 1, BUDGETS), ("layer", 2, BUDGETS),
]
# After the table: seed-0 SNL variants that only change what follows mask learning (the mask
# runs are identical to snl seed 0), to measure what finetuning choices cost.
ABLATION_QUEUE = [
    ("snl-ftlr1e-3", ["--finetune-lr", "0.001"]),   # the reference code's finetuning lr
    ("snl-norecal", ["--recalibrate-batches", "0"]),  # finetune from the stale BatchNorm statistics
]


def log(msg):
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    print(f"[{stamp}] {msg}", flush=True)


def report_path(method, budget, seed, folder=REPORTS):
    return os.path.join(folder, f"{method}-{budget}-s{seed}.json")


def install(src, dst):
    """Copies src to dst atomically (a half-written report never looks finished)."""
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    tmp = dst + ".tmp"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


class Runner:
    def __init__(self, args):
        self.args = args
        self.work = args.work
        os.makedirs(self.work, exist_ok=True)

    def base(self, seed):
        return [self.args.pi, "linearize", "--model", self.args.teacher, "--data", self.args.data,
                "--seed", str(seed)] + COMMON

    def run(self, name, cmd):
        """Runs one `pi` command under nice, output to WORK/name.log; True on success."""
        cmd = ["nice", "-n", "19"] + cmd
        logfile = os.path.join(self.work, f"{name}.log")
        log(f"start {name}: {' '.join(cmd)}  (log {logfile})")
        if self.args.dry_run:
            return True
        start = time.time()
        with open(logfile, "a") as out:
            out.write(f"# {' '.join(cmd)}\n")
            out.flush()
            rc = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "NO_COLOR": "1"})
        log(f"end {name}: exit {rc} after {time.time() - start:.0f} s")
        return rc == 0

    def wait_for_teacher(self):
        while not (os.path.exists(TEACHER_REPORT) and os.path.exists(self.args.teacher)):
            if self.args.dry_run:
                log(f"(teacher not there yet: {TEACHER_REPORT}, {self.args.teacher})")
                return
            log("waiting for the teacher's report and model")
            time.sleep(60)

    def full_model(self):
        """models/family/full.safetensors: the teacher in folded inference form. `linearize` at a
        budget of every ReLU with 0 finetuning epochs and no recalibration changes no weight and no
        statistic; it only folds (checked against the train report's test accuracy)."""
        dst = os.path.join(FAMILY, "full.safetensors")
        if os.path.exists(dst) and os.path.exists(os.path.join(FAMILY, "full.json")):
            return
        tmp_model = os.path.join(self.work, "full.safetensors")
        tmp_report = os.path.join(self.work, "full.linearize.json")
        cmd = [self.args.pi, "linearize", "--model", self.args.teacher, "--data", self.args.data,
               "--method", "random", "--budget", "20384", "--finetune-epochs", "0",
               "--recalibrate-batches", "0", "--no-progress", "--out", tmp_model, "--report", tmp_report]
        if not self.run("full", cmd) or self.args.dry_run:
            return
        with open(tmp_report) as f:
            lin = json.load(f)
        with open(TEACHER_REPORT) as f:
            train = json.load(f)
        if lin["relus_after"] != lin["relus_before"] or abs(lin["test_acc_finetuned"] - train["test_acc"]) > 1e-4:
            log(f"full model check failed: {lin['relus_after']} ReLUs, test {lin['test_acc_finetuned']} "
                f"vs train report {train['test_acc']}; not installed")
            return
        install(tmp_model, dst)
        install(TEACHER_REPORT, os.path.join(FAMILY, "full.json"))
        log("installed models/family/full.safetensors and full.json")

    def snl(self, seed, name="snl", extra=(), folder=REPORTS, budgets=BUDGETS):
        """One SNL run for all `budgets`. Mask learning stops once the smallest is met and the
        lambda schedule does not depend on the budgets, so a run over the larger budgets only is
        the same run cut short: its masks and finetuning at those budgets are the full run's."""
        if all(os.path.exists(report_path(name, b, seed, folder)) for b in budgets):
            return
        stem = os.path.join(self.work, f"{name}-s{seed}")
        cmd = self.base(seed) + ["--method", "snl", "--budget", ",".join(map(str, budgets))] + SNL_FLAGS
        cmd += list(extra) + ["--out", stem + ".safetensors", "--report", stem + ".json"]
        if not self.run(f"{name}-s{seed}", cmd) or self.args.dry_run:
            return
        for b in budgets:
            install(f"{stem}-{b}.json", report_path(name, b, seed, folder))
            if name == "snl" and seed == FAMILY_SEED:
                self.family(f"{stem}-{b}", f"snl-{b}")

    def baseline(self, method, seed, budgets):
        for b in budgets:
            dst = report_path(method, b, seed)
            if os.path.exists(dst):
                continue
            snl_report = report_path("snl", b, seed)
            if not os.path.exists(snl_report):
                log(f"skip {method} budget {b} seed {seed}: no SNL report to match ({snl_report})")
                continue
            with open(snl_report) as f:
                mask_epochs = len(json.load(f)["snl_epochs"])
            stem = os.path.join(self.work, f"{method}-{b}-s{seed}")
            cmd = self.base(seed) + ["--method", method, "--budget", str(b),
                                     "--finetune-epochs", str(mask_epochs + FINETUNE_EPOCHS),
                                     "--out", stem + ".safetensors", "--report", stem + ".json"]
            if not self.run(f"{method}-{b}-s{seed}", cmd) or self.args.dry_run:
                continue
            install(stem + ".json", dst)
            if method == "random" and seed == FAMILY_SEED:
                self.family(stem, f"random-{b}")

    def family(self, stem, name):
        install(stem + ".safetensors", os.path.join(FAMILY, name + ".safetensors"))
        install(stem + ".json", os.path.join(FAMILY, name + ".json"))
        log(f"installed models/family/{name}.safetensors and .json")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pi", default="/tmp/exp/pi-fair", help="pi binary (a copy, so rebuilds do not replace it)")
    p.add_argument("--teacher", default=os.path.join(HERE, "teacher.safetensors"),
                   help="the teacher (BatchNorm unfolded, as `pi train` writes it; committed here)")
    p.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--work", default="/tmp/exp/fair", help="models and logs of the runs")
    p.add_argument("--no-ablations", action="store_true", help="stop after the table's runs")
    p.add_argument("--only", action="append", metavar="METHOD-sSEED",
                   help="run only these queue entries (e.g. layer-s0; repeatable), to fit a session")
    p.add_argument("--budgets", help="with --only: only these budgets (comma-separated)")
    p.add_argument("--dry-run", action="store_true")
    args = p.parse_args()
    lock = os.path.join(args.work, "queue.pid")
    os.makedirs(args.work, exist_ok=True)
    if not args.dry_run:
        if os.path.exists(lock):
            with open(lock) as f:
                other = f.read().strip()
            if other and os.path.exists(f"/proc/{other}"):
                sys.exit(f"another queue is running (pid {other}, {lock})")
        with open(lock, "w") as f:
            f.write(str(os.getpid()))
    r = Runner(args)
    r.wait_for_teacher()
    r.full_model()
    for method, seed, budgets in QUEUE:
        if args.only and f"{method}-s{seed}" not in args.only:
            continue
        if args.only and args.budgets:
            budgets = [b for b in budgets if str(b) in args.budgets.split(",")]
        if method == "snl":
            r.snl(seed, budgets=budgets)
        else:
            r.baseline(method, seed, budgets)
    if not args.no_ablations and not args.only:
        for name, extra in ABLATION_QUEUE:
            r.snl(0, name, extra, ABLATIONS)
    log("queue done")
    if not args.dry_run:
        os.remove(lock)


if __name__ == "__main__":
    main()
