"""Build the small real test models bundled in ``edge_agent/bundled/``.

Development-only tool, not used by the agent at run time. It needs

    pip install tensorflow scikit-learn tflite-support opencv-python-headless

(made with TensorFlow 2.19, scikit-learn 1.x, tflite-support 0.4.4) and, to measure the
results the way the agent runs them, a second Python with numpy, opencv and ai-edge-litert
(``--verify-python``; defaults to this interpreter if it can import ai_edge_litert).

    python scripts/make_models.py --verify-python /path/to/runtime-venv/bin/python

Writes, deterministically (fixed seeds, op determinism):

* ``digits_float.tflite`` / ``digits_uint8.tflite``: CNN digit classifiers on scikit-learn's
  ``load_digits`` turned into 32×32 RGB frames, ImageNet normalisation, 10 softmax outputs;
  the uint8 one fully integer-quantized, with TFLite metadata and ``digits_labels.txt``.
* ``digits_frames/NNNN_L.png``: the 20 % held-out frames (L = true digit).
* ``sensor.tflite`` + ``sensor_heldout.csv``: an MLP regressing diabetes progression from
  age, bmi, bp, s5 (standardised inputs).
* ``nan_prone.tflite``: digits on pixel/255 inputs whose graph overflows (exp) on raw pixels.
* ``invoke_error.tflite``: allocates fine, ``invoke()`` always fails (gather out of bounds).
* ``unstable.tflite``: like sensor (same features, split and standardisation) with an
  engineered ``sqrt(1 + z_bmi)`` input: NaN for z_bmi < -1 (about 1 row in 5, in range).
* ``audio.tflite`` + ``audio_labels.txt``: a sound classifier (tone, chirp, noise, pulses)
  on 0.5 s windows of 48 kHz float samples in [-1, 1]; the log-magnitude STFT is inside the
  graph (RFFT2D builtin). Trained and held out on clips from ``audio_synth.py``
  (``--only audio`` rebuilds just this one and its manifest entry).
* ``segmentation.tflite`` + ``segmentation_labels.txt`` + ``seg_canvases/``: a tiny
  encoder-decoder labelling each pixel background or one of the ten digits, on canvases of
  load_digits digits (letterboxed to 64×64); 24 held-out 96×64 canvases with their masks
  (``--only segmentation``).
* ``detect_yolo.tflite`` / ``detect_ssd.tflite`` + ``detection_canvases/`` (PNG) and
  ``detection_canvases.json`` (ground-truth boxes in canvas pixels): a digit detector on
  canvases of load_digits digits (``detection_models.py``), exported as a raw YOLOv8-style
  tensor and through TFLite_Detection_PostProcess (``--only detection`` rebuilds just these).
* ``manifest.json``: files, hashes, tensors, transforms, and numbers measured through
  ai-edge-litert by ``scripts/verify_models.py``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "edge_agent" / "bundled"
FRAMES_DIR = "digits_frames"
SEED = 42
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LABELS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SENSOR_FEATURES = ("age", "bmi", "bp", "s5")
SENSOR_TARGET = "progression"
MAX_BYTES = 300 * 1024


# --------------------------------------------------------------------------- data


def digits_frames():
    """All load_digits samples as 32×32 RGB uint8 frames, and their labels."""
    import cv2
    import numpy as np
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs8 = np.rint(d.images * 255.0 / 16.0).astype(np.uint8)  # 0..16 -> 0..255
    frames = np.stack(
        [
            np.repeat(
                cv2.resize(im, (32, 32), interpolation=cv2.INTER_LINEAR)[:, :, None], 3, axis=2
            )
            for im in imgs8
        ]
    )
    return frames, d.target.astype(np.int64)


def split(n, y=None):
    import numpy as np
    from sklearn.model_selection import train_test_split

    idx = np.arange(n)
    return train_test_split(idx, test_size=0.2, random_state=SEED, stratify=y)


def imagenet_prepare(frames):
    import numpy as np

    x = frames.astype(np.float32) * np.float32(1.0 / 255.0)
    return ((x - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)).astype(
        np.float32
    )


# --------------------------------------------------------------------------- models


def seed_everything():
    import numpy as np
    import tensorflow as tf

    tf.keras.utils.set_random_seed(SEED)
    np.random.seed(SEED)
    tf.config.experimental.enable_op_determinism()


def digits_cnn(preprocess=None):
    """Small CNN, ~20 k parameters. `preprocess` maps the input tensor before the convs."""
    from tensorflow import keras

    inp = keras.Input((32, 32, 3), batch_size=None, name="image")
    x = preprocess(inp) if preprocess else inp
    h = x
    for filters in (16, 32, 32):
        h = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(h)
        h = keras.layers.MaxPooling2D(2)(h)
    h = keras.layers.Flatten()(h)
    logits = keras.layers.Dense(10)(h)
    return inp, x, logits


def train(model, x, y, *, epochs, loss, lr=1e-3, batch_size=32):
    from tensorflow import keras

    model.compile(optimizer=keras.optimizers.Adam(lr), loss=loss)
    model.fit(x, y, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=0)


def concrete_fn(model, shape):
    import tensorflow as tf

    fn = tf.function(
        lambda x: model(x, training=False),
        input_signature=[tf.TensorSpec(shape, tf.float32, name="input")],
    )
    return fn.get_concrete_function()


def convert(cf, trackable, *, representative=None):
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    # Freeze Keras 3 resource variables into constants (else READ_VARIABLE ops remain).
    frozen = convert_variables_to_constants_v2(cf)
    conv = tf.lite.TFLiteConverter.from_concrete_functions([frozen], trackable)
    if representative is not None:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.uint8
        conv.inference_output_type = tf.uint8
    return conv.convert()


def build_digits(frames, y, train_idx):
    from tensorflow import keras

    seed_everything()
    inp, _, logits = digits_cnn()
    model = keras.Model(inp, keras.layers.Softmax(name="probabilities")(logits))
    xtr = imagenet_prepare(frames[train_idx])
    train(model, xtr, y[train_idx], epochs=25, loss="sparse_categorical_crossentropy")
    cf = concrete_fn(model, [1, 32, 32, 3])
    float_buf = convert(cf, model)

    def representative():
        for i in range(len(xtr)):
            yield [xtr[i : i + 1]]

    uint8_buf = convert(cf, model, representative=representative)
    return float_buf, uint8_buf


def build_nan_prone(frames, y, train_idx):
    """Digits on pixel/255 inputs. The graph computes e = exp(x) (1..e on [0,1]) as the conv
    input and adds mean(e) - max(e) to every logit (a constant shift per frame, so the softmax
    is unchanged). On raw 0..255 pixels exp overflows to +inf (x > 88.7), the shift is
    inf - inf = NaN and so are the logits and the softmax."""
    import numpy as np
    from tensorflow import keras

    seed_everything()
    exp_layer = keras.layers.Lambda(lambda t: keras.ops.exp(t), name="exp_contrast")
    inp, e, logits = digits_cnn(exp_layer)
    # mean(e) - max(e): a per-frame constant (softmax-invariant) on [0,1]; inf - inf = NaN on
    # raw pixels. A NaN (unlike an inf) survives the clamps that TFLite's builtin kernels apply
    # to fused activations (ADD/CONV clamp inf to +-FLT_MAX), so the output is NaN with either
    # the builtin kernels or XNNPACK.
    shift = keras.layers.Lambda(
        lambda t: (keras.ops.mean(t, axis=(1, 2, 3)) - keras.ops.max(t, axis=(1, 2, 3)))[:, None],
        name="exp_mean_minus_max",
    )(e)
    logits = keras.layers.Add(name="shifted_logits")([logits, shift])
    model = keras.Model(inp, keras.layers.Softmax(name="probabilities")(logits))
    xtr = (frames[train_idx].astype(np.float32) / np.float32(255.0)).astype(np.float32)
    train(model, xtr, y[train_idx], epochs=25, loss="sparse_categorical_crossentropy")
    return convert(concrete_fn(model, [1, 32, 32, 3]), model)


def build_sensor():
    import numpy as np
    from sklearn.datasets import load_diabetes
    from tensorflow import keras

    d = load_diabetes(scaled=False)
    cols = [list(d.feature_names).index(f) for f in SENSOR_FEATURES]
    x = d.data[:, cols].astype(np.float64)
    y = d.target.astype(np.float64)
    tr, te = split(len(y))
    mean = x[tr].mean(axis=0)
    std = x[tr].std(axis=0)  # population std (ddof=0)
    ym, ys = float(y[tr].mean()), float(y[tr].std())

    seed_everything()
    inp = keras.Input((4,), name="features")
    h = keras.layers.Dense(16, activation="relu")(inp)
    h = keras.layers.Dense(8, activation="relu")(h)
    out_z = keras.layers.Dense(1)(h)
    base = keras.Model(inp, out_z)
    ztr = ((x[tr] - mean) / std).astype(np.float32)
    train(base, ztr, ((y[tr] - ym) / ys).astype(np.float32), epochs=60, loss="mse", lr=3e-3)
    # Bake the target de-standardisation into the graph: output is progression units.
    model = keras.Model(inp, keras.layers.Rescaling(ys, offset=ym, name="progression")(out_z))
    buf = convert(concrete_fn(model, [1, 4]), model)
    features = [
        {"name": n, "mean": float(m), "std": float(s)}
        for n, m, s in zip(SENSOR_FEATURES, mean, std, strict=True)
    ]
    return buf, features, x[te], y[te], {"mean": ym, "std": ys}


def build_unstable():
    """sensor's task, features, split and standardisation, plus an engineered feature
    f = sqrt(1 + z_bmi) that feeds the first hidden layer and (linearly) the output layer.

    Trained with the safe f = sqrt(max(1 + z_bmi, 0)), so training never sees a NaN; the
    exported graph shares the trained layers but computes the unsafe sqrt(1 + z_bmi): equal
    to the trained model for z_bmi >= -1, NaN for z_bmi < -1 (bmi below ~22.2, about 16 % of
    the training rows). The NaN reaches the output through the linear output layer, so no
    activation clamp can hide it."""
    import numpy as np
    import tensorflow as tf
    from sklearn.datasets import load_diabetes
    from tensorflow import keras

    d = load_diabetes(scaled=False)
    cols = [list(d.feature_names).index(f) for f in SENSOR_FEATURES]
    x = d.data[:, cols].astype(np.float64)
    y = d.target.astype(np.float64)
    tr, _ = split(len(y))
    mean = x[tr].mean(axis=0)
    std = x[tr].std(axis=0)  # population std (ddof=0), as for sensor
    ym, ys = float(y[tr].mean()), float(y[tr].std())
    bmi = SENSOR_FEATURES.index("bmi")

    seed_everything()
    inp = keras.Input((4,), name="features")
    hidden1 = keras.layers.Dense(16, activation="relu")
    hidden2 = keras.layers.Dense(8, activation="relu")
    head = keras.layers.Dense(1)
    rescale = keras.layers.Rescaling(ys, offset=ym, name="progression")

    def net(f):
        h = hidden2(hidden1(keras.layers.Concatenate()([inp, f])))
        return head(keras.layers.Concatenate()([h, f]))

    safe = keras.layers.Lambda(
        lambda t: tf.sqrt(tf.maximum(1.0 + t[:, bmi : bmi + 1], 0.0)), name="sqrt_1p_bmi_safe"
    )(inp)
    base = keras.Model(inp, net(safe))
    ztr = ((x[tr] - mean) / std).astype(np.float32)
    train(base, ztr, ((y[tr] - ym) / ys).astype(np.float32), epochs=60, loss="mse", lr=3e-3)

    unsafe = keras.layers.Lambda(
        lambda t: tf.sqrt(1.0 + t[:, bmi : bmi + 1]), name="sqrt_1p_bmi"
    )(inp)
    model = keras.Model(inp, rescale(net(unsafe)))
    # Same weights: identical on z_bmi >= -1, NaN below.
    ok = ztr[:, bmi] >= -1.0
    safe_pred = keras.Model(inp, rescale(base.output)).predict(ztr, verbose=0)
    unsafe_pred = model.predict(ztr, verbose=0)
    assert np.isfinite(safe_pred).all()
    assert np.allclose(safe_pred[ok], unsafe_pred[ok], rtol=1e-5, atol=1e-3)
    assert np.isnan(unsafe_pred[~ok]).all() and (~ok).any()
    norm = {"mean": mean.tolist(), "std": std.tolist(), "ym": ym, "ys": ys}
    return convert(concrete_fn(model, [1, 4]), model), float(np.mean(~ok)), norm


def build_invoke_error():
    """GATHER from a 4-entry constant with indices int32(|x|) + 4: always >= 4 (or negative
    when the cast overflows), so every input fails at invoke() with an out-of-bounds gather,
    while allocate_tensors() succeeds (shapes are static)."""
    import tensorflow as tf

    params = tf.constant([1.0, 2.0, 3.0, 4.0], tf.float32)

    class M(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32, name="input")])
        def __call__(self, x):
            idx = tf.cast(tf.abs(x), tf.int32) + 4
            return tf.gather(params, idx) + x

    m = M()
    return convert(m.__call__.get_concrete_function(), m)


AUDIO_TRAIN_SEED = 1042
AUDIO_HELDOUT_SEED = 2042  # verify_models.py draws the held-out clips with this seed
AUDIO_HELDOUT_PER_CLASS = 50


def build_audio():
    """Log-magnitude STFT (512/256, Hann) → minus its own maximum (gain invariant) → small
    CNN → softmax over audio_synth.CLASSES. Input [1, 24000] float32 samples in [-1, 1]."""
    import numpy as np
    import tensorflow as tf
    from tensorflow import keras

    import audio_synth

    n = audio_synth.WINDOW

    def spectrogram(x):
        s = tf.abs(tf.signal.stft(x, frame_length=512, frame_step=256, fft_length=512))
        s = tf.math.log(s[:, :, :256] + 1e-3)  # drop the Nyquist bin: 256 bins of 93.75 Hz
        s = s - tf.reduce_max(s, axis=[1, 2], keepdims=True)
        return s[:, :, :, None]

    seed_everything()
    inp = keras.Input((n,), name="samples")
    h = keras.layers.Lambda(spectrogram, name="log_stft")(inp)
    h = keras.layers.AveragePooling2D((1, 4))(h)  # 64 bands of 375 Hz
    h = keras.layers.Conv2D(16, 5, padding="same", activation="relu")(h)
    h = keras.layers.MaxPooling2D(2)(h)
    h = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(h)
    h = keras.layers.MaxPooling2D(2)(h)
    h = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(h)
    h = keras.layers.Concatenate()(
        [keras.layers.GlobalMaxPooling2D()(h), keras.layers.GlobalAveragePooling2D()(h)]
    )
    h = keras.layers.Dense(32, activation="relu")(h)
    logits = keras.layers.Dense(len(audio_synth.CLASSES))(h)
    model = keras.Model(inp, keras.layers.Softmax(name="probabilities")(logits))
    x, y = audio_synth.dataset(500, audio_synth.WINDOW_S, audio_synth.RATE, AUDIO_TRAIN_SEED)
    train(model, x, y, epochs=12, loss="sparse_categorical_crossentropy", batch_size=32)
    xh, yh = audio_synth.dataset(
        AUDIO_HELDOUT_PER_CLASS, audio_synth.WINDOW_S, audio_synth.RATE, AUDIO_HELDOUT_SEED
    )
    acc = float(np.mean(np.argmax(model.predict(xh, verbose=0), axis=1) == yh))
    print(f"audio: held-out accuracy in TensorFlow {acc:.4f}", flush=True)
    return convert(concrete_fn(model, [1, n]), model)


def audio_entry(labels_name):
    import audio_synth

    return {
        "file": "audio.tflite", "role": "audio",
        "transform": {
            "kind": "audio", "rate": audio_synth.RATE, "window": audio_synth.WINDOW,
            "scale": "float",
            "heldout": {"generator": "scripts/audio_synth.py dataset()",
                        "seed": AUDIO_HELDOUT_SEED, "per_class": AUDIO_HELDOUT_PER_CLASS,
                        "seconds": audio_synth.WINDOW_S},
        },
        "labels": labels_name, "metadata": None,
        "notes": "float32 [1, 24000]: 0.5 s of mono samples at 48 kHz in [-1, 1] "
                 "([source] kind = \"wav\", wav_scale = \"float\"); output softmax over "
                 + ", ".join(audio_synth.CLASSES) + ". The log-magnitude STFT (frame 512, hop "
                 "256, Hann; RFFT2D) is inside the graph, normalized by its own maximum, so "
                 "the gain does not matter. Trained on synthesized clips (audio_synth.py, "
                 f"seed {AUDIO_TRAIN_SEED}); measured on clips drawn with seed "
                 f"{AUDIO_HELDOUT_SEED}.",
    }


def write_audio():
    import audio_synth

    labels_path = OUT / "audio_labels.txt"
    labels_path.write_text("".join(f"{c}\n" for c in audio_synth.CLASSES))
    (OUT / "audio.tflite").write_bytes(build_audio())
    return audio_entry(labels_path.name)


def write_detection():
    """Train the digit detector, write its two exports and the held-out canvases."""
    import detection_models as dm

    seed_everything()
    model = dm.train_model()
    # kept so that an export can be retried without training again (dev convenience)
    model.save(Path(tempfile.gettempdir()) / "edge_agent_detector.keras")
    (OUT / "detect_yolo.tflite").write_bytes(dm.export_yolo(model))
    (OUT / "detect_ssd.tflite").write_bytes(dm.export_ssd(model))
    canvases = dm.write_heldout(OUT)
    (OUT / "digits_labels.txt").write_text("".join(f"{w}\n" for w in LABELS))
    transform = {
        "kind": "image", "resize": "letterbox", "interpolation": "linear", "color": "rgb",
        "scale": 1.0 / 255.0, "mean": [0.0], "std": [1.0], "pad_value": 0,
        "heldout": {"dir": canvases.name, "truth": f"{canvases.name}.json",
                    "seed": dm.HELDOUT_SEED, "size": list(dm.HELDOUT_SIZE)},
        "min_score": 0.05, "nms_iou": 0.5,
    }
    common = (f"{dm.SIZE}×{dm.SIZE} RGB float32 input, pixel/255, letterboxed (pad 0); float16 "
              "weights, float32 compute; trained "
              f"on letterboxed canvases of random size with 1-3 load_digits digits (training "
              f"split), seed {dm.TRAIN_SEED}. Measured on {dm.HELDOUT_COUNT} held-out "
              f"{dm.HELDOUT_SIZE[0]}×{dm.HELDOUT_SIZE[1]} canvases of held-out digits, boxes "
              "mapped back to canvas pixels (score >= min_score, NMS IoU nms_iou). ")
    return {
        "detect_yolo": {
            "file": "detect_yolo.tflite", "role": "detection", "transform": transform,
            "labels": "digits_labels.txt", "metadata": None,
            "notes": common + "One output [1, 14, 144] (YOLOv8 layout): cx, cy, w, h in input "
                     "pixels, then 10 class scores (objectness × softmax), one per 8×8 cell.",
        },
        "detect_ssd": {
            "file": "detect_ssd.tflite", "role": "detection", "transform": transform,
            "labels": "digits_labels.txt", "metadata": None,
            "notes": common + "The same network ending in TFLite_Detection_PostProcess "
                     f"(max_detections {dm.SSD_MAX_DETECTIONS}, score threshold "
                     f"{dm.SSD_SCORE_THRESHOLD}, IoU {dm.SSD_IOU_THRESHOLD}, fast NMS, one "
                     "anchor per cell, scales 1): outputs boxes [1, 10, 4] (ymin, xmin, ymax, "
                     "xmax normalized), classes, scores, count, named "
                     "PartitionedCall:1/:3/:0/:2 as a TF2 export names them.",
        },
    }


def only_detection(verify_python, t0):
    """Rebuild the detection models alone and their manifest entries; the others are kept."""
    mpath = OUT / "manifest.json"
    manifest = json.loads(mpath.read_text())
    entries = write_detection()
    manifest["models"].update(entries)
    mpath.write_text(json.dumps(manifest, indent=1) + "\n")
    measured = fill_measured(verify_python)
    for entry in entries.values():
        r = measured[entry["file"]]
        for key in ("size", "sha256", "inputs", "outputs"):
            entry[key] = r[key]
        entry["measured"] = {"via": "ai-edge-litert", **r["heldout"]}
    mpath.write_text(json.dumps(manifest, indent=1) + "\n")
    final_check(verify_python, t0)


def fill_measured(verify_python):
    """Measure through ai-edge-litert (the runtime), in the runtime's Python."""
    res = verify(verify_python, "--json", "--no-manifest-metrics")
    if res.returncode not in (0, 1) or not res.stdout.strip():
        sys.exit(f"verify failed:\n{res.stdout}\n{res.stderr}")
    return json.loads(res.stdout)["results"]


