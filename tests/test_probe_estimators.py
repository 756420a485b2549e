"""The custom probe estimators: the scikit-learn contract, and what they promise."""

import numpy as np
import pytest
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from anira.probes.estimators import (
    ProbeDirectionAblation,
    RandomDirectionAblation,
    default_probe,
    raw_coef,
)


@parametrize_with_checks(
    [
        ProbeDirectionAblation(),
        ProbeDirectionAblation(estimator=make_pipeline(StandardScaler(), RidgeCV()), max_rank=1),
        RandomDirectionAblation(n_components=2, random_state=0),
    ]
)
def test_sklearn_contract(estimator, check):
    check(estimator)


def _planted(n=400, d=12, seed=0):
    rng = np.random.default_rng(seed)
    # anisotropic scales: the raw-basis direction differs from the standardised one
    X = rng.normal(size=(n, d)) * rng.uniform(0.1, 10.0, size=d)
    w = rng.normal(size=d)
    y = (X @ w > 0).astype(int)
    return X, y


def test_ablating_the_probe_direction_makes_the_probe_constant():
    X, y = _planted()
    ablation = ProbeDirectionAblation().fit(X, y)
    assert ablation.n_components_ == 1
    scores = ablation.estimator_.decision_function(ablation.transform(X))
    assert np.ptp(scores) < 1e-8 * max(1.0, np.abs(scores).max())


def test_raw_coef_undoes_standardisation():
    X, y = _planted()
    probe = default_probe().fit(X, y)
    w = raw_coef(probe)[0]
    scores = probe.decision_function(X)
    # decision = w_raw · x + constant
    assert np.allclose(scores - X @ w, (scores - X @ w)[0])


def test_multiclass_probe_spans_k_minus_one_directions():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(600, 10))
    y = np.digitize(X[:, 0] + X[:, 1], [-1, 0, 1])  # 4 classes, a 1-D ordinal code
    ablation = ProbeDirectionAblation().fit(X, y)
    assert 1 <= ablation.n_components_ <= 3
    assert np.allclose(ablation.components_ @ ablation.components_.T, np.eye(ablation.n_components_), atol=1e-10)
    assert ProbeDirectionAblation(max_rank=1).fit(X, y).n_components_ == 1


def test_random_directions_are_orthonormal_and_seeded():
    X = np.zeros((5, 16))
    a = RandomDirectionAblation(n_components=3, random_state=7).fit(X).components_
    b = RandomDirectionAblation(n_components=3, random_state=7).fit(X).components_
    assert np.array_equal(a, b)
    assert np.allclose(a @ a.T, np.eye(3), atol=1e-12)
    assert RandomDirectionAblation(n_components=40, random_state=0).fit(X).n_components_ == 16


def test_transform_checks_width():
    X, y = _planted()
    ablation = ProbeDirectionAblation().fit(X, y)
    with pytest.raises(ValueError):
        ablation.transform(X[:, :5])
