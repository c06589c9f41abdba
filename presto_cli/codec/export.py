"""Exporting a trained codec (METHOD.md section 1): measure the latents' statistics, set
``latent_scale = sigma_data / std`` so scaled latents have std ~ sigma_data, measure held-out
reconstruction quality (log-mel L1, MR-STFT distance and the music measures of
:mod:`presto_cli.codec.quality`), write the ``codec`` artefact and ``recon.json`` beside it."""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from presto_cli.codec.base import Codec, save_codec
from presto_cli.codec.losses import log_mel_l1, mrstft_distance
from presto_cli.errors import PrestoError
from presto_cli.io import atomic_write_json


def _batches(clips, batch_size: int):
    """``[b, 1, T]`` batches of a ``[N, 1, T]`` tensor or a sequence of ``[1, T]`` clips."""
    for i in range(0, len(clips), batch_size):
        if isinstance(clips, Tensor):
            yield clips[i:i + batch_size]
        else:
            yield torch.stack([clips[j] for j in range(i, min(i + batch_size, len(clips)))])


@torch.no_grad()
def latent_statistics(codec: Codec, clips: Tensor, batch_size: int = 8) -> dict[str, float]:
    """Mean and std of the raw (unscaled) posterior means over ``clips`` (``[N, 1, T]`` or a
    sequence of ``[1, T]``)."""
    device = next(codec.parameters()).device
    s1 = s2 = 0.0
    n = 0
    for x in _batches(clips, batch_size):
        mean, _ = codec.encode_dist(x.to(device))
        m = mean.double()
        s1 += float(m.sum())
        s2 += float(m.pow(2).sum())
        n += m.numel()
    if n == 0:
        raise PrestoError("no clips to measure the latent statistics on", "check data.path")
    mu = s1 / n
    std = math.sqrt(max(s2 / n - mu * mu, 0.0))
    return {"mean": mu, "std": std, "count": n}


@torch.no_grad()
def reconstruction_report(codec: Codec, clips: Tensor, batch_size: int = 8,
                          png: str | Path | None = None, png_clips: int = 4) -> dict[str, float]:
    """Quality of ``decode(encode(x))`` over ``clips``: log-mel L1 and MR-STFT distance, plus the
    music measures of :mod:`presto_cli.codec.quality` (chroma similarity with its unrelated-clip
    baseline, tonal ratio, frame-rate comb contrast). ``png``: also draw the first ``png_clips``
    originals above their reconstructions."""
    from presto_cli.codec.quality import music_report, spectrogram_png

    device = next(codec.parameters()).device
    mel, mr, n = 0.0, 0.0, 0
    originals, recons = [], []
    for x in _batches(clips, batch_size):
        x = codec.pad_audio(x.to(device))
        y = codec.decode(codec.encode(x))
        b = x.shape[0]
        mel += log_mel_l1(y, x, codec.sample_rate) * b
        mr += mrstft_distance(y, x) * b
        n += b
        t = x.shape[-1]  # every channel of a stereo codec counts as a clip of its own
        originals += list(x.reshape(-1, t).float().cpu().numpy())
        recons += list(y[..., :t].reshape(-1, t).float().cpu().numpy())
    out = {"log_mel_l1": mel / max(n, 1), "mrstft": mr / max(n, 1), "clips": n}
    if n:
        out.update(music_report(originals, recons, codec.sample_rate, codec.frame_rate))
    if png is not None and n:
        pairs = list(zip(originals, recons))[:max(1, png_clips)]
        spectrogram_png(png, pairs, codec.sample_rate)
    return out


def export_codec(codec: Codec, path: str | Path, stats_clips, eval_clips,
                 sigma_data: float = 0.5, eval_split: str = "val", batch_size: int = 8,
                 extra_meta: dict | None = None, png_clips: int = 4) -> dict:
    """Set ``latent_scale`` from ``stats_clips``, report quality on ``eval_clips`` (each ``[N, 1, T]``
    or a sequence of ``[1, T]`` clips), save the artefact at ``path`` and ``recon.json`` beside it.
    ``codec`` is modified (its scale); returns the report."""
    if sigma_data <= 0:
        raise PrestoError(f"export.sigma_data must be positive, got {sigma_data}")
    codec.eval()
    fit = getattr(codec, "fit_normalization", None)
    if fit is not None:  # e.g. the mel codec's per-bin mean
        fit(_batches(stats_clips, batch_size))
    stats = latent_statistics(codec, stats_clips, batch_size)
    if not stats["std"] > 1e-8:
        raise PrestoError("the codec's latents are constant (std 0); cannot scale them",
                          "train the autoencoder longer or lower loss.kl_weight")
    codec.set_latent_scale(sigma_data / stats["std"])
    recon = reconstruction_report(codec, eval_clips, batch_size, Path(path).parent / "recon.png",
                                  png_clips) if len(eval_clips) else {}
    if recon:
        recon["split"] = eval_split
        recon["clip_seconds"] = round(eval_clips[0].shape[-1] / codec.sample_rate, 4)
    latent = {"mean": stats["mean"], "std": stats["std"], "sigma_data": sigma_data,
              "stats_clips": len(stats_clips)}
    save_codec(path, codec, latent=latent, recon=recon, extra=extra_meta)
    report = {"latent": {"scale": float(codec.latent_scale), **latent}, "recon": recon,
              "frame_rate": codec.frame_rate, "channels": codec.channels}
    atomic_write_json(Path(path).parent / "recon.json", report)
    return report


def format_recon(rec: dict) -> str:
    """One paragraph of the held-out reconstruction measures (what `pretrain` prints at export)."""
    if not rec:
        return "reconstruction: no clips to measure"
    return (f"reconstruction of {rec['clips']} {rec.get('split', '')} clips of {rec['clip_seconds']} s: "
            f"log-mel L1 {rec['log_mel_l1']:.3f}, MR-STFT {rec['mrstft']:.3f}, chroma similarity "
            f"{rec['chroma_similarity']:.3f} (min {rec['chroma_similarity_min']:.3f}; unrelated clips "
            f"{rec['chroma_similarity_unrelated']:.3f}), tonal ratio {rec['tonal_ratio']:.2f}, "
            f"comb contrast at {rec['frame_rate']:g} Hz {rec['comb_contrast_db']:+.1f} dB "
            f"(original {rec['comb_contrast_db_original']:+.1f} dB)")
