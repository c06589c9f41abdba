"""The codec interface, the codec registry and the codec artefact format.

A codec (METHOD.md section 1) maps audio ``[B, A, T]`` (``A = audio_channels``: 1 mono, the
default; 2 stereo where the kind supports it) to latents ``[B, C, F]`` at a low frame
rate and back. ``encode`` is deterministic (the posterior mean) and multiplies the raw latents by
``latent_scale`` so that the latents the diffusion model sees have a standard deviation of about
``sigma_data``; ``decode`` divides by it again. Every kind of autoencoder registers a factory with
:func:`register_codec` so ``build_codec({"kind": ..., ...})`` can build it from its recipe section.

Artefact (``kind: "codec"``, see :mod:`presto_cli.io`): the codec's state dict (``latent_scale``
included) as tensors, and metadata ``{"kind": "codec", "model": <codec config>, "latent":
{scale, mean, std, sigma_data, ...}, "recon": {...held-out quality...}}``. A model artefact embeds
the same under the tensor prefix ``codec.`` and the metadata key ``"codec"``
(:func:`codec_state_for_embedding` / :func:`codec_from_embedded`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from presto_cli.errors import PrestoError
from presto_cli.io import load_artefact, load_state_strict, prefixed, sub_state

DEFAULT_KIND = "stft-vae"


class Codec(nn.Module):
    """Audio <-> latent autoencoder. Subclasses implement :meth:`encode_dist` and :meth:`decode_raw`.

    Attributes: ``sample_rate`` (Hz), ``channels`` (latent C), ``hop`` (audio samples per latent
    frame), buffer ``latent_scale`` (scalar).
    """

    sample_rate: int
    channels: int
    hop: int
    audio_channels: int = 1

    def __init__(self, cfg=None, channels: int = 0, hop: int = 0, audio_channels: int = 1) -> None:
        """``cfg`` (validated here) gives ``sample_rate`` and ``n_fft``; ``channels`` and ``hop``
        are the latents' channels and audio samples per frame."""
        super().__init__()
        self.register_buffer("latent_scale", torch.ones(()))
        if cfg is not None:
            cfg.validate()
            self.cfg, self.sample_rate, self.n_fft = cfg, cfg.sample_rate, cfg.n_fft
            self.channels, self.hop, self.audio_channels = channels, hop, int(audio_channels)

    # -- to implement -------------------------------------------------------------------------
    def encode_dist(self, audio: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior ``(mean, logvar)``, each ``[B, C, F]``, of the *unscaled* latents."""
        raise NotImplementedError

    def decode_raw(self, z: Tensor) -> Tensor:
        """Unscaled latents ``[B, C, F]`` -> audio ``[B, 1, F * hop]``."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """The recipe section that rebuilds this codec through :func:`build_codec`."""
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------------
    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop

    def num_frames(self, num_samples: int) -> int:
        """Latent frames for ``num_samples`` of audio (audio is zero-padded to a multiple of hop)."""
        return -(-int(num_samples) // self.hop)

    def pad_audio(self, audio: Tensor) -> Tensor:
        """Check shape ``[B, audio_channels, T]`` and zero-pad T up to a multiple of ``hop``."""
        a = self.audio_channels
        if audio.dim() != 3 or audio.shape[1] != a:
            raise PrestoError(f"codec expects {'mono' if a == 1 else f'{a}-channel'} audio shaped "
                              f"[batch, {a}, samples], got {tuple(audio.shape)}")
        rem = (-audio.shape[-1]) % self.hop
        if rem:
            audio = torch.nn.functional.pad(audio, (0, rem))
        return audio

    def encode(self, audio: Tensor) -> Tensor:
        """Deterministic scaled latents (posterior mean times ``latent_scale``): ``[B, C, F]``."""
        mean, _ = self.encode_dist(audio)
        return mean * self.latent_scale.to(mean.dtype)

    def decode(self, z: Tensor) -> Tensor:
        """Scaled latents ``[B, C, F]`` -> audio ``[B, audio_channels, F * hop]``."""
        if z.dim() != 3 or z.shape[1] != self.channels:
            raise PrestoError(f"codec expects latents shaped [batch, {self.channels}, frames], got "
                              f"{tuple(z.shape)}", "the model and the codec do not belong together")
        return self.decode_raw(z / self.latent_scale.to(z.dtype))

    def set_latent_scale(self, scale: float) -> None:
        self.latent_scale.fill_(float(scale))


# ---------------------------------------------------------------------------------------------
# Registry

_CODECS: dict[str, Callable[[dict], Codec]] = {}
_CONFIGS: dict[str, type] = {}


def register_codec(kind: str, config: type | None = None):
    """Decorator for a factory ``fn(cfg: dict) -> Codec`` (or a Codec class taking the dict);
    ``config`` is the kind's recipe dataclass (with a ``validate()``), used by :func:`codec_config`."""

    def deco(fn):
        _CODECS[kind] = fn
        if config is not None:
            _CONFIGS[kind] = config
        return fn

    return deco


def codec_config_class(kind: str | None) -> type:
    """The recipe dataclass of a codec kind (``None`` -> the default kind)."""
    _import_builtin()
    kind = kind or DEFAULT_KIND
    if kind not in _CONFIGS:
        raise PrestoError(f"unknown codec kind '{kind}'", f"valid kinds: {', '.join(sorted(_CONFIGS))}")
    return _CONFIGS[kind]


def codec_config(cfg: dict | None):
    """The validated recipe dataclass of a codec's ``model:`` section (its ``kind`` picks the class):
    unknown keys are refused with the nearest valid one, values checked by the kind's ``validate``."""
    from presto_cli.recipes import dataclass_from_dict

    cfg = dict(cfg or {})
    cfg["kind"] = str(cfg.get("kind") or DEFAULT_KIND)
    out = dataclass_from_dict(codec_config_class(cfg["kind"]), cfg, where="model")
    out.validate()
    return out


def codec_kinds() -> list[str]:
    _import_builtin()
    return sorted(_CODECS)


def _import_builtin() -> None:
    import presto_cli.codec.mel  # noqa: F401  (registers "mel-vocos")
    import presto_cli.codec.vae  # noqa: F401  (registers "stft-vae")


def build_codec(cfg: dict | Any) -> Codec:
    """Build an (untrained) codec from its recipe section; ``cfg["kind"]`` picks the registry entry."""
    import dataclasses

    _import_builtin()
    if dataclasses.is_dataclass(cfg):
        cfg = dataclasses.asdict(cfg)
    cfg = dict(cfg or {})
    kind = str(cfg.get("kind") or DEFAULT_KIND)
    if kind not in _CODECS:
        raise PrestoError(f"unknown codec kind '{kind}'", f"valid kinds: {', '.join(sorted(_CODECS))}")
    cfg["kind"] = kind
    return _CODECS[kind](cfg)


# ---------------------------------------------------------------------------------------------
# Artefacts


def codec_meta(codec: Codec, latent: dict | None = None, recon: dict | None = None) -> dict:
    """The metadata describing ``codec`` (config + latent statistics + reconstruction quality)."""
    meta: dict[str, Any] = {"model": codec.config(),
                            "latent": {"scale": float(codec.latent_scale), **(latent or {})},
                            "sample_rate": codec.sample_rate, "channels": codec.channels,
                            "hop": codec.hop, "audio_channels": codec.audio_channels}
    if recon:
        meta["recon"] = recon
    return meta


def codec_from_state(tensors: dict[str, Tensor], meta_codec: dict, what: str = "codec") -> Codec:
    """Build a codec from its metadata (``{"model": cfg, ...}``) and load its weights strictly."""
    if not isinstance(meta_codec, dict) or not isinstance(meta_codec.get("model"), dict):
        raise PrestoError(f"the {what} metadata has no codec configuration",
                          "export it with presto (the autoencoder stage)")
    codec = build_codec(meta_codec["model"])
    load_state_strict(codec, tensors, what)
    codec.eval()
    for p in codec.parameters():
        p.requires_grad_(False)
    return codec


def load_codec(path: str | Path, device: str | torch.device = "cpu") -> Codec:
    """Load a codec artefact (or the codec embedded in a model artefact) in eval mode on ``device``."""
    tensors, meta = load_artefact(path)
    kind = meta.get("kind")
    if kind == "codec":
        codec = codec_from_state(tensors, meta, what=f"codec in {path}")
    elif isinstance(meta.get("codec"), dict) and any(k.startswith("codec.") for k in tensors):
        codec = codec_from_embedded(tensors, meta["codec"])
    else:
        raise PrestoError(f"{path} is a '{kind}' artefact without a codec",
                          "pass a codec artefact (made by the autoencoder stage)")
    return codec.to(device)


def save_codec(path: str | Path, codec: Codec, latent: dict | None = None,
               recon: dict | None = None, extra: dict | None = None) -> None:
    """Write ``codec`` as a ``kind: "codec"`` artefact (fp32 weights)."""
    from presto_cli.io import save_artefact

    meta = {"kind": "codec", **codec_meta(codec, latent, recon), **(extra or {})}
    state = {k: v.float() if v.is_floating_point() else v for k, v in codec.state_dict().items()}
    save_artefact(path, state, meta)


def codec_state_for_embedding(codec: Codec, latent: dict | None = None) -> tuple[dict[str, Tensor], dict]:
    """``(tensors prefixed "codec.", meta)`` to put a codec inside a model artefact
    (``meta`` goes under the artefact metadata key ``"codec"``)."""
    tensors = prefixed({k: v.detach() for k, v in codec.state_dict().items()}, "codec")
    return tensors, codec_meta(codec, latent)


def codec_from_embedded(tensors: dict[str, Tensor], meta_codec: dict) -> Codec:
    """Rebuild a codec embedded with :func:`codec_state_for_embedding`. ``tensors`` is either the
    whole artefact's tensor dict (the ``codec.`` entries are selected) or those entries with the
    prefix already removed (``presto_cli.io.sub_state(tensors, "codec")``)."""
    state = sub_state(tensors, "codec") if any(k.startswith("codec.") for k in tensors) else tensors
    if not state:
        raise PrestoError("the model file has no embedded codec weights ('codec.' tensors)",
                          "re-export the model with its codec")
    return codec_from_state(state, meta_codec, what="embedded codec")
