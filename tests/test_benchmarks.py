"""The benchmark outputs and the docs made from them: the JSON schema of benchmarks/bench_data.py, the report
generator (benchmarks/report.py) on the saved results, and docs/benchmarks.md being in step with them."""

from __future__ import annotations

import copy
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_data  # noqa: E402
import report  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"


def _saved(pattern: str) -> list[Path]:
    found = sorted(RESULTS.glob(pattern))
    assert found, f"no saved {pattern} under {RESULTS}"
    return found


@pytest.fixture(scope="module")
def saved_data() -> tuple[Path, dict[str, Any]]:
    path = report.newest("bench_data_*.json", RESULTS, mode="full")
    assert path is not None, "no full-mode bench_data result is committed"
    return path, json.loads(path.read_text())


@pytest.mark.parametrize("path", _saved("bench_data_*.json"), ids=lambda p: p.name)
def test_saved_bench_data_follows_schema(path: Path) -> None:
    doc = json.loads(path.read_text())
    assert bench_data.validate_result(doc) == []
    assert doc["command"].startswith("python benchmarks/bench_data.py")
    assert len(doc["machine"]["load_before"]) == 3 and len(doc["machine"]["load_after"]) == 3


@pytest.mark.parametrize("path", _saved("train_throughput_*.json"), ids=lambda p: p.name)
def test_saved_train_throughput_has_its_provenance(path: Path) -> None:
    doc = json.loads(path.read_text())
    meta = doc["meta"]
    for key in ("command", "date", "cpu_model", "cores", "load_before", "load_after", "torch", "avssl_git",
                "threads", "batch_clips", "segments_per_clip"):
        assert key in meta, key
    assert meta["command"].startswith("python benchmarks/train_throughput.py")
    for r in doc["results"]:
        # the rates are what the timings say (nothing copied from elsewhere)
        total = r["wait_s"] + r["compute_s"]
        assert r["samples_per_s"] == pytest.approx(r["batch_clips"] * r["steps"] / total, rel=1e-9)
        assert r["segments_per_s"] == pytest.approx(r["samples_per_s"] * r["segments_per_clip"], rel=1e-9)
        assert r["data_wait_fraction"] == pytest.approx(r["wait_s"] / total, rel=1e-9, abs=1e-12)


def _mutations() -> list[tuple[str, Any]]:
    def drop(*keys: str | int) -> Any:
        def f(d: dict[str, Any]) -> None:
            obj: Any = d
            for k in keys[:-1]:
                obj = obj[k]
            del obj[keys[-1]]
        return f

    def put(value: Any, *keys: str | int) -> Any:
        def f(d: dict[str, Any]) -> None:
            obj: Any = d
            for k in keys[:-1]:
                obj = obj[k]
            obj[keys[-1]] = value
        return f

    return [
        ("no date", drop("date")),
        ("no machine load", drop("machine", "load_before")),
        ("no torch version", drop("versions", "torch")),
        ("commit missing", drop("versions", "avssl_git")),
        ("rate as text", put("fast", "throughput", 0, "clips_per_s")),
        ("ratio NaN", put(math.nan, "throughput", 0, "ratio_to_floor")),
        ("zero floor", put(0.0, "throughput", 0, "floor_clips_per_cpu_s")),
        ("negative rate", put(-1.0, "throughput", 0, "clips_per_cpu_s")),
        ("bool as size", put(True, "throughput", 0, "size")),
        ("no throughput", put([], "throughput")),
        ("old schema", put(0, "schema_version")),
        ("foreign schema", put("other", "schema")),
        ("scaling of an unknown case", put("nope", "scaling", 0, "case")),
        ("representation without bytes", drop("representations", 0, "bytes_per_hour")),
        ("media without size", drop("media", 0, "width")),
        ("kernel share as text", put("high", "throughput", 0, "kernel_share")),
        ("negative faults", put(-3.0, "throughput", 0, "minor_faults_per_clip")),
        ("environment value not text", put({"MALLOC_ARENA_MAX": 2}, "machine", "env")),
        ("unknown allocator mode", put({"mode": "jemalloc", "applied": True}, "malloc")),
    ]


