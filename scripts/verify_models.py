"""Check the bundled test models the way the agent runs them.

Needs only numpy, opencv and ai-edge-litert (the runtime venv, no TensorFlow):

    python scripts/verify_models.py                 # check, print a summary
    python scripts/verify_models.py --json          # print the measurements as JSON
    python scripts/verify_models.py --no-manifest-metrics   # skip comparing with manifest

It reads ``edge_agent/bundled/manifest.json`` for each model's training transform, feeds the
held-out data (``digits_frames/*.png``, ``sensor_heldout.csv``, the audio clips that
``audio_synth.py`` draws with the manifest's seed) through ai-edge-litert and
measures accuracy / R² / MAE, NaN behaviour and the invoke error. It exits non-zero when a
model misses its bar (digits >= 95 %, audio >= 95 %, segmentation pixel accuracy >= 92 %
and mean IoU >= 0.4 on the held-out canvases letterboxed as the agent does, nan_prone >= 90 % and non-finite on raw pixels, the
invoke_error model raising, unstable finite with R² >= 0.3 exactly where z_bmi >= -1 and
NaN exactly where z_bmi < -1, with sensor's transform), when a file is >= 300 KB, or when
the manifest's sha256, sizes, tensor details or recorded measurements disagree with what it
measures.

``make_models.py`` runs it once with ``--json`` to fill the manifest's measured numbers, and
again to check the final manifest. The functions here are importable by tests.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import sys
import zipfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType

BUNDLED = Path(__file__).resolve().parent.parent / "edge_agent" / "bundled"
MAX_BYTES = 300 * 1024
DIGITS_MIN_ACC = 0.95
NAN_PRONE_MIN_ACC = 0.90
NAN_PRONE_MIN_NONFINITE = 0.95
UNSTABLE_MIN_R2 = 0.3  # on the held-out rows where the model is defined (z_bmi >= -1)
AUDIO_MIN_ACC = 0.95
SEG_MIN_PIXEL_ACC = 0.92
SEG_MIN_MEAN_IOU = 0.4
DETECTION_MIN_MAP50 = 0.9


def make_interpreter(path: Path, *, default_delegates: bool = True) -> Any:
    kwargs: dict[str, Any] = {"model_path": str(path)}
    if not default_delegates:
        kwargs["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interp = Interpreter(**kwargs)
    interp.allocate_tensors()
    return interp


def run(interp: Any, x: np.ndarray) -> np.ndarray:
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    interp.set_tensor(inp["index"], x)
    interp.invoke()
    return np.array(interp.get_tensor(out["index"]))


def tensor_info(d: dict[str, Any]) -> dict[str, Any]:
    scale, zero_point = d["quantization"]
    return {
        "name": d["name"],
        "shape": [int(v) for v in d["shape"]],
        "dtype": np.dtype(d["dtype"]).name,
        "quantization": {"scale": float(scale), "zero_point": int(zero_point)},
    }


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_frames(frames_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Held-out frames as RGB uint8 [N,32,32,3] and their true digits, sorted by index."""
    paths = sorted(frames_dir.glob("*.png"))
    frames, labels = [], []
    for p in paths:
        bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if bgr is None:
            raise RuntimeError(f"cannot read {p}")
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        labels.append(int(p.stem.split("_")[1]))
    return np.stack(frames), np.array(labels)


def prepare_image(frames: np.ndarray, transform: dict[str, Any]) -> np.ndarray:
    """prepared = (pixel * scale - mean) / std per channel, float32 NHWC."""
    x = frames.astype(np.float32) * np.float32(transform["scale"])
    mean = np.asarray(transform["mean"], dtype=np.float32)
    std = np.asarray(transform["std"], dtype=np.float32)
    return ((x - mean) / std).astype(np.float32)


