"""Export bundles and defensive loading: round trips, bad bundles, pickles, prefixes; no Lightning needed."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import avssl
from avssl import export as ex

pytestmark = pytest.mark.usefixtures("one_thread")


PRE: dict[str, Any] = {  # laid out as avssl.lit.datamodule.preprocessing_from_data writes it
    "segment_duration": 0.5,
    "fps": 8.0,
    "frame_size": 32,
    "sample_rate": 16000,
    "fbank": {"num_mel_bins": 32, "sample_rate": 16000, "mean": -5.0, "std": 4.5},
    "video_mean": [0.5, 0.5, 0.5],
    "video_std": [0.25, 0.25, 0.25],
    "video_input_shape": [3, 4, 32, 32],
    "audio_input_shape": [1, 48, 32],
}
ENCODERS = {
    "vit": (
        {
            "name": "vit_video_nano",
            "kwargs": {"depth": 1, "embed_dim": 32, "num_heads": 2, "img_size": 32, "num_frames": 4},
        },
        {
            "name": "vit_audio_nano",
            "kwargs": {"depth": 1, "embed_dim": 32, "num_heads": 2, "num_frames": 48, "num_mels": 32},
        },
    ),
    "cnn": (
        {"name": "r3d_tiny", "kwargs": {"img_size": 32, "widths": [8, 16, 16, 32]}},
        {"name": "cnn_audio_tiny", "kwargs": {"widths": [8, 16, 16, 32]}},
    ),
}
VIDEO_SHAPE = (3, 4, 32, 32)
AUDIO_SHAPE = (1, 48, 32)


def hparams(family: str = "vit", weights: dict[str, float] | None = None) -> dict[str, Any]:
    v, a = copy.deepcopy(ENCODERS[family])
    return {
        "model": {"family": family, "video": v, "audio": a, "embed_dim": 16, "kwargs": {}},
        "objective": {"name": "test", "weights": weights or {"sync": 1.0}, "kwargs": {}},
        "optimizer": {"lr": 1e-3},
        "preprocessing": copy.deepcopy(PRE),
        "seed": 0,
        "avssl_version": avssl.__version__,
    }


def fake_checkpoint(
    path: Path, family: str = "vit", weights: dict[str, float] | None = None, prefix: str = "model."
) -> torch.nn.Module:
    """A checkpoint laid out as Lightning writes one (plain containers only), and the model it holds."""
    torch.manual_seed(0)
    hp = hparams(family, weights)
    model = ex.build_pretrain_model(hp).eval()
    with torch.no_grad():  # make heads/biases non-trivial so that mixed-up tensors would show
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    state = {prefix + k: v for k, v in model.state_dict().items()}
    torch.save({"hyper_parameters": hp, "state_dict": state, "global_step": 7, "epoch": 1}, path)
    return model


def inputs(n: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, *VIDEO_SHAPE, generator=g), torch.randn(n, 1, *AUDIO_SHAPE, generator=g)


@pytest.mark.parametrize("family", ["vit", "cnn"])
def test_export_and_load_match_the_model(tmp_path: Path, family: str) -> None:
    model = fake_checkpoint(tmp_path / "m.ckpt", family)
    written = ex.export_checkpoint(tmp_path / "m.ckpt", tmp_path / "bundle")
    assert sorted(written) == ["audio", "video"]
    cfg = json.loads((tmp_path / "bundle" / "video" / "config.json").read_text())
    assert cfg["format_version"] == ex.FORMAT_VERSION and cfg["modality"] == "video"
    assert cfg["preprocessing"]["fps"] == 8.0 and cfg["preprocessing"]["fbank"]["num_mel_bins"] == 32
    prov = cfg["provenance"]
    assert (
        prov["global_step"] == 7
        and prov["versions"]["pyav"]
        and prov["versions"]["avssl"] == avssl.__version__
    )
    assert prov["training_config"]["model"]["family"] == family
    v, a = inputs()
    with torch.no_grad():
        ref_a, ref_v = model.embed(v, a)
        for modality, x, ref in (("video", v, ref_v), ("audio", a, ref_a)):
            for source in (tmp_path / "bundle", tmp_path / "bundle" / modality, tmp_path / "m.ckpt"):
                enc = avssl.load_encoder(source, modality)
                assert isinstance(enc, torch.nn.Module) and enc.modality == modality and not enc.training
                emb = enc(x.flatten(0, 1))
                torch.testing.assert_close(emb, ref.flatten(0, 1), atol=1e-5, rtol=0)
                assert torch.allclose(emb.norm(dim=-1), torch.ones(emb.shape[0]), atol=1e-5)
                tokens = enc.forward_features(x.flatten(0, 1))
                assert tokens.ndim == 3 and tokens.shape[-1] == enc.num_features


def test_joint_model_exports_its_joint_layer(tmp_path: Path) -> None:
    model = fake_checkpoint(tmp_path / "j.ckpt", "vit", {"joint_mae": 1.0, "joint_contrastive": 0.01})
    ex.export_checkpoint(tmp_path / "j.ckpt", tmp_path / "b")
    v, a = inputs()
    with torch.no_grad():
        for modality, x in (("video", v.flatten(0, 1)), ("audio", a.flatten(0, 1))):
            enc = ex.load_encoder(tmp_path / "b", modality)
            assert enc.embedding == "joint"
            keys = enc.state_dict().keys()
            other = "audio" if modality == "video" else "video"
            assert any(k.startswith("joint.blocks.") for k in keys)
            assert not any(other in k for k in keys if k.startswith("joint."))
            tokens = model.objectives["joint"].net.joint({modality: model.encoders[modality].forward_features(x)})[modality]
            ref = torch.nn.functional.normalize(tokens.mean(1), dim=-1)
            torch.testing.assert_close(enc(x), ref, atol=1e-5, rtol=0)
            torch.testing.assert_close(enc.forward_features(x), tokens, atol=1e-5, rtol=0)


@pytest.mark.slow  # a fresh interpreter imports torch: ~10-30 s on a loaded 2-core machine
def test_fresh_process_never_imports_lightning(tmp_path: Path) -> None:
    model = fake_checkpoint(tmp_path / "m.ckpt")
    ex.export_checkpoint(tmp_path / "m.ckpt", tmp_path / "bundle")
    v, a = inputs()
    with torch.no_grad():
        ref_a, ref_v = model.embed(v, a)
    torch.save({"v": v, "a": a, "ref_v": ref_v, "ref_a": ref_a}, tmp_path / "io.pt")
    code = f"""
