"""Video transform and SpecAugment: exact values, shapes, determinism, errors."""

from __future__ import annotations

import pytest
import torch

from avssl.data.transforms import CropParams, SpecAugment, VideoTransform, denormalize_video


def _frames(t: int = 3, h: int = 40, w: int = 60, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (t, h, w, 3), generator=g, dtype=torch.uint8)


def test_eval_identity_size_exact_values() -> None:
    frames = _frames(2, 16, 16)
    out = VideoTransform(size=16, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))(frames)
    assert out.shape == (3, 2, 16, 16) and out.dtype == torch.float32
    torch.testing.assert_close(out, frames.permute(3, 0, 1, 2).float() / 255)


def test_eval_normalisation_values() -> None:
    frames = torch.full((1, 8, 8, 3), 255, dtype=torch.uint8)
    frames[..., 1] = 0
    out = VideoTransform(size=8)(frames)
    expected = torch.tensor([(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (1 - 0.406) / 0.225])
    torch.testing.assert_close(out[:, 0, 0, 0], expected)
    torch.testing.assert_close(denormalize_video(out)[:, 0, 0, 0], torch.tensor([1.0, 0.0, 1.0]))


def test_eval_center_crop_box() -> None:
    tf = VideoTransform(size=20)
    assert tf.sample_params(40, 60) == CropParams(top=0, left=10, height=40, width=40, flip=False)
    # non-square output: scale 0.75 makes 150 px of width fit, so the box is 200 x round(50 / 0.75) = 67
    assert VideoTransform(size=(50, 150)).sample_params(100, 200) == CropParams(16, 0, 67, 200, False)
    # a left half black / right half white frame, centre-cropped then resized: still split down the middle
    frames = torch.zeros(1, 40, 60, 3, dtype=torch.uint8)
    frames[:, :, 30:] = 255
    out = VideoTransform(size=20, mean=(0, 0, 0), std=(1, 1, 1))(frames)
    assert out.shape == (3, 1, 20, 20)
    assert torch.all(out[..., :9] < 0.01) and torch.all(out[..., 11:] > 0.99)


def test_train_same_params_for_every_frame_and_deterministic() -> None:
    frame = _frames(1, 48, 64)
    frames = frame.repeat(4, 1, 1, 1)
    tf = VideoTransform(size=(24, 32), train=True)
    a = tf(frames, generator=torch.Generator().manual_seed(5))
    b = tf(frames, generator=torch.Generator().manual_seed(5))
    assert a.shape == (3, 4, 24, 32)
    assert torch.equal(a, b)
    for t in range(1, 4):
        assert torch.equal(a[:, t], a[:, 0])
    c = tf(frames, generator=torch.Generator().manual_seed(6))
    assert not torch.equal(a, c)


def test_flip_and_explicit_params() -> None:
    frames = _frames(2, 32, 32)
    tf = VideoTransform(size=32, train=True, mean=(0, 0, 0), std=(1, 1, 1))
    plain = tf(frames, params=CropParams(0, 0, 32, 32, False))
    flipped = tf(frames, params=CropParams(0, 0, 32, 32, True))
    torch.testing.assert_close(flipped, plain.flip(-1))
    torch.testing.assert_close(plain, frames.permute(3, 0, 1, 2).float() / 255)
    crop = tf(frames, params=CropParams(4, 8, 16, 16, False))
    # eval on the cut-out box performs the same resize
    upscale = VideoTransform(size=32, mean=(0, 0, 0), std=(1, 1, 1))
    torch.testing.assert_close(crop, upscale(frames[:, 4:20, 8:24].contiguous()))


def test_train_params_respect_scale_and_ratio() -> None:
    tf = VideoTransform(size=16, train=True, scale=(0.25, 0.5), ratio=(0.75, 1.333), hflip_p=1.0)
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        p = tf.sample_params(100, 120, g)
        assert p.flip
        assert 0 <= p.top and p.top + p.height <= 100 and 0 <= p.left and p.left + p.width <= 120
        assert 0.23 <= p.height * p.width / 12000 <= 0.52
    no_flip = VideoTransform(size=16, train=True, hflip_p=0.0)
    assert not any(no_flip.sample_params(50, 50, g).flip for _ in range(20))


def test_clip_shared_or_per_segment_params() -> None:
    seg = _frames(2, 40, 40)
    clip = torch.stack([seg, seg, seg])  # [S=3, T, H, W, 3], identical segments
    shared = VideoTransform(size=20, train=True)(clip, generator=torch.Generator().manual_seed(1))
    assert shared.shape == (3, 3, 2, 20, 20)
    assert torch.equal(shared[0], shared[1]) and torch.equal(shared[1], shared[2])
    per_seg = VideoTransform(size=20, train=True, share_params=False)(
        clip, generator=torch.Generator().manual_seed(1)
    )
    assert not (torch.equal(per_seg[0], per_seg[1]) and torch.equal(per_seg[1], per_seg[2]))


@pytest.mark.parametrize("height,width", [(112, 149), (149, 112), (112, 112), (48, 64)])
def test_fixed_crop_range_draws_one_attempt(height: int, width: int) -> None:
    """The default crop ranges (area [1, 1], aspect [1, 1]) give the largest centred square on a non-square input
    (torchvision's fallback) after one attempt's two draws, not ten attempts' twenty; a square input is the whole
    frame. Then the flip draw, so the generator has moved by exactly 3 draws (4 with the square's top/left)."""
    tf = VideoTransform(32, train=True, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip_p=0.5)
    g = torch.Generator().manual_seed(3)
    p = tf.sample_params(height, width, g)
    side = min(height, width)
    assert (p.top, p.left, p.height, p.width) == ((height - side) // 2, (width - side) // 2, side, side)
    ref = torch.Generator().manual_seed(3)
    for _ in range(2):
        torch.rand((), generator=ref, dtype=torch.float64)
    if height == width:  # the attempt fits: its top and left are drawn
        for _ in range(2):
            torch.randint(0, 1, (), generator=ref)
    flip = float(torch.rand((), generator=ref, dtype=torch.float64)) < 0.5
    assert p.flip == flip and torch.equal(g.get_state(), ref.get_state())


def test_video_errors() -> None:
    tf = VideoTransform(size=16)
    with pytest.raises(TypeError, match="uint8"):
        tf(torch.zeros(2, 16, 16, 3))
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        tf(torch.zeros(2, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="does not fit"):
        tf(_frames(1, 16, 16), params=CropParams(8, 8, 16, 16))
    with pytest.raises(ValueError, match="scale"):
        VideoTransform(scale=(0.5, 0.2))
    with pytest.raises(ValueError, match=r"\[\.\.\., 3, T, H, W\]"):
        denormalize_video(torch.zeros(2, 4, 8, 8))


def test_specaugment_identity_when_disabled() -> None:
    x = torch.randn(2, 10, 8)
    for aug in (SpecAugment(), SpecAugment(freq_mask=3, time_mask=4, num_masks=0)):
        assert not aug.enabled
        assert aug(x) is x


def test_specaugment_masks_are_bands_and_deterministic() -> None:
    x = torch.ones(4, 1, 50, 16)
    aug = SpecAugment(freq_mask=4, time_mask=10, num_masks=2, fill=0.0)
    a = aug(x, generator=torch.Generator().manual_seed(0))
    b = aug(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == x.shape
    assert torch.equal(x, torch.ones_like(x))  # input untouched
    for item in a.reshape(4, 50, 16):
        zero_rows = (item == 0).all(dim=1)  # time-masked frames
        zero_cols = (item == 0).all(dim=0)  # frequency-masked bins
        # every zero lies in a masked row or column, and at most num_masks * width of each
        assert torch.equal(item == 0, zero_rows[:, None] | zero_cols[None, :])
        assert int(zero_rows.sum()) <= 20 and int(zero_cols.sum()) <= 8
    assert (a == 0).any()


def test_specaugment_exact_with_forced_width() -> None:
    x = torch.ones(1, 6, 5)
    aug = SpecAugment(freq_mask=0, time_mask=6, num_masks=1, fill=-1.0)
    seen_full = False
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        y = aug(x, generator=g)[0]
        masked = (y == -1.0).all(dim=1)
        idx = masked.nonzero().flatten().tolist()
        assert idx == list(range(idx[0], idx[0] + len(idx))) if idx else True  # one contiguous band
        assert torch.all((y == -1.0) | (y == 1.0))
        seen_full |= bool(masked.all())
    assert seen_full  # width 6 of 6 frames is reachable


def test_specaugment_errors() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        SpecAugment(freq_mask=-1)
    with pytest.raises(ValueError, match="frames, mels"):
        SpecAugment(time_mask=2)(torch.zeros(5))


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("clip", [True, False])
def test_uint8_output_then_normalize_equals_float_output(train: bool, clip: bool) -> None:
    """``output="uint8"`` + ``normalize`` (later, batched) gives exactly what ``output="float"`` gives, with the
    same crop / resize / flip draw; the uint8 frames keep the channels-last layout."""
    g = torch.Generator().manual_seed(3)
    frames = torch.randint(0, 256, ((2, 3) if clip else (3,)) + (40, 56, 3), dtype=torch.uint8, generator=g)
    kw = dict(train=train, scale=(0.3, 1.0), hflip_p=0.5, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    for seed in range(4):
        want = VideoTransform(32, **kw)(frames, generator=torch.Generator().manual_seed(seed))
        tf = VideoTransform(32, output="uint8", **kw)
        got = tf(frames, generator=torch.Generator().manual_seed(seed))
        assert got.dtype == torch.uint8 and got.shape == frames.shape[:-3] + (32, 32, 3) and got.is_contiguous()
        torch.testing.assert_close(tf.normalize(got), want, rtol=0, atol=0)
        torch.testing.assert_close(tf.normalize(torch.stack([got, got]))[1], want, rtol=0, atol=0)  # batched
    with pytest.raises(ValueError, match="output must be"):
        VideoTransform(32, output="half")
    with pytest.raises(ValueError, match="normalize expects uint8"):
        VideoTransform(32).normalize(torch.zeros(3, 8, 8, 3))


@pytest.mark.parametrize("output", ["float", "uint8"])
@pytest.mark.parametrize("box", [(0, 5, 24, 24), (2, 0, 20, 26), (0, 0, 24, 32)])  # output size; resize; resize
@pytest.mark.parametrize("flip", [False, True])
def test_apply_images_equals_the_transform_of_the_stacked_frames(output, box, flip):
    """``apply_images`` (crop each decoded image, write into a batch slot) gives exactly ``__call__``'s clip."""
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (24, 32, 3), dtype=torch.uint8, generator=g) for _ in range(5)]
    pos = torch.tensor([[0, 1, 1], [2, 3, 4]])
    frames = torch.stack([images[i] for i in pos.reshape(-1).tolist()]).view(2, 3, 24, 32, 3)
    tf = VideoTransform(24, train=True, output=output)
    p = CropParams(*box, flip=flip)
    want = tf(frames, params=p)
    assert tf.output_shape(2, 3) == tuple(want.shape) and tf.output_dtype == want.dtype
    assert torch.equal(tf.apply_images(images, pos, p), want)
    batch = torch.full((3, *want.shape), 7, dtype=want.dtype)
    assert tf.apply_images(images, pos, p, out=batch[1]).data_ptr() == batch[1].data_ptr()
    assert torch.equal(batch[1], want) and bool((batch[0] == 7).all()) and bool((batch[2] == 7).all())
    if output == "uint8":  # a strided slot is written too
        strided = torch.zeros(tuple(reversed(want.shape)), dtype=want.dtype).permute(*reversed(range(want.dim())))
        assert not strided.is_contiguous() and torch.equal(tf.apply_images(images, pos, p, out=strided), want)
        assert torch.equal(strided, want)
    with pytest.raises(ValueError, match="out is"):
        tf.apply_images(images, pos, p, out=torch.empty(1, dtype=want.dtype))
    with pytest.raises(ValueError, match="does not fit"):
        tf.apply_images(images, pos, CropParams(10, 10, 24, 24))
