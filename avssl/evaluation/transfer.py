"""The cross-modal transfer experiment (``avssl-transfer``, docs/transfer.md): does learning from sound make a
better video encoder, and the reverse?

For every arm (an audio-visual objective, a unimodal masked objective, or no pretraining at all) and every seed,
pretrain with the same encoders, data, number of steps and batch size, export the encoders, and evaluate every
encoder of every arm with one frozen protocol:

- linear probe and kNN on clip embeddings of labelled clips, per modality and per label column, with the
  majority-class baseline (``avssl.evaluation.probes``);
- zero-shot sync-offset classification and cross-modal retrieval, where the arm has a space shared by both
  modalities (``avssl.evaluation.run``).

Each arm+seed lives in ``<output_dir>/runs/<arm>/seed<k>/``: ``train/`` (the avssl-train run), ``bundle/`` (the
export), ``train.json`` (written atomically once the bundle is complete) and ``result.json`` (atomically, once
evaluated). A re-run skips whatever is finished under the same settings. :func:`summarize` turns the results into
mean ± std over seeds and paired differences to the unimodal arm of the same modality (a paired t-test over seeds,
computed here with ``math``); :func:`write_report` writes ``results.json``, ``results.md`` and the PNG plots.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from avssl.data.atomic import write_json_atomic, write_text_atomic
from avssl.evaluation.sources import EvalItem

log = logging.getLogger("avssl.transfer")

MODALITIES = ("video", "audio")
RANDOM_ARM = "random"
"""The arm without pretraining: the model its objective's config builds, at the seed's initialisation."""
UNIMODAL_ARMS = {"video": "masked_video", "audio": "masked_audio"}
"""The reference arm of each modality: differences are reported against it."""
RESULT_FORMAT = 1


# --- statistics (no scipy) ----------------------------------------------------------------------------------------


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n - 1 in the denominator; None for a single value)."""
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("mean_std of no values")
    mean = math.fsum(xs) / len(xs)
    if len(xs) < 2:
        return mean, None
    return mean, math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (len(xs) - 1))


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes 6.4)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b), for a, b > 0 and x in [0, 1]."""
    if a <= 0 or b <= 0 or not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc needs a, b > 0 and 0 <= x <= 1, got a={a}, b={b}, x={x}")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: int) -> float:
    """Two-sided p-value of Student's t statistic ``t`` with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"a t-test needs at least 1 degree of freedom, got {df}")
    if math.isinf(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Paired t-test of ``a - b`` (same seeds in the same order): mean and std of the differences, t, df and the
    two-sided p-value. With one pair there is no test (t and p are None); with identical non-zero differences the
    variance is 0: t is ±inf and p 0."""
    if len(a) != len(b):
        raise ValueError(f"a paired test needs pairs: {len(a)} values against {len(b)}")
    d = [float(x) - float(y) for x, y in zip(a, b)]
    mean, sd = mean_std(d)
    out: dict[str, Any] = {"n": len(d), "mean_diff": mean, "std_diff": sd, "t": None, "df": len(d) - 1, "p": None}
    if sd is None:
        return out
    if sd == 0.0:
        out["t"] = math.copysign(math.inf, mean) if mean != 0 else 0.0
        out["p"] = 0.0 if mean != 0 else 1.0
        return out
    t = mean / (sd / math.sqrt(len(d)))
    out["t"], out["p"] = t, t_two_sided_p(t, len(d) - 1)
    return out


# --- configuration ------------------------------------------------------------------------------------------------


def fingerprint(obj: Any) -> str:
    """A short hash of a JSON-able value (the settings a result depends on)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_config(cfg: Mapping[str, Any]) -> None:
    """Refuse a transfer config that cannot run, naming what is wrong."""
    arms = list(cfg.get("arms") or [])
    if not arms:
        raise ValueError("transfer: arms is empty (give e.g. arms=[sync,masked_video])")
    if len(set(arms)) != len(arms):
        raise ValueError(f"transfer: arms lists an arm twice: {arms}")
    objectives = dict(cfg.get("objectives") or {})
    missing = [a for a in arms if a not in objectives]
    if missing:
        raise ValueError(f"transfer: arm(s) {missing} have no entry in `objectives` (arm -> conf/objective name); "
                         f"known: {sorted(objectives)}")
    seeds = list(cfg.get("seeds") or [])
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"transfer: seeds must be a non-empty list of distinct integers, got {seeds}")
    t = cfg["train"]
    if int(t["steps"]) < 1 or int(t["batch_size"]) < 1:
        raise ValueError(f"transfer: train.steps and train.batch_size must be >= 1, got {t['steps']}, "
                         f"{t['batch_size']}")
    for o in [*t.get("overrides", []), *t.get("extra", [])]:
        key = str(o).split("=", 1)[0].lstrip("+~")
        if key in ("objective", "seed", "trainer.max_steps", "trainer.max_epochs", "data.batch_size", "output_dir"):
            raise ValueError(f"transfer: train override {o!r} sets what the experiment fixes per arm "
                             f"(objective, seed, steps, batch size, output dir); use arms/seeds/train.steps/"
                             f"train.batch_size instead")
    features = cfg["eval"]["probe"].get("features", "encoder")
    if features not in ("encoder", "embedding"):
        raise ValueError(f"transfer: eval.probe.features must be 'encoder' or 'embedding', got {features!r}")


