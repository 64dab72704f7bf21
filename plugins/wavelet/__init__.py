"""bench plugin: wavelet — Yousefzadeh's wavelet + rank-revealing QR + k-means similarity
analysis (Algorithm 1), the SSIM / spectral analysis (Algorithm 2), train↔test analysis and a
cross-dataset comparator. Facts and defaults: ``shared/reference/wavelet.md``."""

from .core import algorithm1, algorithm2, coefficient_matrix, reduce_clusters, train_test_analysis
from .dwt import wavedec2_pywt, wavedec2_torch
from .methods import WaveletComparator, WaveletSummariser
from .rrqr import select_columns, tau_rule

__all__ = ["WaveletComparator", "WaveletSummariser", "algorithm1", "algorithm2", "coefficient_matrix",
           "reduce_clusters", "select_columns", "tau_rule", "train_test_analysis", "wavedec2_pywt",
           "wavedec2_torch"]