def test_steady_rate_leaves_out_each_epochs_prefetched_start() -> None:
    # two workers, batches of 8: each epoch's first two batches arrive together (made in parallel, or prefetched);
    # the window runs from the second's arrival to the epoch's last batch, so those two count as start-up
    arrivals = [(0, 1.0), (0, 1.01), (0, 1.5), (0, 1.51), (0, 2.0), (1, 0.3), (1, 0.31), (1, 0.81)]
    clips, seconds = bench_data.steady_rate(arrivals, workers=2, batch_size=8)
    assert clips == 3 * 8 + 1 * 8
    assert seconds == pytest.approx((2.0 - 1.01) + (0.81 - 0.31))
    # an epoch with no batch after the workers' first ones adds nothing
    assert bench_data.steady_rate([(0, 1.0), (0, 1.1)], workers=2, batch_size=8) == (0, 0.0)
    # one worker: only the epoch's first batch (its start-up) is left out
    assert bench_data.steady_rate([(0, 2.0), (0, 2.5), (0, 3.0)], workers=1, batch_size=4) == (8, 1.0)


@pytest.mark.parametrize("name,mutate", _mutations(), ids=[m[0] for m in _mutations()])
def test_schema_check_names_each_problem(saved_data: tuple[Path, dict[str, Any]], name: str, mutate: Any) -> None:
    doc = copy.deepcopy(saved_data[1])
    assert bench_data.validate_result(doc) == []
    mutate(doc)
    assert bench_data.validate_result(doc), name


def test_docs_are_generated_from_the_saved_results() -> None:
    """docs/benchmarks.md holds exactly what benchmarks/report.py makes from the committed JSON."""
    text, stext = report.DOC.read_text(), report.SCALING_DOC.read_text()
    rendered, data_doc, srendered = report.render(text, RESULTS, stext)
    assert data_doc is not None
    assert rendered == text, "docs/benchmarks.md is out of step with benchmarks/results: run benchmarks/report.py"
    assert srendered == stext, "docs/scaling.md is out of step with benchmarks/results: run benchmarks/report.py"
    assert report.PLOT.is_file()


@pytest.mark.parametrize("method,label", [("steady", "steady state"), ("whole run", "start-up included"),
                                          (None, "first batch left out")])
def test_report_names_how_the_scaling_rate_was_taken(saved_data: tuple[Path, dict[str, Any]], method: str | None,
                                                     label: str) -> None:
    path, doc = copy.deepcopy(saved_data[0]), copy.deepcopy(saved_data[1])
    for sc in doc["scaling"]:
        sc.pop("method", None)
        if method is not None:
            sc["method"] = method
    header = next(line for line in report.bench_data_section(doc, path, plot_name=None).splitlines()
                  if line.startswith("**DataLoader scaling**"))
    assert label in header


@pytest.mark.parametrize("per_round", [None, 9])
def test_report_says_how_the_rounds_were_cut(saved_data: tuple[Path, dict[str, Any]], per_round: int | None) -> None:
    path, doc = copy.deepcopy(saved_data[0]), copy.deepcopy(saved_data[1])
    for t in doc["throughput"]:
        t.pop("batches_per_round", None)
        if per_round is not None and t["source"] == "shards":
            t["batches_per_round"] = per_round
    header = next(line for line in report.bench_data_section(doc, path, plot_name=None).splitlines()
                  if "dataset and floor alternating" in line)
    s = doc["settings"]
    if per_round is None:  # older JSONs: one round length for every case
        assert f"{s['rounds']} rounds of {s['batches_per_round']} batches" in header
    else:
        assert f"shards one epoch a round ({per_round} batches" in header
        assert f"raw files {s['batches_per_round']} batches a round" in header