def train_overrides(cfg: Mapping[str, Any], arm: str, seed: int) -> list[str]:
    """The avssl-train overrides of one arm and seed: the shared ones, then what the experiment fixes."""
    t = cfg["train"]
    return [
        *[str(o) for o in t.get("overrides", [])],
        *[str(o) for o in t.get("extra", [])],
        f"objective={cfg['objectives'][arm]}",
        f"seed={int(seed)}",
        f"trainer.max_steps={int(t['steps'])}",
        "trainer.max_epochs=-1",
        f"data.batch_size={int(t['batch_size'])}",
    ]


def compose_train_config(overrides: Sequence[str]) -> dict[str, Any]:
    """The resolved avssl-train config for ``overrides`` (works inside a running Hydra app too)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.singleton import Singleton
    from omegaconf import OmegaConf

    running = Singleton._instances.get(GlobalHydra)  # the avssl-transfer app's own Hydra, if any: set aside
    if running is not None:
        del Singleton._instances[GlobalHydra]
    try:
        with initialize_config_module("avssl.conf", version_base="1.3"):
            cfg = compose("train", overrides=list(overrides))
    finally:
        if running is not None:
            Singleton._instances[GlobalHydra] = running
    plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    assert isinstance(plain, dict)
    return plain  # type: ignore[return-value]


def arm_train_config(cfg: Mapping[str, Any], arm: str, seed: int) -> dict[str, Any]:
    return compose_train_config(train_overrides(cfg, arm, seed))


# --- one arm: pretrain and export ---------------------------------------------------------------------------------


def _train_fingerprint(train_cfg: Mapping[str, Any]) -> str:
    keep = {k: v for k, v in train_cfg.items() if k not in ("output_dir", "ckpt_path")}
    data = dict(keep.get("data") or {})
    data["num_workers"] = data["persistent_workers"] = data["pin_memory"] = None  # speed only
    if isinstance(data.get("demo"), Mapping):
        data["demo"] = {k: v for k, v in data["demo"].items() if k != "cache_dir"}  # where, not what
    keep["data"] = data
    return fingerprint(keep)


def _build_module(train_cfg: Mapping[str, Any]) -> Any:
    """The LightningModule avssl-train builds from this config, initialised exactly as at its step 0."""
    import lightning.pytorch as pl

    from avssl.lit.datamodule import preprocessing_from_data
    from avssl.lit.module import AVSSLModule

    plain = copy.deepcopy(dict(train_cfg))
    pl.seed_everything(int(plain["seed"]), workers=True, verbose=False)  # as avssl.lit.run.train does
    return AVSSLModule.from_config(plain, preprocessing_from_data(plain["data"]))


def export_untrained(train_cfg: Mapping[str, Any], out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """The ``random`` arm: export the model ``train_cfg`` builds, untrained (the seed's initialisation), as
    bundles ``out_dir/<modality>/`` like :func:`avssl.export.export_checkpoint` does for a trained one."""
    from avssl.export import extract_module, provenance, write_bundle

    module = _build_module(train_cfg)
    pre = dict(module.hparams["preprocessing"])
    info = provenance(dict(module.hparams), {"global_step": 0, "epoch": 0})
    info["data"], info["data_config_from"], info["untrained"] = dict(train_cfg["data"]), "transfer", True
    return {m: write_bundle(extract_module(module.model, m, pre), Path(out_dir) / m, provenance_info=info)
            for m in MODALITIES}


def trained_modalities(train_cfg: Mapping[str, Any], arm: str) -> list[str]:
    """The modalities whose encoder the arm's objectives train (none for the random arm)."""
    if arm == RANDOM_ARM:
        return []
    return [m for m in MODALITIES if m in _build_module(train_cfg).model.modalities]


def pretrain_arm(train_cfg: Mapping[str, Any], arm: str, run_dir: Path) -> dict[str, Any]:
    """Pretrain one arm (or build the random one) and export its encoders to ``run_dir/bundle``; returns what
    ``train.json`` records."""
    from avssl.export import export_checkpoint

    bundle = run_dir / "bundle"
    if bundle.exists():  # an interrupted earlier attempt: its export is incomplete (train.json was not written)
        shutil.rmtree(bundle)
    start = time.time()
    if arm == RANDOM_ARM:
        export_untrained(train_cfg, bundle)
        metrics: dict[str, float] = {}
        steps = 0
    else:
        from avssl.lit.run import train

        train_dir = run_dir / "train"
        if train_dir.exists():
            shutil.rmtree(train_dir)  # a partial run of the same arm and seed: start it again
        result = train(dict(train_cfg), output_dir=train_dir)
        if result.last_checkpoint is None:
            raise RuntimeError(f"transfer arm {arm!r}: training wrote no last.ckpt in {train_dir} (checkpoints "
                               f"must stay enabled: callbacks.checkpoint.enabled=true, save_last=true)")
        export_checkpoint(result.last_checkpoint, bundle)  # the last step: every arm after the same budget
        metrics, steps = result.metrics, int(train_cfg["trainer"]["max_steps"])
    return {"arm": arm, "seed": int(train_cfg["seed"]), "objective": train_cfg["objective"]["name"],
            "steps": steps, "metrics": metrics, "seconds": round(time.time() - start, 1), "bundle": str(bundle),
            "trained_modalities": trained_modalities(train_cfg, arm)}


# --- the frozen evaluation protocol -------------------------------------------------------------------------------


@dataclasses.dataclass
class LabelledItems:
    """Evaluation clips with every label column: ``labels[column][i]`` is item i's value (None: unlabelled);
    ``whole``: the uncut items (the zero-shot tasks need room for the offset grid)."""

    items: list[EvalItem]
    labels: dict[str, list[str | None]]
    whole: list[EvalItem]

    def with_label(self, column: str) -> list[EvalItem]:
        return [dataclasses.replace(it, label=lab) for it, lab in zip(self.items, self.labels[column])]


def split_item(item: EvalItem, seconds: float | None) -> list[EvalItem]:
    """Consecutive whole chunks of ``seconds`` of an item (the item itself when None or longer than it)."""
    if not seconds or item.duration < 2 * seconds:
        return [item]
    n = int(math.floor(item.duration / seconds + 1e-9))
    return [dataclasses.replace(item, start=round(item.start + j * seconds, 6),
                                end=round(item.start + (j + 1) * seconds, 6)) for j in range(n)]


def eval_items(cfg: Mapping[str, Any], train_cfg: Mapping[str, Any]) -> LabelledItems:
    """The labelled clips of the protocol: ``eval.data`` if given, else the pretraining data (its train/val split),
    every item cut into ``eval.item_seconds`` chunks; one label list per ``eval.labels`` column."""
    from avssl.data.sources import source_rows
    from avssl.evaluation.sources import apply_labels_csv, item_from_row

    e = cfg["eval"]
    d = dict(e.get("data") or {}) or {k: train_cfg["data"].get(k) for k in ("source", "path", "demo")}
    columns = list(e["labels"])
    rows = [r for r in source_rows(d["source"], d.get("path"), {"demo": dict(d.get("demo") or {})}).rows
            if not r.exclude]
    if not rows:
        raise ValueError(f"transfer: no media in data.source={d['source']} path={d.get('path')}")
    present = {c for r in rows for c in columns if r.get(c) not in (None, "")}
    if d.get("labels_csv"):
        present.add("label")
    absent = [c for c in columns if c not in present]
    if absent:
        hint = (" (the demo data has pitch_band and distractor only with data.demo.pitch_bands>=2 and "
                "data.demo.distractors=true)" if d["source"] == "demo" else "")
        raise ValueError(f"transfer: no item has a value in label column(s) {absent}{hint}")
    items: list[EvalItem] = []
    labels: dict[str, list[str | None]] = {c: [] for c in columns}
    base = [item_from_row(r) for r in rows]
    if d.get("labels_csv"):
        base = apply_labels_csv(base, d["labels_csv"])
    for row, item in zip(rows, base):
        chunks = split_item(item, e.get("item_seconds"))
        items += chunks
        for c in columns:
            value = item.label if c == "label" and d.get("labels_csv") else row.get(c)
            labels[c] += [None if value in (None, "") else str(value)] * len(chunks)
    if e.get("max_items"):
        keep: list[int] = []
        seen: dict[str, int] = {}  # the first N of each split (deterministic)
        for i, it in enumerate(items):
            seen[it.split] = seen.get(it.split, 0) + 1
            if seen[it.split] <= int(e["max_items"]):
                keep.append(i)
        items = [items[i] for i in keep]
        labels = {c: [v[i] for i in keep] for c, v in labels.items()}
        paths = {it.path for it in items}
        base = [it for it in base if it.path in paths]
    return LabelledItems(items, labels, base)


def _shared_space(pair: Any) -> bool:
    return pair.video.embedding != "encoder" and pair.audio.embedding != "encoder"


def evaluate_arm(bundle: str | os.PathLike[str], data: LabelledItems, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The frozen protocol on one exported arm: zero-shot tasks where it has a shared space, then linear probe and
    kNN per label column and modality on clip embeddings (the encoders' pooled features by default)."""
    import torch

    from avssl.evaluation.embed import EncoderPair
    from avssl.evaluation.probes import evaluate_probes
    from avssl.evaluation.run import _label_split, evaluate_offsets, evaluate_retrieval, item_embeddings

    e = cfg["eval"]
    torch.manual_seed(int(e.get("seed", 0)))
    pair = EncoderPair.load(bundle, e.get("device", "cpu"))
    out: dict[str, Any] = {"embedding": pair.video.embedding}
    zero_items = [it for it in data.whole if it.split == e["probe"]["test_split"]]
    if "zero_shot" in e["tasks"]:
        if not _shared_space(pair):
            out["zero_shot"] = None  # no space shared by the modalities: nothing to score zero-shot
        else:
            o, r = e["offset"], e["retrieval"]
            offsets, _, _ = evaluate_offsets(pair, zero_items, min_offset=o["min"], max_offset=o["max"],
                                             step=o["step"], clips_per_item=o["clips_per_item"],
                                             clip_seconds=o.get("clip_seconds"), progress=False)
            retrieval, _ = evaluate_retrieval(pair, zero_items, clip_seconds=r.get("clip_seconds"), ks=r["ks"],
                                              aggregate=r.get("aggregate") or "embedding", progress=False)
            out["zero_shot"] = {"offset_acc": offsets, "retrieval": retrieval}
    if "probe" in e["tasks"]:
        p = e["probe"]
        if p.get("features", "encoder") == "encoder":  # the representation itself, the same for every arm
            pair.video.embedding = pair.audio.embedding = "encoder"
        video, audio, kept = item_embeddings(pair, data.items, window=p.get("window"), hop=p.get("hop"),
                                             max_windows=p.get("max_windows"), progress=False)
        out["probe"] = {}
        for column in data.labels:
            classes, y, train, test = _label_split(data.with_label(column), kept, p["train_split"], p["test_split"])
            out["probe"][column] = {"classes": classes}
            for m, feats in (("video", video), ("audio", audio)):
                out["probe"][column][m] = evaluate_probes(feats[train], y[train], feats[test], y[test], k=p["k"],
                                                          weight_decay=p["weight_decay"])
    return out


# --- the experiment -----------------------------------------------------------------------------------------------


def _eval_fingerprint(cfg: Mapping[str, Any]) -> str:
    return fingerprint({k: v for k, v in cfg["eval"].items() if k not in ("device",)})


def run_dir_of(output_dir: str | os.PathLike[str], arm: str, seed: int) -> Path:
    return Path(output_dir) / "runs" / arm / f"seed{int(seed)}"


def run_arm(cfg: Mapping[str, Any], arm: str, seed: int, output_dir: str | os.PathLike[str],
            data: Callable[[Mapping[str, Any]], LabelledItems]) -> dict[str, Any]:
    """Pretrain, export and evaluate one arm and seed unless done already under the same settings; returns its
    ``result.json``. ``data(train_cfg)`` gives the labelled clips (built once per experiment)."""
    run_dir = run_dir_of(output_dir, arm, seed)
    train_cfg = arm_train_config(cfg, arm, seed)
    train_fp, eval_fp = _train_fingerprint(train_cfg), _eval_fingerprint(cfg)
    result_file, train_file = run_dir / "result.json", run_dir / "train.json"
    if result_file.is_file():
        done = json.loads(result_file.read_text())
        if done.get("train_fingerprint") == train_fp and done.get("eval_fingerprint") == eval_fp:
            log.info("%s seed %d: finished earlier, skipped (%s)", arm, seed, result_file)
            return done
    trained = json.loads(train_file.read_text()) if train_file.is_file() else None
    if trained is not None and trained.get("train_fingerprint") != train_fp:
        raise ValueError(f"transfer: {run_dir} was pretrained with other settings (model, data, objective, steps "
                         f"or batch size differ); use another output_dir, or delete {run_dir} to redo it")
    if trained is None:
        log.info("%s seed %d: pretraining (%s)", arm, seed, run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        trained = {**pretrain_arm(train_cfg, arm, run_dir), "train_fingerprint": train_fp}
        write_json_atomic(train_file, trained, indent=1)
    log.info("%s seed %d: evaluating", arm, seed)
    start = time.time()
    evaluation = evaluate_arm(trained["bundle"], data(train_cfg), cfg)
    result = {"format": RESULT_FORMAT, **trained, "eval_fingerprint": eval_fp, **evaluation,
              "eval_seconds": round(time.time() - start, 1)}
    write_json_atomic(result_file, result, indent=1, default=str)
    return result


def run_transfer(cfg: Mapping[str, Any], output_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Every arm x seed (finished ones skipped), then the report; returns what ``results.json`` holds."""
    check_config(cfg)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache: dict[str, LabelledItems] = {}

    def data(train_cfg: Mapping[str, Any]) -> LabelledItems:
        key = fingerprint([cfg["eval"].get("data"), train_cfg["data"].get("source"), train_cfg["data"].get("path"),
                           train_cfg["data"].get("demo")])
        if key not in cache:
            cache[key] = eval_items(cfg, train_cfg)
        return cache[key]

    runs: dict[str, dict[str, Any]] = {}
    for seed in cfg["seeds"]:  # seed-major: a partial experiment already holds every arm of its first seeds
        for arm in cfg["arms"]:
            runs.setdefault(arm, {})[str(seed)] = run_arm(cfg, arm, int(seed), out, data)
    return write_report(cfg, runs, out)


def run_steps_curve(cfg: Mapping[str, Any], output_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Accuracy versus pretraining steps: the whole experiment once per ``steps_curve`` value (under
    ``steps<N>/``, each resumable like the main one), then ``steps_curve.json`` and ``plots/steps_<label>.png``."""
    out = Path(output_dir)
    steps = sorted({int(n) for n in cfg.get("steps_curve") or []})
    if not steps or steps[0] < 1:
        raise ValueError(f"transfer: steps_curve must list step counts >= 1, got {cfg.get('steps_curve')}")
    curve: dict[str, Any] = {}
    for n in steps:
        sub = copy.deepcopy(dict(cfg))
        sub["train"] = {**sub["train"], "steps": n}
        sub["steps_curve"] = []
        curve[str(n)] = run_transfer(sub, out / f"steps{n}")["summary"]
    plots = []
    if cfg.get("plots", True):
        for column in dict.fromkeys(r["label"] for r in curve[str(steps[0])]["probe"]):
            plots.append(str(plot_steps_curve(curve, column, out / "plots" / f"steps_{column}.png")))
    result = {"steps": steps, "summary": curve, "plots": plots}
    write_json_atomic(out / "steps_curve.json", result, indent=1, default=str)
    return result


def plot_steps_curve(curve: Mapping[str, Mapping[str, Any]], column: str, path: str | os.PathLike[str], *,
                     metric: str = "linear_acc") -> Path:
    """``metric`` (mean ± std over seeds) against pretraining steps, one line per arm, one panel per modality."""
    from matplotlib.figure import Figure

    from avssl.evaluation.plots import _save

    steps = sorted(int(n) for n in curve)
    fig = Figure(figsize=(9, 3.4))
    for j, m in enumerate(MODALITIES):
        ax = fig.add_subplot(1, len(MODALITIES), j + 1)
        rows = {n: {r["arm"]: r for r in curve[str(n)]["probe"] if r["label"] == column and r["modality"] == m}
                for n in steps}
        for arm in rows[steps[0]]:
            means = [rows[n][arm][metric]["mean"] for n in steps]
            stds = [rows[n][arm][metric]["std"] or 0.0 for n in steps]
            ax.errorbar(steps, means, yerr=stds, marker="o", capsize=3, label=arm,
                        linestyle="-" if rows[steps[0]][arm]["trained"] else ":")
        ax.axhline(rows[steps[0]][next(iter(rows[steps[0]]))]["majority_acc"]["mean"], color="grey",
                   linestyle="--", linewidth=1)
        ax.set_xscale("log")
        ax.set_xticks(steps)
        ax.set_xticklabels([str(n) for n in steps])
        ax.minorticks_off()
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("pretraining steps")
        ax.set_title(f"{m} encoders, label {column}", fontsize=9)
        if j == 0:
            ax.set_ylabel(metric.replace("_", " "))
            ax.legend(fontsize=7)
    return _save(fig, path)


# --- the report ---------------------------------------------------------------------------------------------------


def probe_metric_names(k: int) -> tuple[str, ...]:
    return ("linear_acc", f"knn{k}_acc", "majority_acc")


def zero_shot_values(result: Mapping[str, Any]) -> dict[str, float]:
    z = result.get("zero_shot")
    if not z:
        return {}
    r = z["retrieval"]
    return {"offset_acc": float(z["offset_acc"]["acc"]), "offset_chance": float(z["offset_acc"]["chance_acc"]),
            "a2v_R@1": float(r["a2v_R@1"]), "v2a_R@1": float(r["v2a_R@1"]), "retrieval_chance": float(r["chance_R@1"])}


def summarize(runs: Mapping[str, Mapping[str, Mapping[str, Any]]], *, seeds: Sequence[Any], k: int = 5
              ) -> dict[str, Any]:
    """Mean ± std over seeds of every probe metric (per label column, modality and arm) and zero-shot metric, and
    each arm's paired difference to the unimodal arm of the same modality (:data:`UNIMODAL_ARMS`), seed by seed.

    ``runs[arm][str(seed)]`` is a ``result.json``. Returns ``{"probe": [rows], "zero_shot": [rows]}``.
    """
    seeds = [str(s) for s in seeds]
    arms = list(runs)
    probe_rows: list[dict[str, Any]] = []
    first = runs[arms[0]][seeds[0]]
    for column in (first.get("probe") or {}):
        for m in MODALITIES:
            for arm in arms:
                per_seed = {name: [float(runs[arm][s]["probe"][column][m][name]) for s in seeds]
                            for name in probe_metric_names(k)}
                row: dict[str, Any] = {"label": column, "modality": m, "arm": arm, "seeds": seeds,
                                       "trained": m in runs[arm][seeds[0]].get("trained_modalities", []),
                                       "num_test": int(runs[arm][seeds[0]]["probe"][column][m]["num_test"])}
                for name, values in per_seed.items():
                    mean, sd = mean_std(values)
                    row[name] = {"mean": mean, "std": sd, "values": values}
                ref = UNIMODAL_ARMS[m]
                if ref in runs and ref != arm:
                    row["vs_unimodal"] = {"reference": ref}
                    for name in ("linear_acc", f"knn{k}_acc"):
                        ref_values = [float(runs[ref][s]["probe"][column][m][name]) for s in seeds]
                        row["vs_unimodal"][name] = paired_t_test(per_seed[name], ref_values)
                probe_rows.append(row)
    zero_rows = []
    for arm in arms:
        zero = [zero_shot_values(runs[arm][s]) for s in seeds]
        if not all(zero):
            continue
        zrow: dict[str, Any] = {"arm": arm, "seeds": seeds}
        for name in zero[0]:
            mean, sd = mean_std([v[name] for v in zero])
            zrow[name] = {"mean": mean, "std": sd, "values": [v[name] for v in zero]}
        zero_rows.append(zrow)
    return {"probe": probe_rows, "zero_shot": zero_rows}


def fmt_mean_std(stat: Mapping[str, Any]) -> str:
    """``0.812 ± 0.034`` (``0.812`` for one seed)."""
    return f"{stat['mean']:.3f}" + ("" if stat.get("std") is None else f" ± {stat['std']:.3f}")


def fmt_diff(test: Mapping[str, Any] | None) -> str:
    """``+0.041 (p=0.032)``; ``—`` without a reference; ``+0.041 (n=1)`` with one seed."""
    if not test:
        return "—"
    mean = float(test["mean_diff"])
    diff = f"{0.0 if abs(mean) < 5e-9 else mean:+.3f}"  # no "-0.000" from rounding noise
    return diff + (f" (n={test['n']})" if test["p"] is None else f" (p={test['p']:.3f})")


def markdown_table(summary: Mapping[str, Any], *, k: int = 5) -> str:
    """The report as Markdown: one probe table per label column, and the zero-shot table."""
    knn = f"knn{k}_acc"
    lines: list[str] = []
    columns = list(dict.fromkeys(r["label"] for r in summary["probe"]))
    for column in columns:
        lines += [f"#### Label `{column}`", "",
                  f"| modality | arm | linear | kNN (k={k}) | majority | Δ linear vs unimodal | Δ kNN vs unimodal |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in summary["probe"]:
            if r["label"] != column:
                continue
            arm = r["arm"] + ("" if r["trained"] or r["arm"] == RANDOM_ARM else " (untrained)")
            vs = r.get("vs_unimodal") or {}
            lines.append(f"| {r['modality']} | {arm} | {fmt_mean_std(r['linear_acc'])} | {fmt_mean_std(r[knn])} | "
                         f"{fmt_mean_std(r['majority_acc'])} | {fmt_diff(vs.get('linear_acc'))} | "
                         f"{fmt_diff(vs.get(knn))} |")
        lines.append("")
    if summary["zero_shot"]:
        z0 = summary["zero_shot"][0]
        lines += [f"#### Zero-shot (chance: offset {z0['offset_chance']['mean']:.3f}, retrieval R@1 "
                  f"{z0['retrieval_chance']['mean']:.3f})", "",
                  "| arm | offset acc | retrieval a2v R@1 | retrieval v2a R@1 |", "| --- | --- | --- | --- |"]
        for r in summary["zero_shot"]:
            lines.append(f"| {r['arm']} | {fmt_mean_std(r['offset_acc'])} | {fmt_mean_std(r['a2v_R@1'])} | "
                         f"{fmt_mean_std(r['v2a_R@1'])} |")
        lines.append("")
    return "\n".join(lines)


def plot_probe_accuracy(summary: Mapping[str, Any], column: str, path: str | os.PathLike[str], *,
                        metric: str = "linear_acc") -> Path:
    """Bars: ``metric`` (mean ± std over seeds) per arm, one bar per modality (hatched: an encoder the arm did not
    train); dashed: the majority baseline."""
    import numpy as np
    from matplotlib.figure import Figure

    from avssl.evaluation.plots import _save

    rows = [r for r in summary["probe"] if r["label"] == column]
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    fig = Figure(figsize=(1.3 * len(arms) + 2.5, 3.4))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.38
    for j, m in enumerate(MODALITIES):
        by_arm = {r["arm"]: r for r in rows if r["modality"] == m}
        means = [by_arm[a][metric]["mean"] for a in arms]
        stds = [by_arm[a][metric]["std"] or 0.0 for a in arms]
        bars = ax.bar(np.arange(len(arms)) + (j - 0.5) * width, means, width, yerr=stds, capsize=3, label=m)
        for bar, a in zip(bars, arms):  # an encoder its arm did not train (e.g. masked_video's audio): hatched
            if not by_arm[a]["trained"]:
                bar.set_hatch("//")
        majority = by_arm[arms[0]]["majority_acc"]["mean"]
        ax.axhline(majority, color=f"C{j}", linestyle="--", linewidth=1)
    ax.set_xticks(np.arange(len(arms)))
    ax.set_xticklabels(arms, rotation=20)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(f"label {column}: {metric} per arm (hatched: untrained, dashed: majority)", fontsize=9)
    ax.legend(loc="upper right", fontsize=8)
    return _save(fig, path)


def write_report(cfg: Mapping[str, Any], runs: Mapping[str, Mapping[str, Mapping[str, Any]]],
                 output_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``results.json`` (config, every run, the summary), ``results.md`` and ``plots/probe_<label>.png``."""
    out = Path(output_dir)
    k = int(cfg["eval"]["probe"]["k"])
    summary = summarize(runs, seeds=cfg["seeds"], k=k)
    table = markdown_table(summary, k=k)
    plots = []
    if cfg.get("plots", True) and summary["probe"]:
        for column in dict.fromkeys(r["label"] for r in summary["probe"]):
            plots.append(str(plot_probe_accuracy(summary, column, out / "plots" / f"probe_{column}.png")))
    results = {"format": RESULT_FORMAT, "config": json.loads(json.dumps(cfg, default=str)), "runs": runs,
               "summary": summary, "plots": plots}
    write_json_atomic(out / "results.json", results, indent=1, default=str)
    header = (f"arms: {', '.join(cfg['arms'])}; seeds: {', '.join(map(str, cfg['seeds']))}; "
              f"{cfg['train']['steps']} steps of batch {cfg['train']['batch_size']}; mean ± std over seeds; "
              f"Δ: paired difference to the unimodal arm of the same modality, paired t-test over seeds\n\n")
    write_text_atomic(out / "results.md", header + table)
    results["table"] = table
    return results


__all__ = [
    "RANDOM_ARM", "UNIMODAL_ARMS", "LabelledItems", "arm_train_config", "betainc", "check_config",
    "compose_train_config", "eval_items", "evaluate_arm", "export_untrained", "fmt_diff", "fmt_mean_std",
    "markdown_table", "mean_std", "paired_t_test", "plot_probe_accuracy", "pretrain_arm", "run_arm",
    "plot_steps_curve", "run_steps_curve", "run_transfer", "split_item", "summarize", "t_two_sided_p", "train_overrides", "trained_modalities",
    "write_report",
]
