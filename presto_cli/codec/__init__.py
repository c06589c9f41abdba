"""Audio autoencoders ("codecs"): the interface, the registry, artefact loading (METHOD.md section 1).

The trainable STFT VAE lives in :mod:`presto_cli.codec.vae`, its losses in
:mod:`presto_cli.codec.losses`, and the ``autoencoder`` training stage in :mod:`presto_cli.codec.task`.
"""
from presto_cli.codec.base import (Codec, build_codec, codec_from_embedded, codec_kinds,
                                   codec_state_for_embedding, load_codec, register_codec, save_codec)

__all__ = ["Codec", "build_codec", "codec_from_embedded", "codec_kinds", "codec_state_for_embedding",
           "load_codec", "register_codec", "save_codec"]