def final_check(verify_python, t0):
    res = verify(verify_python)
    print(res.stdout, res.stderr, sep="")
    big = [p for p in OUT.rglob("*") if p.is_file() and p.stat().st_size >= MAX_BYTES]
    if res.returncode or big:
        sys.exit(f"verification failed (oversize: {big})")
    print(f"done in {time.time() - t0:.0f}s")


def only_audio(verify_python, t0):
    """Rebuild the audio model alone and its manifest entry; the other models are kept."""
    mpath = OUT / "manifest.json"
    manifest = json.loads(mpath.read_text())
    entry = write_audio()
    manifest["models"]["audio"] = entry
    mpath.write_text(json.dumps(manifest, indent=1) + "\n")
    r = fill_measured(verify_python)[entry["file"]]
    for key in ("size", "sha256", "inputs", "outputs"):
        entry[key] = r[key]
    entry["measured"] = {"via": "ai-edge-litert", **r["heldout"]}
    mpath.write_text(json.dumps(manifest, indent=1) + "\n")
    final_check(verify_python, t0)


# --------------------------------------------------------------------------- segmentation

SEG_DIR = "seg_canvases"
SEG_SIZE = 64  # model input and output: 64×64
SEG_CANVAS = (96, 64)  # held-out canvases (width, height): letterboxed into the model
SEG_LABELS = ("background", *LABELS)
SEG_HELDOUT = 24
SEG_INK = 0.3  # a digit pixel is labelled where its ink is >= 30 % of full


