"""The reading ranker: trees flattened from scikit-learn answer as scikit-learn does, survive the weights file,
and the ranker stage fits them from the interaction module's own readings of training slices."""

from __future__ import annotations

import numpy as np
import pytest

from lib.engine.segmenter import Reading
from lib.net.bundle import LimNet
from lib.net.ranker import FEATURES, ReadingRanker, reading_features


def fitted(seed: int = 0):
    from sklearn.ensemble import GradientBoostingClassifier

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(400, len(FEATURES)))
    y = (x[:, 0] - 0.5 * x[:, 3] + 0.3 * rng.normal(size=400) > 0).astype(int)
    return GradientBoostingClassifier(n_estimators=40, max_depth=3, random_state=0).fit(x, y), rng


def test_flattened_trees_answer_as_scikit_learn():
    model, rng = fitted()
    ranker = ReadingRanker.from_sklearn(model)
    a, b = rng.normal(size=(200, len(FEATURES))), rng.normal(size=(200, len(FEATURES)))
    assert np.allclose(ranker.beats(a, b), model.predict_proba(a - b)[:, 1], atol=1e-9)


def test_the_ranker_survives_the_weights_file_exactly(net, tmp_path):
    model, rng = fitted(1)
    saved, net.ranker = net.ranker, ReadingRanker.from_sklearn(model)
    try:
        a, b = rng.normal(size=(50, len(FEATURES))), rng.normal(size=(50, len(FEATURES)))
        before = net.ranker.beats(a, b)
        net.save(str(tmp_path / "w.pt"))
        again = LimNet.load(str(tmp_path / "w.pt"))
        assert again.ranker is not None and np.array_equal(again.ranker.beats(a, b), before)
        for name, value in net.state_dict().items():  # the networks' weights round-trip as before (fp16 on disk)
            if not name.startswith("ranker."):
                assert np.allclose(again.state_dict()[name].float(), value.half().float()), name
    finally:
        net.ranker = saved


def square(x0: int, x1: int, seen: int, shape=(64, 64)) -> Reading:
    mask = np.zeros(shape, bool)
    mask[x0:x1 + 1, x0:x1 + 1] = True
    return Reading(mask, (x0, x1, x0, x1), seen)


def test_reading_features_are_the_same_at_twice_the_scale():
    """The six numbers compare readings across slice sizes: the same nested readings drawn at twice the size give
    the same features (but the IoUs, which move a little with the pixel grid)."""
    small = [(square(28, 35, 24), 2.0), (square(24, 39, 36), 3.0), (square(10, 53, 64), 1.0)]
    large = [(square(56, 71, 48, (128, 128)), 2.0), (square(48, 79, 72, (128, 128)), 3.0),
             (square(20, 107, 128, (128, 128)), 1.0)]
    a, b = reading_features(small), reading_features(large)
    assert a.shape == (3, len(FEATURES)) and a[0, 2] == -1.0 and a[2, 3] == -1.0
    assert np.allclose(a[:, [0, 1, 4, 5]], b[:, [0, 1, 4, 5]], rtol=0.02)


def test_choose_takes_the_reading_that_wins_most_comparisons():
    """A ranker that prefers the more distinct reading of any two picks the most distinct one, and reports how
    likely it beats the last (the largest box's) reading."""
    from sklearn.ensemble import GradientBoostingClassifier

    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, len(FEATURES)))
    model = GradientBoostingClassifier(n_estimators=20, max_depth=2, random_state=0).fit(x, (x[:, 0] > 0).astype(int))
    ranker = ReadingRanker.from_sklearn(model)
    readings = [(square(28, 35, 24), 1.0), (square(24, 39, 36), 3.0), (square(10, 53, 64), 2.0)]
    best, p = ranker.choose(readings)
    assert best == 1 and p > 0.8
    assert ranker.choose(readings[:1]) == (0, 0.0)


@pytest.mark.filterwarnings("ignore")
def test_the_ranker_stage_fits_on_the_modules_readings_of_training_slices(net):
    from lib.training.pool import synthetic_case
    from lib.training.ranker_stage import ranker_slices, train_ranker

    sources = {"generated": [synthetic_case(np.random.default_rng(5000 + i)) for i in range(2)]}
    x, y, groups = ranker_slices(net, sources, per_source=4)
    assert x.shape == (len(y), len(FEATURES)) and len(np.unique(groups)) == 4 and 0 <= y.min() <= y.max() <= 1
    saved = net.ranker
    try:
        ranker = train_ranker(net, per_source=4, sources=sources)
        assert net.ranker is ranker and ranker.root.numel() == 150
    finally:
        net.ranker = saved