import sys, torch, avssl
io = torch.load({str(tmp_path / "io.pt")!r})
for src in ({str(tmp_path / "bundle")!r}, {str(tmp_path / "m.ckpt")!r}):
    for m, x, ref in (("video", io["v"], io["ref_v"]), ("audio", io["a"], io["ref_a"])):
        enc = avssl.load_encoder(src, m)
        with torch.no_grad():
            err = (enc(x.flatten(0, 1)) - ref.flatten(0, 1)).abs().max().item()
        assert err < 1e-5, (src, m, err)
enc = avssl.create_encoder("vit_audio_nano", pretrained={str(tmp_path / "bundle")!r}, depth=1, embed_dim=32,
                           num_heads=2, num_frames=48, num_mels=32)
assert "lightning" not in sys.modules and "pytorch_lightning" not in sys.modules, "lightning was imported"
print("OK")
"""
    env = {**os.environ, "PYTHONPATH": str(Path(avssl.__file__).parents[1])}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                         cwd=tmp_path)  # not the repository root: its avssl/ would shadow the installed package
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "OK"


def test_create_encoder_pretrained_loads_the_encoder_weights(tmp_path: Path) -> None:
    model = fake_checkpoint(tmp_path / "m.ckpt")
    ex.export_checkpoint(tmp_path / "m.ckpt", tmp_path / "bundle")
    kw = ENCODERS["vit"][1]["kwargs"]
    for src in (
        tmp_path / "bundle",
        tmp_path / "bundle" / "audio",
        tmp_path / "bundle" / "audio" / "model.safetensors",
        tmp_path / "m.ckpt",
    ):
        enc = avssl.create_encoder("vit_audio_nano", pretrained=src, **kw)
        for k, val in model.encoders["audio"].state_dict().items():
            assert torch.equal(enc.state_dict()[k], val), (src, k)
    with pytest.raises(ex.ExportError, match="audio"):  # a video encoder cannot take the audio bundle
        avssl.create_encoder(
            "vit_video_nano", pretrained=tmp_path / "bundle" / "audio", **ENCODERS["vit"][0]["kwargs"]
        )


def test_wrapper_prefixes_are_stripped_exactly(tmp_path: Path) -> None:
    assert ex.clean_key("module.encoders.video.blocks.0.weight") == "encoders.video.blocks.0.weight"
    assert ex.clean_key("model._orig_mod.encoders.audio.norm.bias") == "model.encoders.audio.norm.bias"
    assert ex.clean_key("backbone.conv1.weight") == "backbone.conv1.weight"  # no character stripping
    assert ex.clean_key("modules.x") == "modules.x"
    assert ex.select_prefix({"model.a": 1, "modelx.b": 2, "model.c.d": 3}, "model") == {"a": 1, "c.d": 3}
    with pytest.raises(ex.StateDictMismatchError, match="collide"):
        ex.clean_state_dict({"module.a": torch.zeros(1), "a": torch.zeros(1)})
    # a DDP- and compile-wrapped checkpoint still loads, and gives the same embeddings
    model = fake_checkpoint(tmp_path / "w.ckpt", prefix="module.model._orig_mod.")
    enc = ex.load_encoder(tmp_path / "w.ckpt", "audio")
    _, a = inputs()
    with torch.no_grad():
        torch.testing.assert_close(
            enc(a.flatten(0, 1)), model.embed(*inputs())[0].flatten(0, 1), atol=1e-5, rtol=0
        )


def test_missing_unexpected_and_misshaped_weights_are_named(tmp_path: Path) -> None:
    fake_checkpoint(tmp_path / "m.ckpt")
    ex.export_checkpoint(tmp_path / "m.ckpt", tmp_path / "b")
    from safetensors.torch import load_file, save_file

    weights = tmp_path / "b" / "audio" / "model.safetensors"
    good = load_file(str(weights))
    bad = dict(good)
    bad.pop("head.net.0.bias")
    bad["head.extra"] = torch.zeros(2)
    save_file(bad, str(weights))
    with pytest.raises(ex.StateDictMismatchError) as err:
        ex.load_encoder(tmp_path / "b", "audio")
    msg = str(err.value)
    assert "missing key(s): head.net.0.bias" in msg and "unexpected key(s): head.extra" in msg
    assert str(weights) in msg
    bad = dict(good)
    bad["head.net.0.weight"] = torch.zeros(3, 3)
    save_file(bad, str(weights))
    with pytest.raises(ex.StateDictMismatchError, match=r"head\.net\.0\.weight"):
        ex.load_encoder(tmp_path / "b", "audio")


def test_corrupt_truncated_and_newer_bundles_fail_clearly(tmp_path: Path) -> None:
    fake_checkpoint(tmp_path / "m.ckpt")
    ex.export_checkpoint(tmp_path / "m.ckpt", tmp_path / "b")
    vdir = tmp_path / "b" / "video"
    weights = vdir / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ex.ExportError, match="corrupt or truncated safetensors"):
        ex.load_encoder(tmp_path / "b", "video")
    weights.write_bytes(b"\x00" * 64)
    with pytest.raises(ex.ExportError, match="corrupt or truncated safetensors"):
        ex.load_encoder(tmp_path / "b", "video")
    weights.unlink()
    with pytest.raises(ex.ExportError, match="weights file is missing"):
        ex.load_encoder(tmp_path / "b", "video")

    cfg_path = tmp_path / "b" / "audio" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "format_version": ex.FORMAT_VERSION + 1}))
    with pytest.raises(ex.BundleVersionError, match="newer than this avssl understands"):
        ex.load_encoder(tmp_path / "b", "audio")
    cfg_path.write_text(json.dumps(cfg)[:40])
    with pytest.raises(ex.ExportError, match="not valid JSON"):
        ex.load_encoder(tmp_path / "b", "audio")
    with pytest.raises(ex.ExportError, match="no encoder bundle here"):
        ex.load_encoder(tmp_path, "audio")
    with pytest.raises(ex.ExportError, match="no such bundle folder or checkpoint"):
        ex.load_encoder(tmp_path / "nope.ckpt", "audio")

    ckpt = tmp_path / "m.ckpt"
    raw = ckpt.read_bytes()
    (tmp_path / "t.ckpt").write_bytes(raw[: len(raw) // 3])
    with pytest.raises(ex.ExportError, match="corrupt or truncated"):
        ex.load_encoder(tmp_path / "t.ckpt", "audio")
    # a checkpoint of another architecture: shape errors name the tensor
    other = hparams("vit")
    other["model"]["audio"]["kwargs"]["embed_dim"] = 48
    state = torch.load(ckpt, weights_only=True)
    torch.save({**state, "hyper_parameters": other}, tmp_path / "mismatch.ckpt")
    with pytest.raises(ex.StateDictMismatchError, match=r"size mismatch for encoders\.audio\."):
        ex.load_encoder(tmp_path / "mismatch.ckpt", "audio")


class _Payload:
    """Unpickling this runs code (writes a marker file) unless weights_only refuses it."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_text, (Path(self.marker), "pwned"))


