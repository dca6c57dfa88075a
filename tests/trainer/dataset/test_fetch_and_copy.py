"""fetch against a local HTTP server (one connection dropped halfway), the parts, and copy."""
from __future__ import annotations

import hashlib
import io
import json
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import cli, write_config
from trainer.dataset.select import write_manifest


class Files:
    """Serves files with Range support; the first GET of each path is cut off halfway."""

    def __init__(self, files: dict[str, bytes], ranges: bool = True):
        self.files, self.ranges = files, ranges
        self.log: list[tuple[str, str | None, int]] = []
        cut: set[str] = set()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                data = outer.files.get(self.path)
                if data is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                rng = self.headers.get("Range")
                start = int(rng.split("=")[1].split("-")[0]) if rng and outer.ranges else 0
                body = data[start:]
                outer.log.append((self.path, rng, start))
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body)))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if self.path not in cut:  # the first time: half, then hang up
                    cut.add(self.path)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def mtat_parts(n_clips: int = 6) -> tuple[list[bytes], dict[str, bytes]]:
    """A zip of fake MP3 members cut in three, like mp3.zip.001..003."""
    members = {f"{i:x}/artist-album-0{i}-title-0-29.mp3": hashlib.sha256(str(i).encode()).digest() * 400
               for i in range(n_clips)}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    blob = buf.getvalue()
    third = len(blob) // 3
    return [blob[:third], blob[third:2 * third], blob[2 * third:]], members


@pytest.fixture
def served():
    servers = []

    def start(files, **kw):
        s = Files(files, **kw)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.close()


def fetch_config(tmp_path, server, annotations: bytes, clip_info: bytes, md5s=("", "")):
    return write_config(tmp_path, {"dataset": {
        "annotations_url": f"{server.url}/annotations_final.csv", "clip_info_url": f"{server.url}/clip_info_final.csv",
        "annotations_md5": md5s[0] or hashlib.md5(annotations).hexdigest(),
        "clip_info_md5": md5s[1] or hashlib.md5(clip_info).hexdigest()}})


def test_fetch_resumes_after_a_dropped_connection_then_joins_and_extracts(tmp_path, served):
    annotations, clip_info = b'"clip_id"\t"x"\r\n' * 5000, b'"clip_id"\t"mp3_path"\r\n' * 3000
    server = served({"/annotations_final.csv": annotations, "/clip_info_final.csv": clip_info})
    config = fetch_config(tmp_path, server, annotations, clip_info)
    mtat = tmp_path / "cache" / "mtat"
    mtat.mkdir(parents=True)
    parts, members = mtat_parts()
    for i, blob in enumerate(parts, start=1):
        (mtat / f"mp3.zip.00{i}").write_bytes(blob)
    r = cli("dataset", "fetch", "--config", str(config), "--no-progress")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (mtat / "annotations_final.csv").read_bytes() == annotations
    assert (mtat / "clip_info_final.csv").read_bytes() == clip_info
    resumed = [entry for entry in server.log if entry[1] is not None]
    assert len(resumed) == 2 and all(start > 0 for _, _, start in resumed)  # picked up where it broke off
    for name, data in members.items():
        assert (mtat / "audio" / name).read_bytes() == data
    assert "extracted 6 new files" in r.stdout
    again = cli("dataset", "fetch", "--config", str(config), "--no-progress")
    assert again.returncode == 0 and "extracted 0 new files" in again.stdout  # resumable, nothing redone


def test_a_server_without_ranges_starts_over_instead_of_appending(tmp_path, served):
    annotations, clip_info = b"A" * 300_000, b"B" * 1000
    server = served({"/annotations_final.csv": annotations, "/clip_info_final.csv": clip_info}, ranges=False)
    r = cli("dataset", "fetch", "--config", str(fetch_config(tmp_path, server, annotations, clip_info)),
            "--no-progress", "--metadata-only")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "cache" / "mtat" / "annotations_final.csv").read_bytes() == annotations


def test_wrong_checksum_and_missing_or_damaged_parts_are_named(tmp_path, served):
    annotations, clip_info = b"A" * 1000, b"B" * 1000
    server = served({"/annotations_final.csv": annotations, "/clip_info_final.csv": clip_info})
    bad = cli("dataset", "fetch", "--config", str(fetch_config(tmp_path, server, annotations, clip_info,
                                                               md5s=("0" * 32, ""))), "--no-progress")
    assert bad.returncode == 1 and "annotations_final.csv: MD5" in bad.stderr
    assert not (tmp_path / "cache" / "mtat" / "annotations_final.csv").exists()

    config = fetch_config(tmp_path, server, annotations, clip_info)
    mtat = tmp_path / "cache" / "mtat"
    parts, _ = mtat_parts()
    (mtat / "mp3.zip.001").write_bytes(parts[0])
    (mtat / "mp3.zip.003").write_bytes(parts[2])
    missing = cli("dataset", "fetch", "--config", str(config), "--no-progress")
    assert missing.returncode == 1 and "missing mp3.zip.002" in missing.stderr
    (mtat / "mp3.zip.002").write_bytes(parts[1][:-100])  # cut short
    damaged = cli("dataset", "fetch", "--config", str(config), "--no-progress")
    assert damaged.returncode == 1 and "mp3.zip" in damaged.stderr


def test_copy_verifies_resumes_and_reports(tmp_path):
    import numpy as np
    import soundfile as sf

    source = tmp_path / "audio"
    clips = []
    for i in range(5):
        path = f"{i:x}/artist-album-0{i}-title-0-29.mp3"
        (source / path).parent.mkdir(parents=True, exist_ok=True)
        if i != 3:  # clip 3 is missing from the source
            sf.write(source / path, np.zeros(16000 * 2, dtype=np.float32), 16000, format="MP3")
        clips.append({"clip_id": i, "mp3_path": path, "tags": [], "proxy_tags": [], "split": "train",
                      "description": "x"})
    config = write_config(tmp_path)
    write_manifest(tmp_path / "cache" / "manifest.jsonl", clips)
    r = cli("dataset", "copy", "--config", str(config), "--source", str(source), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "4 of 5 clips in place (4 copied now), 1 skipped" in r.stdout
    report = json.loads((tmp_path / "cache" / "clips" / "copy_report.json").read_text())
    assert [s["clip_id"] for s in report["skipped"]] == [3]
    assert report["audio_seconds"] == pytest.approx(4 * 2, rel=0.05)
    for c in clips:
        if c["clip_id"] != 3:
            dest = tmp_path / "cache" / "clips" / c["mp3_path"]
            assert dest.read_bytes() == (source / c["mp3_path"]).read_bytes()
    again = cli("dataset", "copy", "--config", str(config), "--source", str(source), "--no-progress")
    assert "(0 copied now)" in again.stdout  # resumed: nothing copied twice
    assert not list((tmp_path / "cache" / "clips").rglob("*.tmp"))


def test_copy_that_finds_no_clip_at_all_is_an_error(tmp_path):
    """A wrong --source once 'copied' 0 of N clips with exit 0."""
    clips = [{"clip_id": i, "mp3_path": f"{i:x}/a-b-0{i}-c-0-29.mp3", "tags": [], "proxy_tags": [], "split": "train",
              "description": "x"} for i in range(3)]
    config = write_config(tmp_path)
    write_manifest(tmp_path / "cache" / "manifest.jsonl", clips)
    r = cli("dataset", "copy", "--config", str(config), "--source", str(tmp_path / "wrong"), "--no-progress")
    assert r.returncode == 65 and "none of the manifest's 3 clips was found" in r.stderr, r.stderr