def seg_canvas(rng, digits_imgs, digits_y, width, height):
    """One canvas: a noisy dark background, 1-3 digits (upscaled, tinted) at random places
    without overlap; the mask holds 0 (background) or 1 + the digit."""
    import cv2
    import numpy as np

    bg = rng.integers(10, 90)
    img = np.clip(rng.normal(bg, 12, (height, width, 3)), 0, 255).astype(np.float32)
    mask = np.zeros((height, width), np.uint8)
    taken = np.zeros((height, width), bool)
    for _ in range(int(rng.integers(1, 4))):
        k = int(rng.integers(len(digits_y)))
        size = int(rng.integers(18, 33))
        for _try in range(10):
            x, y = int(rng.integers(0, width - size + 1)), int(rng.integers(0, height - size + 1))
            if not taken[y : y + size, x : x + size].any():
                break
        else:
            continue
        ink = cv2.resize(digits_imgs[k], (size, size), interpolation=cv2.INTER_LINEAR) / 16.0
        tint = rng.uniform(0.6, 1.0, 3) * 255.0
        region = img[y : y + size, x : x + size]
        region[:] = region * (1 - ink[:, :, None]) + ink[:, :, None] * tint
        mask[y : y + size, x : x + size][ink >= SEG_INK] = 1 + int(digits_y[k])
        taken[y : y + size, x : x + size] = True
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), mask


