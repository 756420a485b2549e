"""Scikit-learn estimators the representation and causal suites need beyond stock ones.

Both are transformers that remove a linear subspace from their input,
``X <- X - (X U^T) U`` with ``U`` (k, d) orthonormal rows (``components_``):

* :class:`ProbeDirectionAblation` learns ``U`` as the row space of a fitted
  linear probe's weights, *un-standardised back to the raw basis*, so after the
  transform that probe's decision function is constant (one step of Ravfogel et
  al.'s INLP). The causal suite applies the same ``U`` inside the model through
  a hook; ``transform`` is the numpy twin used to check it.
* :class:`RandomDirectionAblation` draws ``U`` at random with the same rank: the
  control that says how much removing *any* k directions would change.

Both follow the scikit-learn contract (``__init__`` only stores parameters,
fitted attributes end in ``_``, ``fit`` returns ``self``) and are covered by
the single ``parametrize_with_checks`` test in tests/test_probe_estimators.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, clone, is_classifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data


def default_probe() -> Pipeline:
    """The classification probe family of the suites: standardise, then L2 logistic regression."""
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))


def raw_coef(probe: Any) -> np.ndarray:
    """The fitted linear probe's weights in the raw input basis, shape (k, d).

    A pipeline ``StandardScaler -> linear model`` computes ``w · (x - mu) / s``;
    in the raw basis that is ``(w / s) · x`` plus a constant, so the direction
    the probe reads is ``w / s``, not ``w``. Features with zero variance get
    scale 1 from the scaler and weight ~0, so they stay harmless.
    """
    scale = np.ones(1)
    model = probe
    if isinstance(probe, Pipeline):
        scale_steps = [step for _, step in probe.steps[:-1] if isinstance(step, StandardScaler)]
        for step in scale_steps:
            if step.scale_ is not None:
                scale = scale * step.scale_
        model = probe.steps[-1][1]
    coef = np.atleast_2d(np.asarray(model.coef_, dtype=float))  # (k, d)
    return coef / scale


def orthonormal_rows(matrix: np.ndarray, tol: float = 1e-8, max_rank: int | None = None) -> np.ndarray:
    """An orthonormal basis (rows) of the row space of ``matrix`` (k, d).

    Singular directions below ``tol`` times the largest are dropped: e.g. a
    multinomial probe's K weight rows span at most K - 1 directions.
    """
    matrix = np.atleast_2d(np.asarray(matrix, dtype=float))
    if matrix.size == 0 or not np.any(matrix):
        return np.zeros((0, matrix.shape[1]))
    _, sing, vt = np.linalg.svd(matrix, full_matrices=False)
    keep = sing > tol * sing[0]
    basis = vt[keep]
    return basis if max_rank is None else basis[:max_rank]


def project_out(X: np.ndarray, components: np.ndarray) -> np.ndarray:
    """``X - (X U^T) U`` for orthonormal rows ``U`` (k, d)."""
    if components.shape[0] == 0:
        return np.array(X, dtype=float, copy=True)
    return X - (X @ components.T) @ components


class _SubspaceAblation(TransformerMixin, BaseEstimator):
    """Shared ``transform``: remove the fitted ``components_`` from X."""

    def transform(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "components_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return project_out(X, self.components_)


class ProbeDirectionAblation(_SubspaceAblation):
    """Remove the directions a linear probe reads from the data.

    Parameters
    ----------
    estimator : a linear classifier or regressor (possibly a pipeline ending in
        one, after a ``StandardScaler``) exposing ``coef_``; default
        :func:`default_probe`. Fitted on a clone.
    max_rank : keep at most this many directions (largest singular values
        first); ``None`` keeps the whole row space of the weights.
    tol : relative singular-value cut-off for the row space.

    Attributes
    ----------
    estimator_ : the fitted probe.
    components_ : (k, n_features_in_) orthonormal rows spanning the probe's
        raw-basis weights; ``transform`` projects them out.
    n_components_ : k.
    """

    def __init__(self, estimator: Any = None, max_rank: int | None = None, tol: float = 1e-8) -> None:
        self.estimator = estimator
        self.max_rank = max_rank
        self.tol = tol

    def fit(self, X: Any, y: Any) -> ProbeDirectionAblation:
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=False)
        estimator = default_probe() if self.estimator is None else clone(self.estimator)
        if is_classifier(estimator):
            check_classification_targets(y)
        if self.max_rank is not None and self.max_rank < 1:
            raise ValueError(f"max_rank must be >= 1 or None, got {self.max_rank}")
        self.estimator_ = estimator.fit(X, y)
        self.components_ = orthonormal_rows(raw_coef(self.estimator_), self.tol, self.max_rank)
        self.n_components_ = int(self.components_.shape[0])
        return self

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True  # fit learns from y
        return tags


class RandomDirectionAblation(_SubspaceAblation):
    """Remove ``n_components`` uniformly random orthonormal directions (the control).

    Gaussian draws are rotation invariant, so their orthonormalised span is a
    uniformly random k-dimensional subspace.

    Attributes
    ----------
    components_ : (k, n_features_in_) orthonormal rows, k = min(n_components, n_features_in_).
    n_components_ : k.
    """

    def __init__(self, n_components: int = 1, random_state: Any = None) -> None:
        self.n_components = n_components
        self.random_state = random_state

    def fit(self, X: Any, y: Any = None) -> RandomDirectionAblation:
        X = validate_data(self, X, dtype=np.float64)
        if self.n_components < 1:
            raise ValueError(f"n_components must be >= 1, got {self.n_components}")
        rng = check_random_state(self.random_state)
        k = min(int(self.n_components), X.shape[1])
        self.components_ = random_orthonormal(k, X.shape[1], rng)
        self.n_components_ = k
        return self


def random_orthonormal(k: int, d: int, rng: np.random.RandomState | np.random.Generator) -> np.ndarray:
    """k orthonormal rows spanning a uniformly random subspace of R^d."""
    gauss = rng.standard_normal((d, k))
    q, r = np.linalg.qr(gauss)
    # fix QR's sign ambiguity so the draw is exactly uniform (Mezzadri 2007)
    q = q * np.sign(np.diag(r))
    return q.T
