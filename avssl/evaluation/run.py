"""The evaluation tasks of ``avssl-eval`` on media: offset classification, cross-modal retrieval, probes and
fine-tuning. Each task takes an :class:`EncoderPair` and :class:`EvalItem` s and returns plain numbers."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from avssl.evaluation.embed import (
    EncoderPair,
    embed_windows,
    offset_similarities,
    segment_embeddings,
    window_starts,
)
from avssl.evaluation.metrics import (
    cross_modal_retrieval,
    offset_classification,
    offset_grid,
    retrieval_from_similarity,
)
from avssl.evaluation.probes import accuracy, evaluate_probes
from avssl.evaluation.sources import EvalItem

log = logging.getLogger("avssl.eval")


def _progress(it: Sequence[Any], desc: str, enabled: bool = True) -> Any:
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, disable=not enabled, leave=False)


def clip_positions(item: EvalItem, length: float, before: float, after: float, count: int) -> list[float]:
    """``count`` evenly spaced starts ``t`` with ``[t - before, t + length + after)`` inside the item (centred)."""
    lo, hi = item.start + before, item.end - length - after
    if hi < lo - 1e-9:
        return []
    if count <= 1:
        return [round((lo + hi) / 2, 6)]
    return [round(lo + (hi - lo) * (i + 0.5) / count, 6) for i in range(count)]


# --- offset classification --------------------------------------------------------------------------------------


def evaluate_offsets(
    pair: EncoderPair,
    items: Sequence[EvalItem],
    *,
    min_offset: float = -2.0,
    max_offset: float = 2.0,
    step: float = 0.2,
    clips_per_item: int = 1,
    clip_seconds: float | None = None,
    progress: bool = True,
) -> tuple[dict[str, Any], torch.Tensor, list[float]]:
    """Zero-shot sync-offset classification: for each clip, the similarity of its video with its audio shifted by
    every offset of the grid; the true offset is 0 (the file as recorded). A clip is one model segment
    (``clip_seconds`` None) or as many consecutive segments as ``clip_seconds`` holds, scored as the mean of
    their per-segment similarities (``offset_similarities``). Returns metrics, the similarities ``[N, K]`` and
    the grid."""
    offsets = offset_grid(min_offset, max_offset, step)
    if clip_seconds is not None and not clip_seconds > 0:
        raise ValueError(f"offset.clip_seconds must be positive (or null: one segment), got {clip_seconds}")
    n_seg = pair.segments_in(float(clip_seconds)) if clip_seconds else 1
    spec = pair.video.preprocessor.spec
    seg = (n_seg - 1) * spec.segment_stride + spec.segment_duration  # the clip's span
    rows, skipped = [], 0
    for item in _progress(items, "offsets", progress):
        starts = clip_positions(item, seg, max(0.0, -min(offsets)), max(0.0, max(offsets)), clips_per_item)
        if not starts:
            skipped += 1
            continue
        for t in starts:
            rows.append(offset_similarities(pair, item.path, t, offsets, item.orient, num_segments=n_seg))
    if not rows:
        raise ValueError(
            f"no item is long enough for the offset grid (needs {seg - min(offsets) + max(offsets):.2f} s)"
        )
    sim = torch.stack(rows)
    metrics: dict[str, Any] = offset_classification(sim, offsets)
    metrics.update(
        {
            "items_skipped_too_short": skipped,
            "clip_seconds": round(seg, 6),
            "segments_per_clip": n_seg,
            "offsets": offsets,
            "mean_similarity_by_offset": [round(float(x), 6) for x in sim.mean(0)],
        }
    )
    return metrics, sim, offsets


# --- retrieval ----------------------------------------------------------------------------------------------------


def evaluate_retrieval(
    pair: EncoderPair,
    items: Sequence[EvalItem],
    *,
    clip_seconds: float | None = None,
    ks: Sequence[int] = (1, 5, 10),
    aggregate: str = "embedding",
    progress: bool = True,
) -> tuple[dict[str, Any], torch.Tensor]:
    """Audio->video and video->audio retrieval among clips (one centred clip per item; default length: one
    segment). A clip of several segments is compared by ``aggregate``: ``embedding`` (the cosine of the clips'
    normalised mean segment embeddings: one vector per clip) or ``segments`` (the mean over the clip's segments
    of the cosine of audio segment ``k`` with video segment ``k``: the clips compared moment by moment, as a
    synchrony model is trained). Returns metrics and the audio x video similarity matrix."""
    if aggregate not in ("embedding", "segments"):
        raise ValueError(f"retrieval aggregate must be 'embedding' or 'segments', got {aggregate!r}")
    length = float(clip_seconds or pair.segment_duration)
    n_seg = pair.segments_in(length)
    vs, as_, skipped = [], [], 0
    for item in _progress(items, "retrieval", progress):
        starts = clip_positions(item, length, 0.0, 0.0, 1)
        if not starts:
            skipped += 1
            continue
        if aggregate == "segments":
            v, a = segment_embeddings(pair, item.path, starts[0], n_seg, item.orient)  # [n, D] each
            vs.append(v)
            as_.append(a)
            continue
        v, a = embed_windows(pair, item.path, starts, length, orient=item.orient)
        vs.append(v[0])
        as_.append(a[0])
    if len(vs) < 2:
        raise ValueError(f"retrieval needs at least 2 items of >= {length} s, found {len(vs)}")
    video, audio = torch.stack(vs), torch.stack(as_)
    metrics: dict[str, Any]
    if aggregate == "segments":
        sim = torch.einsum("ikd,jkd->ij", audio.double(), video.double()) / n_seg
        metrics = dict(retrieval_from_similarity(sim, ks))
    else:
        metrics = dict(cross_modal_retrieval(audio, video, ks))
        sim = audio.double() @ video.double().T
    metrics.update({"clip_seconds": length, "segments_per_clip": n_seg, "aggregate": aggregate,
                    "items_skipped_too_short": skipped, "chance_R@1": 1.0 / len(vs)})
    return metrics, sim


# --- probes -------------------------------------------------------------------------------------------------------


def item_embeddings(
    pair: EncoderPair,
    items: Sequence[EvalItem],
    *,
    window: float | None = None,
    hop: float | None = None,
    max_windows: int | None = None,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Clip-level ``(video, audio)`` embeddings ``[N, D]``: the normalised mean over windows covering each item.

    Returns the indices of the items kept (items shorter than one window are left out)."""
    window = float(window or pair.segment_duration)
    hop = float(hop or window)
    vs, as_, kept = [], [], []
    for i, item in enumerate(_progress(items, "clip features", progress)):
        starts = window_starts(item.start, item.end, window, hop)
        if max_windows is not None and len(starts) > max_windows:  # evenly thinned, deterministic
            starts = [
                starts[round(j * (len(starts) - 1) / max(max_windows - 1, 1))] for j in range(max_windows)
            ]
        if not starts:
            continue
        v, a = embed_windows(pair, item.path, starts, window, orient=item.orient)
        vs.append(F.normalize(v.mean(0), dim=-1))
        as_.append(F.normalize(a.mean(0), dim=-1))
        kept.append(i)
    if not vs:
        raise ValueError("no item is long enough for one window")
    return torch.stack(vs), torch.stack(as_), kept