def seg_letterbox(img, mask, side):
    """What the agent's letterbox does (linear for the image, nearest for the mask, pad 0)."""
    import cv2
    import numpy as np

    h, w = mask.shape
    r = min(side / w, side / h)
    nw, nh = max(1, round(w * r)), max(1, round(h * r))
    ox, oy = (side - nw) // 2, (side - nh) // 2
    out = np.zeros((side, side, 3), np.uint8)
    out_m = np.zeros((side, side), np.uint8)
    out[oy : oy + nh, ox : ox + nw] = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    out_m[oy : oy + nh, ox : ox + nw] = cv2.resize(mask, (nw, nh), interpolation=cv2.INTER_NEAREST)
    return out, out_m


def seg_data(digit_idx, n, seed, *, letterboxed):
    """n canvases from the given load_digits samples; letterboxed ones as the model sees them."""
    import numpy as np
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(seed)
    imgs, masks = [], []
    for _ in range(n):
        if letterboxed:
            w, h = int(rng.integers(40, 129)), int(rng.integers(40, 129))
        else:
            w, h = SEG_CANVAS
        img, m = seg_canvas(rng, d.images[digit_idx], d.target[digit_idx], w, h)
        if letterboxed:
            img, m = seg_letterbox(img, m, SEG_SIZE)
        imgs.append(img)
        masks.append(m)
    return np.stack(imgs) if letterboxed else imgs, np.stack(masks) if letterboxed else masks


