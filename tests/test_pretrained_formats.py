"""Weights from the ecosystem (issue 12): timm, AudioMAE, transformers AST / VideoMAE and CAV-MAE layouts converted
into avssl ViTs give the reference implementations' tokens; avssl ViTs export to timm. Random weights, offline:
timm and transformers are test-only extras (pip install -e .[dev]); nothing is downloaded."""

from __future__ import annotations

import json
import math

import pytest
import torch

import avssl
from avssl.convert import detect_format, read_state_dict, to_timm_state_dict
from avssl.models import create_encoder
from avssl.weights import StateDictMismatchError

timm = pytest.importorskip("timm")
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

ATOL = 1e-4


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(old)


def _randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Random values everywhere (zero-initialised tokens and tables too), so that every tensor is tested."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0, 0.05)
            if p.ndim == 1 and name.endswith("weight"):  # LayerNorm scales near one
                p.add_(1.0)
    return model.eval()


def _save(sd: dict, path) -> str:
    torch.save({k: v.clone() for k, v in sd.items()}, path)
    return str(path)


def _timm_vit(**kw) -> VisionTransformer:
    return _randomise(VisionTransformer(**kw))


def test_timm_vit_b16_inflated_static_clip_equals_image_model(tmp_path):
    """A timm ViT-B/16 (one block, to stay fast) into vit_video_base: a static clip gives the image tokens."""
    ref = _timm_vit(img_size=224, patch_size=16, embed_dim=768, depth=1, num_heads=12, num_classes=5)
    path = _save(ref.state_dict(), tmp_path / "vit_b16.pth")
    assert detect_format(read_state_dict(path)) == "timm"
    enc = avssl.create_encoder("vit_video_base", pretrained=path, depth=1, num_frames=4, img_size=224,
                         class_token=True, pos_embed="learned").eval()
    report = enc.pretrained_report
    assert set(report.ignored) == {"head.weight", "head.bias"} and not report.kept_init
    frame = torch.randn(1, 3, 224, 224)
    clip = frame.unsqueeze(2).expand(-1, -1, 4, -1, -1).contiguous()
    with torch.no_grad():
        want = ref.forward_features(frame)  # [1, 1 + 196, 768]
        got = enc.forward_tokens(clip)  # [1, 1 + 2 * 196, 768], time-major, class token first
    assert got.shape == (1, 1 + 2 * 196, 768)
    torch.testing.assert_close(got[:, 0], want[:, 0], atol=ATOL, rtol=0)
    for t in range(2):
        torch.testing.assert_close(got[:, 1 + t * 196 : 1 + (t + 1) * 196], want[:, 1:], atol=ATOL, rtol=0)
    # forward_features keeps the encoder interface: grid tokens only
    assert enc.forward_features(clip).shape == (1, 2 * 196, 768)


@pytest.mark.parametrize("inflate", ["average", "center"])
def test_static_clip_parity_needs_the_class_attention_correction(tmp_path, inflate):
    ref = _timm_vit(img_size=32, patch_size=16, embed_dim=64, depth=2, num_heads=4)
    path = _save(ref.state_dict(), tmp_path / "small.pth")
    kw = dict(pretrained=path, inflate=inflate, depth=2, embed_dim=64, num_heads=4, num_frames=8, img_size=32,
              class_token=True, pos_embed="learned")
    enc = create_encoder("vit_video_nano", **kw).eval()
    frame = torch.randn(2, 3, 32, 32)
    clip = frame.unsqueeze(2).repeat(1, 1, 8, 1, 1)
    with torch.no_grad():
        want = ref.forward_features(frame)
        got = enc.forward_tokens(clip)
        torch.testing.assert_close(got[:, 0], want[:, 0], atol=ATOL, rtol=0)
        torch.testing.assert_close(got[:, 1:5], want[:, 1:], atol=ATOL, rtol=0)
        plain = create_encoder("vit_video_nano", **kw, prefix_attn_bias=False).eval().forward_tokens(clip)
    assert (plain[:, 0] - want[:, 0]).abs().max() > 1e-3  # without log T' the class token is off