def quantize(prepared: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    q = np.round(prepared / np.float32(scale) + zero_point)
    return np.clip(q, 0, 255).astype(np.uint8)


def load_sensor_csv(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    data = np.array([[float(v) for v in r] for r in body], dtype=np.float64)
    return header, data[:, :-1], data[:, -1]


def classify(interp: Any, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    outs = np.stack([run(interp, xs[i : i + 1])[0] for i in range(len(xs))])
    return outs, np.argmax(outs, axis=1)


def measure(bundled: Path = BUNDLED) -> dict[str, Any]:
    """Measure every model named in the manifest; returns {model_file: measurements}."""
    manifest = json.loads((bundled / "manifest.json").read_text())
    frames, labels = load_frames(bundled / manifest["heldout"]["digits_frames"]["dir"])
    results: dict[str, Any] = {}
    for entry in manifest["models"].values():
        path = bundled / entry["file"]
        r: dict[str, Any] = {"size": path.stat().st_size, "sha256": sha256(path)}
        interp = make_interpreter(path)
        r["inputs"] = [tensor_info(d) for d in interp.get_input_details()]
        r["outputs"] = [tensor_info(d) for d in interp.get_output_details()]
        t = entry.get("transform", {})
        role = entry["role"]
        if role == "digits":
            prepared = prepare_image(frames, t)
            inp = r["inputs"][0]
            if inp["dtype"] == "uint8":
                q = inp["quantization"]
                prepared = quantize(prepared, q["scale"], q["zero_point"])
            _, pred = classify(interp, prepared)
            # The naive feed (raw pixels, no transform) for contrast: uint8 pixels for the
            # uint8 model, float 0..255 for the float one.
            naive = frames if inp["dtype"] == "uint8" else frames.astype(np.float32)
            _, naive_pred = classify(interp, naive)
            r["heldout"] = {
                "n": len(labels),
                "accuracy": float(np.mean(pred == labels)),
                "accuracy_fed_raw_pixels": float(np.mean(naive_pred == labels)),
            }
        elif role == "nan_prone":
            prepared = prepare_image(frames, t)
            outs, pred = classify(interp, prepared)
            per = {}
            for resolver, it in (
                ("default", interp),
                ("builtin_no_delegates", make_interpreter(path, default_delegates=False)),
            ):
                ro, _ = classify(it, frames.astype(np.float32))
                per[resolver] = {
                    "frames_nonfinite": float(np.mean(~np.isfinite(ro).all(axis=1))),
                    "frames_with_nan": float(np.mean(np.isnan(ro).any(axis=1))),
                    "frames_with_inf": float(np.mean(np.isinf(ro).any(axis=1))),
                }
            r["heldout"] = {
                "n": len(labels),
                "accuracy": float(np.mean(pred == labels)),
                "all_outputs_finite": bool(np.isfinite(outs).all()),
                "fed_raw_pixels": per["default"],
                "fed_raw_pixels_builtin_no_delegates": per["builtin_no_delegates"],
            }
        elif role == "regression":
            header, x_raw, y = load_sensor_csv(bundled / manifest["heldout"]["sensor"]["file"])
            names = [f["name"] for f in t["features"]]
            assert header[:-1] == names, (header, names)
            mean = np.array([f["mean"] for f in t["features"]])
            std = np.array([f["std"] for f in t["features"]])
            z = ((x_raw - mean) / std).astype(np.float32)
            pred = np.array([run(interp, z[i : i + 1])[0, 0] for i in range(len(z))], dtype=np.float64)
            ss_res = float(np.sum((y - pred) ** 2))
            ss_tot = float(np.sum((y - y.mean()) ** 2))
            r["heldout"] = {
                "n": len(y),
                "r2": 1.0 - ss_res / ss_tot,
                "mae": float(np.mean(np.abs(y - pred))),
                "all_outputs_finite": bool(np.isfinite(pred).all()),
            }
        elif role == "unstable_regression":
            r["heldout"] = measure_unstable(interp, path, bundled, manifest, t)
        elif role == "audio":
            r["heldout"] = measure_audio(interp, t)
        elif role == "segmentation":
            r["heldout"] = measure_segmentation(interp, bundled / entry["heldout_canvases"]["dir"])
        elif role == "detection":
            r["heldout"] = measure_detection(interp, bundled, t)
        elif role == "invoke_error":
            shape = r["inputs"][0]["shape"]
            trials = {
                "zeros": np.zeros(shape, np.float32),
                "ones": np.ones(shape, np.float32),
                "minus_ones": -np.ones(shape, np.float32),
                "normal": np.random.default_rng(0).normal(size=shape).astype(np.float32),
                "large": np.full(shape, 1e6, np.float32),
            }
            errors = {}
            for label, x in trials.items():
                it = make_interpreter(path)  # fresh: allocate_tensors() must succeed
                try:
                    run(it, x)
                    errors[label] = None
                except RuntimeError as e:
                    errors[label] = str(e)
            r["allocate_ok"] = True
            r["invoke_errors"] = errors
            r["invoke_error_message"] = errors["zeros"]
        if role == "digits" and entry.get("metadata"):
            r["embedded_files"] = embedded_files(path)
        results[entry["file"]] = r
    return results


def measure_unstable(
    interp: Any, path: Path, bundled: Path, manifest: dict[str, Any], t: dict[str, Any]
) -> dict[str, Any]:
    """Held-out sensor rows split by the engineered sqrt(1 + z_bmi): z_bmi >= -1 must give
    finite predictions (R²/MAE over those), z_bmi < -1 must give NaN, with both the default
    resolver (XNNPACK) and the builtin kernels."""
    header, x_raw, y = load_sensor_csv(bundled / manifest["heldout"]["sensor"]["file"])
    names = [f["name"] for f in t["features"]]
    assert header[:-1] == names, (header, names)
    mean = np.array([f["mean"] for f in t["features"]])
    std = np.array([f["std"] for f in t["features"]])
    z = ((x_raw - mean) / std).astype(np.float32)
    nan_domain = z[:, names.index("bmi")] < np.float32(-1.0)  # 1 + z exact in float32 here
    preds: dict[str, np.ndarray] = {}
    for resolver, it in (
        ("default", interp),
        ("builtin_no_delegates", make_interpreter(path, default_delegates=False)),
    ):
        preds[resolver] = np.array([run(it, z[i : i + 1])[0, 0] for i in range(len(z))], dtype=np.float64)
    pred = preds["default"]
    ok = ~nan_domain
    yo, po = y[ok], pred[ok]
    ss_res = float(np.sum((yo - po) ** 2))
    ss_tot = float(np.sum((yo - yo.mean()) ** 2))
    nan_rows = [int(i) for i in np.flatnonzero(np.isnan(pred))]
    return {
        "n": len(y),
        "n_finite_domain": int(ok.sum()),
        "n_nan_domain": int(nan_domain.sum()),
        "nan_domain_max_abs_z": float(np.abs(z[nan_domain]).max()) if nan_domain.any() else 0.0,
        "r2_finite_domain": 1.0 - ss_res / ss_tot,
        "mae_finite_domain": float(np.mean(np.abs(yo - po))),
        "finite_domain_all_finite": bool(np.isfinite(po).all()),
        "nan_rows": nan_rows,
        "nan_csv_lines": [i + 2 for i in nan_rows],
        "nan_outputs": {k: int(np.isnan(v).sum()) for k, v in preds.items()},
        "nonfinite_outputs": {k: int((~np.isfinite(v)).sum()) for k, v in preds.items()},
        "nan_exactly_on_nan_domain": {k: bool(np.array_equal(np.isnan(v), nan_domain)) for k, v in preds.items()},
        "resolvers_agree_finite_domain": bool(
            np.allclose(preds["default"][ok], preds["builtin_no_delegates"][ok], rtol=1e-4)
        ),
    }


def measure_audio(interp: Any, t: dict[str, Any]) -> dict[str, Any]:
    """Held-out synthesized clips at the model's rate, drawn with the manifest's seed."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import audio_synth

    h = t["heldout"]
    x, y = audio_synth.dataset(h["per_class"], h["seconds"], t["rate"], h["seed"])
    assert x.shape[1] == t["window"], (x.shape, t["window"])
    _, pred = classify(interp, x)
    per_class = {
        c: float(np.mean(pred[y == k] == k)) for k, c in enumerate(audio_synth.CLASSES)
    }
    return {"n": len(y), "accuracy": float(np.mean(pred == y)), "accuracy_per_class": per_class}


def letterbox(img: np.ndarray, side: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The agent's letterbox (linear, padding 0) and the frame's box (x, y, w, h) in it."""
    h, w = img.shape[:2]
    r = min(side / w, side / h)
    nw, nh = max(1, round(w * r)), max(1, round(h * r))
    ox, oy = (side - nw) // 2, (side - nh) // 2
    out = np.zeros((side, side, 3), np.uint8)
    out[oy : oy + nh, ox : ox + nw] = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return out, (ox, oy, nw, nh)


def measure_segmentation(interp: Any, canvases: Path) -> dict[str, Any]:
    """Held-out canvases letterboxed into the model; the frame's region of the argmax mask,
    resized back to the canvas (nearest), against the ground truth: per-class IoU (classes
    present in the truth or the prediction), pixel accuracy, class-fraction error."""
    side = int(interp.get_input_details()[0]["shape"][1])
    inter = union = None
    correct = total = 0
    frac_err = 0.0
    for p in sorted(canvases.glob("[0-9][0-9][0-9][0-9].png")):
        rgb = cv2.cvtColor(cv2.imread(str(p), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        truth = cv2.imread(str(p.with_name(p.stem + "_mask.png")), cv2.IMREAD_UNCHANGED)
        x, (ox, oy, nw, nh) = letterbox(rgb, side)
        out = run(interp, (x.astype(np.float32) / np.float32(255.0))[None])[0]
        classes = out.shape[-1]
        mask = np.argmax(out, axis=-1).astype(np.uint8)
        sy, sx = out.shape[0] / side, out.shape[1] / side
        region = mask[round(oy * sy) : round((oy + nh) * sy), round(ox * sx) : round((ox + nw) * sx)]
        pred = cv2.resize(region, (truth.shape[1], truth.shape[0]), interpolation=cv2.INTER_NEAREST)
        if inter is None:
            inter, union = np.zeros(classes), np.zeros(classes)
        assert union is not None
        for c in range(classes):
            inter[c] += np.count_nonzero((pred == c) & (truth == c))
            union[c] += np.count_nonzero((pred == c) | (truth == c))
        correct += int(np.count_nonzero(pred == truth))
        total += truth.size
        ft = np.bincount(truth.ravel(), minlength=classes) / truth.size
        fp = np.bincount(region.ravel(), minlength=classes) / region.size
        frac_err = max(frac_err, float(np.abs(ft - fp).max()))
    assert inter is not None and union is not None
    present = union > 0
    iou = inter[present] / union[present]
    return {
        "n": len(list(canvases.glob("[0-9][0-9][0-9][0-9].png"))),
        "pixel_accuracy": correct / total,
        "mean_iou": float(iou.mean()),
        "background_iou": float(inter[0] / union[0]),
        "max_fraction_error": frac_err,
    }
def _nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_thr: float) -> list[int]:
    """Per-class greedy NMS, one box at a time (deliberately not the agent's vectorized one)."""
    import detection_models

    order = list(np.argsort(-scores, kind="stable"))
    keep: list[int] = []
    while order:
        i = order.pop(0)
        keep.append(i)
        order = [j for j in order if classes[j] != classes[i]
                 or detection_models.iou(boxes[i], boxes[j])[0] <= iou_thr]
    return keep


def measure_detection(interp: Any, bundled: Path, t: dict[str, Any]) -> dict[str, Any]:
    """mAP@0.5 on the held-out canvases, letterboxed into the input as the agent does, boxes
    mapped back to canvas pixels and compared with the ground truth there."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import detection_models as dm

    truth_doc = json.loads((bundled / t["heldout"]["truth"]).read_text())
    inp = interp.get_input_details()[0]
    outs = interp.get_output_details()
    size = int(inp["shape"][1])
    op = [o for o in interp._get_ops_details() if o["op_name"] == "TFLite_Detection_PostProcess"]
    truth: dict[str, list[tuple[int, list[float]]]] = {}
    predicted: dict[str, list[tuple[int, float, list[float]]]] = {}
    for name, objs in truth_doc["images"].items():
        truth[name] = [(o["index"], o["box"]) for o in objs]
        bgr = cv2.imread(str(bundled / t["heldout"]["dir"] / name), cv2.IMREAD_COLOR)
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        h, w = rgb.shape[:2]
        x, _ = dm.letterbox(rgb, np.zeros((0, 5), np.float32), size)
        interp.set_tensor(inp["index"], (x.astype(np.float32) * np.float32(t["scale"]))[None])
        interp.invoke()
        r = min(size / w, size / h)
        nw, nh = max(1, round(w * r)), max(1, round(h * r))
        ox, oy = (size - nw) // 2, (size - nh) // 2
        if op:
            by_index = {int(o["index"]): np.array(interp.get_tensor(o["index"])) for o in outs}
            b, c, s, n = (by_index[int(i)] for i in op[0]["outputs"])
            n = int(n.ravel()[0])
            boxes = b[0, :n][:, [1, 0, 3, 2]] * size  # x1, y1, x2, y2 in input pixels
            classes, scores = c[0, :n].astype(int), s[0, :n]
        else:
            y = np.array(interp.get_tensor(outs[0]["index"]))[0].T  # [A, 4 + C]
            cls = y[:, 4:]
            classes, scores = cls.argmax(1), cls.max(1)
            ok = scores >= t["min_score"]
            cx, cy, bw, bh = y[ok, :4].T
            boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
            classes, scores = classes[ok], scores[ok]
            keep = _nms(boxes, scores, classes, t["nms_iou"])
            boxes, classes, scores = boxes[keep], classes[keep], scores[keep]
        boxes = boxes.astype(np.float64)
        boxes[:, [0, 2]] = np.clip((boxes[:, [0, 2]] - ox) * (w / nw), 0, w)
        boxes[:, [1, 3]] = np.clip((boxes[:, [1, 3]] - oy) * (h / nh), 0, h)
        predicted[name] = [(int(c), float(s), list(b)) for b, c, s in zip(boxes, classes, scores, strict=True)
                           if s >= t["min_score"]]
    m, per_class = dm.mean_average_precision(truth, predicted, 0.5)
    return {"n": len(truth), "objects": sum(len(v) for v in truth.values()), "map50": m,
            "ap50_per_class": {dm.LABELS[k]: v for k, v in sorted(per_class.items())}}


def embedded_files(path: Path) -> dict[str, str]:
    """Associated files packed by the metadata populator (a zip appended to the model)."""
    data = path.read_bytes()
    out: dict[str, str] = {}
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            for n in z.namelist():
                out[n] = hashlib.sha256(z.read(n)).hexdigest()
    except zipfile.BadZipFile:
        pass
    return out


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def check(bundled: Path, results: dict[str, Any], *, compare_manifest: bool) -> list[str]:
    manifest = json.loads((bundled / "manifest.json").read_text())
    problems: list[str] = []
    for p in sorted(bundled.rglob("*")):
        if p.is_file() and p.stat().st_size >= MAX_BYTES:
            problems.append(f"{p.name}: {p.stat().st_size} bytes >= {MAX_BYTES}")
    for entry in manifest["models"].values():
        f = entry["file"]
        r = results[f]
        role = entry["role"]
        h = r.get("heldout", {})
        if role == "digits" and h["accuracy"] < DIGITS_MIN_ACC:
            problems.append(f"{f}: accuracy {h['accuracy']:.4f} < {DIGITS_MIN_ACC}")
        if role == "segmentation" and (
            h["pixel_accuracy"] < SEG_MIN_PIXEL_ACC or h["mean_iou"] < SEG_MIN_MEAN_IOU
        ):
            problems.append(f"{f}: pixel accuracy {h['pixel_accuracy']:.4f}, mean IoU {h['mean_iou']:.4f}")
        if role == "detection" and h["map50"] < DETECTION_MIN_MAP50:
            problems.append(f"{f}: mAP@0.5 {h['map50']:.4f} < {DETECTION_MIN_MAP50}")
        if role == "audio" and h["accuracy"] < AUDIO_MIN_ACC:
            problems.append(f"{f}: accuracy {h['accuracy']:.4f} < {AUDIO_MIN_ACC}")
        if role == "nan_prone":
            if h["accuracy"] < NAN_PRONE_MIN_ACC or not h["all_outputs_finite"]:
                problems.append(f"{f}: fed pixel/255: {h}")
            for k in ("fed_raw_pixels", "fed_raw_pixels_builtin_no_delegates"):
                if h[k]["frames_nonfinite"] < NAN_PRONE_MIN_NONFINITE:
                    problems.append(f"{f}: {k}: {h[k]}")
        if role == "regression" and not h["all_outputs_finite"]:
            problems.append(f"{f}: non-finite regression output")
        if role == "unstable_regression":
            if (
                not h["finite_domain_all_finite"]
                or h["n_finite_domain"] < 1
                or h["n_nan_domain"] < 1
                or not all(h["nan_exactly_on_nan_domain"].values())
                or not h["resolvers_agree_finite_domain"]
                or h["nan_domain_max_abs_z"] >= 3.0
                or h["r2_finite_domain"] < UNSTABLE_MIN_R2
            ):
                problems.append(f"{f}: {h}")
            sensor = [e for e in manifest["models"].values() if e["file"] == "sensor.tflite"]
            if sensor and sensor[0]["transform"] != entry["transform"]:
                problems.append(f"{f}: transform differs from sensor.tflite's")
        if role == "invoke_error":
            bad = [k for k, v in r["invoke_errors"].items() if v is None]
            if bad:
                problems.append(f"{f}: invoke() did not raise for {bad}")
        if entry.get("metadata"):
            want = entry["metadata"]["associated_files"]
            if r.get("embedded_files") != want:
                problems.append(f"{f}: embedded files {r.get('embedded_files')} != {want}")
        if not compare_manifest:
            continue
        for key in ("size", "sha256", "inputs", "outputs"):
            if entry.get(key) != r[key]:
                problems.append(f"{f}: manifest {key} {entry.get(key)} != measured {r[key]}")
        m = entry.get("measured", {})
        for key, val in r.get("heldout", {}).items():
            mv = m.get(key)
            if isinstance(val, float):
                if mv is None or not _close(mv, val):
                    problems.append(f"{f}: manifest measured.{key}={mv} != {val}")
            elif mv != val:
                problems.append(f"{f}: manifest measured.{key}={mv} != {val}")
        if role == "invoke_error" and entry.get("invoke_error_message") != r["invoke_error_message"]:
            problems.append(f"{f}: manifest invoke_error_message differs: {r['invoke_error_message']!r}")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundled", type=Path, default=BUNDLED)
    ap.add_argument("--json", action="store_true", help="print the measurements as JSON")
    ap.add_argument(
        "--no-manifest-metrics",
        action="store_true",
        help="do not compare with the manifest's recorded numbers",
    )
    args = ap.parse_args(argv)
    results = measure(args.bundled)
    problems = check(args.bundled, results, compare_manifest=not args.no_manifest_metrics)
    if args.json:
        json.dump({"results": results, "problems": problems}, sys.stdout, indent=1)
        print()
    else:
        for f, r in results.items():
            h = r.get("heldout") or {k: r[k] for k in ("invoke_error_message",)}
            print(f"{f}: {r['size']} B  {json.dumps(h)}")
        for p in problems:
            print("PROBLEM:", p)
        print("OK" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
