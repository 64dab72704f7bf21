"""bench plugin: multicut.

``bench_multicut.variation_of_information_matrix(codes_by_extractor) -> (names, matrix)``
gives the pairwise VI (nats) between several extractors' clusterings of one dataset, for
the leaderboard and report (imported lazily so that loading the plugin stays cheap).
"""


def __getattr__(name: str):
    if name == "variation_of_information_matrix":
        from bench_multicut.stats import variation_of_information_matrix

        return variation_of_information_matrix
    raise AttributeError(f"module 'bench_multicut' has no attribute {name!r}")