def test_image_weights_into_another_grid_interpolate_positions(tmp_path):
    ref = _timm_vit(img_size=32, patch_size=16, embed_dim=64, depth=1, num_heads=4)
    path = _save(ref.state_dict(), tmp_path / "small.pth")
    enc = create_encoder("vit_video_nano", pretrained=path, depth=1, embed_dim=64, num_heads=4, num_frames=4,
                         img_size=64, class_token=True, pos_embed="learned")
    assert enc.pos_embed.shape == (1, 2 * 16, 64)
    assert any("interpolated from (2, 2) to (4, 4)" in n for n in enc.pretrained_report.notes)
    torch.testing.assert_close(enc.pos_embed[0, :16], enc.pos_embed[0, 16:])  # copied to every time slice


def test_audiomae_layout_gives_equal_tokens(tmp_path):
    """AudioMAE: a timm ViT over [N, 1, frames, 128 mels] with a class token; its MAE decoder is ignored."""
    ref = _timm_vit(img_size=(64, 128), patch_size=16, in_chans=1, embed_dim=64, depth=2, num_heads=4,
                    num_classes=0)
    sd = dict(ref.state_dict())
    sd["decoder_embed.weight"] = torch.zeros(32, 64)
    sd["mask_token"] = torch.zeros(1, 1, 32)
    path = tmp_path / "audiomae.pth"
    torch.save({"model": sd}, path)
    enc = create_encoder("vit_audio_nano", pretrained=path, depth=2, embed_dim=64, num_heads=4, num_frames=64,
                         num_mels=128, class_token=True, pos_embed="learned").eval()
    assert enc.pretrained_report.format == "audiomae"
    assert set(enc.pretrained_report.ignored) == {"decoder_embed.weight", "mask_token"}
    fbank = torch.randn(2, 1, 64, 128)
    with torch.no_grad():
        torch.testing.assert_close(enc.forward_tokens(fbank), ref.forward_features(fbank), atol=ATOL, rtol=0)


def test_rgb_image_weights_into_audio_average_the_channels(tmp_path):
    ref = _timm_vit(img_size=32, patch_size=16, embed_dim=64, depth=1, num_heads=4)
    path = _save(ref.state_dict(), tmp_path / "rgb.pth")
    enc = create_encoder("vit_audio_nano", pretrained=path, pretrained_format="timm", depth=1, embed_dim=64,
                         num_heads=4, num_frames=32, num_mels=32, class_token=True, pos_embed="learned").eval()
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():  # the mean kernel on one channel is the RGB kernel on three equal channels of x / 3
        want = ref.forward_features(x.repeat(1, 3, 1, 1) / 3)
        torch.testing.assert_close(enc.forward_tokens(x), want, atol=ATOL, rtol=0)


def test_transformers_ast_gives_equal_tokens(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ASTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                                 num_mel_bins=32, max_length=48, frequency_stride=10, time_stride=10,
                                 layer_norm_eps=1e-6)
    ref = _randomise(transformers.ASTModel(cfg))
    path = tmp_path / "ast.bin"
    _save(ref.state_dict(), path)
    enc = create_encoder("vit_audio_nano", pretrained=path, depth=2, embed_dim=64, num_heads=4, num_frames=48,
                         num_mels=32, patch_stride=10, class_token=True, dist_token=True,
                         pos_embed="learned").eval()
    assert enc.pretrained_report.format == "hf_ast" and not enc.pretrained_report.ignored
    assert enc.token_grid() == (4, 2)
    fbank = torch.randn(2, 48, 32)  # AST's input_values: [N, frames, mels]
    with torch.no_grad():
        want = ref(input_values=fbank).last_hidden_state  # prefix 2, then freq-major (2 mels x 4 frames)
        got = enc.forward_tokens(fbank.unsqueeze(1))  # prefix 2, then time-major (4 frames x 2 mels)
    torch.testing.assert_close(got[:, :2], want[:, :2], atol=ATOL, rtol=0)
    want_tm = want[:, 2:].reshape(2, 2, 4, 64).transpose(1, 2).reshape(2, 8, 64)
    torch.testing.assert_close(got[:, 2:], want_tm, atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="overlapping"):
        enc.patch_shape()


