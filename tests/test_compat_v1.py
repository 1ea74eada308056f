"""Old checkpoints and bundles (format version 1, written before the redesign) still load and compute what they
computed then (tests/data/v1/README.md says how they were made)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import avssl

pytestmark = pytest.mark.usefixtures("one_thread")

V1 = Path(__file__).parent / "data" / "v1"


@pytest.mark.parametrize("source", ["bundle_v1", "v1.ckpt"])
def test_format_1_loads_and_embeds_as_before(source):
    assert json.loads((V1 / "bundle_v1" / "video" / "config.json").read_text())["format_version"] == 1
    ref = torch.load(V1 / "expected.pt", weights_only=True)
    for modality in ("video", "audio"):
        enc = avssl.load_encoder(V1 / source, modality).eval()
        with torch.no_grad():
            out = enc(ref[f"{modality}_in"])
        torch.testing.assert_close(out, ref[f"{modality}_emb"], rtol=0, atol=1e-6)
        pre = enc.preprocessor
        assert (pre.segment_seconds, pre.fps, pre.sample_rate) == (0.5, 8.0, 16000)
        assert pre.spec.segment_gap == 0.0  # format 1 has no gap: it means contiguous segments


def test_format_1_preprocess_runs():
    video = avssl.load_encoder(V1 / "bundle_v1", "video")
    x = video.preprocess(torch.zeros(8, 40, 48, 3, dtype=torch.uint8), fps=8.0)
    assert x.shape == (2, 3, 4, 32, 32)
    audio = avssl.load_encoder(V1 / "bundle_v1", "audio")
    assert audio.preprocess(torch.zeros(16000), sample_rate=16000).shape[0] == 2