def _label_split(
    items: Sequence[EvalItem], kept: Sequence[int], train_split: str, test_split: str
) -> tuple[list[str], torch.Tensor, torch.Tensor, torch.Tensor]:
    labelled = [j for j, i in enumerate(kept) if items[i].label is not None]
    classes: list[str] = sorted({str(items[kept[j]].label) for j in labelled})
    if len(classes) < 2:
        raise ValueError(f"probes need labelled items of at least 2 classes, found {classes}")
    index = {c: n for n, c in enumerate(classes)}
    y = torch.full((len(kept),), -1, dtype=torch.long)
    for j in labelled:
        y[j] = index[items[kept[j]].label]  # type: ignore[index]
    train = torch.tensor([j for j in labelled if items[kept[j]].split == train_split], dtype=torch.long)
    test = torch.tensor([j for j in labelled if items[kept[j]].split == test_split], dtype=torch.long)
    if train.numel() == 0 or test.numel() == 0:
        raise ValueError(
            f"probes need labelled items in both splits {train_split!r} ({train.numel()}) and "
            f"{test_split!r} ({test.numel()})"
        )
    return classes, y, train, test


def evaluate_probes_on_items(
    pair: EncoderPair,
    items: Sequence[EvalItem],
    *,
    train_split: str = "train",
    test_split: str = "val",
    window: float | None = None,
    hop: float | None = None,
    max_windows: int | None = None,
    k: int = 5,
    weight_decay: float = 1e-4,
    progress: bool = True,
) -> dict[str, Any]:
    """Linear probe and kNN on frozen clip embeddings (video, audio, and both concatenated)."""
    video, audio, kept = item_embeddings(
        pair, items, window=window, hop=hop, max_windows=max_windows, progress=progress
    )
    classes, y, train, test = _label_split(items, kept, train_split, test_split)
    out: dict[str, Any] = {"classes": classes}
    for name, feats in (("video", video), ("audio", audio), ("both", torch.cat([video, audio], dim=1))):
        out[name] = evaluate_probes(
            feats[train], y[train], feats[test], y[test], k=k, weight_decay=weight_decay
        )
    return out


