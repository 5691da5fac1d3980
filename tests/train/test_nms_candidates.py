"""How many (anchor, class) pairs enter NMS: the count `pipeline compare` reports per loss."""

from __future__ import annotations

import torch

from common.contract import PostprocessConfig
from train.postprocess import count_nms_candidates


def test_counts_pairs_above_the_threshold_among_each_levels_top_k() -> None:
    # two levels of 3 and 2 anchors, 2 classes; threshold 0.5 means logit > 0
    level_1 = [[2.0, -1.0], [0.5, 3.0], [-2.0, 1.0]]  # four positive; top-2 keeps 3.0 and 2.0
    level_2 = [[-1.0, -3.0], [0.2, -0.1]]  # one positive (0.2), within its top-2
    image_a = torch.tensor(level_1 + level_2)
    image_b = -image_a  # positives now: level 1 has 1.0, 2.0 (top-2 both), level 2 has 1, 3, 0.1
    logits = torch.stack([image_a, image_b])
    config = PostprocessConfig(score_threshold=0.5, topk_per_level=2)
    assert count_nms_candidates(logits, [3, 2], config).tolist() == [2 + 1, 2 + 2]


def test_without_a_top_k_cap_every_pair_above_the_threshold_counts() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 40, 4)
    config = PostprocessConfig(score_threshold=0.3, topk_per_level=1000)
    by_loop = [
        sum(1 for a in range(40) for c in range(4) if 1 / (1 + torch.exp(-logits[b, a, c])) > 0.3)
        for b in range(3)
    ]
    assert count_nms_candidates(logits, [25, 10, 5], config).tolist() == by_loop


def test_a_predictor_counts_candidates_only_when_asked() -> None:
    """Counting is for eval's report; a long-lived predictor (a server) keeps no growing list."""
    import numpy as np

    from train.model.retinanet import ModelConfig, RetinaDetector
    from train.predict import TorchPredictor

    torch.manual_seed(0)
    model = RetinaDetector(ModelConfig(num_classes=2, img_size=64, fpn_channels=8, head_convs=1))
    images = np.random.default_rng(0).uniform(0, 255, (3, 3, 64, 64)).astype(np.float32)
    quiet = TorchPredictor(model, metadata=None)
    quiet(images)
    assert quiet.candidate_counts is None
    counting = TorchPredictor(model, metadata=None, count_candidates=True)
    counting(images)
    counting(images[:1])
    with torch.inference_mode():
        logits, _ = model.eval()(torch.from_numpy(images))
    expected = count_nms_candidates(logits, counting._anchors_per_level, counting.config).tolist()
    assert counting.candidate_counts == expected + expected[:1]
