"""Outputs that belong together are replaced together, inside a guard, or not at all."""

import contextlib

import pytest

from realfake.fileio import atomic_paths


def test_outputs_replace_together_inside_the_guard(tmp_path):
    finals = [tmp_path / "models" / "m.keras", tmp_path / "metrics" / "m.json"]
    for final in finals:
        final.parent.mkdir()
        final.write_text("old")
    seen = []

    @contextlib.contextmanager
    def guard():
        seen.append([f.read_text() for f in finals])  # nothing replaced yet when the guard starts
        yield
        seen.append([f.read_text() for f in finals])

    with atomic_paths(*finals, commit_guard=guard) as staged:
        for tmp in staged:
            tmp.write_text("new")
    assert seen == [["old", "old"], ["new", "new"]]
    assert not list(tmp_path.rglob(".*.tmp"))


def test_an_error_while_staging_replaces_nothing(tmp_path):
    finals = [tmp_path / "a.txt", tmp_path / "b.txt"]
    for final in finals:
        final.write_text("old")
    with pytest.raises(RuntimeError), atomic_paths(*finals) as staged:
        staged[0].write_text("new")
        raise RuntimeError("the second output could not be written")
    assert [f.read_text() for f in finals] == ["old", "old"]
    assert not list(tmp_path.rglob(".*.tmp"))
