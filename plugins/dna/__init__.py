"""bench plugin: dna — Distributions of Neuron Activations (Ramtoula et al., CVPR 2023).

Public API: build DNAs from a DataView (:func:`build_from_view`, :func:`compute_ranges`),
compare them (:func:`distance`, :func:`emd_per_neuron`, :func:`image_emd`), select neurons
(:func:`rank_from_labels`, :func:`select_neurons`), save / load (:func:`save_dna`,
:func:`load_dna`). The harness entry points are in :mod:`bench_dna.plugin`.
"""

from .distances import aggregate, distance, emd_per_neuron, fd_per_layer, frechet_distance, image_emd, nfd_per_neuron
from .dna import (
    DNA,
    DNABuilder,
    GaussianDNA,
    HistogramDNA,
    LayerGaussianDNA,
    build_from_view,
    compute_ranges,
    resolve_layers,
)
from .histogram import Ranges, histogram_fast, histogram_histc
from .selection import rank_from_labels, rank_from_views, select_neurons
from .storage import load_dna, save_dna

__all__ = ["DNA", "DNABuilder", "GaussianDNA", "HistogramDNA", "LayerGaussianDNA", "Ranges", "aggregate",
           "build_from_view", "compute_ranges", "distance", "emd_per_neuron", "fd_per_layer", "frechet_distance",
           "histogram_fast", "histogram_histc", "image_emd", "load_dna", "nfd_per_neuron", "rank_from_labels",
           "rank_from_views", "resolve_layers", "save_dna", "select_neurons"]
