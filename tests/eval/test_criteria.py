"""Label-free checkpoint criteria: flip agreement and confidence on a hand-made model, rank agreement."""

import numpy as np
import pytest
import torch

from da_pose.data.codec import HeatmapCodec
from da_pose.eval import criteria
from da_pose.models.layers import PoseOutput


class PeakModel(torch.nn.Module):
    """Heatmaps with one peak per joint at a fixed place, whatever the image: a flipped image's
    prediction mapped back is the mirror of the same place, so only joints on the centre line
    (and left/right pairs placed symmetrically) agree."""

    def __init__(self, xy, size=16, k=18):
        super().__init__()
        self.xy, self.size, self.k = xy, size, k

    def forward(self, x):
        hm = torch.zeros(x.shape[0], self.k, self.size, self.size)
        for j, (px, py) in enumerate(self.xy):
            hm[:, j, py, px] = 0.75
        return PoseOutput([hm], None)


def test_flip_agreement_and_confidence_on_a_constructed_model():
    codec = HeatmapCodec(input_size=64, heatmap_size=16, sigma=1.0)
    centre = [(8, 4)] * 18  # every joint at x = 8 of 16: the mirror lands at 7, 4 input px away
    images = torch.zeros(2, 3, 64, 64)
    loader = [{"image": images}]
    out = criteria.label_free_criteria(PeakModel(centre), loader, codec, torch.device("cpu"), thr=0.05)
    # 0.05 x 64 = 3.2 px < 4 px: no joint agrees; confidence is the peak height
    assert out["criteria/flip_agreement"] == 0.0 and out["criteria/confidence"] == pytest.approx(0.75)
    out = criteria.label_free_criteria(PeakModel(centre), loader, codec, torch.device("cpu"), thr=0.1)
    # unpaired joints (on the centre line of the skeleton's flip map) agree at 6.4 px; a left/right
    # pair swaps channels, but both sit at the same place here, so it agrees too
    assert out["criteria/flip_agreement"] == pytest.approx(100.0)


def test_spearman_and_rank_agreement():
    assert criteria.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert criteria.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(criteria.spearman([1, 2], [1, 2])) and np.isnan(criteria.spearman([1, 1, 1], [1, 2, 3]))
    # ties share their mean rank: ranks (1, 2.5, 2.5, 4, 5) and (2, 1, 3.5, 3.5, 5), Pearson of those
    assert criteria.spearman([1, 2, 2, 3, 5], [2, 1, 4, 4, 9]) == pytest.approx(0.7631579, abs=1e-6)
    hist = {criteria.REFERENCE: {10: 50.0, 20: 55.0, 30: 53.0, 40: 60.0},
            "criteria/confidence": {10: 0.2, 20: 0.4, 30: 0.3, 40: 0.5},
            "criteria/flip_agreement": {10: 90.0, 20: 80.0, 40: 70.0}}
    got = criteria.rank_agreement(hist)
    assert got["criteria/confidence"] == pytest.approx(1.0)
    assert got["criteria/flip_agreement"] == pytest.approx(-1.0)  # steps 10, 20, 40 only
    assert np.isnan(got["source_val/pck@0.05_crop/mean"])