def test_transformers_videomae_gives_equal_tokens_before_the_final_norm(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.VideoMAEConfig(image_size=32, patch_size=16, num_frames=4, tubelet_size=2, hidden_size=64,
                                      num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                                      use_mean_pooling=True, layer_norm_eps=1e-6)
    ref = _randomise(transformers.VideoMAEModel(cfg))
    from safetensors.torch import save_file

    path = tmp_path / "videomae.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    enc = create_encoder("vit_video_nano", pretrained=path, depth=2, embed_dim=64, num_heads=4, num_frames=4,
                         img_size=32, pos_embed="learned").eval()
    report = enc.pretrained_report
    assert report.format == "hf_videomae" and "norm.weight / norm.bias" in report.kept_init
    clip = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        want = ref(pixel_values=clip.transpose(1, 2)).last_hidden_state  # VideoMAE takes [N, T, C, H, W]
        got = enc.forward_tokens(clip, norm=False)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_cav_mae_layout_uses_the_modality_and_reports_the_rest(tmp_path):
    """A CAV-MAE-layout file (DataParallel prefix) built from timm blocks: the audio path is its modality blocks,
    the shared block with the audio norms, and norm_a; the audio grid is freq-major (8 mel rows)."""
    a = _timm_vit(img_size=(128, 32), patch_size=16, in_chans=1, embed_dim=64, depth=2, num_heads=4,
                  class_token=False, global_pool="avg", fc_norm=False, num_classes=0)
    sd = {"module.patch_embed_a.proj.weight": a.patch_embed.proj.weight, "module.patch_embed_a.proj.bias":
          a.patch_embed.proj.bias, "module.pos_embed_a": a.pos_embed, "module.modality_a": torch.zeros(1, 1, 64),
          "module.norm_a.weight": a.norm.weight, "module.norm_a.bias": a.norm.bias}
    blk = {k: v for k, v in a.state_dict().items() if k.startswith("blocks.")}
    for k, v in blk.items():
        i, rest = k.split(".", 2)[1:]
        if i == "0":
            sd[f"module.blocks_a.0.{rest}"] = v
        else:  # the shared block: the audio norms are norm1_a / norm2_a; norm1 / norm1_v are other streams
            for n in ("norm1", "norm2"):
                rest = rest.replace(f"{n}.", f"{n}_a.")
            sd[f"module.blocks_u.0.{rest}"] = v
    for n in ("norm1", "norm1_v", "norm2", "norm2_v"):
        sd[f"module.blocks_u.0.{n}.weight"] = torch.ones(64)
    sd["module.patch_embed_v.proj.weight"] = torch.zeros(64, 3, 16, 16)
    sd["module.norm.weight"] = torch.ones(64)
    sd["module.decoder_embed.weight"] = torch.zeros(8, 64)
    path = _save(sd, tmp_path / "cav_mae.pth")
    enc = create_encoder("vit_audio_nano", pretrained=path, depth=2, embed_dim=64, num_heads=4, num_frames=32,
                         num_mels=128, pos_embed="learned").eval()
    report = enc.pretrained_report
    assert report.format == "cav_mae"
    assert {"patch_embed_v.proj.weight", "norm.weight", "decoder_embed.weight"} <= set(report.ignored)
    fbank = torch.randn(1, 1, 32, 128)  # [N, 1, frames, mels]; CAV-MAE (and this reference) see [N, 1, mels, frames]
    with torch.no_grad():
        want = a.forward_features(fbank.transpose(2, 3))  # freq-major tokens (8 x 2)
        got = enc.forward_tokens(fbank)
    torch.testing.assert_close(got, want.reshape(1, 8, 2, 64).transpose(1, 2).reshape(1, 16, 64), atol=ATOL, rtol=0)


