"""Each frame's geometry and input checks travel with it, in its `Staged` value.

With overlap, frame N+1 is staged (maybe at another size, so with another plan and geometry)
while N is inferred, and N is decoded after. Per-frame state kept on the pipeline or the plan
would decode N through N+1's geometry; these tests stage frames back to back as the overlap lane
does, on the bundled models, and compare each result with the same frame run alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edge_agent.config import parse_config
from edge_agent.core.lane import OverlapLane
from edge_agent.core.lease import Lease
from edge_agent.errors import ModelError
from edge_agent.pipeline import Inference, Outcome, Pipeline, Staged
from edge_agent.postprocess.results import Detections, Segmentation
from edge_agent.preprocess import FrameGeometry, Geometry
from edge_agent.sources.base import Frame

BUNDLED = Path(__file__).resolve().parent.parent / "edge_agent" / "bundled"


def pipeline(model: str, task: str, resize: str = "letterbox", **guard: Any) -> Pipeline:
    labels = "segmentation_labels.txt" if task == "segmentation" else "digits_labels.txt"
    return Pipeline.load(
        parse_config(
            {
                "model": {"path": str(BUNDLED / model), "labels": str(BUNDLED / labels), "task": task},
                "preprocess": {"resize": resize, "color": "rgb", "scale": 1 / 255},
                "postprocess": {"threshold": 0.05} if task == "detection" else {},
                "guard": guard,
            }
        )
    )


def frame(pixels: np.ndarray, seq: int = 1) -> Frame:
    return Frame(seq, 0.0, 0.0, f"frame{seq}", pixels=pixels, order="bgr")


def canvas(folder: str, index: int = 0) -> np.ndarray:
    img = cv2.imread(str(sorted((BUNDLED / folder).glob("[0-9][0-9][0-9][0-9].png"))[index]), cv2.IMREAD_COLOR)
    assert img is not None
    return img


def staging_buffer(p: Pipeline) -> np.ndarray:
    info = p.model.inputs[0]
    return np.zeros(info.shape, dtype=info.dtype)


# ---- the staged value carries the geometry ----------------------------------------------------
@pytest.mark.parametrize(
    ("resize", "geometry"),
    [
        # a 160×120 frame into the detector's 96×96 input
        ("stretch", Geometry(96 / 160, 96 / 120, 0.0, 0.0)),
        ("letterbox", Geometry(0.6, 0.6, 0.0, 12.0)),  # 96×72 at y 12..84
        ("center_crop", Geometry(0.8, 0.8, 0.0, 0.0, 20, 0)),  # the 120×120 middle, ×0.8
    ],
)
def test_the_staged_value_carries_its_frames_geometry(resize: str, geometry: Geometry) -> None:
    p = pipeline("detect_ssd.tflite", "detection", resize)
    buf = staging_buffer(p)
    staged = p.stage(frame(canvas("detection_canvases")), lambda: buf)
    assert isinstance(staged, Staged)
    assert staged.geometry == FrameGeometry(geometry, 160, 120)
    # the plan's own value, handed over as it is: nothing is built per frame
    other = p.stage(frame(canvas("detection_canvases", 1), seq=2), lambda: buf)
    assert isinstance(other, Staged) and other.geometry is staged.geometry


def test_a_sensor_row_is_staged_without_geometry() -> None:
    p = Pipeline.load(
        parse_config({"model": {"path": str(BUNDLED / "sensor.tflite"), "task": "regression"}}), source_check=False
    )
    buf = staging_buffer(p)
    staged = p.stage(Frame(1, 0.0, 0.0, "row", values=np.array([50.0, 25.0, 90.0, 4.5])), lambda: buf)
    assert isinstance(staged, Staged) and staged.geometry is None


def test_frames_staged_back_to_back_keep_their_own_geometry() -> None:
    """Stage A, then B at another size before A is decoded (the overlap order): A decodes as
    A alone does, although the pipeline's current plan is B's by then."""
    p, alone = pipeline("detect_ssd.tflite", "detection"), pipeline("detect_ssd.tflite", "detection")
    a = canvas("detection_canvases")
    b = cv2.resize(a, (90, 200), interpolation=cv2.INTER_AREA)  # portrait: another plan, geometry, size
    bufs = staging_buffer(p), staging_buffer(p)
    staged_a = p.stage(frame(a, 1), lambda: bufs[0])
    assert isinstance(staged_a, Staged)
    np.copyto(p.model.input_view(0)(), bufs[0])
    p.model.invoke()
    raws, outs = p.model.fetch_outputs()
    raws, outs = [r.copy() for r in raws], [o.copy() for o in outs]
    staged_b = p.stage(frame(b, 2), lambda: bufs[1])  # N+1 staged while N's outputs wait
    assert isinstance(staged_b, Staged)
    assert staged_a.geometry != staged_b.geometry
    got_a = p.finish(staged_a, 0.0, 0.0, raws, outs)
    want_a = alone.process(frame(a, 1))
    assert isinstance(got_a, Inference) and isinstance(want_a, Inference)
    assert isinstance(got_a.result, Detections) and got_a.result.objects
    assert got_a.result == want_a.result
    assert all(o.box[2] <= 160 and o.box[3] <= 120 for o in got_a.result.objects)


def run_overlapped(p: Pipeline, frames: list[Frame]) -> list[Outcome | ModelError]:
    """The frames through the real overlap lane, in order; their outcomes in the order concluded."""
    concluded: list[tuple[int, Outcome | ModelError]] = []
    released: list[int] = []
    lane = OverlapLane(lambda f, _p, outcome: concluded.append((f.seq, outcome)))
    try:
        for f in frames:
            lane.run(Lease(f, lambda g: released.append(g.seq)), p)
        lane.complete()
    finally:
        lane.close()
    assert [seq for seq, _ in concluded] == [f.seq for f in frames] == sorted(released)
    return [outcome for _, outcome in concluded]


@pytest.mark.parametrize(
    ("model", "task", "folder"),
    [("detect_ssd.tflite", "detection", "detection_canvases"), ("segmentation.tflite", "segmentation", "seg_canvases")],
)
def test_the_overlap_lane_decodes_each_frame_with_its_own_geometry(model: str, task: str, folder: str) -> None:
    """Frames of two sizes, alternating, through the overlap lane: each result is the one the
    frame gets alone (with a geometry kept per pipeline, every frame would be decoded through
    the next one's, and the sizes alternate)."""
    images = [canvas(folder, i) for i in range(3)]
    sizes = [(img.shape[1], img.shape[0]) for img in images]
    wide = [
        cv2.resize(img, (w * 2, h), interpolation=cv2.INTER_AREA) for img, (w, h) in zip(images, sizes, strict=True)
    ]
    frames = [frame(img, seq) for seq, img in enumerate([x for pair in zip(images, wide, strict=True) for x in pair])]
    overlapped = run_overlapped(pipeline(model, task), frames)
    alone = pipeline(model, task)
    for f, got in zip(frames, overlapped, strict=True):
        want = alone.process(f)
        assert isinstance(got, Inference) and isinstance(want, Inference), (got, want)
        assert isinstance(got.result, Detections | Segmentation)
        assert got.result == want.result, f"frame {f.seq}"
    # the two sizes do decode differently: the comparison above can tell geometries apart
    results = [o.result for o in overlapped if isinstance(o, Inference)]
    assert results[0] != results[1]


def test_whether_the_input_changed_travels_with_its_frame() -> None:
    """The stuck-output check of frame N needs N's "input changed", which the input guard works
    out when N is staged; with overlap N+1 is staged (and the guard's answer replaced) first."""
    p = pipeline("detect_ssd.tflite", "detection", input_check_every=1)
    a, b = canvas("detection_canvases", 0), canvas("detection_canvases", 1)
    bufs = [staging_buffer(p) for _ in range(4)]
    staged = [p.stage(frame(img, i), lambda i=i: bufs[i]) for i, img in enumerate([a, a, b, b])]
    assert all(isinstance(s, Staged) and s.checked for s in staged)
    assert [s.input_changed for s in staged if isinstance(s, Staged)] == [True, False, True, False]
