"""Audio (and text) embedders for evaluation, with an on-disk embedding cache (METHOD.md §6).

Four embedders share one interface:

* ``mel``: fixed log-mel statistics (mean and standard deviation of each log-mel band over time).
  No weights, no downloads, deterministic: a sanity metric and the embedder of the tests.
* ``music`` (reported as ``music-features``): weight-free chroma, tonnetz, chroma change over
  0.25/0.5 s, spectral contrast and onset/rhythm statistics per 2 s window (hop 1 s), averaged
  over windows, fixed scales (:mod:`presto_cli.eval.music_features`). It hears whether notes are
  there and change, which the envelope-only statistics cannot.
* ``clap`` / ``clap-audio``: LAION-CLAP (the paper's FAD space), through the ``laion_clap`` package
  and a local checkpoint. LAION-CLAP crops long audio at random; we instead cut each clip into
  deterministic 10 s windows (evenly spaced, covering the clip; a clip shorter than 10 s is
  repeat-padded as LAION-CLAP itself does), embed each window and average (then L2-normalise).
* ``presto-clap``: the in-domain contrastive model trained by ``presto`` (stage ``clap``,
  :mod:`presto_cli.eval.clap_model`); always reported as "presto-clap", never as LAION-CLAP.

Embeddings of files are cached under ``~/.cache/presto/embeddings`` (or a given folder), keyed by
the embedder's ``version`` string and the file's resolved path, mtime and size, so changing the
embedder, its checkpoint or the file invalidates the entry (STYLE.md: caches keyed by everything
that changes them).
"""
from __future__ import annotations

import hashlib
import io
import math
import os
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch

from presto_cli.dsp import mel_filterbank  # noqa: F401  (E.mel_filterbank)
from presto_cli.errors import PrestoError

AudioItem = Union[torch.Tensor, str, Path]

LOUD_PEAK = 4.0  # a file peaking above this (+12 dB over full scale) is surely mis-scaled: warned about

EMBEDDERS = ("mel", "music", "clap", "clap-audio", "presto-clap")
EMBEDDER_ALIASES = ("music-features", "laion-clap", "laion-clap-audio")  # accepted, not listed
from presto_cli.text.encoders import CLAP_INSTALL_HINT, import_laion_clap as _import_laion_clap  # noqa: E402,F401
CLAP_CKPT_HINT = ("download a LAION-CLAP checkpoint (music: music_audioset_epoch_15_esc_90.14.pt, "
                  "audio: 630k-audioset-best.pt, from https://huggingface.co/lukewys/laion_clap) "
                  "and pass --clap-ckpt PATH or set PRESTO_CLAP_CKPT")


# --------------------------------------------------------------------------------------------
# Cache


