"""data.worker_retain_memory: DataLoader workers keep freed memory, so a clip's buffers reuse the last clip's pages."""

from __future__ import annotations

import ctypes
import subprocess
import sys
import textwrap

import pytest

from avssl.data._malloc import retain_freed_memory, retain_in_worker

glibc = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")

_MAPPED = textwrap.dedent("""
    import ctypes, sys, torch
    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                   "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    if sys.argv[1] == "retain":
        from avssl.data._malloc import retain_freed_memory
        assert retain_freed_memory()
    before = libc.mallinfo2().hblks  # blocks glibc serves as their own mmap (fresh pages on every allocation)
    x = torch.empty(4, 3, 4, 224, 224)  # the float video of one 224 px clip (9.6 MB)
    print(libc.mallinfo2().hblks - before)
""")


def _mapped_blocks(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _MAPPED, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


@glibc
def test_a_clip_buffer_comes_from_the_heap_when_retained() -> None:
    # glibc's default serves a 9.6 MB allocation as a fresh mapping, whose every page faults on first touch (and
    # its dynamic threshold then depends on the allocation history); retained, it comes from the heap, whose
    # freed pages the next clip reuses (benchmarks/bench_shard_reader.py --malloc: 2x at 224 px)
    if not hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2"):
        pytest.skip("glibc < 2.33: no mallinfo2")
    assert _mapped_blocks("default") == 1
    assert _mapped_blocks("retain") == 0


@glibc
def test_retain_applies_here_and_as_worker_init() -> None:
    assert retain_freed_memory() is True
    retain_in_worker(0)  # the worker_init_fn form


def test_loaders_set_the_worker_init_only_for_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np
    from lightning.fabric.utilities.seed import pl_worker_init_function

    from avssl.lit.datamodule import AVDataModule

    dm = AVDataModule.__new__(AVDataModule)
    dm.cfg = {"num_workers": 2, "pin_memory": False, "persistent_workers": False, "worker_retain_memory": True}
    monkeypatch.setattr(AVDataModule, "trainer", None, raising=False)
    monkeypatch.delenv("PL_SEED_WORKERS", raising=False)  # seed_everything in an earlier test sets it
    init = dm._loader_kwargs()["worker_init_fn"]
    assert init.keywords == {"rank": 0, "seed_workers": False}
    # with seed_everything(..., workers=True) Lightning only seeds workers of loaders without a worker_init_fn:
    # this one must do Lightning's seeding too
    monkeypatch.setenv("PL_SEED_WORKERS", "1")
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")
    init = dm._loader_kwargs()["worker_init_fn"]
    assert init.keywords["seed_workers"] is True
    import torch

    torch.manual_seed(123)  # what the DataLoader gives a worker; Lightning derives the worker's seeds from it
    init(1)
    ours = np.random.get_state()[1].copy()
    torch.manual_seed(123)
    pl_worker_init_function(1, rank=0)
    assert np.array_equal(ours, np.random.get_state()[1])
    dm.cfg["worker_retain_memory"] = False
    assert "worker_init_fn" not in dm._loader_kwargs()
    dm.cfg.update(num_workers=0, worker_retain_memory=True)
    assert "worker_init_fn" not in dm._loader_kwargs()
