"""The one JSON-file reader: each problem is one line that starts with the file, in the caller's error class."""

from __future__ import annotations

import json

import pytest

from threedrs.checkpoint_state import load_optimizer
from threedrs.json_files import read_json_file
from threedrs.models.loading import checkpoint_model_type
from threedrs.teachers.base import build_teacher
from threedrs.teachers.hf2d import ModelFolderError


class CallerError(ValueError):
    pass


def test_reads_every_json_value(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"é": [1, 2.5, None]}), encoding="utf-8")
    assert read_json_file(path) == {"é": [1, 2.5, None]}
    assert read_json_file(path, expect=dict) == {"é": [1, 2.5, None]}
    path.write_text("[3]")
    assert read_json_file(path, CallerError, expect=list) == [3]
    path.write_text('"text"')
    assert read_json_file(path) == "text"


def test_missing_file_names_it_and_what_it_is(tmp_path):
    with pytest.raises(CallerError, match=r"nowhere\.json: box table not found$"):
        read_json_file(tmp_path / "nowhere.json", CallerError, what="box table")
    (tmp_path / "folder.json").mkdir()
    with pytest.raises(ValueError, match=r"folder\.json: file not found"):
        read_json_file(tmp_path / "folder.json")


@pytest.mark.parametrize("content", [b'{"a": ', b"", b"\xff\xfe\x00{", b"{'single': 'quotes'}"])
def test_damaged_file_is_one_line_in_the_callers_class(tmp_path, content):
    path = tmp_path / "damaged.json"
    path.write_bytes(content)
    with pytest.raises(CallerError, match=r"damaged\.json: not valid JSON \(") as info:
        read_json_file(path, CallerError)
    assert "\n" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_wrong_top_level_type(tmp_path):
    path = tmp_path / "list.json"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"list\.json: expected a JSON object$"):
        read_json_file(path, expect=dict)
    with pytest.raises(CallerError, match=r"list\.json: expected a mapping of scene -> boxes$"):
        read_json_file(path, CallerError, expect=dict, shape="a mapping of scene -> boxes")
    path.write_text("{}")
    with pytest.raises(ValueError, match=r"list\.json: expected a JSON list$"):
        read_json_file(path, expect=list)


def test_hint_follows_every_message(tmp_path):
    path = tmp_path / "lists.json"
    hint = "delete it to compute the frame lists again"
    with pytest.raises(ValueError, match=f"lists.json: file not found; {hint}$"):
        read_json_file(path, hint=hint)
    path.write_text("{")
    with pytest.raises(ValueError, match=rf"lists.json: not valid JSON \(.*\); {hint}$"):
        read_json_file(path, hint=hint)
    path.write_text("1")
    with pytest.raises(ValueError, match=f"lists.json: expected a JSON object; {hint}$"):
        read_json_file(path, expect=dict, hint=hint)


# readers that had no error handling before they used read_json_file: a damaged file now names itself


def test_damaged_model_config_is_named_by_the_adapter_check(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llava_onevision",')
    with pytest.raises(ValueError, match=r"config\.json: not valid JSON"):
        checkpoint_model_type(tmp_path, ("llava_onevision",), "expected 'llava_onevision'")
    (tmp_path / "config.json").write_text('["llava_onevision"]')
    with pytest.raises(ValueError, match=r"config\.json: expected a JSON object"):
        checkpoint_model_type(tmp_path, ("llava_onevision",), "expected 'llava_onevision'")


def test_damaged_teacher_config_is_a_model_folder_error(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelFolderError, match=r"config\.json: not valid JSON"):
        build_teacher("dinov2", checkpoint=tmp_path)


def test_damaged_optimizer_json_is_named(tmp_path):
    (tmp_path / "optimizer.json").write_text('{"param_groups": [')
    with pytest.raises(ValueError, match=r"optimizer\.json: not valid JSON"):
        load_optimizer(tmp_path / "optimizer.safetensors", tmp_path / "optimizer.json", [])


def test_write_atomic_replaces_whole_files_and_leaves_nothing_on_failure(tmp_path, monkeypatch):
    import os

    from threedrs.json_files import write_atomic, write_json_atomic

    path = tmp_path / "record.json"
    write_json_atomic(path, {"a": [1, 2]})
    assert path.read_text() == json.dumps({"a": [1, 2]}, indent=1) + "\n"
    write_atomic(path, b"\x00bytes")
    assert path.read_bytes() == b"\x00bytes"
    write_atomic(path, "é text", fsync=False)
    assert path.read_bytes() == "é text".encode()
    write_json_atomic(tmp_path / "new" / "deeper" / "x.json", [3])  # the parent is created
    assert read_json_file(tmp_path / "new" / "deeper" / "x.json") == [3]

    def failing(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(path, "never seen")
    assert path.read_bytes() == "é text".encode()  # the old file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "record.json"]  # no temporary file left
    write_atomic(path, "no fsync asked", fsync=False)  # fsync=False never calls it
    assert path.read_text() == "no fsync asked"
