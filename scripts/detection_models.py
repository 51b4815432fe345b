"""The bundled digit detector: data, training and its two exports (dev only, TensorFlow).

Canvases: scikit-learn's ``load_digits`` (8×8) upscaled and alpha-blended at random,
non-overlapping positions (1-3 digits) on a larger canvas with a random colour gradient and
noise. A ground-truth box is the tight box of the upscaled digit's ink (alpha > 0.25).

The network sees 96×96 RGB (pixel / 255). Training canvases have random sizes and aspects and
are letterboxed into 96×96 exactly as the agent does (``ImagePlan``: r = min(96/w, 96/h),
``cv2.resize`` INTER_LINEAR to round(w·r)×round(h·r), centred, padded with 0), so the model is
trained on what the agent feeds it. Training digits are mildly distorted (rotation, scale,
shear); the held-out canvases use the held-out digits undistorted. Weights are stored as float16.

The head is a YOLO-style 12×12 grid (stride 8): per cell an objectness logit, the box centre
as a sigmoid offset inside the cell, the size as ANCHOR·exp(t), and 10 class logits. Exports:

* ``yolo``: one float32 tensor [1, 4 + 10, 144] (the YOLOv8 layout): cx, cy, w, h in model
  input pixels, then per-class scores objectness·softmax(class).
* ``ssd``: the same network ending in TFLite's ``TFLite_Detection_PostProcess`` custom op
  (the composite ``tf.function(experimental_implements=...)`` that the MLIR converter
  legalizes to it); its box encodings are relative to one anchor per cell, (y, x, h, w) with
  scales 1. The outputs are returned in the TF2 exporter's order (scores, boxes, count,
  classes), which is not the op's own order (boxes, classes, scores, count).

Importable without TensorFlow for the data part (numpy, opencv, scikit-learn).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SIZE = 96  # model input, square
GRID = 12
STRIDE = SIZE // GRID
ANCHOR = 20.0  # px: the size a box has at t = 0
NUM_CLASSES = 10
LABELS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
HELDOUT_SIZE = (160, 120)  # w, h of the held-out canvases (4:3, fed letterboxed into 96×96)
HELDOUT_COUNT = 80
HELDOUT_SEED = 3042
TRAIN_SEED = 1042
INK = 0.25


def digit_images():
    """load_digits as float alpha in [0, 1], its labels, and the stratified 80/20 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    alpha = (d.images / 16.0).astype(np.float32)
    idx = np.arange(len(alpha))
    tr, te = train_test_split(idx, test_size=0.2, random_state=42, stratify=d.target)
    return alpha, d.target.astype(np.int64), tr, te


def canvas(rng, w, h, alpha, labels, pool, *, sizes=(14, 34), max_digits=3, distort=False):
    """One RGB canvas with 1..max_digits digits from `pool`; boxes as [x1, y1, x2, y2, label]
    in canvas pixels (x2, y2 exclusive edges)."""
    import cv2

    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = np.linspace(0.0, 1.0, w if rng.random() < 0.5 else h, dtype=np.float32)
    ramp = (t[None, :, None] if len(t) == w else t[:, None, None]) * np.ones((h, w, 1), np.float32)
    img = c0[None, None, :] * (1 - ramp) + c1[None, None, :] * ramp
    img += rng.normal(0, rng.uniform(2, 14), (h, w, 3))
    boxes = []
    placed = []
    for _ in range(int(rng.integers(1, max_digits + 1))):
        for _attempt in range(30):
            s = int(rng.integers(sizes[0], min(sizes[1], w, h) + 1))
            x, y = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
            if all(x + s + 2 <= px or px + ps + 2 <= x or y + s + 2 <= py or py + ps + 2 <= y for px, py, ps in placed):
                break
        else:
            continue
        k = int(rng.choice(pool))
        a = cv2.resize(alpha[k], (s, s), interpolation=cv2.INTER_LINEAR)
        if distort:  # training only: a little rotation, scale and shear, so writing varies more
            m = cv2.getRotationMatrix2D((s / 2, s / 2), rng.uniform(-12, 12), 1.0)
            m[:, :2] = m[:, :2] @ np.array([[rng.uniform(0.85, 1.1), rng.uniform(-0.2, 0.2)],
                                            [0.0, rng.uniform(0.85, 1.1)]])
            m[:, 2] = (s / 2) - m[:, :2] @ np.array([s / 2, s / 2])  # about the centre
            a = cv2.warpAffine(a, m, (s, s), flags=cv2.INTER_LINEAR, borderValue=0)
            if not (a > INK).any():
                continue
        # ink that stands out from the local background
        bg = img[y : y + s, x : x + s].mean(axis=(0, 1))
        color = np.where(bg < 128, rng.uniform(170, 255, 3), rng.uniform(0, 85, 3))
        img[y : y + s, x : x + s] = img[y : y + s, x : x + s] * (1 - a[:, :, None]) + color * a[:, :, None]
        ys, xs = np.nonzero(a > INK)
        boxes.append([x + xs.min(), y + ys.min(), x + xs.max() + 1, y + ys.max() + 1, int(labels[k])])
        placed.append((x, y, s))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), np.array(boxes, np.float32).reshape(-1, 5)