def test_pickled_payload_is_refused_and_never_runs(tmp_path: Path) -> None:
    fake_checkpoint(tmp_path / "m.ckpt")
    state = torch.load(tmp_path / "m.ckpt", weights_only=True)
    marker = tmp_path / "marker.txt"
    state["hyper_parameters"]["evil"] = _Payload(str(marker))
    torch.save(state, tmp_path / "evil.ckpt")
    with pytest.raises(ex.ExportError, match="weights_only"):
        ex.load_encoder(tmp_path / "evil.ckpt", "audio")
    with pytest.raises(ex.ExportError, match="weights_only"):
        ex.load_encoder_weights(
            avssl.create_encoder("vit_audio_nano", **ENCODERS["vit"][1]["kwargs"]), tmp_path / "evil.ckpt"
        )
    assert not marker.exists()


def test_preprocess_matches_the_data_layer() -> None:
    from avssl.data.features import FbankConfig, log_mel, normalize
    from avssl.data.transforms import VideoTransform

    pre = ex.Preprocessor(PRE)
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(
        0, 256, (8, 40, 48, 3), dtype=torch.uint8, generator=g
    )  # 1 s at 8 fps -> 2 segments
    x = pre.video(frames, fps=8.0)
    assert x.shape == (2, 3, 4, 32, 32)
    ref = VideoTransform(32, train=False, mean=PRE["video_mean"], std=PRE["video_std"])(
        frames.reshape(2, 4, 40, 48, 3)
    )
    torch.testing.assert_close(x, ref)
    # 16 fps input: the model's 8 fps grid takes every other frame
    frames16 = torch.randint(0, 256, (16, 40, 48, 3), dtype=torch.uint8, generator=g)
    torch.testing.assert_close(
        pre.video(frames16, times=torch.arange(16) / 16.0), pre.video(frames16[::2], fps=8.0)
    )
    wave = 0.1 * torch.randn(16000, generator=g)
    spec = pre.audio(wave, 16000)
    fb = FbankConfig(sample_rate=16000, num_mel_bins=32, mean=-5.0, std=4.5)
    torch.testing.assert_close(spec, normalize(log_mel(wave.reshape(2, 8000), fb), fb).unsqueeze(1))
    assert pre.audio(torch.stack([wave, wave]), 16000).shape == (2, 1, 48, 32)  # stereo averaged
    assert pre.audio(wave[:4000], 16000).shape == (1, 1, 48, 32)  # short input padded to one segment
    with pytest.raises(ValueError, match="uint8"):
        pre.video(frames.float(), fps=8.0)
    with pytest.raises(ValueError, match="exactly one of"):
        pre.video(frames)


