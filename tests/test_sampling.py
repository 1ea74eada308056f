"""Clip layout and deterministic clip placement."""

from __future__ import annotations

import pytest

from avssl.data.sampling import (
    ClipSpec,
    audio_offsets,
    clip_start,
    hash_uniform,
    segment_starts,
    uniform_clip_starts,
)


def test_clip_spec_durations() -> None:
    assert ClipSpec().clip_duration == 2.0
    spec = ClipSpec(num_segments=3, segment_duration=0.64, segment_gap=0.1)
    assert spec.clip_duration == pytest.approx(3 * 0.64 + 2 * 0.1)
    assert segment_starts(5.0, spec) == pytest.approx([5.0, 5.74, 6.48])
    assert segment_starts(1.0, ClipSpec(num_segments=4, segment_duration=0.5)) == [1.0, 1.5, 2.0, 2.5]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"num_segments": 0}, "num_segments"),
        ({"segment_duration": 0.0}, "segment_duration"),
        ({"segment_gap": -0.5}, "segment_gap"),  # default 0.5 s segments: the next would start with this one
        ({"segment_gap": -0.7}, "segment_gap"),
        ({"audio_jitter": -0.01}, "audio_jitter"),
    ],
)
def test_clip_spec_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ClipSpec(**kwargs)


def test_overlapping_segments() -> None:
    spec = ClipSpec(num_segments=4, segment_duration=0.5, segment_gap=-0.3)  # one every 0.2 s
    assert spec.segment_stride == pytest.approx(0.2) and spec.clip_duration == pytest.approx(1.1)
    assert segment_starts(1.0, spec) == pytest.approx([1.0, 1.2, 1.4, 1.6])


def test_center_and_uniform_exact() -> None:
    spec = ClipSpec(num_segments=2, segment_duration=1.0)  # 2 s clips
    assert clip_start(10.0, 20.0, spec, mode="center") == 14.0
    starts = [clip_start(10.0, 20.0, spec, mode="uniform", num_clips=5, clip_idx=i) for i in range(5)]
    assert starts == [10.0, 12.0, 14.0, 16.0, 18.0]
    assert clip_start(10.0, 20.0, spec, mode="uniform", num_clips=1) == 14.0
    with pytest.raises(ValueError, match="clip_idx=5"):
        clip_start(10.0, 20.0, spec, mode="uniform", num_clips=5, clip_idx=5)
    with pytest.raises(ValueError, match="mode"):
        clip_start(10.0, 20.0, spec, mode="middle")  # type: ignore[arg-type]


def test_random_is_deterministic_in_range_and_varies() -> None:
    spec = ClipSpec()
    a = [clip_start(0.0, 10.0, spec, seed=1, epoch=0, index=i) for i in range(200)]
    b = [clip_start(0.0, 10.0, spec, seed=1, epoch=0, index=i) for i in reversed(range(200))][::-1]
    assert a == b
    assert all(0.0 <= s <= 8.0 for s in a)
    assert len(set(a)) == 200
    assert clip_start(0.0, 10.0, spec, seed=1, epoch=1, index=0) != a[0]
    assert clip_start(0.0, 10.0, spec, seed=2, epoch=0, index=0) != a[0]
    mean = sum(a) / len(a)
    assert 3.0 < mean < 5.0  # roughly uniform over [0, 8]


def test_random_golden_values() -> None:
    # pinned: the draw is a keyed BLAKE2b hash, so it is the same in every process, worker and run
    assert hash_uniform("clip", 7, 3, 0) == 0.7033920563644274
    starts = [clip_start(0.0, 60.0, ClipSpec(), seed=7, epoch=3, index=i) for i in range(3)]
    assert starts == pytest.approx([40.796739269136786, 27.819697125151144, 57.97596455834939], abs=1e-12)
    offsets = audio_offsets(ClipSpec(num_segments=2, audio_jitter=0.05), seed=1, epoch=0, index=0)
    assert offsets == pytest.approx([-0.02047826027169074, -0.019591753848919292], abs=1e-15)


