"""bench plugin: two-sample comparators on extractor features.

``kid`` (unbiased MMD², KID's cubic kernel or an RBF), ``prdc`` (precision, recall, density,
coverage with per-image flags) and ``c2st`` (an out-of-fold logistic-regression classifier
two-sample test with per-image probabilities). Each scores any relabelling of A ∪ B from one
pass (a kernel matrix, a k-NN graph, cached features), so ``bench compare`` gets a permutation
null and a bootstrap interval without re-reading images.
"""
