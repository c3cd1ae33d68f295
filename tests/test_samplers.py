"""Training samples: the interaction stage's boxes cover the scale range asked for."""

from __future__ import annotations

import numpy as np

from lib.training.samplers import BOX_SCALE, BoxScale, _jittered_box


def _scales(scale: BoxScale, n: int = 400) -> np.ndarray:
    rng = np.random.default_rng(0)
    mask = np.zeros((400, 400), bool)
    mask[180:220, 185:215] = True  # 40 pixels across: the box's size over 40 is its scale
    sizes = [_jittered_box(rng, mask, mask.shape, scale).size for _ in range(n)]
    return np.array([s for s in sizes if s < 400]) / 40.0  # the whole-slice boxes (a fifth) left out


def test_training_boxes_span_the_default_scale_uniformly():
    s = _scales(BOX_SCALE)
    assert 0.7 * 400 < s.size < 0.9 * 400
    assert s.min() >= 1.2 and s.max() <= 2.55
    assert abs(np.median(s) - 1.875) < 0.15  # uniform: the middle of the range


def test_a_wider_box_scale_is_drawn_log_uniform():
    s = _scales(BoxScale(1.25, 4.0, log=True))
    assert s.min() >= 1.2 and s.max() <= 4.05 and s.max() > 3.5
    assert abs(np.median(s) - np.sqrt(1.25 * 4.0)) < 0.25  # log-uniform: the geometric middle (2.24), not 2.6