def build_segmentation(train_idx):
    """A tiny encoder-decoder: 64×64 RGB float (pixel/255) → [1, 32, 32, 11] softmax."""
    import numpy as np
    from tensorflow import keras

    seed_everything()
    inp = keras.Input((SEG_SIZE, SEG_SIZE, 3), name="image")
    e1 = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(inp)  # 32
    e2 = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(e1)  # 16
    e3 = keras.layers.Conv2D(48, 3, strides=2, padding="same", activation="relu")(e2)  # 8
    b = keras.layers.Conv2D(48, 3, padding="same", activation="relu")(e3)  # sees a whole digit
    d2 = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(
        keras.layers.Concatenate()([keras.layers.UpSampling2D(2)(b), e2]))
    d1 = keras.layers.Conv2D(24, 3, padding="same", activation="relu")(
        keras.layers.Concatenate()([keras.layers.UpSampling2D(2)(d2), e1]))
    logits = keras.layers.Conv2D(len(SEG_LABELS), 1)(d1)  # at half the input's resolution
    model = keras.Model(inp, keras.layers.Softmax(name="probabilities")(logits))
    x, m = seg_data(train_idx, 3000, SEED, letterboxed=True)
    x = x.astype(np.float32) / 255.0
    # the labels at the output's resolution: every other pixel (nearest)
    train(model, x, m[:, ::2, ::2], epochs=25, loss="sparse_categorical_crossentropy", lr=2e-3)
    return convert(concrete_fn(model, [1, SEG_SIZE, SEG_SIZE, 3]), model)


