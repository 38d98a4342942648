"""skip_layers.json: validation errors, entries kept, atomic writes."""

import os

import pytest
from helpers import tiny_llama

import ssd
from ssd.core.files import append_jsonl, read_jsonl
from ssd.core.skip_layers import (
    DEFAULT_PATH,
    apply_skip_layers,
    hand_made_set,
    load_draft,
    read_skip_layers,
    save_skip_layers,
)


def test_repository_file_holds_the_published_sets():
    entries = read_skip_layers(DEFAULT_PATH)
    assert {"llama-2-13b", "llama-2-13b-chat", "codellama-13b", "llama-2-70b"} <= set(entries)
    draft = load_draft("llama-2-13b", num_layers=40)
    attention, mlp = draft.skip_layers
    assert attention[:3] == [3, 5, 6] and mlp[-1] == 35 and len(attention) == 24 and len(mlp) == 10
    assert draft == ssd.Draft.skipping(attention, mlp) and draft.precision is None
    assert max(load_draft("llama-2-70b", num_layers=80).attention) == 79


def test_hand_made_set_fits_every_depth():
    """The embedded model's set (attention 15..27, MLP 16..28, every other layer), and for other depths
    (Qwen2.5-Coder-1.5B's 28 layers) one inside the model's upper half that skips at most one sub-layer
    of a layer."""
    assert hand_made_set(30) == ([15, 17, 19, 21, 23, 25, 27], [16, 18, 20, 22, 24, 26, 28])
    for num_layers in range(2, 81):
        attention, mlp = hand_made_set(num_layers)
        assert all(num_layers // 2 <= i < num_layers - 1 for i in attention + mlp), num_layers
        assert not set(attention) & set(mlp) and abs(len(attention) - len(mlp)) <= 1, num_layers


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "object of entries"),
        ('{"m": {"attention": [1], "mlp": "2"}}', "'mlp' as a list"),
        ('{"m": {"attention": [-1], "mlp": []}}', "'attention' as a list"),
        ('{"m": [1, 2]}', "'attention' as a list"),
    ],
)
def test_corrupt_file_is_named(tmp_path, content, message):
    path = tmp_path / "skip_layers.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_skip_layers(path)


def test_missing_file_unknown_key_and_out_of_range(tmp_path):
    with pytest.raises(FileNotFoundError, match="no skip-layer file"):
        read_skip_layers(tmp_path / "absent.json")
    path = tmp_path / "skip_layers.json"
    save_skip_layers("tiny", [1], [3], path)
    with pytest.raises(KeyError, match="no entry 'other'.*'tiny'"):
        load_draft("other", path)
    save_skip_layers("deep", [1, 39], [], path)
    with pytest.raises(ValueError, match=r"'deep': attention skip layers \[39\] are not layer indices of a 4-layer model"):
        apply_skip_layers(tiny_llama(), "deep", path)


def test_save_keeps_other_entries_and_apply_sets_the_model(tmp_path):
    path = tmp_path / "skip_layers.json"
    save_skip_layers("a", [2, 0], [1], path, objective="predicted", score=1.2)
    save_skip_layers("b", [3], [], path)
    entries = read_skip_layers(path)
    assert entries["a"] == {"attention": [0, 2], "mlp": [1], "objective": "predicted", "score": 1.2}
    model = tiny_llama()
    assert apply_skip_layers(model, "a", path) == ssd.Draft.skipping([0, 2], [1])
    assert model.get_skip_layers() == ([0, 2], [1])


def test_failed_write_leaves_the_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "skip_layers.json"
    save_skip_layers("a", [1], [2], path)
    before = path.read_text()

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)  # fails after part of the new file is written
    with pytest.raises(OSError, match="No space"):
        save_skip_layers("b", [3], [4], path)
    assert path.read_text() == before
    assert os.listdir(tmp_path) == ["skip_layers.json"], "no temporary file left behind"


def test_save_refuses_to_overwrite_a_corrupt_file(tmp_path):
    path = tmp_path / "skip_layers.json"
    path.write_text("{broken")
    with pytest.raises(ValueError, match="not valid JSON"):
        save_skip_layers("a", [1], [2], path)
    assert path.read_text() == "{broken"


def test_jsonl_log_survives_a_torn_last_line(tmp_path):
    path = tmp_path / "log.jsonl"
    append_jsonl(path, {"i": 0})
    append_jsonl(path, {"i": 1})
    with open(path, "a") as f:
        f.write('{"i": 2, "tar')  # a crash mid-write
    assert read_jsonl(path, log=True) == [{"i": 0}, {"i": 1}]
    with pytest.raises(ValueError, match="line 3: not valid JSON"):
        read_jsonl(path)  # not a log: a torn line is an error
    append_jsonl(path, {"i": 3})  # the torn line is cut off, never left inside the file
    assert read_jsonl(path, log=True) == read_jsonl(path) == [{"i": 0}, {"i": 1}, {"i": 3}]
    with open(path, "a") as f:
        f.write('{"i": 4}')  # whole, but its newline never written: torn all the same
    assert read_jsonl(path, log=True) == [{"i": 0}, {"i": 1}, {"i": 3}]
    append_jsonl(path, {"i": 5})
    assert path.read_text() == '{"i": 0}\n{"i": 1}\n{"i": 3}\n{"i": 5}\n'
    path.write_text('{"i": 0}\n{bad\n{"i": 2}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_jsonl(path, log=True)
    assert read_jsonl(tmp_path / "none.jsonl", log=True) == []
    with pytest.raises(FileNotFoundError, match="none.jsonl"):
        read_jsonl(tmp_path / "none.jsonl")


@pytest.mark.parametrize("key, attention, mlp, metadata, error, message", [
    (3, [1], [2], {}, ValueError, "key must be a non-empty string, got 3"),
    ("", [1], [2], {}, ValueError, "key must be a non-empty string, got ''"),
    ("b", "1", [2], {}, ValueError, "attention skip layers must be a collection of layer indices, got '1'"),
    ("b", [-1], [2], {}, ValueError, r"attention skip layers \[-1\] are not layer indices \(integers >= 0\)"),
    ("b", [1], [2.5], {}, ValueError, r"mlp skip layers \[2.5\] are not layer indices"),
    ("b", [1], [2], {"draft_precision": "int3"}, ValueError, "unknown draft precision 'int3'"),
    ("b", [1], [2], {"note": object()}, ValueError, "entry 'b': metadata must be JSON values"),
])
def test_a_bad_entry_is_refused_and_the_file_kept(tmp_path, key, attention, mlp, metadata, error, message):
    """Refused before writing: the file still reads, with the entries it had (a bad entry once saved would
    have made the whole file unreadable)."""
    path = tmp_path / "skip_layers.json"
    save_skip_layers("a", [1], [2], path)
    before = path.read_text()
    with pytest.raises(error, match=message):
        save_skip_layers(key, attention, mlp, path, **metadata)
    assert path.read_text() == before and list(read_skip_layers(path)) == ["a"]


def test_a_folder_is_not_a_skip_layer_file(tmp_path):
    with pytest.raises(IsADirectoryError, match=rf"{tmp_path} is a folder; name the skip-layer file in it"):
        save_skip_layers("a", [1], [2], tmp_path)
    with pytest.raises(IsADirectoryError, match="is a folder"):
        apply_skip_layers(tiny_llama(), "a", tmp_path)
    assert os.listdir(tmp_path) == []