def letterbox(img, boxes, size=SIZE):
    """As the agent's ImagePlan does it (see edge_agent/preprocess.py)."""
    import cv2

    h, w = img.shape[:2]
    r = min(size / w, size / h)
    nw, nh = max(1, round(w * r)), max(1, round(h * r))
    ox, oy = (size - nw) // 2, (size - nh) // 2
    out = np.zeros((size, size, 3), np.uint8)
    out[oy : oy + nh, ox : ox + nw] = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    b = boxes.copy()
    b[:, [0, 2]] = b[:, [0, 2]] * (nw / w) + ox
    b[:, [1, 3]] = b[:, [1, 3]] * (nh / h) + oy
    return out, b


def training_set(n, seed=TRAIN_SEED):
    alpha, labels, tr, _ = digit_images()
    rng = np.random.default_rng(seed)
    xs = np.empty((n, SIZE, SIZE, 3), np.uint8)
    targets = np.zeros((n, GRID, GRID, 6), np.float32)
    for i in range(n):
        w = int(rng.integers(80, 200))
        h = int(rng.integers(80, 200))
        # digit sizes of 11-30 px once letterboxed (the held-out canvases give 11-29)
        r = min(SIZE / w, SIZE / h)
        img, boxes = canvas(rng, w, h, alpha, labels, tr, sizes=(int(np.ceil(11 / r)), int(30 / r)), distort=True)
        xs[i], b = letterbox(img, boxes)
        for x1, y1, x2, y2, lab in b:
            cx, cy, bw, bh = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
            col, row = min(int(cx // STRIDE), GRID - 1), min(int(cy // STRIDE), GRID - 1)
            targets[i, row, col] = (1.0, cx / STRIDE - col, cy / STRIDE - row,
                                    np.log(bw / ANCHOR), np.log(bh / ANCHOR), lab)
    return xs, targets


def heldout_set(n=HELDOUT_COUNT, seed=HELDOUT_SEED, size=HELDOUT_SIZE):
    """Canvases of held-out digits at the source size, boxes in source pixels."""
    alpha, labels, _, te = digit_images()
    rng = np.random.default_rng(seed)
    w, h = size
    return [canvas(rng, w, h, alpha, labels, te, sizes=(18, 48)) for _ in range(n)]


def write_heldout(out_dir: Path, name="detection_canvases"):
    import cv2

    d = out_dir / name
    if d.exists():
        for p in d.iterdir():
            p.unlink()
    d.mkdir(exist_ok=True)
    truth = {}
    for i, (img, boxes) in enumerate(heldout_set()):
        fname = f"{i:04d}.png"
        assert cv2.imwrite(str(d / fname), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        truth[fname] = [{"label": LABELS[int(b[4])], "index": int(b[4]),
                         "box": [int(b[0]), int(b[1]), int(b[2]), int(b[3])]} for b in boxes]
    (out_dir / f"{name}.json").write_text(json.dumps(
        {"box": "[x1, y1, x2, y2] in source pixels, x2/y2 exclusive", "size": list(HELDOUT_SIZE),
         "images": truth}, indent=0) + "\n")
    return d


def iou(a, b):
    """IoU of one box [x1, y1, x2, y2] with boxes [n, 4]."""
    b = np.asarray(b, np.float64).reshape(-1, 4)
    w = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
    h = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    return inter / np.maximum(union, 1e-9)


def mean_average_precision(truth, predicted, iou_threshold=0.5):
    """VOC-style mAP (all-point interpolation), averaged over the classes in the ground truth.

    truth: {image: [(class, [x1, y1, x2, y2]), ...]}; predicted: {image: [(class, score,
    [x1, y1, x2, y2]), ...]} (an image missing from `predicted` has no detections).
    Returns (mAP, {class: AP})."""
    classes = sorted({c for boxes in truth.values() for c, _ in boxes})
    ap = {}
    for c in classes:
        gts = {k: np.array([b for cc, b in v if cc == c], np.float64).reshape(-1, 4) for k, v in truth.items()}
        used = {k: np.zeros(len(g), bool) for k, g in gts.items()}
        n_gt = sum(len(g) for g in gts.values())
        preds = sorted(((s, k, b) for k, v in predicted.items() for cc, s, b in v if cc == c),
                       key=lambda t: -t[0])
        tp = np.zeros(len(preds))
        for i, (_, k, b) in enumerate(preds):
            g = gts.get(k, np.empty((0, 4)))
            if len(g):
                overlaps = iou(np.asarray(b, np.float64), g)
                overlaps[used[k]] = -1.0
                j = int(np.argmax(overlaps))
                if overlaps[j] >= iou_threshold:
                    used[k][j] = True
                    tp[i] = 1
        ctp = np.cumsum(tp)
        recall = ctp / max(n_gt, 1)
        precision = ctp / np.arange(1, len(preds) + 1)
        r = np.concatenate([[0.0], recall, [1.0]])
        p = np.concatenate([[1.0], precision, [0.0]])
        p = np.maximum.accumulate(p[::-1])[::-1]
        ap[c] = float(np.sum((r[1:] - r[:-1]) * p[1:]))
    return (float(np.mean(list(ap.values()))) if ap else 0.0), ap


# --------------------------------------------------------------------------- model


def network():
    from tensorflow import keras

    inp = keras.Input((SIZE, SIZE, 3), name="image")
    h = inp
    for filters, stride in ((16, 1), (32, 2), (48, 2), (64, 1), (64, 2)):
        h = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", activation="relu")(h)
    for _ in range(2):  # separable at the grid's resolution: the receptive field, few weights
        h = keras.layers.SeparableConv2D(128, 3, padding="same", activation="relu")(h)
    head = keras.layers.Conv2D(5 + NUM_CLASSES, 1, name="head")(h)
    return keras.Model(inp, head)


def loss_fn(y_true, y_pred):
    import tensorflow as tf

    obj = y_true[..., 0]
    pos = obj > 0.5
    npos = tf.maximum(tf.reduce_sum(obj), 1.0)
    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=obj, logits=y_pred[..., 0])
    l_obj = tf.reduce_sum(bce * (1.0 + 4.0 * obj)) / npos
    xy = tf.sigmoid(y_pred[..., 1:3])
    l_xy = tf.reduce_sum(tf.where(pos[..., None], tf.abs(xy - y_true[..., 1:3]), 0.0)) / npos
    l_wh = tf.reduce_sum(tf.where(pos[..., None], tf.abs(y_pred[..., 3:5] - y_true[..., 3:5]), 0.0)) / npos
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(y_true[..., 5], tf.int32), logits=y_pred[..., 5:])
    l_cls = tf.reduce_sum(tf.where(pos, ce, 0.0)) / npos
    return l_obj + 5.0 * l_xy + 2.0 * l_wh + 2.0 * l_cls


def decode(head):
    """head [B, G, G, 15] → boxes cx, cy, w, h [B, A, 4] in model pixels, scores [B, A, C]."""
    import tensorflow as tf

    g = np.arange(GRID, dtype=np.float32)
    gx = tf.constant(np.tile(g[None, :], (GRID, 1))[None, :, :])
    gy = tf.constant(np.tile(g[:, None], (1, GRID))[None, :, :])
    cx = (gx + tf.sigmoid(head[..., 1])) * STRIDE
    cy = (gy + tf.sigmoid(head[..., 2])) * STRIDE
    w = ANCHOR * tf.exp(tf.minimum(head[..., 3], 4.0))
    h = ANCHOR * tf.exp(tf.minimum(head[..., 4], 4.0))
    scores = tf.sigmoid(head[..., :1]) * tf.nn.softmax(head[..., 5:], axis=-1)
    boxes = tf.stack([cx, cy, w, h], axis=-1)
    return tf.reshape(boxes, [-1, GRID * GRID, 4]), tf.reshape(scores, [-1, GRID * GRID, NUM_CLASSES])


def anchors():
    """One anchor per cell as TFLite_Detection_PostProcess takes them: (y, x, h, w), normalized."""
    g = (np.arange(GRID, dtype=np.float32) + 0.5) / GRID
    yy, xx = np.meshgrid(g, g, indexing="ij")
    a = np.full((GRID * GRID, 4), ANCHOR / SIZE, np.float32)
    a[:, 0], a[:, 1] = yy.ravel(), xx.ravel()
    return a


def train_model(n=12000, epochs=36):
    from tensorflow import keras

    xs, targets = training_set(n)
    model = network()
    x = xs.astype(np.float32) / np.float32(255.0)
    sched = keras.optimizers.schedules.CosineDecay(2e-3, decay_steps=epochs * (n // 64))
    model.compile(optimizer=keras.optimizers.Adam(sched), loss=loss_fn)
    model.fit(x, targets, epochs=epochs, batch_size=64, shuffle=True, verbose=2)
    return model


SSD_MAX_DETECTIONS = 10
SSD_SCORE_THRESHOLD = 0.05
SSD_IOU_THRESHOLD = 0.5


def _implements():
    attrs = [
        'name: "TFLite_Detection_PostProcess"',
        f'attr {{ key: "max_detections" value {{ i: {SSD_MAX_DETECTIONS} }} }}',
        'attr { key: "max_classes_per_detection" value { i: 1 } }',
        'attr { key: "detections_per_class" value { i: 100 } }',
        'attr { key: "use_regular_nms" value { b: false } }',
        f'attr {{ key: "nms_score_threshold" value {{ f: {SSD_SCORE_THRESHOLD:f} }} }}',
        f'attr {{ key: "nms_iou_threshold" value {{ f: {SSD_IOU_THRESHOLD:f} }} }}',
        'attr { key: "y_scale" value { f: 1.0 } }',
        'attr { key: "x_scale" value { f: 1.0 } }',
        'attr { key: "h_scale" value { f: 1.0 } }',
        'attr { key: "w_scale" value { f: 1.0 } }',
        f'attr {{ key: "num_classes" value {{ i: {NUM_CLASSES} }} }}',
    ]
    return " ".join(attrs)


def export_yolo(model):
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([1, SIZE, SIZE, 3], tf.float32, name="image")], autograph=False)
    def fn(x):
        boxes, scores = decode(model(x, training=False))
        return tf.transpose(tf.concat([boxes, scores], axis=-1), [0, 2, 1])  # [1, 14, A]

    return _convert(fn.get_concrete_function(), model)


def export_ssd(model):
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    anchor_t = tf.constant(anchors())
    spec = tf.TensorSpec([1, SIZE, SIZE, 3], tf.float32, name="image")

    @tf.function(input_signature=[spec], autograph=False)
    def encode(x):
        boxes, scores = decode(model(x, training=False))
        a = anchor_t[None]
        cx, cy, w, h = (boxes[..., i] / SIZE for i in range(4))
        enc = tf.stack([(cy - a[..., 0]) / a[..., 2], (cx - a[..., 1]) / a[..., 3],
                        tf.math.log(h / a[..., 2]), tf.math.log(w / a[..., 3])], axis=-1)
        cls = tf.concat([tf.zeros_like(scores[..., :1]), scores], axis=-1)  # background first
        return enc, cls

    # the network frozen first (weights as constants), the composite op around it
    frozen = convert_variables_to_constants_v2(encode.get_concrete_function())

    @tf.function(experimental_implements=_implements())
    def postprocess(box_encodings, class_predictions, anchor_boxes):
        z = tf.constant(0.0, tf.float32)
        return z, z, z, z  # stands in for the custom op (boxes, classes, scores, count)

    # autograph off here and above: it re-reads this file's source, which may have changed
    @tf.function(input_signature=[spec], autograph=False)
    def fn(x):
        enc, cls = frozen(x)
        b, c, s, n = postprocess(enc, cls, anchor_t)
        return s, b, n, c  # the TF2 exporter's order

    return _convert(fn.get_concrete_function(), model, custom=True)


def _convert(cf, trackable, custom=False):
    import tempfile

    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    if not custom:
        frozen = convert_variables_to_constants_v2(cf)
        conv = tf.lite.TFLiteConverter.from_concrete_functions([frozen], trackable)
        _float16_weights(conv)
        return conv.convert()
    # Freezing a concrete function inlines the composite function (and the custom op is
    # lost); through a SavedModel, the converter sees the experimental_implements attribute.
    module = tf.Module()
    with tempfile.TemporaryDirectory() as tmp:
        tf.saved_model.save(module, tmp, signatures=cf)
        conv = tf.lite.TFLiteConverter.from_saved_model(tmp)
        conv.allow_custom_ops = True
        _float16_weights(conv)
        return conv.convert()


def _float16_weights(conv):
    """Weights stored as float16 (dequantized once at load): half the size, float32 compute."""
    import tensorflow as tf

    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.target_spec.supported_types = [tf.float16]