def test_loader_errors_name_what_does_not_fit(tmp_path):
    ref = _timm_vit(img_size=32, patch_size=16, embed_dim=64, depth=1, num_heads=4)
    sd = dict(ref.state_dict())
    path = _save(sd, tmp_path / "a.pth")
    kw = dict(depth=1, embed_dim=64, num_heads=4, num_frames=4, img_size=32)
    with pytest.raises(StateDictMismatchError, match="pos_embed='learned'"):
        create_encoder("vit_video_nano", pretrained=path, class_token=True, **kw)
    with pytest.raises(StateDictMismatchError, match="class_token=True"):
        create_encoder("vit_video_nano", pretrained=path, pos_embed="learned", **kw)
    with pytest.raises(StateDictMismatchError, match="1 blocks in the source, 2"):
        create_encoder("vit_video_nano", pretrained=path, pos_embed="learned", class_token=True,
                       **{**kw, "depth": 2})
    sd["blocks.0.something_new.weight"] = torch.zeros(3)
    path = _save(sd, tmp_path / "b.pth")
    with pytest.raises(StateDictMismatchError, match="not understood: blocks.0.something_new.weight"):
        create_encoder("vit_video_nano", pretrained=path, pos_embed="learned", class_token=True, **kw)
    with pytest.raises(ValueError, match="pretrained_format"):
        create_encoder("vit_video_nano", pretrained=path, pretrained_format="nope", **kw)
    # a convolutional stem has no linear patch embedding to receive timm's: said, not silently half-loaded
    with pytest.raises(StateDictMismatchError, match="convolutional stem"):
        create_encoder("vit_video_nano", pretrained=_save(ref.state_dict(), tmp_path / "c.pth"), pos_embed="learned",
                       class_token=True, tubelet=1, stem_convs=2, **kw)


def test_export_to_timm_refuses_a_conv_stem():
    from avssl.weights import ExportError

    with pytest.raises(ExportError, match="convolutional stem"):
        to_timm_state_dict(create_encoder("vit_audio_nano", depth=1, num_frames=48, stem_convs=2))


def test_default_encoders_are_unchanged_by_the_new_options():
    enc = create_encoder("vit_video_nano")
    assert enc.num_prefix_tokens == 0 and not hasattr(enc, "cls_token")
    assert set(enc.state_dict()) == set(create_encoder("vit_video_nano").state_dict())
    x = torch.randn(1, 3, 4, 64, 64)
    torch.testing.assert_close(enc.forward_features(x), enc.forward_tokens(x))


def test_export_to_timm_loads_into_timm(tmp_path):
    enc = create_encoder("vit_audio_nano", depth=2, num_frames=48, class_token=True, pos_embed="learned")
    _randomise(enc)
    sd, kwargs = to_timm_state_dict(enc)
    model = VisionTransformer(**json.loads(json.dumps(kwargs))).eval()
    model.load_state_dict(sd, strict=True)
    x = torch.randn(2, 1, 48, 128)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), enc.forward_tokens(x), atol=ATOL, rtol=0)
    # without a class token, sin-cos positions: timm's avg-pool layout
    plain = create_encoder("vit_audio_nano", depth=1, num_frames=48).eval()
    sd, kwargs = to_timm_state_dict(plain)
    model = VisionTransformer(**kwargs).eval()
    model.load_state_dict(sd, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), plain.forward_features(x), atol=ATOL, rtol=0)
    from avssl.weights import ExportError

    with pytest.raises(ExportError, match="no video ViT"):
        to_timm_state_dict(create_encoder("vit_video_nano", depth=1))


def test_export_timm_round_trip_through_avssl(tmp_path):
    """avssl -> timm file -> avssl (pretrained_format='timm') keeps the tokens."""
    enc = _randomise(create_encoder("vit_audio_nano", depth=1, num_frames=48, class_token=True, pos_embed="learned"))
    sd, _ = to_timm_state_dict(enc)
    path = _save(sd, tmp_path / "timm.pth")
    back = create_encoder("vit_audio_nano", pretrained=path, pretrained_format="timm", depth=1, num_frames=48,
                          class_token=True, pos_embed="learned").eval()
    x = torch.randn(1, 1, 48, 128)
    with torch.no_grad():
        torch.testing.assert_close(back.forward_tokens(x), enc.forward_tokens(x), atol=ATOL, rtol=0)
    assert math.isclose(float(back.pos_embed.detach().sum()), float(enc.pos_embed.detach().sum()), rel_tol=1e-5)


