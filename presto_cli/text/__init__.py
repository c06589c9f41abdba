"""Frozen text encoders for conditioning (MiniLM, LAION-CLAP text tower, weightless hash)."""
from presto_cli.text.encoders import (ClapTextEncoder, HashTextEncoder, MiniLMTextEncoder,
                                      TextEncoder, build_text_encoder, text_encoder_dim)

__all__ = ["TextEncoder", "MiniLMTextEncoder", "ClapTextEncoder", "HashTextEncoder",
           "build_text_encoder", "text_encoder_dim"]
