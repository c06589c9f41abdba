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
    from presto_cli.eval.embedders import mel_filterbank

    for f in (150.0, 4000.0):
        img = _decode_png(spectrogram_png(np.sin(2 * math.pi * f * t), SR, height=64))
        bright = img.astype(float).sum(axis=2).mean(axis=1)  # per row, top = highest frequency
        band = 63 - int(bright.argmax())  # mel band index, 0 = lowest
        centres = np.fft.rfftfreq(2048, 1 / SR)[mel_filterbank(SR, 2048, 64).argmax(axis=1)]
        assert abs(centres[band] - f) < 0.08 * f, (f, centres[band])


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


def _arpeggio(seed: int, seconds: float = 2.0) -> np.ndarray:
    """Plucked notes changing every 0.25 s (harmonic tones, decaying), a deterministic melody."""
    rng = np.random.default_rng(seed)
    n = int(0.25 * SR)
    t = np.arange(n) / SR
    notes = []
    for midi in rng.integers(48, 72, size=int(seconds / 0.25)):
        f = 440.0 * 2 ** ((midi - 69) / 12)
        notes.append(sum(0.2 / h * np.sin(2 * math.pi * h * f * t) for h in (1, 2, 3)) * np.exp(-6 * t))
    return np.concatenate(notes)


@pytest.fixture(scope="module")
def music_vs_drone(tmp_path_factory):
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from music_clips import comb_drone

    base = tmp_path_factory.mktemp("report_drone")
    for name in ("music", "drone"):
        (base / name).mkdir()
    for i in range(3):
        x = _arpeggio(i)
        write_audio(base / "music" / f"{i:02d}.wav", torch.from_numpy(x).float()[None], SR)
        write_audio(base / "drone" / f"{i:02d}.wav", torch.from_numpy(comb_drone(x, i)).float()[None], SR)
    out = base / "report.html"
    evaluate(EvalConfig(metrics=["fad"], gen=[str(base / "music"), str(base / "drone")], ref=str(base / "music"),
                        no_cache=True, report=str(out), report_rows=3))
    return out


def test_report_spectrograms_show_notes_changing_in_music_and_not_in_a_drone(music_vs_drone):
    """One PNG per clip beside its player, valid (decoded, CRCs checked), and its content follows
    the audio: columns (time) of a melody's spectrogram vary far more than a steady drone's."""
    out = music_vs_drone
    text = out.read_text()
    cells = re.findall(r'<audio controls preload="metadata" src="([^"]+)"></audio><img src="([^"]+)"', text)
    assert len(cells) == 6  # 3 rows x 2 systems, each player with its image next to it
    change = {}
    for audio, img in cells:
        pix = _decode_png((out.parent / img).read_bytes()).astype(np.float64).sum(axis=2)
        assert pix.shape[0] == 128 and pix.shape[1] > 50 and pix.std() > 0
        # mean over frequency rows of the spread over time
        change.setdefault(audio.split("/")[-1][:3], []).append(pix.std(axis=1).mean())
    music, drone = np.mean(change["s00"]), np.mean(change["s01"])
    assert music > 10 * drone, (music, drone)  # measured 70 vs 0.9
