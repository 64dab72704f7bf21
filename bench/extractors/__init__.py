"""Extractors: frozen backbones with their exact preprocessing (see :mod:`bench.extractors.base`).

``builtin`` registers them by name; ``timm_models``, ``openclip_models`` and ``hf_models`` wrap
the three libraries (imported only when an extractor is built); ``transforms`` runs each
library's evaluation preprocessing on whole uint8 batches in torch; ``pixels`` is the no-model
baseline.
"""

from bench.extractors.base import Extractor

__all__ = ["Extractor"]
