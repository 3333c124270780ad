"""bench/bench_truth.py's per-slide pathway scoring (best-ranked driver map against its factor's
region, drivers over noise), the same for the paper's student and the linear student's head."""

from __future__ import annotations

import numpy as np

from histokd_core.methods.base import Explanation
from histokd_core.synthetic.slides import PlantedRegion


def test_pathway_truth_scores_the_best_ranked_driver_map_and_the_ranking(load_bench):
    bench = load_bench("bench_truth")
    # 4 x 1 patches of 256 px on a slide 1024 px wide, 256 px high: tumour under patch 0, immune under patch 3
    coords = np.array([[0, 0], [256, 0], [512, 0], [768, 0]])
    regions = [PlantedRegion("tumor", 0, 0, 256, 256), PlantedRegion("immune", 0, 768, 256, 1024)]
    maps = {"T1": np.array([0.9, 0.1, 0.0, 0.0]),    # on the tumour region: AUROC 1
            "T2": np.array([0.0, 0.0, 0.1, 0.9]),    # elsewhere
            "M1": np.array([0.5, 0.0, 0.1, -0.2]),   # lowest on the immune region: AUROC 0
            "N1": np.zeros(4)}
    scores = {"T1": -0.3, "T2": 0.1, "M1": 0.2, "N1": 0.25}  # |score| ranks T1 first, then N1
    expl = Explanation(coords=coords, patch_size=256, pathway_maps=maps, pathway_scores=scores)
    out = bench.pathway_truth(expl, {0: ["T1", "T2"], 1: ["M1"]}, ["N1"], regions, (1024, 256))
    assert out["pathway factor 0 (tumor)"] == 1.0
    assert out["pathway factor 1 (immune)"] == 0.0
    assert out["ranking"] == 1 / 3  # T1 above N1; T2 and M1 below it
    # a factor whose drivers have no map scores NaN
    expl.pathway_maps = {"T2": maps["T2"]}
    assert np.isnan(bench.pathway_truth(expl, {0: ["T1", "T2"], 1: ["M1"]}, ["N1"], regions,
                                        (1024, 256))["pathway factor 1 (immune)"])