def test_hash_uniform_range() -> None:
    values = [hash_uniform("x", i) for i in range(1000)]
    assert all(0.0 <= v < 1.0 for v in values)
    assert hash_uniform("x", 1) == hash_uniform("x", 1)


def test_span_too_short_raises() -> None:
    with pytest.raises(ValueError, match=r"shorter than one clip of 2.000 s"):
        clip_start(0.0, 1.5, ClipSpec())
    # exactly one clip fits, despite float rounding
    spec = ClipSpec(num_segments=3, segment_duration=0.1)
    assert clip_start(0.0, 0.1 + 0.1 + 0.1, spec) == 0.0


def test_audio_offsets() -> None:
    assert audio_offsets(ClipSpec(), seed=0, epoch=0, index=0) == [0.0] * 4
    spec = ClipSpec(num_segments=14, segment_duration=0.64, audio_jitter=0.05)
    off = audio_offsets(spec, seed=0, epoch=2, index=9)
    assert len(off) == 14 and all(-0.05 <= o <= 0.05 for o in off)
    assert len(set(off)) == 14
    assert off == audio_offsets(spec, seed=0, epoch=2, index=9)
    assert off != audio_offsets(spec, seed=0, epoch=3, index=9)


def test_uniform_clip_starts_grid() -> None:
    spec = ClipSpec(num_segments=2, segment_duration=0.5)  # 1 s clips
    assert uniform_clip_starts(0.0, 3.5, spec) == [0.0, 1.0, 2.0]
    assert uniform_clip_starts(2.0, 4.0, spec, hop=0.5) == [2.0, 2.5, 3.0]
    assert uniform_clip_starts(0.0, 0.3 * 10, ClipSpec(num_segments=3, segment_duration=0.1), hop=0.3) == (
        pytest.approx([0.3 * k for k in range(10)])
    )
    assert uniform_clip_starts(0.0, 0.5, spec, allow_empty=True) == []
    with pytest.raises(ValueError, match="shorter than one clip"):
        uniform_clip_starts(0.0, 0.5, spec)
    with pytest.raises(ValueError, match="hop"):
        uniform_clip_starts(0.0, 5.0, spec, hop=0.0)


PINNED_INDEX_5 = 0.9561562797909969  # hash_uniform("clip", 7, 3, 5) before keys were normalised


def test_hash_uniform_normalises_key_types() -> None:
    """A numpy or torch index gives the same draw as the Python int it holds (DataLoader samplers, np.arange and
    torch.randperm all hand out such scalars); plain Python keys keep today's values."""
    import numpy as np
    import torch

    plain = hash_uniform("clip", 7, 3, 5)
    assert plain == PINNED_INDEX_5  # unchanged for Python ints
    for index in (np.int64(5), np.int32(5), np.uint8(5), torch.tensor(5), torch.tensor([5]), np.array(5)):
        assert hash_uniform("clip", 7, 3, index) == plain, type(index)
    assert hash_uniform(np.str_("clip"), np.int64(7), torch.tensor(3, dtype=torch.int32), 5) == plain
    # floats hash as Python floats whatever their type; an integral float is still a float, not an int
    assert hash_uniform("t", np.float64(0.25)) == hash_uniform("t", torch.tensor(0.25)) == hash_uniform("t", 0.25)
    assert hash_uniform("t", np.float32(0.5)) == hash_uniform("t", 0.5)
    assert hash_uniform("t", 2.0) != hash_uniform("t", 2)
    assert hash_uniform("b", np.bool_(True)) == hash_uniform("b", True)
    # the clip starts themselves agree
    spec = ClipSpec()
    assert clip_start(0.0, 10.0, spec, seed=1, index=np.int64(4)) == clip_start(0.0, 10.0, spec, seed=1, index=4)
    with pytest.raises(TypeError, match="one value"):
        hash_uniform("clip", torch.arange(3))
    with pytest.raises(TypeError, match="key"):
        hash_uniform("clip", object())
