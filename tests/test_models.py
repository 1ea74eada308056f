"""Encoders, registry, heads and token-grid helpers. Every registered encoder is tested automatically."""

from __future__ import annotations

import math

import pytest
import torch

from avssl.models import (
    AudioViT,
    CNNEncoder,
    Encoder,
    ProjectionHead,
    VideoViT,
    ViTEncoder,
    create_encoder,
    encoder_modality,
    list_encoders,
    patchify,
    random_mask,
    register_encoder,
    tube_mask,
    unpatchify,
)
from avssl.models.patching import (
    check_mask,
    hidden_indices,
    interpolate_pos_embed,
    mask_to_cells,
    sincos_pos_embed,
    visible_indices,
)

ALL = list_encoders()
VITS = [n for n in ALL if n.startswith("vit_")]
SMALL = {"video": dict(num_frames=4, img_size=32), "audio": dict(num_frames=32, num_mels=32)}
# a second input size per modality with remainders that every encoder must crop
ODD = {"video": (3, 5, 37, 35), "audio": (1, 37, 35)}


# the wide variants keep their width and heads but get fewer blocks here; test_full_size_variants builds them whole
SHALLOW = {n: dict(depth=2) for n in ALL if n.startswith("vit_") and n.endswith(("_small", "_base"))}
SHALLOW.update({n: dict(layers=(1, 1, 1, 1)) for n in ALL if n.endswith("_18")})


pytestmark = pytest.mark.usefixtures("one_thread")


def build(name: str, seed: int = 0, shallow: bool = True, **kwargs: object) -> Encoder:
    torch.manual_seed(seed)
    fewer = SHALLOW.get(name, {}) if shallow else {}
    return create_encoder(name, **{**SMALL[encoder_modality(name)], **fewer, **kwargs})


def inputs(enc: Encoder, n: int = 2, shape: tuple[int, ...] | None = None, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *(shape or enc.input_shape), generator=g)


# --- registry -----------------------------------------------------------------------------------------------
def test_registry_lists_builtin_encoders_by_modality() -> None:
    video, audio = set(list_encoders("video")), set(list_encoders("audio"))
    assert {"vit_video_nano", "vit_video_tiny", "vit_video_small", "vit_video_base"} <= video
    assert {"r3d_18", "r2plus1d_18", "mc3_18", "r3d_tiny"} <= video
    assert {
        "vit_audio_nano",
        "vit_audio_tiny",
        "vit_audio_small",
        "vit_audio_base",
        "cnn_audio_small",
    } <= audio
    assert video | audio == set(ALL) and not video & audio
    assert list_encoders(pattern="vit_audio_*") == sorted(n for n in audio if n.startswith("vit_audio_"))
    with pytest.raises(ValueError, match="modality"):
        list_encoders("text")


def test_unknown_encoder_name_lists_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown encoder 'vit_video_huge'.*vit_video_nano"):
        create_encoder("vit_video_huge")


def test_unknown_kwarg_is_a_clear_type_error() -> None:
    with pytest.raises(TypeError, match="'vit_audio_nano'.*'img_size'.*accepted: num_frames"):
        create_encoder("vit_audio_nano", img_size=32)


def test_register_needs_a_modality_and_a_unique_name() -> None:
    with pytest.raises(ValueError, match="cannot infer the modality"):
        register_encoder(lambda **kw: None)
    with pytest.raises(ValueError, match="already registered"):

        @register_encoder(modality="video")
        def vit_video_nano(**kwargs: object) -> Encoder:  # noqa: F811 - deliberately clashes
            raise AssertionError


def test_config_rebuilds_the_same_encoder() -> None:
    enc = build("vit_video_nano", tubelet=1, patch_size=(8, 16))
    cfg = enc.get_config()
    assert cfg["name"] == "vit_video_nano" and cfg["kwargs"]["patch_size"] == [8, 16]
    again = create_encoder(cfg["name"], **cfg["kwargs"])
    assert again.input_shape == enc.input_shape and again.patch_shape() == enc.patch_shape() == (1, 8, 16)
    assert again.state_dict().keys() == enc.state_dict().keys()


