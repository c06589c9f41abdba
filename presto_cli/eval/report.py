"""A self-contained HTML listening report for ``presto eval --report report.html``.

One row per prompt, one column per system (model or folder) with an audio player and a spectrogram
image side by side; the metric table; every condition the scores depend on. The audio is copied and
the spectrogram PNGs are written into ``<report>_files/`` next to the page and referenced relatively,
so the folder can be zipped or served as it is. No dependency beyond numpy: log-mel spectrograms are
drawn with a small PNG writer (zlib). The page's own script checks that every audio element loads and every
image decodes and writes the result into ``#status`` (used by the tests, handy when sharing).
"""
from __future__ import annotations

import html
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np

from presto_cli.errors import PrestoError

BROWSER_FORMATS = (".wav", ".flac", ".mp3", ".ogg")

# a perceptually ordered dark-to-bright colour ramp (viridis-like anchor points)
_RAMP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]],
                 dtype=np.float64)


# --------------------------------------------------------------------------------------------
# PNG


def png_bytes(rgb: np.ndarray) -> bytes:
    """Encode an ``[H, W, 3]`` uint8 image as PNG (8-bit RGB, no interlace, filter 0)."""
    img = np.ascontiguousarray(rgb, dtype=np.uint8)
    if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] < 1 or img.shape[1] < 1:
        raise ValueError(f"png_bytes wants [H, W, 3] uint8, got {img.shape}")
    h, w, _ = img.shape

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + img[y].tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 6))
            + chunk(b"IEND", b""))