def test_report_section_carries_every_figure(saved_data: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    path, doc = saved_data
    section = report.bench_data_section(doc, path)
    assert doc["command"] in section and doc["date"] in section
    assert str(doc["machine"]["load_before"]) in section and str(doc["machine"]["load_after"]) in section
    rows = {line.split(" | ")[0].lstrip("| "): line for line in section.splitlines()
            if line.startswith("| ") and line.count(" | ") >= 8}  # the throughput table
    for t in doc["throughput"]:
        row = rows[t["case"]]
        for key in ("clips_per_cpu_s", "floor_clips_per_cpu_s", "clips_per_s", "floor_clips_per_s"):
            assert f" {t[key]:.1f} " in row, (t["case"], key)
        assert f" {t['ratio_to_floor']:.2f} " in row
    for r in doc["representations"]:
        assert any(line.startswith(f"| {r['name']} ") and f"{3600 / r['write_cpu_s_per_hour']:.1f}" in line
                   for line in section.splitlines()), r["name"]
    # replacing the marked section keeps the rest of the page, and a second pass changes nothing
    page = "# title\n\nbefore\n<!-- bench_data:begin -->\nold\n<!-- bench_data:end -->\nafter\n"
    once = report.replace_section(page, "bench_data", section)
    assert once.startswith("# title\n\nbefore\n") and once.endswith("<!-- bench_data:end -->\nafter\n")
    assert "old" not in once.split("<!-- bench_data:begin -->")[1].split("<!-- bench_data:end -->")[0].split("\n")
    assert report.replace_section(once, "bench_data", section) == once
    out = tmp_path / "plot.png"
    report.plot(doc, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_baseline_runs_pair_with_the_run_nearest_in_time(saved_data: tuple[Path, dict[str, Any]],
                                                         tmp_path: Path) -> None:
    """Each baseline run is set beside the untagged full run closest to it in time (not the newest one: the
    machine's speed drifts between runs hours apart), and the pair's figures reach the page."""
    def doc(date: str, rate: float, floor: float, tag: str | None = None, mode: str = "full") -> dict[str, Any]:
        return {"date": date, "mode": mode, "tag": tag, "throughput": [
            {"case": report.RAW_PAIR_CASE, "clips_per_cpu_s": rate, "floor_clips_per_cpu_s": floor}]}

    runs = {"a": doc("2026-12-02T01:00:00+00:00", 20.0, 15.0), "b": doc("2026-12-02T05:00:00+00:00", 30.0, 21.0),
            "c": doc("2026-12-02T05:05:00+00:00", 99.0, 99.0, mode="small"),
            "base": doc("2026-12-02T01:06:00+00:00", 10.0, 14.0, tag=report.BASELINE_TAG)}
    for name, d in runs.items():
        (tmp_path / f"bench_data_{name}.json").write_text(json.dumps(d))
    pairs = report.baseline_pairs(tmp_path)
    assert [(bp.name, np_.name) for _, bp, _, np_ in pairs] == [("bench_data_base.json", "bench_data_a.json")]
    row = "| `bench_data_base.json` | `bench_data_a.json` | 6 min | 10.0 / 20.0 | 2.00 | 14.0 / 15.0 |"
    assert report.pair_rows(pairs) == [row]
    path, saved = saved_data
    assert row in report.bench_data_section(saved, path, plot_name=None, pairs=pairs).splitlines()


@pytest.mark.parametrize("page", ["no markers\n", "<!-- bench_data:end -->\n<!-- bench_data:begin -->\n",
                                  "<!-- bench_data:begin -->\n<!-- bench_data:begin -->\n<!-- bench_data:end -->\n"])
def test_report_refuses_pages_without_one_marker_pair(page: str) -> None:
    with pytest.raises(ValueError, match="bench_data"):
        report.replace_section(page, "bench_data", "x")


# ------------------------------------------------------------------------------------------------ gpu_check


def test_gpu_check_config_snapshot_equals_the_training_config() -> None:
    """The GPU image has no Hydra: gpu_check reads its configs from a snapshot, which must equal the YAML."""
    import gpu_check

    snap = json.loads(gpu_check.CONFIG_SNAPSHOT.read_text())
    assert sorted(snap["presets"]) == sorted(gpu_check.PRESETS)
    for name in gpu_check.PRESETS:
        fresh = json.loads(json.dumps(gpu_check.compose(name)))
        assert snap["presets"][name] == fresh, f"{name}: run python benchmarks/gpu_check.py --write-config"


def test_gpu_check_cpu_smoke(tmp_path: Path) -> None:
    """Every part of the device check runs at toy sizes on the CPU and lands in the JSON."""
    import subprocess

    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--cpu-smoke", "--steps", "1",
                           "--shard-steps", "2", "--fsdp-steps", "1", "--out", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["mode"] == "cpu-smoke" and doc["command"].startswith("python benchmarks/gpu_check.py --cpu-smoke")
    mfu = doc["parts"]["mfu"]
    assert mfu["status"] == "ok" and mfu["gflop_per_step"] > 0 and mfu["peak_bf16_tflops"] is None
    assert set(mfu["variants"]) == {"eager", "compile"}
    eager = mfu["variants"]["eager"]
    assert eager["status"] == "ok" and eager["losses_finite"] and eager["clips_per_s"] > 0
    assert eager["tflops_achieved"] == pytest.approx(mfu["gflop_per_step"] * eager["steps"] / eager["compute_s"]
                                                     / 1e3)
    for v in mfu["variants"].values():  # each variant either ran or says why not
        assert v["status"] == "ok" or v["error"]
    shards = doc["parts"]["shards"]
    assert shards["status"] == "ok", shards
    assert shards["steps"] == 2 and shards["workers"] == 2 and 0.0 <= shards["data_wait_fraction"] <= 1.0
    assert shards["losses_finite"]
    fsdp = doc["parts"]["fsdp"]  # it failed on the 0-d temperature parameter before that became [1]
    assert fsdp["status"] == "ok", fsdp
    assert fsdp["losses_finite"] and fsdp["fsdp_units"] > 1


def test_shard_reader_runs_are_chosen_by_their_settings(tmp_path: Path) -> None:
    """Each column of the shard-reader table is the newest run with its own --malloc/--output, whatever the file
    names (``shard_reader_retain_*`` also matches the retain uint8 runs, which once filled two columns)."""
    runs = {"shard_reader_default_1.json": ("default", None, "2026-01-01"),
            "shard_reader_retain_1.json": ("retain", "float", "2026-01-01"),
            "shard_reader_retain_uint8_2.json": ("retain", "uint8", "2026-01-02"),
            "shard_reader_retain_uint8_1.json": ("retain", "uint8", "2026-01-01")}
    for name, (malloc, output, date) in runs.items():
        settings = {"malloc": malloc} if output is None else {"malloc": malloc, "output": output}
        (tmp_path / name).write_text(json.dumps({"date": date, "settings": settings}))
    pick = [report.newest_shard_reader(tmp_path, m, o, b) for m, o, b in report.SHARD_READER_RUNS]
    assert [p.name if p else None for p in pick] == [
        "shard_reader_default_1.json", "shard_reader_retain_1.json", "shard_reader_retain_uint8_2.json", None]
    assert report.newest_shard_reader(tmp_path, "default", "uint8") is None
    # a newer run that collated batches (--batch 8) fills the batched column only, not a one-sample one
    (tmp_path / "shard_reader_retain_uint8_b8_9.json").write_text(json.dumps(
        {"date": "2026-01-09", "settings": {"malloc": "retain", "output": "uint8", "batch": 8}}))
    assert report.newest_shard_reader(tmp_path, "retain", "uint8").name == "shard_reader_retain_uint8_2.json"
    assert report.newest_shard_reader(tmp_path, "retain", "uint8", 8).name == "shard_reader_retain_uint8_b8_9.json"


def test_kernel_usage_counts_the_faults_of_new_memory() -> None:
    """The per-round kernel figures come from getrusage: touching fresh memory adds minor faults, never fewer."""
    import numpy as np

    k0, f0 = bench_data._kernel_usage()
    # 64 MiB: above glibc's dynamic mmap threshold (at most 32 MiB) and the 32 MiB avssl's workers set, so new pages
    a = np.ones(64 * 1024 * 1024, np.uint8)
    k1, f1 = bench_data._kernel_usage()
    assert int(a[::4096].sum()) == len(a) // 4096
    assert k1 >= k0 and f1 - f0 >= 64 * 1024 * 1024 // (2 * 1024 * 1024)  # at least one fault per 2 MiB page


def test_report_shows_kernel_share_and_tuning_environment(saved_data: tuple[Path, dict[str, Any]]) -> None:
    path, doc = copy.deepcopy(saved_data[0]), copy.deepcopy(saved_data[1])
    for i, t in enumerate(doc["throughput"]):
        t["kernel_share"], t["minor_faults_per_clip"] = 0.01 * i, 100.0 * i
    doc["machine"]["env"] = {"MALLOC_MMAP_THRESHOLD_": "200000000"}
    assert bench_data.validate_result(doc) == []
    section = report.bench_data_section(doc, path)
    assert "`MALLOC_MMAP_THRESHOLD_=200000000`" in section and "kernel: CPU share, faults/clip" in section
    rows = {line.split(" | ")[0].lstrip("| "): line for line in section.splitlines()
            if line.startswith("| ") and line.count(" | ") >= 9}
    for t in doc["throughput"]:
        assert rows[t["case"]].endswith(f" {100 * t['kernel_share']:.0f} %, {t['minor_faults_per_clip']:.0f} |")
    doc["machine"]["env"] = {}
    assert "environment variables: none set" in report.bench_data_section(doc, path)
    # a JSON from before these figures were recorded keeps the old table
    for t in doc["throughput"]:
        del t["kernel_share"]
    assert "kernel:" not in report.bench_data_section(doc, path)


def test_representation_table_carries_float_and_uint8_rates(saved_data: tuple[Path, dict[str, Any]]) -> None:
    """docs/scaling.md's table: each representation's float rate and, for JPEG, the uint8 rate a GPU worker gets."""
    path, doc = saved_data
    table = report.representation_section(doc, path)
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:] for line in table.splitlines()
            if line.startswith("| ") and not line.startswith("| ---")}
    sizes = sorted({int(r["size"]) for r in doc["representations"]})
    for t in doc["throughput"]:
        if t["source"] != "shards":
            continue
        n, px = t["case"].split(":", 1)[1].split(" ")[0].split("@")
        col = 2 * sizes.index(int(px)) + (1 if t["case"].endswith(" uint8") else 0)
        assert rows[n][col] == f"{t['clips_per_cpu_s']:.0f} ({t['ratio_to_floor']:.2f})", t["case"]


