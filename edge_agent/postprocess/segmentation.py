"""Segmentation: a per-pixel class mask, reduced to the share of the frame each class covers.

Output layouts: ``[1, H, W, C]`` scores (logits or probabilities, float or dequantized;
argmax is the same either way, so no activation is applied) or ``[1, H, W]`` /
``[1, H, W, 1]`` class ids (models with the argmax inside). H×W may differ from the input's
size (a stride-2 decoder): the mask covers the whole model input either way.

The fractions are counted on the part of the mask that shows the source frame: with a
letterbox, the padding is left out (it is no part of the frame, and a model tends to call
it background); with a center crop, the mask shows the cropped view, and the fractions are
of that view. The argmax is written into a buffer allocated once.

The mask itself (published only on request, see `mask_png`) is that same region at the
model's output resolution (not resized to the frame: no detail is invented, and it stays
small), as an 8-bit gray PNG whose pixel values are class indices (16-bit beyond 256
classes); the receiver scales it by frame size / mask size.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

from edge_agent.config import PostprocessConfig
from edge_agent.errors import ModelError
from edge_agent.postprocess.results import Segmentation, Share
from edge_agent.preprocess import Geometry


def seg_layout(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(H, W, C) of a segmentation output, C = 0 for class ids; a ModelError otherwise."""
    if len(shape) == 4 and shape[0] == 1 and shape[3] >= 2:
        return shape[1], shape[2], shape[3]
    if (len(shape) == 3 and shape[0] == 1) or (len(shape) == 4 and shape[0] == 1 and shape[3] == 1):
        return shape[1], shape[2], 0
    raise ModelError(
        f"model.task = 'segmentation': output shape {list(shape)} is not a mask "
        "([1, H, W, C] class scores with C >= 2, or [1, H, W] class ids)",
        reason="outputs",
    )


class Segmenter:
    """Built once per model; `decode` turns one output into class fractions."""

    def __init__(
        self,
        cfg: PostprocessConfig,
        labels: dict[int, str],
        output_shape: tuple[int, ...],
        input_hw: tuple[int, int],
    ) -> None:
        self.h, self.w, self.channels = seg_layout(output_shape)
        if self.channels and labels and max(labels) >= self.channels:
            raise ModelError(
                f"model.labels: labels up to index {max(labels)}, but the model scores {self.channels} classes",
                reason="labels",
            )
        self.labels = labels
        self.in_h, self.in_w = input_hw
        self.max_bytes = cfg.mask_max_bytes
        self.ids: npt.NDArray[np.intp] = np.zeros((self.h, self.w), dtype=np.intp)
        self._region_for: tuple[Geometry, tuple[int, int]] | None = None
        self.region: tuple[int, int, int, int] = (0, 0, self.w, self.h)  # x0, y0, x1, y1
        self.decoded = False

    def _region(self, g: Geometry, frame_wh: tuple[int, int]) -> tuple[int, int, int, int]:
        """The box of the mask (output pixels) that shows the frame; cached per geometry."""
        key = (g, frame_wh)
        if self._region_for != key:
            fw, fh = frame_wh
            sx, sy = self.w / self.in_w, self.h / self.in_h
            # letterbox: the frame fills [offset, offset + size·scale) of the input; stretch and
            # center crop fill all of it (offset 0, size·scale = the input's size)
            x0 = min(max(round(g.offset_x * sx), 0), self.w - 1)
            y0 = min(max(round(g.offset_y * sy), 0), self.h - 1)
            x1 = min(max(round((g.offset_x + fw * g.scale_x) * sx), x0 + 1), self.w)
            y1 = min(max(round((g.offset_y + fh * g.scale_y) * sy), y0 + 1), self.h)
            if g.crop_x or g.crop_y:
                x0, y0, x1, y1 = 0, 0, self.w, self.h
            self.region = (x0, y0, x1, y1)
            self._region_for = key
        return self.region

    def label(self, index: int) -> str:
        return self.labels.get(index, str(index))

    def decode(self, out: npt.NDArray[np.float32], g: Geometry, frame_wh: tuple[int, int]) -> Segmentation:
        if self.channels:
            np.argmax(out.reshape(self.h, self.w, self.channels), axis=-1, out=self.ids)
        else:
            # class ids (dequantized to float): nearest integer; a negative id counts as class 0
            np.copyto(self.ids, np.rint(out.reshape(self.h, self.w)), casting="unsafe")
            np.maximum(self.ids, 0, out=self.ids)
        self.decoded = True
        x0, y0, x1, y1 = self._region(g, frame_wh)
        counts = np.bincount(self.ids[y0:y1, x0:x1].ravel(), minlength=self.channels)
        total = (x1 - x0) * (y1 - y0)
        present = np.flatnonzero(counts)
        order = present[np.argsort(-counts[present], kind="stable")]
        return Segmentation(tuple(Share(int(c), self.label(int(c)), round(float(counts[c]) / total, 6)) for c in order))

    def mask_png(self) -> tuple[bytes, int, int]:
        """The last decoded mask's frame region as PNG bytes, with its width and height.

        Raises ValueError with a one-line reason when there is none or it is too big."""
        if not self.decoded:
            raise ValueError("no mask decoded yet")
        x0, y0, x1, y1 = self.region
        region = self.ids[y0:y1, x0:x1]
        depth = np.uint8 if int(region.max(initial=0)) < 256 else np.uint16
        ok, png = cv2.imencode(".png", region.astype(depth))
        if not ok:
            raise ValueError("the mask could not be encoded as PNG")
        if png.size > self.max_bytes:
            raise ValueError(f"the mask PNG is {png.size} bytes, over postprocess.mask_max_bytes = {self.max_bytes}")
        return png.tobytes(), x1 - x0, y1 - y0
