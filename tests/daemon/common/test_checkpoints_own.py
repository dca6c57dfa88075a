"""The layout's record of what this disk's trainer wrote, and setting files aside without replacing any."""
from __future__ import annotations

import json

import pytest

from daemon.common import checkpoints as layout


def commit(d, step: int, data: bytes) -> layout.Marker:
    path = layout.data_path(d, step)
    path.write_bytes(data)
    layout.commit(d, step, {"step": step, "file": path.name, "bytes": len(data), "sha256": layout.sha256_file(path)})
    return layout.read_marker(layout.marker_path(d, step))


@pytest.mark.parametrize("garbage", [b"{not json", b"[" * 100_000 + b"]" * 100_000, b'{"10": 7}', b"x" * (2 << 20),
                                     b"\xff\xfe"])
def test_an_unreadable_record_trusts_nothing_and_is_written_again_whole(tmp_path, garbage):
    m = commit(tmp_path, 10, b"ten")
    (tmp_path / layout.OWN).write_bytes(garbage)
    assert not layout.is_own(m)
    n = commit(tmp_path, 20, b"twenty")
    assert layout.is_own(n) and json.loads((tmp_path / layout.OWN).read_text()) == {"20": n.meta["sha256"]}


def test_the_same_step_with_other_bytes_is_not_ours(tmp_path):
    m = commit(tmp_path, 10, b"ten")
    assert layout.is_own(m)
    m.path.write_bytes(b"planted")  # as a restore writes it: bytes and marker, no record
    meta = dict(m.meta, bytes=7, sha256=layout.sha256_file(m.path))
    m.marker.write_text(json.dumps(meta))
    assert not layout.is_own(layout.read_marker(m.marker))


def test_set_aside_numbers_a_pair_together_and_replaces_nothing(tmp_path):
    dest = tmp_path / "corrupt"
    dest.mkdir()
    (dest / "step_00000020.json").write_text("first")  # only the marker's name is taken
    commit(tmp_path, 20, b"second")
    layout.set_aside(dest, layout.marker_path(tmp_path, 20), layout.data_path(tmp_path, 20))
    assert sorted(p.name for p in dest.iterdir()) == ["step_00000020.1.json", "step_00000020.1.pt",
                                                      "step_00000020.json"]
    assert (dest / "step_00000020.json").read_text() == "first"
    assert (dest / "step_00000020.1.pt").read_bytes() == b"second"
