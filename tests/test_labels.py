"""Label files in the forms models ship with, and the labels a model carries in its metadata.

Real files: Coral's imagenet_labels.txt (one label per line, "background" first), a file in
the "index  label" form of Coral's coco_labels.txt (indices with gaps), and the labels packed
into the bundled digits_uint8.tflite by tflite_support's metadata writer.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import INTERPRETER

from edge_agent.config import parse_config
from edge_agent.errors import ModelError
from edge_agent.pipeline import Pipeline
from edge_agent.postprocess.labels import load_labels, parse_labels

# The head of Coral's coco_labels.txt (test_data): "index  label", 90 ids of which 80 are
# used, so indices skip (12 → "stop sign" after 11 "n/a") and must be kept, not renumbered.
COCO_HEAD = "0  person\n1  bicycle\n2  car\n9  traffic light\n10  fire hydrant\n12  stop sign\n89  toothbrush\n"


def test_one_label_per_line_coral_imagenet(coral: Path) -> None:
    labels = load_labels(str(coral / "imagenet_labels.txt"))
    lines = (coral / "imagenet_labels.txt").read_text().splitlines()
    assert len(labels) == len(lines) == 1001
    assert labels[0] == "background"
    assert labels[1] == "tench, Tinca tinca"  # a comma inside a label is not a separator
    assert labels[1000] == lines[1000]


def test_index_label_pairs_keep_their_indices(tmp_path: Path) -> None:
    f = tmp_path / "coco_labels.txt"
    f.write_text(COCO_HEAD)
    labels = load_labels(str(f))
    assert labels == {
        0: "person",
        1: "bicycle",
        2: "car",
        9: "traffic light",
        10: "fire hydrant",
        12: "stop sign",
        89: "toothbrush",
    }


@pytest.mark.parametrize("sep", [" ", "\t", ": ", ", ", "  "])
def test_pair_separators(sep: str) -> None:
    assert parse_labels(f"0{sep}cat\n1{sep}dog\n") == {0: "cat", 1: "dog"}


def test_a_plain_list_with_a_leading_number_stays_a_plain_list() -> None:
    # one line that is not "index label" makes the whole file a list: "3 way switch" is a label
    assert parse_labels("lamp\n3 way switch\nfan\n") == {0: "lamp", 1: "3 way switch", 2: "fan"}


def test_blank_lines_and_surrounding_space_are_skipped() -> None:
    assert parse_labels("\n  cat  \n\n\ndog\r\n   \n") == {0: "cat", 1: "dog"}
    assert parse_labels("\n0 cat\n\n1 dog\n\n") == {0: "cat", 1: "dog"}


def test_byte_order_mark_is_not_part_of_the_first_label(tmp_path: Path) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_bytes("cat\ndog\n".encode("utf-8-sig"))
    assert load_labels(str(plain)) == {0: "cat", 1: "dog"}
    pairs = tmp_path / "pairs.txt"
    pairs.write_bytes("0 cat\n1 dog\n".encode("utf-8-sig"))  # the BOM would hide the first index
    assert load_labels(str(pairs)) == {0: "cat", 1: "dog"}


def test_duplicate_index_is_a_one_line_error(tmp_path: Path) -> None:
    f = tmp_path / "dup.txt"
    f.write_text("0 cat\n1 dog\n\n1 bird\n")
    with pytest.raises(ModelError) as err:
        load_labels(str(f))
    msg = str(err.value)
    assert msg == f"model.labels: {f}: index 1 appears twice (lines 2 and 4)"
    assert "\n" not in msg and err.value.reason == "labels"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "model.labels: file not found: {path}"),
        (b"", "model.labels: {path} holds no labels"),
        (b"\n \n", "model.labels: {path} holds no labels"),
        (b"\xff\xfecat", "model.labels: cannot read {path}:"),
    ],
    ids=["missing", "empty", "blank", "not-utf8"],
)
def test_bad_label_files_are_one_line_errors(tmp_path: Path, content: bytes | None, expected: str) -> None:
    f = tmp_path / "labels.txt"
    if content is not None:
        f.write_bytes(content)
    with pytest.raises(ModelError) as err:
        load_labels(str(f))
    assert str(err.value).startswith(expected.format(path=f))
    assert "\n" not in str(err.value)


def _classifier_labels(model: Path, labels: Path | None = None) -> dict[int, str]:
    sec: dict[str, str] = {"path": str(model), "task": "classification", "interpreter": INTERPRETER}
    if labels is not None:
        sec["labels"] = str(labels)
    pipeline = Pipeline.load(parse_config({"model": sec}))
    try:
        assert pipeline.classifier is not None
        return pipeline.classifier.labels
    finally:
        pipeline.close()


def test_labels_embedded_in_model_metadata(bundled: Path) -> None:
    """digits_uint8.tflite carries digits_labels.txt packed by tflite_support's metadata writer."""
    expected = (bundled / "digits_labels.txt").read_text().split()
    assert _classifier_labels(bundled / "digits_uint8.tflite") == dict(enumerate(expected))


def test_a_labels_file_overrides_the_embedded_labels(bundled: Path, tmp_path: Path) -> None:
    f = tmp_path / "names.txt"
    f.write_text("".join(f"{i} digit-{i}\n" for i in range(10)))
    assert _classifier_labels(bundled / "digits_uint8.tflite", f)[7] == "digit-7"
