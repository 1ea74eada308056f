"""Learning benchmark on media the demo generator does not make (issue 12; docs/results.md, "Learning benchmark
on other media"): generate -> ``avssl-train data=folder`` -> ``avssl-export`` -> ``avssl-eval``, all as the
installed console scripts, one after the other.

    python benchmarks/bench_learning.py [--work DIR] [--seeds 0 1 2] [--train-args ...] [--out JSON]
    # the recipe that meets the targets (docs/results.md):
    python benchmarks/bench_learning.py --train-args experiment=sync_small data.clips_per_file=4 trainer.max_epochs=10

1. ``avssl-synth`` writes the training folder (64 recordings x 10 s, seed 0) and a held-out folder of other
   recordings (72 x 10 s, seed 1: other scenes, same statistics), both under ``--work``;
2. for each seed, ``avssl-train data=folder data.path=<train> seed=S <--train-args>`` (the folder's own 10 %
   validation split guides checkpointing only);
3. ``avssl-export <run>/checkpoints/last.ckpt`` (the last epoch, not the best: what a user gets when a run ends);
4. ``avssl-eval`` on the held-out folder (every recording; ``tasks=[offset_acc,retrieval]``), twice:
   - ``context`` (the targets' protocol): Synchformer's 5 s crops, one per recording: 21-offset accuracy on a
     5 s clip (``offset.clip_seconds=5``: the mean of its 10 segments' similarities at each offset) and R@1 among
     the recordings' centre 5 s clips compared segment by segment (``retrieval.aggregate=segments``);
   - ``segment``: one 0.5 s model segment per clip (2 clips per recording for the offsets), the harder
     single-segment figures, kept beside.

Prints one line per seed and writes the metrics, per-epoch validation curves, commands, timings, machine,
versions and load average as JSON (default ``benchmarks/results/learning_<date>.json``). Targets: offset
accuracy >= 0.9 and R@1 >= 0.6 (both directions) among 64+ held-out segments, at 140 steps on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

TARGETS = {"offset_acc": 0.9, "R@1": 0.6}
PROTOCOLS: dict[str, list[str]] = {  # avssl-eval overrides of each scoring protocol; targets on "context"
    "context": ["offset.clip_seconds=5.0", "offset.clips_per_item=1", "retrieval.clip_seconds=5.0",
                "retrieval.aggregate=segments"],
    "segment": [],
}
DEFAULT_TRAIN_ARGS = ["data.clips_per_file=4", "trainer.max_epochs=10"]  # 58 train files x 4 / 16 x 10 = 140 steps


def script(name: str) -> str:
    """The installed console script ``name`` (beside this interpreter, else on PATH)."""
    exe = Path(sys.executable).parent / name
    found = str(exe) if exe.is_file() else shutil.which(name)
    if not found:
        raise SystemExit(f"bench_learning: console script {name} is not installed (pip install .)")
    return found


def run(cmd: list[str], cwd: Path, log: Path) -> float:
    """Run ``cmd`` (output to ``log``); return its wall time. A failure stops the benchmark naming the log."""
    t = time.time()
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ,
                                                                                   "MPLBACKEND": "Agg"})
    if proc.returncode != 0:
        raise SystemExit(f"bench_learning: {' '.join(cmd[:2])} failed (rc {proc.returncode}); see {log}")
    return time.time() - t


def epoch_curves(metrics_csv: Path) -> list[dict[str, float]]:
    """Per-epoch validation (and train-epoch) metrics from a run's CSV log."""
    keys = ("val/loss", "val/sync_acc", "val/retrieval_top1", "train/loss_epoch", "train/temperature_epoch")
    by: dict[int, dict[str, float]] = {}
    with open(metrics_csv, newline="") as fh:
        for row in csv.DictReader(fh):
            if not row.get("epoch"):
                continue
            e = int(row["epoch"])
            for k in keys:
                if row.get(k):
                    by.setdefault(e, {"epoch": e})[k] = float(row[k])
    return [by[e] for e in sorted(by)]


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="bench_learning_work", help="folder for the media, runs and evaluations")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--train-args", nargs="*", default=DEFAULT_TRAIN_ARGS,
                   help=f"extra avssl-train overrides (default: {' '.join(DEFAULT_TRAIN_ARGS)})")
    p.add_argument("--train-videos", type=int, default=64)
    p.add_argument("--test-videos", type=int, default=72)
    p.add_argument("--out", help="result JSON (default benchmarks/results/learning_<date>.json)")
    args = p.parse_args()
    work = Path(args.work).absolute()
    work.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    load_before = load_average()
    train_dir, test_dir = work / "media_train", work / "media_test"
    commands: list[list[str]] = []
    t_gen = 0.0
    for folder, n, seed in ((train_dir, args.train_videos, 0), (test_dir, args.test_videos, 1)):
        cmd = [script("avssl-synth"), str(folder), "--num-videos", str(n), "--duration", "10", "--seed", str(seed)]
        commands.append(cmd)
        t_gen += run(cmd, work, work / f"synth_{folder.name}.log")
    runs: list[dict[str, Any]] = []
    for seed in args.seeds:
        tag = f"seed{seed}"
        seed_dir = work / tag  # run/, export/, eval/ and the logs of this seed
        if seed_dir.exists() and (seed_dir / ".bench_learning").is_file():
            shutil.rmtree(seed_dir)  # a folder this benchmark wrote: a re-run starts afresh
        elif seed_dir.exists():
            raise SystemExit(f"bench_learning: {seed_dir} exists and was not written by this benchmark")
        seed_dir.mkdir(parents=True)
        (seed_dir / ".bench_learning").write_text("")
        out_dir, export_dir, eval_dir = seed_dir / "run", seed_dir / "export", seed_dir / "eval"
        train = [script("avssl-train"), "data=folder", f"data.path={train_dir}", f"seed={seed}",
                 f"output_dir={out_dir}", "trainer.enable_progress_bar=false", *args.train_args]
        export = [script("avssl-export"), str(out_dir / "checkpoints" / "last.ckpt"), "--out", str(export_dir)]
        evaluate = {name: [script("avssl-eval"), f"checkpoint={export_dir}", "data.source=folder",
                           f"data.path={test_dir}", "data.eval_split=null", "tasks=[offset_acc,retrieval]",
                           "progress=false", f"output_dir={eval_dir / name}", *extra]
                    for name, extra in PROTOCOLS.items()}
        times = {"train": run(train, work, seed_dir / "train.log")}
        times["export"] = run(export, work, seed_dir / "export.log")
        scores: dict[str, dict[str, Any]] = {}
        for name, cmd in evaluate.items():
            times[f"eval_{name}"] = run(cmd, work, seed_dir / f"eval_{name}.log")
            res = json.loads((eval_dir / name / "results.json").read_text())
            off, ret = res["offset_acc"], res["retrieval"]
            scores[name] = {
                "offset_acc": off["acc"], "offset_acc_within_1": off["acc_within_1"],
                "offset_auc_sync": off["auc_sync"], "offset_clips": off["num_clips"],
                "offset_clip_seconds": off.get("clip_seconds"), "a2v_R@1": ret["a2v_R@1"],
                "v2a_R@1": ret["v2a_R@1"], "a2v_R@5": ret.get("a2v_R@5"), "v2a_R@5": ret.get("v2a_R@5"),
                "retrieval_items": ret["num_items"], "retrieval_clip_seconds": ret.get("clip_seconds"),
                "retrieval_aggregate": ret.get("aggregate", "embedding"),
            }
        commands += [train, export, *evaluate.values()]
        trained = json.loads((out_dir / "metrics.json").read_text())
        plan = next((ln.strip() for ln in (seed_dir / "train.log").read_text().splitlines()
                     if ln.startswith("training plan:")), None)
        curves = epoch_curves(next(out_dir.glob("logs/version_*/metrics.csv")))
        ctx = scores["context"]
        entry = {
            "seed": seed, **ctx, "protocols": scores,
            "val_final": trained["metrics"], "epochs": curves, "training_plan": plan, "seconds": times,
            "meets_targets": bool(ctx["offset_acc"] >= TARGETS["offset_acc"]
                                  and min(ctx["a2v_R@1"], ctx["v2a_R@1"]) >= TARGETS["R@1"]),
        }
        if curves:
            accs = [c["val/sync_acc"] for c in curves if "val/sync_acc" in c]
            losses = [c["val/loss"] for c in curves if "val/loss" in c]
            entry["stability"] = {"val_sync_acc_best": max(accs), "val_sync_acc_last": accs[-1],
                                  "last_within_0.05_of_best": bool(max(accs) - accs[-1] <= 0.05),
                                  "val_loss_first": losses[0], "val_loss_max": max(losses),
                                  "val_loss_last": losses[-1]}
        runs.append(entry)
        for name, sc in scores.items():
            print(f"seed {seed} [{name}]: offset acc {sc['offset_acc']:.3f} (within-1 "
                  f"{sc['offset_acc_within_1']:.3f}, AUC {sc['offset_auc_sync']:.3f}, {sc['offset_clips']} clips); "
                  f"R@1 a2v {sc['a2v_R@1']:.3f} v2a {sc['v2a_R@1']:.3f} among {sc['retrieval_items']}", flush=True)
        print(f"seed {seed}: train {times['train']:.0f} s; {plan}; targets met: {entry['meets_targets']}",
              flush=True)
    result = {
        "benchmark": "learning on other media (issue 12)", "started": started, "targets": TARGETS,
        "train_args": args.train_args, "protocols": PROTOCOLS, "targets_on": "context",
        "generation_seconds": round(t_gen, 1), "runs": runs,
        "commands": [" ".join(c) for c in commands],
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "load_average_before": load_before, "load_average_after": load_average()},
        "versions": {k: version(k) for k in ("avssl", "torch", "av", "lightning", "numpy")},
    }
    out = Path(args.out) if args.out else (Path(__file__).parent / "results" /
                                           f"learning_{time.strftime('%Y-%m-%d', time.gmtime())}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, out)
    print(f"results: {out}")


if __name__ == "__main__":
    main()