def default_cache_dir() -> Path:
    root = os.environ.get("PRESTO_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "presto")
    return Path(root) / "embeddings"


class EmbeddingCache:
    """``.npy`` files keyed by sha256(version, resolved path, mtime_ns, size)."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()
        self.hits = 0
        self.misses = 0

    def key(self, version: str, path: str | Path) -> str | None:
        p = Path(path)
        try:
            st = p.stat()
            rp = str(p.resolve())
        except OSError:
            return None
        text = f"{version}\n{rp}\n{st.st_mtime_ns}\n{st.st_size}"
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def _file(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npy"

    def get(self, version: str, path: str | Path) -> np.ndarray | None:
        key = self.key(version, path)
        if key is None:
            return None
        f = self._file(key)
        if not f.is_file():
            self.misses += 1
            return None
        try:
            arr = np.load(f, allow_pickle=False)
        except Exception:  # a damaged cache entry is recomputed
            self.misses += 1
            return None
        self.hits += 1
        return arr

    def put(self, version: str, path: str | Path, emb: np.ndarray) -> None:
        from presto_cli.io import atomic_write_bytes

        key = self.key(version, path)
        if key is None:
            return
        buf = io.BytesIO()
        np.save(buf, np.asarray(emb, dtype=np.float32), allow_pickle=False)
        try:
            atomic_write_bytes(self._file(key), buf.getvalue())
        except OSError:  # a read-only cache must not stop an evaluation
            pass


# --------------------------------------------------------------------------------------------
# Shared signal helpers


def window_starts(n_samples: int, window: int) -> list[int]:
    """Start offsets of deterministic windows covering ``n_samples``: ``ceil(T / W)`` windows,
    evenly spaced from 0 to ``T - W`` (overlapping a little where T is not a multiple of W)."""
    if n_samples <= window:
        return [0]
    n = math.ceil(n_samples / window)
    return [int(round(i * (n_samples - window) / (n - 1))) for i in range(n)]


def repeat_pad(x: np.ndarray, length: int) -> np.ndarray:
    """Tile a short clip to ``length`` samples (LAION-CLAP's ``repeatpad``: whole repeats, then zeros)."""
    if x.shape[-1] >= length:
        return x[..., :length]
    if x.shape[-1] == 0:
        return np.zeros(length, dtype=x.dtype)
    reps = length // x.shape[-1]
    y = np.tile(x, reps)
    return np.pad(y, (0, length - y.shape[-1]))


def windowed_mean(wavs: list[torch.Tensor], window_seconds: float, sample_rate: int,
                  embed_windows) -> np.ndarray:
    """The CLAP windowing (LAION-CLAP and presto-clap alike): each clip ``[1, T]`` cut into the
    deterministic windows of :func:`window_starts` (a short clip repeat-padded), every window
    embedded by ``embed_windows([N, W] float32) -> [N, D]``, each clip's windows averaged, then
    L2-normalised."""
    W = max(1, int(round(window_seconds * sample_rate)))
    windows, owner = [], []
    for j, w in enumerate(wavs):
        x = w[0].numpy().astype(np.float32)
        for s in window_starts(x.shape[0], W):
            windows.append(repeat_pad(x[s:s + W], W))
            owner.append(j)
    emb = np.asarray(embed_windows(np.stack(windows)), dtype=np.float64)
    owner = np.asarray(owner)
    return np.stack([_l2n(emb[owner == j].mean(axis=0)) for j in range(len(wavs))])


def _l2n(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


# --------------------------------------------------------------------------------------------
# Interface


class Embedder:
    """Maps audio (and, for CLAP-like models, text) to fixed-size vectors.

    ``name``: what reports call it; ``version``: everything that changes the vectors (keys the
    cache); ``sample_rate``: audio is loaded/resampled to this; ``window_seconds``: the analysis
    window (None: the whole clip); ``dim``: the embedding size.
    """

    name: str = ""
    sample_rate: int = 16000
    window_seconds: float | None = None
    dim: int = 0
    has_text: bool = False

    @property
    def version(self) -> str:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"name": self.name, "version": self.version, "sample_rate": self.sample_rate,
                "window_seconds": self.window_seconds, "dim": self.dim}

    # subclasses implement this on mono float32 tensors [1, T] at self.sample_rate
    def _embed_waveforms(self, wavs: list[torch.Tensor]) -> np.ndarray:
        raise NotImplementedError

    def embed_text(self, texts: list[str]) -> np.ndarray:
        raise PrestoError(f"the {self.name} embedder has no text tower",
                          "CLAP score and adherence need --embedder clap or presto-clap")

    def embed_audio(self, items: Sequence[AudioItem], cache: EmbeddingCache | None = None
                    ) -> np.ndarray:
        """Embed tensors ``[1, T]`` (at ``sample_rate``) or audio files; raises on a bad file."""
        emb, _, errors = self.embed_files(items, cache)
        if errors:
            raise PrestoError(errors[0][1])
        return emb

    def embed_files(self, items: Sequence[AudioItem], cache: EmbeddingCache | None = None,
                    batch: int = 8) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
        """Like :meth:`embed_audio`, but skips unreadable files.

        Returns ``(embeddings [n_ok, D], indices of the items embedded, [(file, error), ...])``.
        """
        from presto_cli.audio import load_audio

        out: dict[int, np.ndarray] = {}
        errors: list[tuple[str, str]] = []
        self.loud: list[tuple[str, float]] = []  # (file, peak) of files far above full scale
        pending: list[tuple[int, torch.Tensor, AudioItem]] = []

        def flush() -> None:
            if not pending:
                return
            vecs = np.asarray(self._embed_waveforms([w for _, w, _ in pending]), dtype=np.float64)
            for (i, _, item), v in zip(pending, vecs):
                out[i] = v
                if cache is not None and not isinstance(item, torch.Tensor):
                    cache.put(self.version, item, v)
            pending.clear()

        for i, item in enumerate(items):
            if isinstance(item, torch.Tensor):
                w = item.detach().float().cpu()
                if w.ndim == 1:
                    w = w[None]
                if w.ndim != 2 or w.shape[0] != 1 or w.shape[-1] == 0:
                    raise PrestoError(f"audio to embed must be [1, T] with T > 0, got {tuple(w.shape)}")
                if not torch.isfinite(w).all():
                    errors.append((f"<tensor {i}>", f"clip {i} contains NaN or Inf samples"))
                    continue
                pending.append((i, w, item))
            else:
                hit = cache.get(self.version, item) if cache is not None else None
                if hit is not None and hit.shape == (self.dim,):
                    out[i] = hit.astype(np.float64)
                    continue
                try:
                    w = load_audio(item, self.sample_rate)
                    if not torch.isfinite(w).all():
                        raise PrestoError(f"audio file {item} contains NaN or Inf samples")
                    peak = float(w.abs().max()) if w.numel() else 0.0
                    if peak > LOUD_PEAK:
                        self.loud.append((str(item), peak))
                except PrestoError as e:
                    errors.append((str(item), str(e)))
                    continue
                pending.append((i, w, item))
            if len(pending) >= batch:
                flush()
        flush()
        idx = sorted(out)
        emb = np.stack([out[i] for i in idx]) if idx else np.zeros((0, self.dim))
        return emb, idx, errors


# --------------------------------------------------------------------------------------------
# Log-mel statistics


class MelEmbedder(Embedder):
    """Mean and std over time of 10·log10 mel power (float64 numpy; no weights; deterministic)."""

    name = "mel"
    has_text = False

    def __init__(self, sample_rate: int = 16000, n_fft: int = 1024, hop: int = 256,
                 n_mels: int = 64):
        self.sample_rate, self.n_fft, self.hop, self.n_mels = sample_rate, n_fft, hop, n_mels
        self.dim = 2 * n_mels
        self.window_seconds = None
        self._fb = mel_filterbank(sample_rate, n_fft, n_mels)
        self._win = np.hanning(n_fft + 1)[:-1]  # periodic Hann

    @property
    def version(self) -> str:
        return f"mel-v1-sr{self.sample_rate}-fft{self.n_fft}-hop{self.hop}-mels{self.n_mels}"

    def log_mel(self, x: np.ndarray) -> np.ndarray:
        """``[frames, n_mels]`` log-mel power of a 1-D signal (centred frames, zero padding)."""
        x = np.asarray(x, dtype=np.float64)
        pad = self.n_fft // 2
        x = np.pad(x, (pad, pad))
        if x.shape[0] < self.n_fft:
            x = np.pad(x, (0, self.n_fft - x.shape[0]))
        frames = np.lib.stride_tricks.sliding_window_view(x, self.n_fft)[::self.hop]
        spec = np.abs(np.fft.rfft(frames * self._win, axis=-1)) ** 2
        return 10.0 * np.log10(spec @ self._fb.T + 1e-10)

    def _embed_waveforms(self, wavs: list[torch.Tensor]) -> np.ndarray:
        rows = []
        for w in wavs:
            lm = self.log_mel(w[0].numpy())
            rows.append(np.concatenate([lm.mean(axis=0), lm.std(axis=0)]))
        return np.stack(rows)


# --------------------------------------------------------------------------------------------
# Music features (chroma, tonnetz, pitch change, contrast, onsets)


class MusicFeatureEmbedder(Embedder):
    """Weight-free music features (:func:`presto_cli.eval.music_features.music_features`).

    ``groups`` picks feature groups (default: all); the tests use a pitch-blind subset
    (contrast, onset) to show that the pitch groups are what hears the notes.
    """

    has_text = False

    def __init__(self, groups: Sequence[str] | None = None):
        from presto_cli.eval import music_features as F

        self._F = F
        groups = tuple(groups) if groups else tuple(F.GROUPS)
        bad = [g for g in groups if g not in F.GROUPS]
        if bad or len(set(groups)) != len(groups):
            raise PrestoError(f"unknown or repeated music feature group(s): {', '.join(bad) or groups}",
                              f"choose from {', '.join(F.GROUPS)}")
        self.groups = groups
        self.name = "music-features" if groups == tuple(F.GROUPS) else "music-features[" + ",".join(groups) + "]"
        self.sample_rate = F.SAMPLE_RATE
        self.window_seconds = F.WINDOW_SECONDS
        self.dim = sum(F.GROUPS[g] for g in groups)

    @property
    def version(self) -> str:
        F = self._F
        scales = ";".join(f"{g}={','.join(f'{v:g}' for v in F.GROUP_SCALES[g])}" for g in self.groups)
        return (f"music-v1-sr{F.SAMPLE_RATE}-fft{F.N_FFT}-hop{F.HOP}-win{F.WINDOW_SECONDS:g}s"
                f"-hop{F.WINDOW_HOP_SECONDS:g}s-chroma{F.CHROMA_FMIN:g}-{F.CHROMA_FMAX:g}"
                f"-lags{','.join(f'{v:g}' for v in F.CHANGE_LAGS_SECONDS)}-groups[{scales}]")

    def describe(self) -> dict:
        d = super().describe()
        d.update({"groups": list(self.groups),
                  "windowing": f"deterministic {self._F.WINDOW_SECONDS:g} s windows, hop "
                               f"{self._F.WINDOW_HOP_SECONDS:g} s, averaged; fixed per-group scales"})
        return d

    def _embed_waveforms(self, wavs: list[torch.Tensor]) -> np.ndarray:
        return np.stack([self._F.music_features(w[0].double().numpy(), self.groups) for w in wavs])


# --------------------------------------------------------------------------------------------
# LAION-CLAP


def _is_hub_failure(e: BaseException) -> bool:
    text = f"{type(e).__name__} {e}".lower()
    return any(s in text for s in ("roberta", "huggingface", "offline", "connect", "hub", "tokenizer",
                                   "localentrynotfound"))


def resolve_clap_ckpt(ckpt: str | Path | None) -> Path:
    ckpt = ckpt or os.environ.get("PRESTO_CLAP_CKPT")
    if not ckpt:
        raise PrestoError("the clap embedder needs a LAION-CLAP checkpoint", CLAP_CKPT_HINT)
    p = Path(ckpt).expanduser()
    if not p.is_file():
        raise PrestoError(f"LAION-CLAP checkpoint not found: {p}", CLAP_CKPT_HINT)
    if p.suffix == ".safetensors":
        raise PrestoError(f"{p} looks like a presto model, not a LAION-CLAP checkpoint",
                          "for the in-domain model use --embedder presto-clap")
    return p


def load_laion_weights(module: torch.nn.Module, ckpt: Path) -> None:
    """Load a LAION-CLAP ``.pt`` into ``module`` with ``torch.load(weights_only=True)``.

    Handles the checkpoint layout (``{"state_dict": ...}``), the DDP ``module.`` prefix, and the
    ``position_ids`` buffer newer transformers no longer keep.
    """
    try:
        raw = torch.load(str(ckpt), map_location="cpu", weights_only=True)
    except Exception as e:
        raise PrestoError(f"cannot load LAION-CLAP checkpoint {ckpt} safely: {type(e).__name__}",
                          "use an official checkpoint (state_dict of tensors); presto loads with "
                          "weights_only=True") from None
    sd = raw.get("state_dict", raw) if isinstance(raw, dict) else None
    if not isinstance(sd, dict) or not sd:
        raise PrestoError(f"{ckpt} holds no state_dict", CLAP_CKPT_HINT)
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    own = module.state_dict()
    sd = {k: v for k, v in sd.items() if k in own or not k.endswith("position_ids")}
    missing = [k for k in own if k not in sd and not k.endswith("position_ids")]
    unexpected = [k for k in sd if k not in own]
    bad = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or bad:
        eg = (missing or unexpected or bad)[0]
        raise PrestoError(f"{ckpt} does not match the LAION-CLAP model built "
                          f"({len(missing)} missing, {len(unexpected)} unexpected, {len(bad)} "
                          f"wrong-shape weights, e.g. {eg})",
                          "music checkpoints need --embedder clap, general-audio ones --embedder clap-audio")
    module.load_state_dict(sd, strict=False)


class LaionClapEmbedder(Embedder):
    """LAION-CLAP (``laion_clap`` package, local checkpoint), 48 kHz, 10 s windows averaged.

    ``kind="music"`` builds HTSAT-base (the music checkpoint), ``"audio"`` HTSAT-tiny (630k-audioset).
    """

    sample_rate = 48000
    window_seconds = 10.0
    dim = 512
    has_text = True

    def __init__(self, ckpt: str | Path | None = None, kind: str = "music", device: str = "auto",
                 batch: int = 8):
        if kind not in ("music", "audio"):
            raise PrestoError(f"unknown LAION-CLAP kind '{kind}'", "use music or audio")
        from presto_cli.runtime import resolve_device

        self.kind = kind
        self.name = "laion-clap" if kind == "music" else "laion-clap-audio"
        self.ckpt = resolve_clap_ckpt(ckpt)
        self.device = resolve_device(device)
        self.batch = max(1, int(batch))
        laion_clap = _import_laion_clap()
        amodel = "HTSAT-base" if kind == "music" else "HTSAT-tiny"
        try:
            self.model = laion_clap.CLAP_Module(enable_fusion=False, amodel=amodel,
                                                device=str(self.device))
        except PrestoError:
            raise
        except ModuleNotFoundError as e:  # laion_clap imports some of its needs lazily
            raise PrestoError(f"LAION-CLAP needs the module '{e.name}', which is not installed",
                              f"{CLAP_INSTALL_HINT}, or pip install {e.name}") from None
        except Exception as e:
            if _is_hub_failure(e):
                raise PrestoError(
                    "LAION-CLAP could not load the roberta-base tokenizer/text model (it downloads "
                    "them from the Hugging Face hub; offline they must already be cached)",
                    "pre-download them once online: python -c \"from transformers import "
                    "RobertaTokenizer, RobertaModel; RobertaTokenizer.from_pretrained('roberta-base'); "
                    "RobertaModel.from_pretrained('roberta-base')\" (HF cache: $HF_HOME)") from None
            raise
        inner = getattr(self.model, "model", None)
        if isinstance(inner, torch.nn.Module):
            load_laion_weights(inner, self.ckpt)
        else:
            self.model.load_ckpt(str(self.ckpt), verbose=False)
        if hasattr(self.model, "eval"):
            self.model.eval()
        st = self.ckpt.stat()
        pkg = getattr(laion_clap, "__version__", "?")
        self._version = (f"laion-clap-{kind}:{amodel}:{self.ckpt.name}:{st.st_size}:"
                         f"{st.st_mtime_ns}:pkg{pkg}:win10s-even-mean-l2")

    @property
    def version(self) -> str:
        return self._version

    def describe(self) -> dict:
        d = super().describe()
        d.update({"checkpoint": str(self.ckpt), "kind": self.kind,
                  "windowing": "deterministic 10 s windows, evenly spaced, averaged, L2-normalised"})
        return d

    def _embed_windows(self, windows: np.ndarray) -> np.ndarray:
        out = []
        with torch.no_grad():
            for i in range(0, len(windows), self.batch):
                chunk = np.ascontiguousarray(windows[i:i + self.batch], dtype=np.float32)
                e = self.model.get_audio_embedding_from_data(x=chunk, use_tensor=False)
                out.append(np.asarray(e.detach().cpu().numpy() if isinstance(e, torch.Tensor) else e,
                                      dtype=np.float64))
        return np.concatenate(out)

    def _embed_waveforms(self, wavs: list[torch.Tensor]) -> np.ndarray:
        return windowed_mean(wavs, self.window_seconds, self.sample_rate, self._embed_windows)

    def embed_text(self, texts: list[str]) -> np.ndarray:
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, self.dim))
        padded = texts if len(texts) > 1 else texts * 2  # laion_clap squeezes a batch of one
        with torch.no_grad():
            e = self.model.get_text_embedding(padded, use_tensor=False)
        e = e.detach().cpu().numpy() if isinstance(e, torch.Tensor) else np.asarray(e)
        return _l2n(np.asarray(e, dtype=np.float64)[: len(texts)])


