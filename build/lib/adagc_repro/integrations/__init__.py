"""Adapters that plug a clipper from `adagc_repro.clipping` into other training loops (e.g. `hf` for transformers)."""