def test_pretrained_calls_the_weights_loader(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The factory loads weights through the weight I/O layer below the models (never reaching up to export)."""
    import avssl.models.factory as factory

    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"x")
    calls: list[tuple[Encoder, str]] = []
    monkeypatch.setattr(factory, "load_encoder_weights", lambda enc, path: calls.append((enc, path)))
    enc = create_encoder("cnn_audio_tiny", pretrained=weights)
    assert calls == [(enc, str(weights))]


def test_pretrained_errors_name_the_file(tmp_path) -> None:
    from avssl.weights import ExportError

    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        create_encoder("cnn_audio_tiny", pretrained=missing)
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"x")
    with pytest.raises(ExportError, match="w.safetensors.*corrupt or truncated"):
        create_encoder("cnn_audio_tiny", pretrained=weights)


# --- every encoder ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_output_shapes_and_pooling(name: str) -> None:
    enc = build(name).eval()
    assert enc.modality == encoder_modality(name)
    x = inputs(enc)
    with torch.no_grad():
        tokens = enc.forward_features(x)
        pooled = enc(x)
    assert tokens.shape == (2, enc.num_tokens(), enc.num_features)
    assert pooled.shape == (2, enc.num_features)
    torch.testing.assert_close(pooled, tokens.mean(dim=1))
    assert torch.isfinite(tokens).all()


@pytest.mark.parametrize("name", ALL)
def test_token_grid_and_patch_shape_match_patchify(name: str) -> None:
    enc = build(name).eval()
    for shape in (enc.input_shape, ODD[enc.modality]):
        grid, patch = enc.token_grid(shape), enc.patch_shape(shape)
        dims = shape[1:]
        assert len(grid) == len(patch) == len(dims)
        for d, g, p in zip(dims, grid, patch):
            assert g * p <= d < (g + 1) * p  # grid * patch covers the input after cropping a remainder
        x = inputs(enc, shape=shape)
        targets = patchify(x, patch)
        assert targets.shape == (2, math.prod(grid), math.prod(patch) * shape[0])
        with torch.no_grad():
            assert enc.forward_features(x).shape[1] == math.prod(grid)


@pytest.mark.parametrize("name", ALL)
def test_masking_drops_exactly_the_hidden_tokens(name: str) -> None:
    enc = build(name).eval()
    x = inputs(enc)
    grid, patch = enc.token_grid(), enc.patch_shape()
    length = math.prod(grid)
    mask = random_mask(2, length, 0.5, generator=torch.Generator().manual_seed(3))
    hidden = int(mask[0].sum())
    cells = mask_to_cells(mask, grid, patch, x.shape[2:]).unsqueeze(1)
    with torch.no_grad():
        out = enc.forward_features(x, mask)
        # what lies under hidden tokens cannot matter
        noisy = torch.where(cells, torch.randn_like(x) * 10, x)
        torch.testing.assert_close(enc.forward_features(noisy, mask), out)
        assert out.shape == (2, length - hidden, enc.num_features)
        if isinstance(enc, ViTEncoder):
            # MAE-style: the blocks see only the visible tokens, in grid order
            ref = enc.embed(x)[~mask].reshape(2, length - hidden, -1)
            for block in enc.blocks:
                ref = block(ref)
            torch.testing.assert_close(out, enc.norm(ref))
            torch.testing.assert_close(
                enc.forward_features(x, torch.zeros_like(mask)), enc.forward_features(x)
            )
        else:
            assert isinstance(enc, CNNEncoder)
            # SimMIM-like: hidden cells are zeroed, the visible cells' tokens come back
            full = enc.forward_features(x.masked_fill(cells, 0.0))
            torch.testing.assert_close(out, full[~mask].reshape(2, length - hidden, -1))
    with pytest.raises(ValueError, match="mask must be bool"):
        enc.forward_features(x, mask[:, :-1])
    uneven = mask.clone()
    uneven[0] = False
    with pytest.raises(ValueError, match="same number"):
        enc.forward_features(x, uneven)


@pytest.mark.parametrize("name", ALL)
def test_gradients_reach_every_parameter(name: str) -> None:
    enc = build(name).train()
    x = inputs(enc, n=3)
    enc(x).square().mean().backward()
    for pname, p in enc.named_parameters():
        assert p.grad is not None, f"{name}: no gradient for {pname}"
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"{name}: bad gradient for {pname}"


@pytest.mark.parametrize("name", ALL)
def test_deterministic_under_a_seed(name: str) -> None:
    a, b = build(name, seed=7).eval(), build(name, seed=7).eval()
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    x = inputs(a)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    c = build(name, seed=8)
    assert any(not torch.equal(v, c.state_dict()[k]) for k, v in sa.items() if v.is_floating_point())


@pytest.mark.parametrize("name", ALL)
def test_bad_input_is_a_clear_error(name: str) -> None:
    enc = build(name)
    x = inputs(enc)
    with pytest.raises(ValueError, match="expects"):
        enc(x[0])
    with pytest.raises(ValueError, match="channel"):
        enc(torch.cat([x, x], dim=1))
    if isinstance(enc, ViTEncoder):
        with pytest.raises(ValueError, match="smaller than one patch"):
            enc.token_grid((enc.input_shape[0],) + (8,) * (len(enc.input_shape) - 1))
    with pytest.raises(ValueError, match="input shape"):
        enc.token_grid(enc.input_shape[1:])


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, millions",
    [
        ("vit_video_base", 86.2),
        ("vit_audio_base", 85.3),
        ("vit_video_small", 21.9),
        ("vit_audio_tiny", 5.4),
        ("r3d_18", 33.2),
        ("r2plus1d_18", 31.3),
        ("mc3_18", 11.5),
    ],
)
def test_full_size_variants(name: str, millions: float) -> None:
    enc = build(name, shallow=False).eval()  # full depth, small input
    assert sum(p.numel() for p in enc.parameters()) / 1e6 == pytest.approx(millions, abs=0.05)
    with torch.no_grad():
        assert enc(inputs(enc, n=1)).shape == (1, enc.num_features)


# --- position embeddings ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", VITS)
def test_learned_pos_embed_is_interpolated_on_load(name: str) -> None:
    modality = encoder_modality(name)
    other = dict(num_frames=8, img_size=48) if modality == "video" else dict(num_frames=64, num_mels=32)
    src = build(name, pos_embed="learned").eval()
    dst = build(name, seed=5, pos_embed="learned", **other).eval()
    assert isinstance(src, ViTEncoder) and isinstance(dst, ViTEncoder)
    assert dst.pos_grid != src.pos_grid
    dst.load_state_dict(src.state_dict())  # strict
    expected = interpolate_pos_embed(src.pos_embed.detach(), src.pos_grid, dst.pos_grid)
    torch.testing.assert_close(dst.pos_embed.detach(), expected)
    assert tuple(dst.pos_embed_grid.tolist()) == dst.pos_grid
    torch.testing.assert_close(dst.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)
    # the source model interpolates on the fly for the larger input and so agrees with the loaded one
    x = inputs(dst)
    with torch.no_grad():
        torch.testing.assert_close(src.forward_features(x), dst.forward_features(x))
    # a state dict without the grid entry still loads when only one axis differs (longer audio / more frames)
    sd = {k: v for k, v in src.state_dict().items() if k != "pos_embed_grid"}
    longer = build(name, pos_embed="learned", num_frames=SMALL[modality]["num_frames"] * 2)
    longer.load_state_dict(sd)
    assert longer.pos_embed.shape[1] == 2 * src.pos_embed.shape[1]


@pytest.mark.parametrize("cls", [VideoViT, AudioViT])
def test_sincos_pos_embed_follows_the_input(cls: type[ViTEncoder]) -> None:
    enc = cls(embed_dim=64, depth=1, num_heads=2)
    assert "pos_embed" not in enc.state_dict()  # fixed table, rebuilt for any grid
    grid = (3, 5, 2) if cls is VideoViT else (7, 3)
    torch.testing.assert_close(enc.position_table(grid)[0], sincos_pos_embed(grid, 64))
    with pytest.raises(ValueError, match="pos_embed"):
        cls(pos_embed="rope")


def test_torchvision_weights_load_into_video_cnn() -> None:
    from torchvision.models.video import r2plus1d_18 as tv_r2plus1d_18

    torch.manual_seed(0)
    tv = {
        f"trunk.{k}": v
        for k, v in tv_r2plus1d_18(weights=None).state_dict().items()
        if not k.startswith("fc.")
    }
    enc = create_encoder("r2plus1d_18", num_frames=4, img_size=32)
    missing, unexpected = enc.load_state_dict(tv, strict=False)
    assert set(missing) == {"norm.weight", "norm.bias"} and not unexpected
    assert torch.equal(enc.state_dict()["trunk.stem.3.weight"], tv["trunk.stem.3.weight"])


# --- patching helpers ---------------------------------------------------------------------------------------
def test_patchify_order_and_roundtrip() -> None:
    x = torch.arange(2 * 4 * 6, dtype=torch.float32).reshape(1, 2, 4, 6)  # C=2, 4x6
    tokens = patchify(x, (2, 3))
    assert tokens.shape == (1, 4, 12)
    # token 0 = rows 0-1, cols 0-2; cells row-major with the channel last
    expected = torch.stack([x[0, :, r, c] for r in range(2) for c in range(3)]).reshape(-1)
    torch.testing.assert_close(tokens[0, 0], expected)
    torch.testing.assert_close(tokens[0, 1, :2], x[0, :, 0, 3])  # next token along the last axis
    torch.testing.assert_close(unpatchify(tokens, (2, 3), (2, 2), 2), x)
    video = torch.randn(2, 3, 5, 9, 8)
    t = patchify(video, (2, 4, 4))  # remainders cropped
    torch.testing.assert_close(unpatchify(t, (2, 4, 4), (2, 2, 2), 3), video[:, :, :4, :8, :8])
    with pytest.raises(ValueError, match="do not match"):
        unpatchify(t, (2, 4, 4), (2, 2, 3), 3)


def test_random_and_tube_masks() -> None:
    g = torch.Generator().manual_seed(0)
    m = random_mask(4, 10, 0.7, generator=g)
    assert m.dtype == torch.bool and m.shape == (4, 10) and (m.sum(1) == 7).all()
    assert torch.equal(m, random_mask(4, 10, 0.7, generator=torch.Generator().manual_seed(0)))
    assert not torch.equal(m[0], m[1]) or not torch.equal(m[1], m[2])
    assert random_mask(2, 3, 0.99).sum(1).tolist() == [2, 2]  # one token always stays visible
    tube = tube_mask(3, (4, 2, 3), 0.5, generator=g).reshape(3, 4, 6)
    assert (tube == tube[:, :1]).all() and (tube.sum(-1) == 3).all()
    assert visible_indices(m).shape == (4, 3) and hidden_indices(m).shape == (4, 7)
    assert (visible_indices(m).diff(dim=1) > 0).all()  # grid order
    with pytest.raises(ValueError, match="ratio"):
        random_mask(1, 4, 1.0)
    with pytest.raises(ValueError, match="all 2 tokens"):
        check_mask(torch.ones(1, 2, dtype=torch.bool), 1, 2)


def test_mask_to_cells_and_sincos() -> None:
    mask = torch.tensor([[True, False, False, True]])
    cells = mask_to_cells(mask, (2, 2), (2, 3), (5, 7))
    assert cells.shape == (1, 5, 7)
    assert cells[0, :2, :3].all() and not cells[0, :2, 3:6].any() and cells[0, 2:4, 3:6].all()
    assert not cells[0, 4].any() and not cells[0, :, 6].any()  # the cropped remainder stays visible
    table = sincos_pos_embed((2, 3, 4), 64)
    assert table.shape == (24, 64) and torch.unique(table, dim=0).shape[0] == 24
    assert sincos_pos_embed((4, 4), 130)[:, 128:].abs().sum() == 0  # leftover channels are zero


# --- heads --------------------------------------------------------------------------------------------------
def test_projection_head() -> None:
    lin = ProjectionHead(16, 8)
    mlp = ProjectionHead(16, 8, hidden_dim=32, num_layers=2)
    assert sum(p.numel() for p in lin.parameters()) == 16 * 8 + 8
    assert sum(p.numel() for p in mlp.parameters()) == 16 * 32 + 32 + 32 * 8 + 8
    x = torch.randn(3, 5, 16)
    assert lin(x).shape == mlp(x).shape == (3, 5, 8)
    assert not torch.allclose(mlp(x).norm(dim=-1), torch.ones(3, 5))  # no normalisation inside
    with pytest.raises(ValueError, match="num_layers"):
        ProjectionHead(16, 8, num_layers=0)
    with pytest.raises(ValueError, match=r"\[\.\.\., 16\]"):
        lin(torch.randn(2, 15))


# --- early-convolution stem (stem_convs) -----------------------------------------------------------------------
STEMS = [
    ("vit_video_nano", dict(tubelet=1, patch_size=16, stem_convs=4)),
    ("vit_video_nano", dict(tubelet=2, patch_size=16, stem_convs=2)),
    ("vit_video_nano", dict(tubelet=1, patch_size=8, stem_convs=3)),
    ("vit_audio_nano", dict(patch_size=(4, 16), stem_convs=4)),
    ("vit_audio_nano", dict(patch_size=16, stem_convs=1)),
]


@pytest.mark.parametrize(("name", "kwargs"), STEMS)
def test_conv_stem_keeps_the_patch_grid(name: str, kwargs: dict) -> None:
    """A stem changes how tokens are computed, never which part of the input each token stands for."""
    stem = build(name, **kwargs).eval()
    plain = build(name, **{k: v for k, v in kwargs.items() if k != "stem_convs"}).eval()
    assert stem.stem is not None and plain.stem is None
    for shape in (stem.input_shape, ODD[stem.modality]):
        assert stem.token_grid(shape) == plain.token_grid(shape)
        assert stem.patch_shape(shape) == plain.patch_shape(shape)
        with torch.no_grad():
            assert stem.forward_features(inputs(stem, shape=shape)).shape == plain.forward_features(
                inputs(plain, shape=shape)).shape
    # the stem looks at every pixel of its patch: each token changes when any pixel of its cell changes
    x = inputs(stem)
    grid, patch = stem.token_grid(), stem.patch_shape()
    with torch.no_grad():
        base = stem.forward_features(x)
        for cell in (0, math.prod(grid) - 1):
            mask = torch.zeros(1, math.prod(grid), dtype=torch.bool)
            mask[0, cell] = True
            cells = mask_to_cells(mask, grid, patch, x.shape[2:]).unsqueeze(1)
            moved = stem.forward_features(torch.where(cells, x + 1.0, x))
            assert not torch.allclose(moved[:, cell], base[:, cell])


@pytest.mark.parametrize(("name", "kwargs"), STEMS)
def test_conv_stem_masking_hides_the_hidden_cells(name: str, kwargs: dict) -> None:
    """3x3 convolutions reach across patch borders; the hidden cells are zeroed before the stem (SimMIM-style),
    so nothing under a hidden token reaches a visible one (MAE objectives stay honest)."""
    enc = build(name, **kwargs).eval()
    x = inputs(enc)
    grid, patch = enc.token_grid(), enc.patch_shape()
    mask = random_mask(2, math.prod(grid), 0.5, generator=torch.Generator().manual_seed(5))
    cells = mask_to_cells(mask, grid, patch, x.shape[2:]).unsqueeze(1)
    with torch.no_grad():
        out = enc.forward_features(x, mask)
        torch.testing.assert_close(enc.forward_features(torch.where(cells, torch.randn_like(x) * 10, x), mask), out)
        assert out.shape == (2, math.prod(grid) - int(mask[0].sum()), enc.num_features)


def test_conv_stem_errors_and_gradients() -> None:
    with pytest.raises(ValueError, match="more stride-2 steps"):
        build("vit_video_nano", tubelet=1, patch_size=8, stem_convs=4)  # 8 px patches allow 3 halvings
    with pytest.raises(ValueError, match="non-overlapping"):
        build("vit_audio_nano", patch_size=16, patch_stride=10, stem_convs=2)
    with pytest.raises(ValueError, match=">= 0"):
        build("vit_audio_nano", stem_convs=-1)
    enc = build("vit_video_nano", tubelet=1, stem_convs=4).train()
    enc(inputs(enc, n=3)).square().mean().backward()
    for pname, p in enc.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", ["vit_video_nano", "vit_audio_nano"])
def test_zero_init_residual_starts_every_block_as_the_identity(name: str) -> None:
    enc = build(name, zero_init_residual=True, stem_convs=2)
    x = inputs(enc, n=3)
    with torch.no_grad():
        torch.testing.assert_close(enc.forward_tokens(x, norm=False), enc.embed(x))
    # the branches' first layers get gradients once their outputs have left zero: two SGD steps move everything
    opt = torch.optim.SGD(enc.parameters(), lr=0.1)
    before = {k: v.detach().clone() for k, v in enc.named_parameters()}
    for _ in range(2):
        opt.zero_grad()
        enc(x).square().mean().backward()
        opt.step()
    for k, v in enc.named_parameters():
        assert not torch.equal(v, before[k]), f"{name}: {k} never moved"
    plain = build(name, stem_convs=2)
    assert set(plain.state_dict()) == set(enc.state_dict())  # an init choice only: same parameters