@pytest.mark.parametrize("malloc,says", [
    (None, None),
    ({"mode": "worker", "applied": True}, "keeps freed memory as avssl's DataLoader workers do"),
    ({"mode": "worker", "applied": False}, "not applied"),
    ({"mode": "default", "applied": False}, "glibc's own thresholds"),
])
def test_report_names_the_allocator_of_the_run(saved_data: tuple[Path, dict[str, Any]],
                                               malloc: dict[str, Any] | None, says: str | None) -> None:
    path, doc = copy.deepcopy(saved_data[0]), copy.deepcopy(saved_data[1])
    doc.pop("malloc", None)
    if malloc is not None:
        doc["malloc"] = malloc
    assert bench_data.validate_result(doc) == []
    header = report.bench_data_section(doc, path).split("\n\n")[0]
    assert ("Allocator:" in header) == (says is not None)
    if says:
        assert says in header


def test_set_allocator_records_what_took_effect() -> None:
    """``--malloc``: the JSON says which allocator the rounds ran with; worker settings apply on glibc (Linux)."""
    import platform
    import sys

    assert bench_data.set_allocator("default") == {"mode": "default", "applied": False}
    worker = bench_data.set_allocator("worker")  # the same mallopt calls every DataLoader worker makes
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert worker == {"mode": "worker", "applied": glibc}
    with pytest.raises(ValueError, match="jemalloc"):
        bench_data.set_allocator("jemalloc")


