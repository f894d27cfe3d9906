"""Ground-truth labels at rest: validation (hand-written and generated hostile entries), the Parquet round trip,
first-label-wins, and uploading a labels file all or nothing (no Ray)."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings, strategies as st

from rayml.errors import DataError
from rayml.feedback import (
    CAPTURE_SCHEMA,
    LABEL_SCHEMA,
    check_inference_id,
    class_text,
    list_files,
    read_label_file,
    read_labels,
    upload_labels,
    validate_labels,
    write_labels,
)
from rayml.feedback._store import MAX_PROBLEMS_SHOWN, capture_dir, label_text, write_table

T0 = dt.datetime(2024, 5, 1, 12, tzinfo=dt.timezone.utc)


def test_valid_labels_of_each_task_become_their_stored_text() -> None:
    reg = validate_labels(
        [{"inference_id": "a", "label": 1}, {"inference_id": "b", "label": "2.5", "row": 3}], "m", "regression", [], "http", T0
    )
    assert reg.problem_count == 0 and reg.table.schema == LABEL_SCHEMA
    assert reg.table.to_pydict() | {"received_at": None} == {
        "inference_id": ["a", "b"],
        "row": [0, 3],
        "label": ["1.0", "2.5"],
        "received_at": None,
        "model": ["m", "m"],
        "source": ["http", "http"],
    }
    binary = validate_labels(
        [{"inference_id": "a", "label": True}, {"inference_id": "b", "label": 0.0}], "m", "binary", [0, 1], "upload"
    )
    assert binary.table["label"].to_pylist() == ["1", "0"]
    multi = validate_labels([{"inference_id": "a", "label": "setosa"}], "m", "multiclass", ["setosa", "virginica"], "upload")
    assert multi.table["label"].to_pylist() == ["setosa"]
    assert class_text(1.0) == class_text(1) == class_text("1") == "1"


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        ({"label": 1}, "inference_id is missing"),
        ({"inference_id": "a b", "label": 1}, "is not 1-128 characters"),
        ({"inference_id": "x" * 129, "label": 1}, "is not 1-128 characters"),
        ({"inference_id": "a"}, "label is missing"),
        ({"inference_id": "a", "label": None}, "label is missing"),
        ({"inference_id": "a", "label": float("nan")}, "is not a finite number"),
        ({"inference_id": "a", "label": True}, "is not a finite number"),
        ({"inference_id": "a", "label": "ten"}, "is not a finite number"),
        ({"inference_id": "a", "label": 1, "row": -1}, "is not a whole number"),
        ({"inference_id": "a", "label": 1, "row": 1.5}, "is not a whole number"),
        ({"inference_id": "a", "label": 1, "row": True}, "is not a whole number"),
        ({"inference_id": "a", "label": 1, "ts": 3}, "unknown fields ['ts']"),
        ("a", "expected an object"),
    ],
)
def test_each_invalid_entry_is_described_and_left_out(entry: object, fragment: str) -> None:
    batch = validate_labels([entry, {"inference_id": "ok", "label": 2}], "m", "regression", [], "http")
    assert batch.accepted == 1 and batch.problem_count == 1
    assert batch.problems[0].startswith("entry 0: ") and fragment in batch.problems[0], batch.problems


def test_a_class_label_must_be_one_of_the_models_classes() -> None:
    batch = validate_labels([{"inference_id": "a", "label": "cat"}], "m", "multiclass", ["dog", "bird"], "http")
    assert batch.accepted == 0 and "one of the classes ['dog', 'bird']" in batch.problems[0] and "multiclass" in batch.problems[0]


def test_problems_are_counted_all_but_shown_only_the_first_few() -> None:
    batch = validate_labels([{"inference_id": "a"}] * 12, "m", "regression", [], "http")
    assert batch.problem_count == 12 and len(batch.problems) == MAX_PROBLEMS_SHOWN
    body = validate_labels({"inference_id": "a", "label": 1}, "m", "regression", [], "http")
    assert body.problem_count == 1 and "expected a JSON list" in body.problems[0]


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
_ENTRY = st.one_of(
    _JSON,
    st.fixed_dictionaries(
        {"inference_id": st.one_of(st.text(max_size=140), st.from_regex(r"[A-Za-z0-9_.:\-]{1,128}", fullmatch=True), _JSON)},
        optional={
            "label": st.one_of(_JSON, st.sampled_from(["a", "b", 1, 0, 1.0, "1"])),
            "row": st.one_of(st.integers(min_value=-5, max_value=2**33), _JSON),
            "extra": _JSON,
        },
    ),
)


@settings(max_examples=150, deadline=None)
@given(entries=st.lists(_ENTRY, max_size=12), task=st.sampled_from(["regression", "binary", "multiclass"]))
def test_generated_hostile_entries_never_raise_and_each_is_accepted_or_described(entries: list, task: str) -> None:
    classes = {"regression": [], "binary": [0, 1], "multiclass": ["a", "b", 1]}[task]
    batch = validate_labels(entries, "m", task, classes, "http")
    assert batch.accepted + batch.problem_count == len(entries)
    assert len(batch.problems) == min(batch.problem_count, MAX_PROBLEMS_SHOWN)
    assert batch.table.schema == LABEL_SCHEMA
    for iid, row, text in zip(*(batch.table[c].to_pylist() for c in ("inference_id", "row", "label")), strict=True):
        assert check_inference_id(iid) is None and 0 <= row < 2**31
        assert label_text(text, task, classes) == text  # what is stored is itself a valid label
        if task == "regression":
            assert math.isfinite(float(text))


def _labels(entries: list[dict], received_at: dt.datetime) -> pa.Table:
    batch = validate_labels(entries, "m", "regression", [], "upload", received_at)
    assert batch.problem_count == 0
    return batch.table


def test_write_read_round_trip_and_the_first_label_wins(tmp_path: Path) -> None:
    dest = str(tmp_path)
    assert read_labels(dest, "m").num_rows == 0 and write_labels(dest, "m", LABEL_SCHEMA.empty_table()) is None
    later = _labels([{"inference_id": "a", "label": 9.0}, {"inference_id": "c", "label": 3.0}], T0 + dt.timedelta(hours=1))
    earlier = _labels(
        [{"inference_id": "a", "label": 1.0}, {"inference_id": "b", "label": 2.0, "row": 1}, {"inference_id": "a", "label": 5.0}],
        T0,
    )
    path_later = write_labels(dest, "m", later)  # written first, received later: the earlier label still wins
    write_labels(dest, "m", earlier)
    assert path_later and Path(path_later).is_file() and len(list_files(dest, "labels", "m")) == 2
    assert not list(tmp_path.rglob("*.tmp"))
    got = read_labels(dest, "m").to_pandas().sort_values(["inference_id", "row"])
    assert got[["inference_id", "row", "label"]].values.tolist() == [["a", 0, "1.0"], ["b", 1, "2.0"], ["c", 0, "3.0"]]
    assert read_labels(dest, "m").schema == LABEL_SCHEMA
    assert read_labels(dest, "other").num_rows == 0  # per model


# --- uploading a labels file ------------------------------------------------------------------------------------


def _captures(dest: str, ids: list[str]) -> None:
    n = len(ids)
    table = pa.table(
        {
            "inference_id": ids,
            "row": pa.array([0] * n, pa.int32()),
            "ts": pa.array([T0] * n, pa.timestamp("ms", tz="UTC")),
            "model": ["m"] * n,
            "version": [1] * n,
            "route": ["primary"] * n,
            "segment": [None] * n,
            "prediction": [0.5] * n,
            "predicted_label": ["1"] * n,
            "probabilities": pa.nulls(n, pa.list_(pa.float64())),
            "inputs": ["{}"] * n,
        },
        schema=CAPTURE_SCHEMA,
    )
    write_table(capture_dir(dest, "m", 1, "2024-05-01T12"), table)


def test_a_file_with_one_invalid_entry_stores_nothing_and_a_good_one_stores_only_new_labels(tmp_path: Path) -> None:
    dest = str(tmp_path / "captures")
    _captures(dest, ["a", "b", "c"])
    bad = upload_labels(dest, "m", [{"inference_id": "a", "label": 1}, {"inference_id": "b", "label": "maybe"}], "binary", [])
    assert bad.refused and bad.problem_count == 1 and "label 'maybe' is not one of the classes [0, 1]" in bad.problems[0]
    assert list_files(dest, "labels", "m") == []
    entries = [
        {"inference_id": "a", "label": 1},
        {"inference_id": "b", "label": 0},
        {"inference_id": "a", "label": 0},  # a repeat that disagrees: a duplicate and a conflict
        {"inference_id": "zz", "label": 1},  # no capture has it (yet)
    ]
    first = upload_labels(dest, "m", entries, "binary", [])
    assert (first.accepted, first.new, first.matched, first.unknown, first.duplicates, first.conflicts) == (4, 3, 2, 1, 1, 1)
    again = upload_labels(dest, "m", entries, "binary", [])
    assert (again.new, again.duplicates, again.written) == (0, 4, None)  # the same file twice changes nothing
    assert len(list_files(dest, "labels", "m")) == 1
    assert sorted(read_labels(dest, "m")["label"].to_pylist()) == ["0", "1", "1"]


def test_label_files_of_every_format_read_alike(tmp_path: Path) -> None:
    want = [{"inference_id": "007", "label": 1.5, "row": 2}, {"inference_id": "b", "label": 2.0}]
    pd.DataFrame({"inference_id": ["007", "b"], "label": [1.5, 2.0], "row": [2, None]}).to_csv(tmp_path / "l.csv", index=False)
    pd.DataFrame({"inference_id": ["007", "b"], "label": [1.5, 2.0], "row": [2, None]}).to_parquet(tmp_path / "l.parquet")
    (tmp_path / "l.json").write_text(json.dumps(want))
    (tmp_path / "l.jsonl").write_text("\n".join(json.dumps(e) for e in want) + "\n")
    for name in ("l.csv", "l.parquet", "l.json", "l.jsonl"):
        assert read_label_file(str(tmp_path / name)) == want, name


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("l.txt", "x", "is not .csv, .parquet, .json or .jsonl"),
        ("missing.csv", None, "does not exist"),
        ("l.csv", "id,label\na,1\n", "missing column(s) ['inference_id']"),
        ("l.csv", "inference_id,label,ts\na,1,2\n", "unknown column(s) ['ts']"),
        ("l.json", '{"inference_id": "a"}', "not a list of objects"),
        ("l.jsonl", '{"inference_id": "a", "label": 1}\n{oops\n', "line 2: not JSON"),
        ("l.parquet", "not parquet", "cannot read labels file"),
    ],
)
def test_unreadable_label_files_say_what_to_give(tmp_path: Path, name: str, content: str | None, fragment: str) -> None:
    if content is not None:
        (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=".") as e:
        read_label_file(str(tmp_path / name))
    assert fragment in e.value.message, e.value.message
    assert e.value.hint and ("check the path" if content is None else "inference_id and label") in e.value.hint