# --------------------------------------------------------------------------------------------
# In-domain CLAP (trained by presto)


class PrestoClapEmbedder(Embedder):
    """The in-domain contrastive model (artefact kind ``clap``), windows of its clip length averaged."""

    name = "presto-clap"
    has_text = True

    def __init__(self, path: str | Path | None, device: str = "auto", batch: int = 16):
        from presto_cli.eval.clap_model import load_clap
        from presto_cli.runtime import resolve_device

        if not path:
            raise PrestoError("the presto-clap embedder needs its model file",
                              "train one with `presto pretrain recipes/tiny/clap.yaml` and pass "
                              "--clap-ckpt PATH/model.safetensors")
        self.path = Path(path)
        self.device = resolve_device(device)
        self.model, meta = load_clap(self.path, self.device)
        self.sample_rate = int(meta["sample_rate"])
        self.window_seconds = float(meta["clip_seconds"])
        self.dim = int(self.model.cfg.embed_dim)
        self.batch = batch
        digest = hashlib.sha256(self.path.read_bytes()).hexdigest()[:16]
        self._version = f"presto-clap:{digest}:win{self.window_seconds:g}s-even-mean-l2"

    @property
    def version(self) -> str:
        return self._version

    def describe(self) -> dict:
        d = super().describe()
        d.update({"checkpoint": str(self.path), "text": self.model.cfg.text,
                  "windowing": f"deterministic {self.window_seconds:g} s windows, averaged, L2-normalised"})
        return d

    def _embed_windows(self, windows: np.ndarray) -> np.ndarray:
        xs = torch.from_numpy(windows)[:, None]
        outs = []
        with torch.no_grad():
            for i in range(0, xs.shape[0], self.batch):
                outs.append(self.model.encode_audio(xs[i:i + self.batch].to(self.device)).double().cpu())
        return torch.cat(outs).numpy()

    def _embed_waveforms(self, wavs: list[torch.Tensor]) -> np.ndarray:
        return windowed_mean(wavs, self.window_seconds, self.sample_rate, self._embed_windows)

    def embed_text(self, texts: list[str]) -> np.ndarray:
        with torch.no_grad():
            e = self.model.encode_text([str(t) for t in texts])
        return e.double().cpu().numpy()


# --------------------------------------------------------------------------------------------


def build_embedder(name: str, clap_ckpt: str | Path | None = None, device: str = "auto",
                   **kw) -> Embedder:
    """``mel`` | ``music`` (music-features) | ``clap`` (LAION-CLAP music) | ``clap-audio`` (LAION-CLAP
    general) | ``presto-clap``."""
    key = (name or "").strip().lower()
    if key == "mel":
        return MelEmbedder(**kw)
    if key in ("music", "music-features"):
        return MusicFeatureEmbedder(**kw)
    if key in ("clap", "laion-clap"):
        return LaionClapEmbedder(clap_ckpt, kind="music", device=device, **kw)
    if key in ("clap-audio", "laion-clap-audio"):
        return LaionClapEmbedder(clap_ckpt, kind="audio", device=device, **kw)
    if key == "presto-clap":
        return PrestoClapEmbedder(clap_ckpt, device=device, **kw)
    from presto_cli.names import unknown_name

    raise unknown_name("embedder", name, EMBEDDERS)