def colourise(v: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to RGB uint8 along the colour ramp."""
    v = np.clip(np.nan_to_num(v), 0.0, 1.0) * (len(_RAMP) - 1)
    lo = np.floor(v).astype(int).clip(0, len(_RAMP) - 2)
    t = (v - lo)[..., None]
    return np.round(_RAMP[lo] * (1 - t) + _RAMP[lo + 1] * t).astype(np.uint8)


def spectrogram_png(audio: np.ndarray, sample_rate: int, height: int = 128, max_width: int = 480,
                    window_seconds: float = 0.128, floor_db: float = 80.0) -> bytes:
    """Log-mel power spectrogram (``height`` HTK-mel bands from 0 Hz to Nyquist, low frequencies at
    the bottom, the top ``floor_db`` dB shown) as PNG bytes.

    The FFT spans about 128 ms (2048 points at 16 kHz, hop a quarter of that): long enough to
    resolve partials 16 Hz apart, so a steady harmonic sound draws steady lines instead of the
    beating a short window shows, while notes of 1/8 s still separate; the mel axis gives bass and
    melody the rows a linear axis spends on the highest octave.
    """
    from presto_cli.dsp import mel_filterbank

    x = np.asarray(audio, dtype=np.float64).reshape(-1)
    n_fft = 1 << max(6, int(round(np.log2(window_seconds * sample_rate))))
    hop = n_fft // 4
    if x.shape[0] < n_fft:
        x = np.pad(x, (0, n_fft - x.shape[0]))
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop]
    power = np.abs(np.fft.rfft(frames * np.hanning(n_fft + 1)[:-1], axis=-1)) ** 2  # [time, freq]
    db = 10 * np.log10(power @ mel_filterbank(sample_rate, n_fft, height).T + 1e-12).T  # [mel, time]
    db = (db - db.max() + floor_db) / floor_db  # [0, 1] over the top `floor_db` dB
    if db.shape[1] > max_width:
        cols = np.array_split(np.arange(db.shape[1]), max_width)
        db = np.stack([db[:, c].mean(axis=1) for c in cols], axis=1)
    return png_bytes(colourise(db[::-1]))


# --------------------------------------------------------------------------------------------
# HTML

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:1.4em} h2{font-size:1.1em;margin-top:1.6em}
table{border-collapse:collapse;margin:8px 0}
td,th{border:1px solid #ddd;padding:4px 8px;vertical-align:top;text-align:left}
th{background:#f0f0f0} td.num{text-align:right;font-variant-numeric:tabular-nums}
.clip{display:flex;flex-direction:column;gap:4px;min-width:260px}
.clip img{width:260px;height:96px;image-rendering:pixelated;border:1px solid #ccc}
.prompt{max-width:280px} .meta{color:#666;font-size:.85em}
#status{font-family:monospace;color:#666;font-size:.8em}
"""

_SCRIPT = """
(function(){
  var errors = [];
  window.addEventListener('error', function(e){
    var t = e.target;
    if (t && t !== window && (t.tagName === 'AUDIO' || t.tagName === 'IMG' || t.tagName === 'SOURCE')) {
      errors.push('failed to load ' + (t.currentSrc || t.src));
    } else { errors.push(String(e.message || 'error')); }
  }, true);
  var origError = console.error;
  console.error = function(){ errors.push(Array.prototype.join.call(arguments, ' ')); origError.apply(console, arguments); };
  function ready(a){
    return new Promise(function(res){
      if (a.readyState >= 1 || a.error) { res(); return; }
      a.addEventListener('loadedmetadata', res, {once: true});
      a.addEventListener('error', res, {once: true});
      setTimeout(res, 8000);
    });
  }
  window.addEventListener('load', function(){
    var audios = Array.prototype.slice.call(document.querySelectorAll('audio'));
    Promise.all(audios.map(ready)).then(function(){
      var badAudio = audios.filter(function(a){ return !(a.readyState >= 1 && a.duration > 0); });
      var imgs = Array.prototype.slice.call(document.images);
      var badImg = imgs.filter(function(i){ return !(i.complete && i.naturalWidth > 0); });
      var s = {audio: audios.length, audio_ok: audios.length - badAudio.length,
               images: imgs.length, images_ok: imgs.length - badImg.length,
               bad: badAudio.map(function(a){ return a.getAttribute('src'); })
                    .concat(badImg.map(function(i){ return i.getAttribute('src'); })),
               errors: errors};
      var el = document.getElementById('status');
      el.textContent = JSON.stringify(s);
      el.setAttribute('data-state', (badAudio.length || badImg.length || errors.length) ? 'fail' : 'ok');
    });
  });
})();
"""


def _e(x) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return _e(v)


def _copy_clip(src: Path, dest_dir: Path, stem: str) -> tuple[str, str, float]:
    """Copy (or convert) one clip next to the report and draw its spectrogram.

    Returns (audio file name, png file name, duration seconds)."""
    from presto_cli.audio import audio_info, load_audio, write_audio

    info = audio_info(src)
    sr = int(info["sample_rate"])
    audio = load_audio(src, sr)[0].numpy()
    if src.suffix.lower() in BROWSER_FORMATS:
        name = f"{stem}{src.suffix.lower()}"
        shutil.copyfile(src, dest_dir / name)
    else:
        name = f"{stem}.wav"
        write_audio(dest_dir / name, audio, sr)
    png = f"{stem}.png"
    from presto_cli.io import atomic_write_bytes

    atomic_write_bytes(dest_dir / png, spectrogram_png(audio, sr))
    return name, png, float(info["duration"])


def render_html(doc: dict, grid: list[list[dict | None]], prompts: list[str | None],
                files_dir_name: str) -> str:
    from presto_cli.eval.evaluate import SCORE_COLUMNS, score_rows

    systems = doc["systems"]
    emb = doc.get("embedder", {})
    ref = doc.get("reference") or {}
    cols = [(k, t) for k, t in SCORE_COLUMNS if any(k in s["scores"] for s in systems)]
    out = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
           "<title>presto listening report</title>", f"<style>{_CSS}</style>",
           f"<script>{_SCRIPT}</script></head><body>",
           "<h1>presto listening report</h1>",
           f"<p class=\"meta\">presto {_e(doc.get('presto_version'))}, {_e(doc.get('created'))}</p>"]
    # metrics
    out.append("<h2>Scores</h2><table><tr><th>system</th><th>N</th><th>steps</th><th>sampler</th><th>NFE</th>")
    out += [f"<th>{_e(t)}</th>" for _, t in cols] + ["</tr>"]
    for s in score_rows(doc):
        out.append(f"<tr><td>{_e(s['name'])}</td><td class=\"num\">{s['n']}</td>"
                   f"<td class=\"num\">{_fmt(s.get('steps'))}</td><td>{_fmt(s.get('sampler'))}</td>"
                   f"<td class=\"num\">{_fmt(s.get('nfe'))}</td>")
        out += [f"<td class=\"num\">{_fmt(s['scores'].get(k))}</td>" for k, _ in cols]
        out.append("</tr>")
    out.append("</table>")
    # conditions
    out.append("<h2>Conditions</h2><table>")
    cond = {"embedder": f"{emb.get('name')} ({emb.get('version')})",
            "embedder checkpoint": emb.get("checkpoint"), "embedder windowing": emb.get("windowing"),
            "reference": f"{ref.get('path')} ({ref.get('kind')}, N={ref.get('n')})" if ref else None,
            "reference clip seconds": json.dumps(ref.get("clip_seconds")) if ref.get("clip_seconds") else None,
            "prompts": doc.get("prompts"), "metrics": ", ".join(doc.get("metrics", []))}
    cond.update({k: v for k, v in (doc.get("conditions") or {}).items()})
    for s in systems:
        if "mmd_bandwidth" in s["scores"]:
            cond["MMD RBF σ used"] = f"{s['scores']['mmd_bandwidth']:.6g}"
            break
    for k, v in cond.items():
        if v is not None and v != "":
            out.append(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>")
    for s in systems:
        if s.get("skipped"):
            out.append(f"<tr><th>skipped in {_e(s['name'])}</th><td>"
                       + "<br>".join(_e(f"{x['file']}: {x['error']}") for x in s["skipped"]) + "</td></tr>")
    out.append("</table>")
    # clips
    out.append("<h2>Clips</h2><table><tr><th>#</th><th>prompt</th>")
    out += [f"<th>{_e(s['name'])}</th>" for s in systems] + ["</tr>"]
    for i, row in enumerate(grid):
        out.append(f"<tr><td class=\"num\">{i}</td><td class=\"prompt\">{_e(prompts[i] or '')}</td>")
        for cell in row:
            if cell is None:
                out.append("<td>-</td>")
                continue
            src = f"{files_dir_name}/{cell['audio']}"
            img = f"{files_dir_name}/{cell['png']}"
            out.append(f"<td><div class=\"clip\"><audio controls preload=\"metadata\" src=\"{_e(src)}\"></audio>"
                       f"<img src=\"{_e(img)}\" alt=\"spectrogram\">"
                       f"<span class=\"meta\">seed {_e(cell.get('seed'))}, {cell['duration']:.2f} s</span>"
                       "</div></td>")
        out.append("</tr>")
    out.append("</table>")
    out.append("<p id=\"status\" data-state=\"pending\">checking…</p></body></html>")
    return "\n".join(out)


def write_report(doc: dict, path: str | Path, rows: int = 12) -> Path:
    """Write the listening report for a results document from :func:`evaluate`."""
    from presto_cli.io import atomic_write_text

    path = Path(path)
    if path.suffix.lower() not in (".html", ".htm"):
        raise PrestoError(f"the report must be an .html file, got {path.name}")
    files_dir = path.parent / f"{path.stem}_files"
    files_dir.mkdir(parents=True, exist_ok=True)
    systems = doc["systems"]
    n_rows = min(max((len(s.get("clips", [])) for s in systems), default=0), max(0, rows))
    grid: list[list[dict | None]] = []
    prompts: list[str | None] = []
    for i in range(n_rows):
        row: list[dict | None] = []
        prompt = None
        for j, s in enumerate(systems):
            clips = s.get("clips", [])
            if i >= len(clips) or s.get("clips_deleted"):
                row.append(None)
                continue
            c = clips[i]
            prompt = prompt or c.get("prompt")
            try:
                a, p, dur = _copy_clip(Path(c["file"]), files_dir, f"s{j:02d}_{i:04d}")
            except PrestoError:
                row.append(None)
                continue
            row.append({"audio": a, "png": p, "duration": dur, "seed": c.get("seed")})
        grid.append(row)
        prompts.append(prompt)
    atomic_write_text(path, render_html(doc, grid, prompts, files_dir.name))
    return path
