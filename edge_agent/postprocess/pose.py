"""Pose: MoveNet keypoints, named and mapped back to source-frame pixels.

Two output layouts (MoveNet's, the common one for single- and multi-person keypoint models):

* single pose ``[1, 1, 17, 3]`` (or ``[1, 17, 3]``): per keypoint (y, x, score), y and x
  normalized to the model's input (0..1 across its height and width);
* multi pose ``[1, N, 56]``: per person 17 × (y, x, score), then the person's box
  (ymin, xmin, ymax, xmax, normalized the same way) and its score.

Coordinates go through the preprocessing geometry (stretch, letterbox, center crop) back to
the source frame, in continuous pixel coordinates: x in [0, frame width], pixel i spanning
[i, i + 1). Every keypoint is listed, whatever its score: `visible` says whether it is to be
trusted, i.e. its score reaches `postprocess.keypoint_threshold` AND it lies in the frame.
A keypoint the model put outside the frame (in the letterbox padding, or past an edge) is
clipped onto the frame's edge and is never visible. A consumer that wants only the good
ones filters on `visible`; the list keeps the same 17 names in the same order every frame.

MoveNet single pose has no pose score: `pose_score` is the mean of the 17 keypoint scores.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from edge_agent.config import PostprocessConfig
from edge_agent.errors import ModelError
from edge_agent.postprocess.results import Keypoint, Person, Pose
from edge_agent.preprocess import Geometry

KEYPOINT_NAMES = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)
NUM_KEYPOINTS = len(KEYPOINT_NAMES)
MULTI_ROW = NUM_KEYPOINTS * 3 + 5  # 17 × (y, x, score), box (4), score


def pose_layout(shape: tuple[int, ...]) -> str:
    """ "single" or "multi" for an output shape this decoder reads; a ModelError otherwise."""
    if shape in ((1, 1, NUM_KEYPOINTS, 3), (1, NUM_KEYPOINTS, 3)):
        return "single"
    if len(shape) == 3 and shape[0] == 1 and shape[2] == MULTI_ROW and shape[1] >= 1:
        return "multi"
    raise ModelError(
        f"model.task = 'pose': output shape {list(shape)} is not a MoveNet layout "
        f"([1, 1, {NUM_KEYPOINTS}, 3] single pose or [1, N, {MULTI_ROW}] multi pose)",
        reason="outputs",
    )


class PoseDecoder:
    """Built once per model; `decode` maps one output through one frame's geometry."""

    def __init__(self, cfg: PostprocessConfig, output_shape: tuple[int, ...], input_hw: tuple[int, int]) -> None:
        self.layout = pose_layout(output_shape)
        self.keypoint_threshold = cfg.keypoint_threshold
        self.pose_threshold = cfg.pose_threshold
        self.in_h, self.in_w = input_hw

    def _frame_xy(
        self, yx: npt.NDArray[np.float32], g: Geometry, frame_wh: tuple[int, int]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
        """Normalized model (y, x) pairs → frame pixels (clipped into the frame), and whether
        each was inside the frame before clipping."""
        fw, fh = frame_wh
        x = (yx[..., 1].astype(np.float64) * self.in_w - g.offset_x) / g.scale_x + g.crop_x
        y = (yx[..., 0].astype(np.float64) * self.in_h - g.offset_y) / g.scale_y + g.crop_y
        inside = (x >= 0.0) & (x <= fw) & (y >= 0.0) & (y <= fh)
        return np.clip(x, 0.0, fw), np.clip(y, 0.0, fh), inside

    def _keypoints(
        self, kp: npt.NDArray[np.float32], g: Geometry, frame_wh: tuple[int, int]
    ) -> tuple[tuple[Keypoint, ...], float]:
        x, y, inside = self._frame_xy(kp[:, :2], g, frame_wh)
        scores = kp[:, 2].astype(np.float64)
        visible = inside & (scores >= self.keypoint_threshold)
        points = tuple(
            Keypoint(name, round(float(px), 2), round(float(py), 2), round(float(s), 6), bool(v))
            for name, px, py, s, v in zip(KEYPOINT_NAMES, x, y, scores, visible, strict=True)
        )
        return points, float(scores.mean())

    def decode(self, out: npt.NDArray[np.float32], g: Geometry, frame_wh: tuple[int, int]) -> Pose:
        if self.layout == "single":
            points, score = self._keypoints(out.reshape(NUM_KEYPOINTS, 3), g, frame_wh)
            return Pose(points, round(score, 6))
        rows = out.reshape(-1, MULTI_ROW)
        order = np.argsort(-rows[:, -1], kind="stable")
        poses: list[Person] = []
        for i in order:
            score = float(rows[i, -1])
            if score < self.pose_threshold:
                break  # sorted: nothing further passes
            points, _ = self._keypoints(rows[i, : NUM_KEYPOINTS * 3].reshape(NUM_KEYPOINTS, 3), g, frame_wh)
            box = rows[i, NUM_KEYPOINTS * 3 : NUM_KEYPOINTS * 3 + 4]  # ymin, xmin, ymax, xmax
            bx, by, _ = self._frame_xy(box.reshape(2, 2), g, frame_wh)
            box_px = (round(float(bx[0]), 2), round(float(by[0]), 2), round(float(bx[1]), 2), round(float(by[1]), 2))
            poses.append(Person(round(score, 6), box_px, points))
        best = float(rows[order[0], -1])
        return Pose(poses[0].keypoints if poses else (), round(best, 6), tuple(poses))