def test_loaded_encoder_preprocess_then_forward(tmp_path: Path) -> None:
    fake_checkpoint(tmp_path / "m.ckpt", "cnn")
    ex.export_checkpoint(tmp_path / "m.ckpt", tmp_path / "b")
    venc, aenc = ex.load_encoder(tmp_path / "b", "video"), ex.load_encoder(tmp_path / "b", "audio")
    frames = torch.randint(0, 256, (12, 36, 36, 3), dtype=torch.uint8)
    with torch.no_grad():
        ve = venc(venc.preprocess(frames, fps=12.0))  # 1 s -> 2 segments
        ae = aenc(aenc.preprocess(0.1 * torch.randn(2, 44100), sample_rate=44100))  # resampled to 16 kHz
    assert ve.shape == (2, 16) and ae.shape == (2, 16)
    with pytest.raises(TypeError, match="sample_rate"):
        aenc.preprocess(torch.zeros(16000))


# --- writing bundles never deletes what avssl did not write ----------------------------------------------------


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_export_refuses_folders_that_are_not_bundles(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from avssl.cli.export import main

    fake_checkpoint(tmp_path / "m.ckpt", "cnn")
    out = tmp_path / "out"
    (out / "video" / "clips").mkdir(parents=True)  # a user's folder that happens to be called "video"
    (out / "video" / "notes.txt").write_text("my notes")
    (out / "video" / "clips" / "a.mp4").write_bytes(b"\x00not really a video")
    before = _tree(out)
    with pytest.raises(ex.ExportError) as err:
        ex.export_checkpoint(tmp_path / "m.ckpt", out)
    assert err.value.path == str(out / "video") and "not an avssl bundle" in str(err.value)
    assert "notes.txt" in str(err.value)
    assert _tree(out) == before and sorted(p.name for p in out.iterdir()) == ["video"]  # audio not written either
    # the CLI: one clear line naming the folder, non-zero exit, nothing touched
    capsys.readouterr()
    assert main([str(tmp_path / "m.ckpt"), "--out", str(out)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("avssl-export: error: ") and str(out / "video") in lines[0]
    assert _tree(out) == before
    # a file where the bundle folder would go, and a symbolic link to a folder, are refused as well
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "audio").write_text("a file")
    with pytest.raises(ex.ExportError, match="not a folder"):
        ex.export_checkpoint(tmp_path / "m.ckpt", tmp_path / "f", ("audio",))
    assert (tmp_path / "f" / "audio").read_text() == "a file"
    (tmp_path / "l").mkdir()
    (tmp_path / "l" / "audio").symlink_to(out / "video", target_is_directory=True)
    with pytest.raises(ex.ExportError, match="symbolic link"):
        ex.export_checkpoint(tmp_path / "m.ckpt", tmp_path / "l", ("audio",))
    assert _tree(out) == before
    # an empty folder is used
    (tmp_path / "e" / "audio").mkdir(parents=True)
    ex.export_checkpoint(tmp_path / "m.ckpt", tmp_path / "e", ("audio",))
    assert sorted(p.name for p in (tmp_path / "e" / "audio").iterdir()) == ["config.json", "model.safetensors"]


def test_export_replaces_only_its_own_bundles_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_checkpoint(tmp_path / "a.ckpt", "cnn")
    out = tmp_path / "out"
    ex.export_checkpoint(tmp_path / "a.ckpt", out)
    first = _tree(out)
    state = torch.load(tmp_path / "a.ckpt", weights_only=True)
    state["state_dict"] = {k: v + 1.0 if v.is_floating_point() else v for k, v in state["state_dict"].items()}
    state["global_step"] = 99
    torch.save(state, tmp_path / "b.ckpt")
    ex.export_checkpoint(tmp_path / "b.ckpt", out)  # an avssl bundle is replaced
    assert json.loads((out / "audio" / "config.json").read_text())["provenance"]["global_step"] == 99
    assert _tree(out) != first
    assert sorted(p.name for p in out.iterdir()) == ["audio", "video"]  # no temporary folders left behind
    second = _tree(out)

    # a failure while writing leaves the previous bundle as it was, and no temporary folder
    import safetensors.torch

    def broken_save(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ex.export_checkpoint(tmp_path / "a.ckpt", out)
    monkeypatch.undo()
    assert _tree(out) == second and sorted(p.name for p in out.iterdir()) == ["audio", "video"]

    # a bundle folder holding anything else (a user's README) is not ours to delete: refused, kept as it is
    (out / "audio" / "README.md").write_text("which run this was")
    with pytest.raises(ex.ExportError, match="README.md") as err:
        ex.export_checkpoint(tmp_path / "a.ckpt", out)
    assert err.value.path == str(out / "audio")
    assert (out / "audio" / "README.md").read_text() == "which run this was"
    assert {k: v for k, v in _tree(out).items() if k != "audio/README.md"} == second
    # nor is a folder whose config.json is not a bundle config
    (out / "audio" / "README.md").unlink()
    (out / "audio" / "config.json").write_text('{"learning_rate": 0.1}')
    with pytest.raises(ex.ExportError, match="not an avssl bundle"):
        ex.export_checkpoint(tmp_path / "a.ckpt", out, ("audio",))
    assert (out / "audio" / "config.json").read_text() == '{"learning_rate": 0.1}'


# --- loading never follows paths written inside a bundle or checkpoint -------------------------------------------


def test_bundle_config_cannot_make_the_loader_open_other_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_checkpoint(tmp_path / "m.ckpt")
    ex.export_checkpoint(tmp_path / "m.ckpt", tmp_path / "b")
    opened: list[str] = []
    real = ex.load_encoder_weights

    def spy(encoder: torch.nn.Module, path: Any) -> torch.nn.Module:
        opened.append(str(path))
        return real(encoder, path)

    monkeypatch.setattr(ex, "load_encoder_weights", spy)
    cfg_path = tmp_path / "b" / "audio" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    assert "pretrained" not in cfg["model"]["encoder"]["kwargs"]
    for target in (tmp_path / "m.ckpt", tmp_path / "secret" / "missing.safetensors"):
        bad = copy.deepcopy(cfg)
        bad["model"]["encoder"]["kwargs"]["pretrained"] = str(target)
        cfg_path.write_text(json.dumps(bad))
        with pytest.raises(ex.ExportError) as err:
            ex.load_encoder(tmp_path / "b", "audio")
        assert err.value.path == str(cfg_path) and "'pretrained'" in str(err.value)
        assert "model.safetensors" in str(err.value)
    assert opened == []  # nothing named in the config was ever opened
    cfg_path.write_text(json.dumps(cfg))
    assert ex.load_encoder(tmp_path / "b", "audio").modality == "audio"


def test_missing_pretrained_file_is_an_export_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "weights.safetensors"
    with pytest.raises(ex.ExportError) as err:
        avssl.create_encoder("vit_audio_nano", pretrained=missing, **ENCODERS["vit"][1]["kwargs"])
    assert err.value.path == str(missing) and "vit_audio_nano" in str(err.value)
    assert isinstance(err.value, FileNotFoundError)  # still caught by code that expects FileNotFoundError


def test_run_trained_from_pretrained_weights_exports_without_that_file(tmp_path: Path) -> None:
    """model.<modality>.kwargs.pretrained in the training config initialised the encoder; the checkpoint holds the
    trained weights, so exporting and loading never need the pretrained file again and bundles never name it."""
    fake_checkpoint(tmp_path / "init.ckpt")
    ex.export_checkpoint(tmp_path / "init.ckpt", tmp_path / "init")
    init = tmp_path / "init" / "audio" / "model.safetensors"
    model = fake_checkpoint(tmp_path / "m.ckpt")  # the "trained" weights
    state = torch.load(tmp_path / "m.ckpt", weights_only=True)
    state["hyper_parameters"]["model"]["audio"]["kwargs"]["pretrained"] = str(init)
    torch.save(state, tmp_path / "m.ckpt")
    import shutil

    shutil.rmtree(tmp_path / "init")  # the pretrained file is gone (another machine, cleaned-up scratch)
    ex.export_checkpoint(tmp_path / "m.ckpt", tmp_path / "b")
    cfg = json.loads((tmp_path / "b" / "audio" / "config.json").read_text())
    assert "pretrained" not in cfg["model"]["encoder"]["kwargs"]
    assert cfg["provenance"]["pretrained"] == {"audio": str(init)}  # recorded as provenance only
    _, a = inputs()
    with torch.no_grad():
        ref_a, _ = model.embed(*inputs())
        for src in (tmp_path / "b", tmp_path / "m.ckpt"):
            enc = avssl.load_encoder(src, "audio")
            torch.testing.assert_close(enc(a.flatten(0, 1)), ref_a.flatten(0, 1), atol=1e-5, rtol=0)
    assert avssl.load_encoder(tmp_path / "m.ckpt", "audio").provenance["pretrained"] == {"audio": str(init)}


# --- with Lightning: the real training module -------------------------------------------------------------------

OPTIMIZER = {
    "name": "adamw",
    "lr": 1e-3,
    "weight_decay": 0.05,
    "betas": [0.9, 0.999],
    "eps": 1e-8,
    "warmup_steps": 1,
    "warmup_fraction": 0.05,
    "min_lr_ratio": 0.0,
    "no_decay_keywords": ["pos_embed", "temperature", "modality_embed"],
}


def _train_tiny(tmp_path: Path, family: str, weights: dict[str, float]) -> tuple[Any, Path]:
    """Train an ``AVSSLModule`` for 2 steps on random batches and save its checkpoint with the Trainer."""
    pl = pytest.importorskip("lightning.pytorch")
    from avssl.lit.module import AVSSLModule

    torch.manual_seed(0)
    hp = hparams(family, weights)
    module = AVSSLModule(
        model=hp["model"], objective=hp["objective"], optimizer=OPTIMIZER, preprocessing=PRE, seed=0
    )
    g = torch.Generator().manual_seed(2)
    batches = [
        {
            "video": torch.randn(2, 2, *VIDEO_SHAPE, generator=g),
            "audio": torch.randn(2, 2, *AUDIO_SHAPE, generator=g),
        }
        for _ in range(2)
    ]
    trainer = pl.Trainer(
        max_steps=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    ckpt = tmp_path / f"{family}.ckpt"
    trainer.save_checkpoint(ckpt)
    return module.eval(), ckpt


def test_builder_matches_the_training_module() -> None:
    """``export.build_pretrain_model`` (no Lightning) builds what ``avssl.lit`` builds, for every objective set."""
    lit_module = pytest.importorskip("avssl.lit.module")
    for family, weights in (
        ("vit", {"sync": 1.0, "mae_video": 0.5, "mae_audio": 0.5}),
        ("vit", {"joint_mae": 1.0, "joint_contrastive": 0.01}),
        ("cnn", {"sync": 1.0}),
    ):
        if True:
            hp = hparams(family, weights)
            del hp["model"]["video"]["kwargs"]["img_size"]  # filled from the preprocessing by both builders
            ours = ex.build_pretrain_model(hp)
            theirs = lit_module.build_pretrain_model(hp["model"], hp["objective"], PRE)
            a, b = ours.state_dict(), theirs.state_dict()
            assert sorted(a) == sorted(b), (family, weights)
            assert all(a[k].shape == b[k].shape for k in a), (family, weights)


@pytest.mark.slow  # trains two tiny models with Lightning and starts a fresh interpreter
def test_round_trip_from_lightning_training_in_a_fresh_process(tmp_path: Path) -> None:
    cases = []
    for family in ("vit", "cnn"):
        module, ckpt = _train_tiny(tmp_path, family, {"sync": 1.0})
        ex.export_checkpoint(ckpt, tmp_path / f"{family}_bundle")
        v, a = inputs(2)
        with torch.no_grad():
            ref_a, ref_v = module.model.embed(v, a)
        io = tmp_path / f"{family}_io.pt"
        torch.save({"v": v, "a": a, "ref_v": ref_v, "ref_a": ref_a}, io)
        cases.append((str(tmp_path / f"{family}_bundle"), str(ckpt), str(io)))
    code = f"""
import sys, torch, avssl
for bundle, ckpt, io_path in {cases!r}:
    io = torch.load(io_path)
    for src in (bundle, ckpt):
        for m, x, ref in (("video", io["v"], io["ref_v"]), ("audio", io["a"], io["ref_a"])):
            with torch.no_grad():
                err = (avssl.load_encoder(src, m)(x.flatten(0, 1)) - ref.flatten(0, 1)).abs().max().item()
            assert err <= 1e-5, (src, m, err)
assert "lightning" not in sys.modules, "lightning was imported"
print("OK")
"""
    env = {**os.environ, "PYTHONPATH": str(Path(avssl.__file__).parents[1])}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                         cwd=tmp_path)  # not the repository root: its avssl/ would shadow the installed package
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == "OK"