# --- fine-tuning --------------------------------------------------------------------------------------------------


def _segment_inputs(pair: EncoderPair, item: EvalItem, modality: str, max_segments: int) -> torch.Tensor:
    """Model inputs of up to ``max_segments`` evenly chosen segments of an item, through the one cutter."""
    n = pair.segments_in(item.duration) if item.duration + 1e-6 >= pair.segment_duration else 0
    if n < 1:
        return torch.empty(0)
    spec = pair.video.preprocessor.spec
    starts = spec.segment_starts(item.start, n)
    if len(starts) > max_segments:
        starts = [starts[round(j * (len(starts) - 1) / max(max_segments - 1, 1))] for j in range(max_segments)]
    win = pair.read(item.path, item.start, starts[-1] + spec.segment_duration - item.start, item.orient,
                    video_starts=starts)
    if modality == "video":
        return pair.video.preprocessor.video_at(win.frames, win.frame_times, starts)
    return pair.audio.preprocessor.audio_at(win.audio, win.audio_start, starts, win.audio_valid)


def finetune(
    pair: EncoderPair,
    items: Sequence[EvalItem],
    *,
    modality: str = "video",
    train_split: str = "train",
    test_split: str = "val",
    epochs: int = 5,
    batch_size: int = 16,
    lr: float = 1e-3,
    encoder_lr: float = 1e-4,
    weight_decay: float = 0.05,
    segments_per_item: int = 4,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune one modality's encoder with a linear classifier on labelled segments (all layers trained;
    the encoder at ``encoder_lr``). Test accuracy: per segment and per item (mean logits over its segments)."""
    encoder = pair.video if modality == "video" else pair.audio
    xs, ys, owners = [], [], []
    inputs_of = {}
    for i, item in enumerate(_progress(items, f"finetune inputs ({modality})", progress)):
        if item.label is None:
            continue
        x = _segment_inputs(pair, item, modality, segments_per_item)
        if x.numel():
            inputs_of[i] = x
    kept = sorted(inputs_of)
    classes, y_items, train, test = _label_split(items, kept, train_split, test_split)
    for split_idx in (train, test):
        xs.append(torch.cat([inputs_of[kept[j]] for j in split_idx.tolist()]))
        ys.append(torch.cat([y_items[j].repeat(inputs_of[kept[j]].shape[0]) for j in split_idx.tolist()]))
        owners.append(torch.cat([torch.full((inputs_of[kept[j]].shape[0],), j) for j in split_idx.tolist()]))
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)

    head = torch.nn.Linear(encoder.num_features, len(classes)).to(pair.device)
    params = [
        {"params": encoder.encoder.parameters(), "lr": encoder_lr},
        {"params": head.parameters(), "lr": lr},
    ]
    opt = torch.optim.AdamW(params, weight_decay=weight_decay)
    x_train, y_train = xs[0], ys[0]

    def logits(x: torch.Tensor) -> torch.Tensor:
        return head(encoder.encoder(x.to(pair.device)))

    start = time.time()
    encoder.train()
    for _ in range(epochs):
        order = torch.randperm(x_train.shape[0], generator=g)
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            loss = F.cross_entropy(logits(x_train[idx]), y_train[idx].to(pair.device))
            opt.zero_grad()
            loss.backward()
            opt.step()
    encoder.eval()

    with torch.no_grad():
        out = torch.cat(
            [logits(xs[1][b : b + batch_size]).cpu() for b in range(0, xs[1].shape[0], batch_size)]
        )
    seg_acc = accuracy(out.argmax(1), ys[1])
    item_ids = owners[1].unique()
    item_pred = torch.stack([out[owners[1] == j].mean(0).argmax() for j in item_ids])
    item_true = y_items[item_ids]
    return {
        "modality": modality,
        "classes": classes,
        "segment_acc": seg_acc,
        "item_acc": accuracy(item_pred, item_true),
        "num_train_segments": int(x_train.shape[0]),
        "num_test_segments": int(xs[1].shape[0]),
        "epochs": epochs,
        "train_seconds": round(time.time() - start, 2),
    }


# --- all of it ----------------------------------------------------------------------------------------------------


def run_evaluation(cfg: dict[str, Any], output_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Run the tasks named in ``cfg["tasks"]`` (see ``avssl/conf/eval/eval.yaml``); write ``results.json`` and PNG
    plots into ``output_dir``; return the results."""
    from avssl.evaluation.plots import plot_similarity_matrix, plot_similarity_vs_offset
    from avssl.evaluation.sources import resolve_items

    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not cfg.get("checkpoint"):
        raise ValueError("checkpoint is not set: pass checkpoint=PATH (an export bundle folder or a .ckpt)")
    torch.manual_seed(int(cfg.get("seed", 0)))
    pair = EncoderPair.load(cfg["checkpoint"], cfg.get("device", "cpu"))
    d = cfg["data"]
    demo = dict(d.get("demo") or {})
    if d["source"] == "demo" and not set(demo) - {"cache_dir"}:
        # the demo data the encoders were trained on, as the checkpoint's provenance records it
        trained = (getattr(pair.video, "provenance", {}).get("data") or {}).get("demo") or {}
        demo = {**{k: v for k, v in trained.items() if k != "cache_dir"}, **demo}
    items = resolve_items(d["source"], d.get("path"), d.get("labels_csv"), demo, d.get("max_items"))
    eval_items = [it for it in items if d.get("eval_split") in (None, it.split)]
    progress = bool(cfg.get("progress", True))
    results: dict[str, Any] = {
        "checkpoint": os.path.abspath(cfg["checkpoint"]),
        "data": {
            "source": d["source"],
            "path": d.get("path"),
            "demo": demo if d["source"] == "demo" else None,
            "num_items": len(items),
            "eval_split": d.get("eval_split"),
            "num_eval_items": len(eval_items),
        },
        "segment_duration": pair.segment_duration,
        "config": cfg,
    }
    tasks = list(cfg.get("tasks") or [])
    unknown = sorted(set(tasks) - {"offset_acc", "retrieval", "probe", "finetune"})
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; known: offset_acc, retrieval, probe, finetune")
    timings = {}
    if "offset_acc" in tasks:
        t0 = time.time()
        o = cfg["offset"]
        metrics, sim, offsets = evaluate_offsets(
            pair,
            eval_items,
            min_offset=o["min"],
            max_offset=o["max"],
            step=o["step"],
            clips_per_item=o["clips_per_item"],
            clip_seconds=o.get("clip_seconds"),
            progress=progress,
        )
        results["offset_acc"] = metrics
        plot_similarity_vs_offset(sim, offsets, out_dir / "offset_similarity.png")
        timings["offset_acc"] = time.time() - t0
    if "retrieval" in tasks:
        t0 = time.time()
        r = cfg["retrieval"]
        metrics, sim = evaluate_retrieval(
            pair, eval_items, clip_seconds=r.get("clip_seconds"), ks=r["ks"],
            aggregate=r.get("aggregate") or "embedding", progress=progress
        )
        results["retrieval"] = metrics
        plot_similarity_matrix(sim, out_dir / "retrieval_similarity.png")
        timings["retrieval"] = time.time() - t0
    if "probe" in tasks:
        t0 = time.time()
        p = cfg["probe"]
        results["probe"] = evaluate_probes_on_items(
            pair,
            items,
            train_split=p["train_split"],
            test_split=p["test_split"],
            window=p.get("window"),
            hop=p.get("hop"),
            max_windows=p.get("max_windows"),
            k=p["k"],
            weight_decay=p["weight_decay"],
            progress=progress,
        )
        timings["probe"] = time.time() - t0
    if "finetune" in tasks:
        t0 = time.time()
        f = cfg["finetune"]
        results["finetune"] = finetune(
            pair,
            items,
            modality=f["modality"],
            train_split=cfg["probe"]["train_split"],
            test_split=cfg["probe"]["test_split"],
            epochs=f["epochs"],
            batch_size=f["batch_size"],
            lr=f["lr"],
            encoder_lr=f["encoder_lr"],
            weight_decay=f["weight_decay"],
            segments_per_item=f["segments_per_item"],
            seed=int(cfg.get("seed", 0)),
            progress=progress,
        )
        timings["finetune"] = time.time() - t0
    results["seconds"] = {k: round(v, 2) for k, v in timings.items()}
    tmp = out_dir / "results.json.tmp"
    with open(tmp, "w") as fh:
        json.dump(results, fh, indent=2, default=str)
    os.replace(tmp, out_dir / "results.json")
    return results