def seg_entry(labels_name):
    return {
        "file": "segmentation.tflite", "role": "segmentation",
        "transform": {"kind": "image", "resize": "letterbox", "interpolation": "linear",
                      "color": "rgb", "scale": 1.0 / 255.0, "mean": [0.0], "std": [1.0],
                      "pad_value": 0},
        "labels": labels_name, "metadata": None,
        "heldout_canvases": {"dir": SEG_DIR, "count": SEG_HELDOUT,
                    "name": "NNNN.png (BGR canvas) + NNNN_mask.png (gray, class ids)",
                    "size": list(SEG_CANVAS)},
        "notes": "float32 [1, 64, 64, 3] = pixel/255 (RGB), letterboxed with padding 0; output "
                 "[1, 32, 32, 11] (half the input's resolution) softmax over background and the ten digits. Trained on "
                 "canvases (40-128 px a side, letterboxed) of 1-3 sklearn load_digits digits "
                 "from the 80 % training split on noisy dark backgrounds; a pixel is a digit's "
                 f"where its ink is >= {SEG_INK} of full. Held out: {SEG_HELDOUT} canvases of "
                 f"{SEG_CANVAS[0]}×{SEG_CANVAS[1]} from the 20 % split, measured (IoU, pixel "
                 "accuracy) on the frame's region of the letterboxed output, resized back to "
                 "the canvas with nearest neighbour.",
    }