def test_model_config_pretrained_key_and_export_format_timm(tmp_path):
    """model.audio.pretrained (a timm-layout file) initialises training; the checkpoint exports with
    ``avssl-export --format timm`` without that file, and timm loads the result."""
    from avssl.cli.export import main as export_main
    from avssl.objectives.build import build_pretrain_model

    pre = {"segment_duration": 0.5, "fps": 8.0, "frame_size": 32, "sample_rate": 16000,
           "fbank": {"num_mel_bins": 32, "sample_rate": 16000, "mean": -5.0, "std": 4.5},
           "video_mean": [0.5] * 3, "video_std": [0.25] * 3,
           "video_input_shape": [3, 4, 32, 32], "audio_input_shape": [1, 48, 32]}
    small = {"depth": 1, "embed_dim": 32, "num_heads": 2, "class_token": True, "pos_embed": "learned"}
    ref = _timm_vit(img_size=(48, 32), patch_size=16, in_chans=1, embed_dim=32, depth=1, num_heads=2)
    init = _save(ref.state_dict(), tmp_path / "init.pth")
    hp = {"model": {"family": "vit", "embed_dim": 16,
                    "video": {"name": "vit_video_nano", "kwargs": {**small, "img_size": 32, "num_frames": 4}},
                    "audio": {"name": "vit_audio_nano", "kwargs": dict(small), "pretrained": init,
                              "pretrained_format": "timm"}},
          "objective": {"name": "test", "weights": {"sync": 1.0}, "kwargs": {}},
          "optimizer": {"lr": 1e-3}, "preprocessing": pre, "seed": 0}
    model = build_pretrain_model(hp["model"], hp["objective"], pre).eval()  # as avssl-train builds it
    audio = model.encoders["audio"]
    x = torch.randn(2, 1, 48, 32)
    with torch.no_grad():
        torch.testing.assert_close(audio.forward_tokens(x), ref.forward_features(x), atol=ATOL, rtol=0)
    torch.save({"hyper_parameters": hp, "state_dict": {"model." + k: v for k, v in model.state_dict().items()}},
               tmp_path / "m.ckpt")
    (tmp_path / "init.pth").unlink()  # exporting never needs the file training started from
    assert export_main([str(tmp_path / "m.ckpt"), "--out", str(tmp_path / "t"), "--format", "timm"]) == 0
    cfg = json.loads((tmp_path / "t" / "audio" / "timm_config.json").read_text())
    from safetensors.torch import load_file

    back = VisionTransformer(**cfg["kwargs"]).eval()
    back.load_state_dict(load_file(str(tmp_path / "t" / "audio" / "timm_model.safetensors")), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(back.forward_features(x), audio.forward_tokens(x), atol=ATOL, rtol=0)
    # the avssl bundle of such a model rebuilds it (class token, learned table) without the pretrained file
    assert export_main([str(tmp_path / "m.ckpt"), "--out", str(tmp_path / "b")]) == 0
    bundle = json.loads((tmp_path / "b" / "audio" / "config.json").read_text())
    assert bundle["model"]["encoder"]["kwargs"]["class_token"] is True
    loaded = avssl.load_encoder(tmp_path / "b", "audio")
    with torch.no_grad():
        torch.testing.assert_close(loaded.encoder.forward_tokens(x), audio.forward_tokens(x), atol=1e-6, rtol=0)
    assert export_main([str(tmp_path / "m.ckpt"), "--out", str(tmp_path / "v"), "--format", "timm",
                        "--modality", "video"]) == 1  # timm has no video ViT: refused, nothing written
    assert not (tmp_path / "v").exists()