def summary_lines(results: dict[str, Any]) -> list[str]:
    """Human-readable one-liners of the headline numbers."""
    lines = []
    if "offset_acc" in results:
        o = results["offset_acc"]
        lines.append(
            f"offset_acc: acc {o['acc']:.3f}  within-1 {o['acc_within_1']:.3f}  AUC {o['auc_sync']:.3f}  "
            f"(chance {o['chance_acc']:.3f}, {o['num_clips']} clips)"
        )
    if "retrieval" in results:
        r = results["retrieval"]
        keys = [k for k in r if k.startswith(("a2v_R@", "v2a_R@"))]
        lines.append(
            "retrieval: " + "  ".join(f"{k} {r[k]:.3f}" for k in keys) + f"  ({r['num_items']} items)"
        )
    if "probe" in results:
        for name in ("video", "audio", "both"):
            p = results["probe"][name]
            knn = next(k for k in p if k.startswith("knn"))
            lines.append(
                f"probe[{name}]: linear {p['linear_acc']:.3f}  {knn} {p[knn]:.3f}  "
                f"(majority {p['majority_acc']:.3f})"
            )
    if "finetune" in results:
        f = results["finetune"]
        lines.append(
            f"finetune[{f['modality']}]: item acc {f['item_acc']:.3f}  segment acc {f['segment_acc']:.3f}"
        )
    return lines


__all__ = [
    "clip_positions",
    "evaluate_offsets",
    "evaluate_retrieval",
    "item_embeddings",
    "evaluate_probes_on_items",
    "finetune",
    "run_evaluation",
    "summary_lines",
]
