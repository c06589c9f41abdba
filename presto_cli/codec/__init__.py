"""Audio autoencoders ("codecs"): the interface, the registry, artefact loading (METHOD.md section 1).

The codecs: :mod:`presto_cli.codec.mel` (log-mel latents + Vocos vocoder) and
:mod:`presto_cli.codec.vae` (STFT VAE); their losses in :mod:`presto_cli.codec.losses`, export
(latent scale, reconstruction report) in :mod:`presto_cli.codec.export`, music measures in
:mod:`presto_cli.codec.quality`. The ``autoencoder`` training stage is :mod:`presto_cli.stages.autoencoder`.
"""
from presto_cli.codec.base import (Codec, build_codec, codec_from_embedded, codec_kinds,
                                   codec_state_for_embedding, load_codec, register_codec, save_codec)

__all__ = ["Codec", "build_codec", "codec_from_embedded", "codec_kinds", "codec_state_for_embedding",
           "load_codec", "register_codec", "save_codec"]
