"""bench plugin: qrp — quantized reverse probing (Laina, Asano & Vedaldi, ICLR 2022).

Modules: ``quantise`` (standardise + faiss k-means, small-dataset K rule), ``probe`` (split,
reverse probe, metrics), ``experts`` (ground-truth and CLIP zero-shot concepts), ``method``
(the ``qrp`` Summariser), ``plugin`` (hook registrations).
"""
