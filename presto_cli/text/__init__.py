"""Frozen text encoders for conditioning (MiniLM, LAION-CLAP text tower, weightless hash).

The encoders are imported on first use (PEP 562), so ``presto_cli.text.musical`` (prompt parsing,
used by `generate`'s checks before any model loads) imports no torch."""

__all__ = ["TextEncoder", "MiniLMTextEncoder", "ClapTextEncoder", "HashTextEncoder",
           "build_text_encoder", "text_encoder_dim"]


def __getattr__(name: str):
    if name in __all__:
        from presto_cli.text import encoders

        return getattr(encoders, name)
    raise AttributeError(f"module 'presto_cli.text' has no attribute {name!r}")
