"""The HTML listening report: PNG writer known answers, and the page in headless Chromium
(every audio element loads, every image decodes, no script errors)."""
from __future__ import annotations

import json
import math
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from presto_cli.audio import write_audio
from presto_cli.eval.evaluate import EvalConfig, evaluate
from presto_cli.eval.report import colourise, png_bytes, spectrogram_png, write_report

SR = 16000


def _decode_png(data: bytes) -> np.ndarray:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, w, h = 8, b"", 0, 0
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        tag, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
        assert crc == zlib.crc32(tag + body) & 0xFFFFFFFF
        if tag == b"IHDR":
            w, h, depth, ctype = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and ctype == 2
        elif tag == b"IDAT":
            idat += body
        pos += 12 + n
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(h, 1 + 3 * w)
    assert (raw[:, 0] == 0).all()
    return raw[:, 1:].reshape(h, w, 3)


def test_png_roundtrip_and_colour_ramp():
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 7
    assert np.array_equal(_decode_png(png_bytes(img)), img)
    c = colourise(np.array([0.0, 1.0, 0.5]))
    assert c[0].tolist() == [68, 1, 84] and c[1].tolist() == [253, 231, 37] and c[2].tolist() == [33, 145, 140]


def test_spectrogram_puts_a_tone_at_its_frequency():
    t = np.arange(SR) / SR
    img = _decode_png(spectrogram_png(np.sin(2 * math.pi * 4000 * t), SR, height=64))
    bright = img.astype(float).sum(axis=2).mean(axis=1)  # per row, top = highest frequency
    row = int(bright.argmax())
    assert abs((63 - row) / 64 * (SR / 2) - 4000) < 300  # 4 kHz is half-way up an 8 kHz axis


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


def _page_status(html_path: Path, tmp: Path) -> dict:
    exe = _chromium()
    if exe is None:
        pytest.skip("headless Chromium is not installed (apt-get install chromium)")
    ud = tmp / f"chrome-profile-{html_path.stem}"
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={ud}", "--allow-file-access-from-files", "--autoplay-policy=no-user-gesture-required",
           "--virtual-time-budget=15000", "--dump-dom", html_path.resolve().as_uri()]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    m = re.search(r'<p id="status" data-state="(\w+)">(.*?)</p>', r.stdout, re.S)
    assert m, f"no status in the dumped DOM; stderr:\n{r.stderr[-2000:]}"
    import html

    return {"state": m.group(1), **json.loads(html.unescape(m.group(2)))}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    base = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(0)
    for name, lo in (("ref", 300), ("model_a", 320), ("model_b", 2000)):
        d = base / name
        d.mkdir()
        for i in range(8):
            f = d / f"{i:02d}.wav" if name != "model_b" else d / f"{i:02d}.flac"
            tt = torch.arange(int(0.6 * SR)) / SR
            write_audio(f, (0.3 * torch.sin(2 * math.pi * (lo + 100 * rng.random()) * tt))[None], SR)
            (f.parent / (f.name + ".json")).write_text(json.dumps({"prompt": f"tone number {i} <&>", "seed": i}))
    out = base / "site" / "report.html"
    doc = evaluate(EvalConfig(metrics=["fad", "mmd", "prdc"], gen=[str(base / "model_a"), str(base / "model_b")],
                              ref=str(base / "ref"), no_cache=True, report=str(out), report_rows=4, k=3))
    return base, out, doc


def test_report_files_and_content(report):
    base, out, doc = report
    text = out.read_text()
    files = sorted(p.name for p in (out.parent / "report_files").iterdir())
    assert len([f for f in files if f.endswith(".png")]) == 8  # 4 rows x 2 systems
    assert "s01_0000.flac" in files and "s00_0003.wav" in files
    assert "tone number 0 &lt;&amp;&gt;" in text  # prompts are escaped
    assert "model_a" in text and "model_b" in text and "FAD" in text
    assert doc["embedder"]["version"] in text and str(base / "ref") in text
    assert 'src="report_files/' in text  # relative references only
    assert str(base) + "/site" not in text.split("<h2>Clips</h2>")[1]


def test_report_opens_in_headless_chromium(report, tmp_path):
    _, out, _ = report
    st = _page_status(out, tmp_path)
    assert st["state"] == "ok", st
    assert st["audio"] == 8 and st["audio_ok"] == 8
    assert st["images"] == 8 and st["images_ok"] == 8 and st["errors"] == []


def test_report_check_fails_on_a_missing_file(report, tmp_path):
    """The page's own check must be able to fail: remove one clip and one image."""
    _, out, _ = report
    broken = tmp_path / "broken"
    shutil.copytree(out.parent, broken)
    (broken / "report_files" / "s00_0001.wav").unlink()
    (broken / "report_files" / "s01_0002.png").unlink()
    st = _page_status(broken / "report.html", tmp_path)
    assert st["state"] == "fail"
    assert st["audio_ok"] == 7 and st["images_ok"] == 7
    assert any("s00_0001.wav" in b for b in st["bad"]) and any("s01_0002.png" in b for b in st["bad"])


def test_write_report_refuses_non_html(tmp_path):
    from presto_cli.errors import PrestoError

    with pytest.raises(PrestoError):
        write_report({"systems": []}, tmp_path / "r.txt")
