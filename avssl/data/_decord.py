"""decord (decord2) video backend. Private: use ``avssl.data.media`` with ``backend="decord"``.

decord is imported lazily here only: importing it before PyAV can break PyAV (dmlc/decord #128).
decord2 already applies the stream's display rotation, so nothing is rotated here. Frame times come from the
packet timestamps (read with PyAV, exact float64 on the file clock); decord's own float32 times are used only
if the two frame counts disagree. Audio is always read with PyAV (see docs/decoders.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from avssl.data import _pyav
from avssl.data.errors import DecodeError, MissingStreamError
from avssl.data.types import MediaInfo


def _packet_times(path: str, info: MediaInfo) -> np.ndarray | None:
    vinfo = info.video
    assert vinfo is not None
    container = _pyav.open_container(path)
    try:
        stream = container.streams[vinfo.index]
        ts = [p.pts for p in container.demux(stream) if p.pts is not None and p.size > 0]
        tb = stream.time_base
        if tb is None:
            return None
        origin = _pyav.container_origin(container)
        return np.sort(np.asarray([float(t * tb - origin) for t in ts], np.float64))
    except Exception:
        return None
    finally:
        container.close()


# decord2 3.4 hands out 4-byte pixels for some frame widths on some CPUs (seen: 96 px wide H.264 on AMD Zen 5, and a
# 128x72 file rotated 90 degrees, shown 72 px wide, on another AMD EPYC;
# 64, 100, 112, 128 ... 640 px were fine), and its copy into an RGB array then fails. Refused, naming the cause.
_ROW_PADDING_BUG = ("decord2 cannot decode this {w}x{h} stream on this machine (its frame buffer has another size "
                    "than {w}x{h}x3: a decord2 bug for some frame widths); use backend='pyav'")


class DecordVideo:
    """A decord VideoReader with its frame times (file clock) and output size."""

    def __init__(
        self, path: str, info: MediaInfo, size: int | tuple[int, int] | None, threads: int | None = None
    ):
        try:
            import decord
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError(
                "backend='decord' needs the decord2 package: pip install 'avssl[decord]'"
            ) from e
        vinfo = info.video
        if vinfo is None:
            raise MissingStreamError(path, "no video stream")
        self.size = size
        self.path = path
        w0, h0 = vinfo.width or 0, vinfo.height or 0
        self.src_wh = (w0, h0)
        # decord rotates by itself; its width/height are the displayed (rotated) size
        _, _, out_w, out_h = _pyav.output_size(w0, h0, vinfo.rotation, size)
        self.out_hw = (out_h, out_w)
        kwargs: dict[str, Any] = {"ctx": decord.cpu(0), "num_threads": int(threads or 0)}
        # decord2 3.4's own resize fails ("The size must exactly match") for sizes that change the aspect
        # slightly or on rotated streams, so frames are decoded at full size and resized here (bilinear)
        self._resize_here = size is not None
        try:
            self.reader = decord.VideoReader(path, **kwargs)
        except decord.DECORDError as e:
            raise DecodeError(path, f"decord cannot open the video: {e}") from e
        n = len(self.reader)
        if n == 0:
            raise DecodeError(path, "decord found no video frames")
        exact = _packet_times(path, info)
        if exact is not None and len(exact) == n:
            self.times = exact.tolist()
        else:
            own = self.reader.get_frame_timestamp(list(range(n)))[:, 0].astype(np.float64)
            self.times = (own + (vinfo.start_time or 0.0)).tolist()
        fps = vinfo.avg_fps or self.reader.get_avg_fps() or 25.0
        self.frame_step = 1.0 / float(fps)

    def get(self, indices: list[int]) -> np.ndarray:
        """uint8 [N, H, W, 3] frames at the given indices (presentation order)."""
        import decord

        try:
            batch = self.reader.get_batch(indices).asnumpy()
        except decord.DECORDError as e:
            if "must exactly match" not in str(e):
                raise
            raise DecodeError(self.path, _ROW_PADDING_BUG.format(w=self.src_wh[0], h=self.src_wh[1])) from None
        if batch.ndim != 4 or batch.shape[-1] != 3:
            raise DecodeError(self.path, f"decord returned frames of shape {tuple(batch.shape)}, not RGB; "
                              "use backend='pyav'")
        if self._resize_here and batch.shape[1:3] != self.out_hw:
            x = torch.from_numpy(batch).permute(0, 3, 1, 2).float()
            x = torch.nn.functional.interpolate(x, size=self.out_hw, mode="bilinear", align_corners=False)
            batch = x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
        if batch.shape[1:3] != self.out_hw:
            raise DecodeError(None, f"decord returned frames of {batch.shape[1:3]}, expected {self.out_hw}")
        return batch