def test_bench_shard_reader_small_run_reports_reader_bound_and_floor(tmp_path: Path) -> None:
    """``benchmarks/bench_shard_reader.py`` at toy sizes: every case reports the reader, the bound (the floor plus
    the crop/flip/log-mel kernels, ``bound_clip``) and the floor, with batches collated through batch_video."""
    import bench_shard_reader

    doc = bench_shard_reader.main(["--sizes", "48", "--files", "2", "--seconds", "3", "--rounds", "1",
                                   "--batch", "2", "--output", "uint8", "--cache", str(tmp_path)])
    assert doc["settings"]["batch"] == 2 and doc["settings"]["output"] == "uint8"
    assert [c["case"] for c in doc["cases"]] == ["48-pcm-full", "48-pcm-rrc", "48-logmel-full", "48-logmel-rrc"]
    for c in doc["cases"]:
        assert c["clips_per_cpu_s"] > 0 and c["floor_clips_per_cpu_s"] > 0 and c["bound_clips_per_cpu_s"] > 0
        assert c["rounds"][0]["clips"] == doc["settings"]["samples"] > 0
        assert math.isclose(c["bound_ratio"], c["rounds"][0]["floor_cpu_s"] / c["rounds"][0]["bound_cpu_s"])
    section = report.shard_reader_section([(doc, tmp_path / "shard_reader_retain_uint8_b2_x.json")])
    assert "batches of 2 (batch_video)" in section and "bound (ratio)" in section