def write_segmentation(test_idx, train_idx):
    import cv2

    labels_path = OUT / "segmentation_labels.txt"
    labels_path.write_text("".join(f"{w}\n" for w in SEG_LABELS))
    sdir = OUT / SEG_DIR
    if sdir.exists():
        shutil.rmtree(sdir)
    sdir.mkdir()
    imgs, masks = seg_data(test_idx, SEG_HELDOUT, SEED + 1, letterboxed=False)
    for n, (img, m) in enumerate(zip(imgs, masks, strict=True)):
        if not (cv2.imwrite(str(sdir / f"{n:04d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
                and cv2.imwrite(str(sdir / f"{n:04d}_mask.png"), m)):
            raise RuntimeError("cv2.imwrite failed")
    (OUT / "segmentation.tflite").write_bytes(build_segmentation(train_idx))
    return seg_entry(labels_path.name)


def only_segmentation(verify_python, t0):
    """Rebuild the segmentation model alone and its manifest entry; the other models are kept."""
    from sklearn.datasets import load_digits

    mpath = OUT / "manifest.json"
    manifest = json.loads(mpath.read_text())
    y = load_digits().target
    tr, te = split(len(y), y)
    entry = write_segmentation(te, tr)
    manifest["models"]["segmentation"] = entry
    mpath.write_text(json.dumps(manifest, indent=1) + "\n")
    r = fill_measured(verify_python)[entry["file"]]
    for key in ("size", "sha256", "inputs", "outputs"):
        entry[key] = r[key]
    entry["measured"] = {"via": "ai-edge-litert", **r["heldout"]}
    mpath.write_text(json.dumps(manifest, indent=1) + "\n")
    final_check(verify_python, t0)


# --------------------------------------------------------------------------- metadata


def metadata_subprocess(model_path, labels_path, mean, std, json_out):
    """Runs in a child process: tflite_support's task pybinds clash with TensorFlow's
    ("StatusCode already defined"), so TensorFlow is blocked before importing it."""
    sys.modules["tensorflow"] = None  # metadata.py falls back to open()/os.path.exists
    import zipfile

    # The populator packs associated files with ZipFile.writestr(name, data), which stamps
    # the current time: pin it so reruns give the same bytes.
    orig_writestr = zipfile.ZipFile.writestr

    def writestr(self, name, data, *a, **kw):
        if isinstance(name, str):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = self.compression
            info.external_attr = 0o644 << 16
            name = info
        return orig_writestr(self, name, data, *a, **kw)

    zipfile.ZipFile.writestr = writestr
    from tflite_support import metadata
    from tflite_support.metadata_writers import image_classifier, writer_utils

    writer = image_classifier.MetadataWriter.create_for_inference(
        writer_utils.load_file(model_path), list(mean), list(std), [labels_path]
    )
    writer_utils.save_file(writer.populate(), model_path)
    displayer = metadata.MetadataDisplayer.with_model_file(model_path)
    Path(json_out).write_text(
        json.dumps(
            {
                "metadata": json.loads(displayer.get_metadata_json()),
                "packed_files": displayer.get_packed_associated_file_list(),
            }
        )
    )


def write_metadata(model_path, labels_path, mean, std):
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "md.json"
        cmd = [sys.executable, __file__, "--metadata-child", str(model_path), str(labels_path),
               json.dumps(list(mean)), json.dumps(list(std)), str(out)]
        subprocess.run(cmd, check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        return json.loads(out.read_text())


# --------------------------------------------------------------------------- main


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def find_verify_python(arg):
    if arg:
        return arg
    try:
        import ai_edge_litert  # noqa: F401
    except ImportError:
        sys.exit("ai_edge_litert is not importable here: pass --verify-python "
                 "(a Python with numpy, opencv-python-headless and ai-edge-litert)")
    return sys.executable


def verify(verify_python, *extra):
    cmd = [verify_python, str(ROOT / "scripts" / "verify_models.py"), "--bundled", str(OUT),
           *extra]
    return subprocess.run(cmd, capture_output=True, text=True)


def main():
    ap = argparse.ArgumentParser(description="Build the bundled test models (dev only).")
    ap.add_argument("--verify-python", help="Python with numpy, opencv and ai-edge-litert")
    ap.add_argument("--metadata-child", nargs=5, help=argparse.SUPPRESS)
    ap.add_argument("--only", choices=["all", "audio", "segmentation", "detection"], default="all",
                    help="audio / segmentation / detection: rebuild only those models and their manifest entries")
    args = ap.parse_args()
    if args.metadata_child:
        m, labels, mean, std, out = args.metadata_child
        metadata_subprocess(m, labels, json.loads(mean), json.loads(std), out)
        return
    verify_python = find_verify_python(args.verify_python)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_DETERMINISTIC_OPS", "1")
    t0 = time.time()
    import cv2
    import numpy as np
    import sklearn
    import tensorflow as tf

    OUT.mkdir(parents=True, exist_ok=True)
    if args.only == "audio":
        only_audio(verify_python, t0)
        return
    if args.only == "segmentation":
        only_segmentation(verify_python, t0)
        return
    if args.only == "detection":
        only_detection(verify_python, t0)
        return
    frames, y = digits_frames()
    tr, te = split(len(y), y)

    # Held-out frames (replaced wholesale so reruns leave no stale files).
    fdir = OUT / FRAMES_DIR
    if fdir.exists():
        shutil.rmtree(fdir)
    fdir.mkdir()
    for n, i in enumerate(te):
        bgr = cv2.cvtColor(frames[i], cv2.COLOR_RGB2BGR)
        path = str(fdir / f"{n:04d}_{y[i]}.png")
        if not cv2.imwrite(path, bgr):
            raise RuntimeError("cv2.imwrite failed")
        back = cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        assert np.array_equal(back, frames[i]), path

    labels_path = OUT / "digits_labels.txt"
    labels_path.write_text("".join(f"{w}\n" for w in LABELS))

    float_buf, uint8_buf = build_digits(frames, y, tr)
    print(f"digits trained/converted ({time.time() - t0:.0f}s)", flush=True)
    (OUT / "digits_float.tflite").write_bytes(float_buf)
    (OUT / "digits_uint8.tflite").write_bytes(uint8_buf)
    md_mean = [round(255.0 * m, 6) for m in IMAGENET_MEAN]
    md_std = [round(255.0 * s, 6) for s in IMAGENET_STD]
    md = write_metadata(OUT / "digits_uint8.tflite", labels_path, md_mean, md_std)

    (OUT / "nan_prone.tflite").write_bytes(build_nan_prone(frames, y, tr))
    print(f"nan_prone trained/converted ({time.time() - t0:.0f}s)", flush=True)

    sensor_buf, features, x_te, y_te, target_norm = build_sensor()
    (OUT / "sensor.tflite").write_bytes(sensor_buf)
    with (OUT / "sensor_heldout.csv").open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow([*SENSOR_FEATURES, SENSOR_TARGET])
        for row, target in zip(x_te, y_te, strict=True):
            w.writerow([repr(float(v)) for v in (*row, target)])
    print(f"sensor trained/converted ({time.time() - t0:.0f}s)", flush=True)

    (OUT / "invoke_error.tflite").write_bytes(build_invoke_error())
    audio = write_audio()
    print(f"audio trained/converted ({time.time() - t0:.0f}s)", flush=True)
    segmentation = write_segmentation(te, tr)
    print(f"segmentation trained/converted ({time.time() - t0:.0f}s)", flush=True)

    unstable_buf, unstable_train_nan, unstable_norm = build_unstable()
    # The same standardisation as sensor, so sensor's transform works unchanged.
    assert unstable_norm == {"mean": [f["mean"] for f in features],
                             "std": [f["std"] for f in features],
                             "ym": target_norm["mean"], "ys": target_norm["std"]}
    bmi_feature = features[SENSOR_FEATURES.index("bmi")]
    z_bmi_te = ((x_te[:, SENSOR_FEATURES.index("bmi")] - bmi_feature["mean"])
                / bmi_feature["std"]).astype(np.float32)
    unstable_nan_rows = [int(i) for i in np.flatnonzero(z_bmi_te < np.float32(-1.0))]
    (OUT / "unstable.tflite").write_bytes(unstable_buf)
    print(f"unstable trained/converted ({time.time() - t0:.0f}s)", flush=True)

    image_transform = {
        "kind": "image", "resize": "stretch", "interpolation": "linear", "color": "rgb",
        "scale": 1.0 / 255.0, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
    }
    models = {
        "digits_float": {
            "file": "digits_float.tflite", "role": "digits", "transform": image_transform,
            "labels": labels_path.name, "metadata": None,
            "notes": "float32 in/out, no TFLite metadata. Feed (pixel/255 - mean)/std.",
        },
        "digits_uint8": {
            "file": "digits_uint8.tflite", "role": "digits", "transform": image_transform,
            "labels": labels_path.name,
            "metadata": {
                "writer": "tflite_support.metadata_writers.image_classifier."
                          "MetadataWriter.create_for_inference",
                "norm_mean": md_mean, "norm_std": md_std,
                "associated_files": {labels_path.name: sha256(labels_path)},
                "packed_files": md["packed_files"],
                "json": md["metadata"],
            },
            "notes": "full-integer quantized, uint8 in/out. Feed q = clip(round(prepared/scale"
                     " + zero_point), 0, 255) with prepared = (pixel/255 - mean)/std and the "
                     "input tensor's scale/zero_point; dequantize the output with its own. "
                     "Metadata norm mean/std are in pixel units (255*mean, 255*std).",
        },
        "nan_prone": {
            "file": "nan_prone.tflite", "role": "nan_prone",
            "transform": {**image_transform, "mean": [0.0], "std": [1.0]},
            "labels": labels_path.name, "metadata": None,
            "notes": "trained on pixel/255. The graph computes e = exp(input) and adds "
                     "mean(e) - max(e) to every logit (softmax-invariant); on raw 0..255 "
                     "pixels exp overflows to inf, inf - inf = NaN and every output is NaN "
                     "(see measured.fed_raw_pixels*).",
        },
        "sensor": {
            "file": "sensor.tflite", "role": "regression",
            "transform": {"kind": "vector", "features": features},
            "target": {"name": SENSOR_TARGET, "training_mean": target_norm["mean"],
                       "training_std": target_norm["std"],
                       "note": "de-standardisation is inside the graph: output is progression"},
            "labels": None, "metadata": None,
            "notes": "sklearn load_diabetes(scaled=False), features age, bmi, bp, s5; input "
                     "z = (x - mean)/std (training split, population std), output progression.",
        },
        "invoke_error": {
            "file": "invoke_error.tflite", "role": "invoke_error", "transform": None,
            "labels": None, "metadata": None,
            "notes": "output = gather(params[4], int32(|x|) + 4) + x. allocate_tensors() "
                     "succeeds; invoke() raises RuntimeError for every input (indices are "
                     ">= 4, or negative when the int32 cast overflows).",
        },
        "unstable": {
            "file": "unstable.tflite", "role": "unstable_regression",
            "transform": {"kind": "vector", "features": features},
            "target": {"name": SENSOR_TARGET, "training_mean": target_norm["mean"],
                       "training_std": target_norm["std"],
                       "note": "de-standardisation is inside the graph: output is progression"},
            "labels": None, "metadata": None,
            "engineered_feature": {
                "op": "sqrt(1 + z_bmi)", "nan_when": "z_bmi < -1",
                "nan_when_raw": f"bmi < {bmi_feature['mean'] - bmi_feature['std']!r}",
                "training_fraction_nan_domain": unstable_train_nan,
            },
            "notes": "same features, training split and standardisation as sensor (its "
                     "transform works unchanged); output progression. The graph adds the "
                     "engineered input f = sqrt(1 + z_bmi) (to the first hidden layer and, "
                     "linearly, to the output layer). Trained with sqrt(max(1 + z_bmi, 0)) "
                     "(no NaN in training); the exported graph has the plain SQRT, so every "
                     "input with z_bmi < -1 (bmi below mean - std = "
                     f"{bmi_feature['mean'] - bmi_feature['std']:.2f}, well inside the "
                     f"training range: {100 * unstable_train_nan:.1f} % of training rows) "
                     "gives a NaN output (sqrt of a negative number), and z_bmi >= -1 gives "
                     "the trained model's prediction. measured.nan_rows are the 0-based data "
                     "rows of sensor_heldout.csv that give NaN (measured.nan_csv_lines: "
                     "1-based file lines, header = line 1); r2/mae are over the other rows.",
        },
        "audio": audio,
        "segmentation": segmentation,
        **write_detection(),
    }
    manifest = {
        "generator": "scripts/make_models.py",
        "seed": SEED,
        "versions": {
            "tensorflow": tf.__version__, "numpy": np.__version__,
            "scikit_learn": sklearn.__version__, "opencv": cv2.__version__,
            "tflite_support": md_version(),
        },
        "heldout": {
            "digits_frames": {
                "dir": FRAMES_DIR, "count": len(te), "name": "NNNN_L.png (L = true digit)",
                "source": "sklearn load_digits(); x*255/16 rounded to uint8, cv2.resize 8->32 "
                          "INTER_LINEAR, R=G=B; stratified 80/20 split, random_state=42; "
                          "written with cv2.imwrite from RGB converted to BGR",
            },
            "sensor": {
                "file": "sensor_heldout.csv", "rows": len(y_te),
                "columns": [*SENSOR_FEATURES, SENSOR_TARGET],
                "source": "sklearn load_diabetes(scaled=False); 80/20 split, random_state=42",
            },
        },
        "models": models,
    }
    mpath = OUT / "manifest.json"
    mpath.write_text(json.dumps(manifest, indent=1) + "\n")

    measured = fill_measured(verify_python)
    for entry in models.values():
        r = measured[entry["file"]]
        for key in ("size", "sha256", "inputs", "outputs"):
            entry[key] = r[key]
        if "heldout" in r:
            entry["measured"] = {"via": "ai-edge-litert", **r["heldout"]}
        if entry["role"] == "unstable_regression":
            h = r["heldout"]
            assert h["nan_rows"] == unstable_nan_rows, (h["nan_rows"], unstable_nan_rows)
            entry["notes"] += (
                f" Held out: {h['n_nan_domain']} of {h['n']} rows give NaN, rows "
                f"{h['nan_rows']} = sensor_heldout.csv lines {h['nan_csv_lines']}."
            )
        if "invoke_error_message" in r:
            entry["measured"] = {"via": "ai-edge-litert", "allocate_ok": r["allocate_ok"],
                                 "invoke_errors": r["invoke_errors"]}
            entry["invoke_error_message"] = r["invoke_error_message"]
    mpath.write_text(json.dumps(manifest, indent=1) + "\n")
    final_check(verify_python, t0)


def md_version():
    from importlib.metadata import version

    return version("tflite-support")


if __name__ == "__main__":
    main()
