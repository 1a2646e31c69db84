"""Distance correlation between plaintext and what the cloud sees, in both conventions (STIP.md).

`dcor` (per-vector, the paper's Fig. 6): pair element i of x with element i of x' over the d
features of one vector, averaged over vectors. `dcor_samples` (sample-wise, split-learning
convention): rows are samples, features are columns; a permutation gives exactly 1.0 there.
Both use the `dcor` package. The per-vector convention keeps every one of the d features: its samples are
one-dimensional, so dcor's AVL algorithm computes the exact statistic in O(d log d) (a cap on the features
would measure a smaller d: 2,048 of 8,192 features read 0.035 where all of them read 0.019). The sample-wise
convention subsamples rows, because its cost is O(n^2) in the row count.
For weights (Fig. 6a) `dcor_parameters_samples` adds the sample-wise convention with dcor's bias-corrected
(u-centred) estimator: the plain estimator of d-dimensional samples reads ~0.99 for ANY pair of random matrices
(its bias grows with the dimension), the u-centred one ~0 for independent ones.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

log = logging.getLogger(__name__)

DEFAULT_VECTORS = 16    # vectors averaged for the per-vector convention
DEFAULT_SAMPLES = 256   # rows kept for the sample-wise convention


def _as_rows(x: torch.Tensor) -> np.ndarray:
    """(..., d) tensor -> (n, d) float64 rows."""
    return x.detach().reshape(-1, x.shape[-1]).to(torch.float64).cpu().numpy()


def _subsample(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of min(n, k) rows drawn without replacement."""
    return np.sort(rng.choice(n, size=min(n, k), replace=False))


def dcor_per_vector(x: torch.Tensor, y: torch.Tensor, n_vectors: int = DEFAULT_VECTORS, seed: int = 0) -> float:
    """Mean over subsampled vectors of dcor(x_i, y_i), all d features being the samples (paper's Fig. 6)."""
    import dcor  # noqa: PLC0415 - dcor (numba) loads in seconds; only privacy rows need it

    a, b = _as_rows(x), _as_rows(y)
    if a.shape != b.shape:
        raise ValueError(f"per-vector dcor needs equal shapes, got {a.shape} and {b.shape}")
    rng = np.random.default_rng(seed)
    rows = _subsample(a.shape[0], n_vectors, rng)
    method = dcor.DistanceCovarianceMethod.AVL  # exact for 1-D samples, O(d log d): no feature is dropped
    vals = [dcor.distance_correlation(a[i], b[i], method=method) for i in rows]
    return float(np.mean(vals))


def dcor_samples(x: torch.Tensor, y: torch.Tensor, n_samples: int = DEFAULT_SAMPLES, seed: int = 0) -> float:
    """dcor(X, Y) with rows as samples (split-learning convention); 1.0 for any permutation."""
    import dcor  # noqa: PLC0415 - dcor (numba) loads in seconds; only privacy rows need it

    a, b = _as_rows(x), _as_rows(y)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"sample-wise dcor needs the same number of rows, got {a.shape[0]} and {b.shape[0]}")
    if a.shape[0] < 2:
        raise ValueError("sample-wise dcor needs at least 2 rows (batch x seq_len >= 2)")
    rows = _subsample(a.shape[0], n_samples, np.random.default_rng(seed))
    return float(dcor.distance_correlation(a[rows], b[rows]))


def dcor_both(x: torch.Tensor, y: torch.Tensor, seed: int = 0, n_vectors: int = DEFAULT_VECTORS,
              n_samples: int = DEFAULT_SAMPLES) -> dict[str, float]:
    """Both conventions at once: {"dcor": per-vector, "dcor_samples": sample-wise (None if < 2 rows)}."""
    out = {"dcor": dcor_per_vector(x, y, n_vectors=n_vectors, seed=seed)}
    if _as_rows(x).shape[0] >= 2:
        out["dcor_samples"] = dcor_samples(x, y, n_samples=n_samples, seed=seed)
    return out


def dcor_parameters(original: torch.Tensor, transformed: torch.Tensor, n_vectors: int = DEFAULT_VECTORS,
                    seed: int = 0) -> float:
    """Per-row dcor between an original and a transformed weight matrix of the same shape (Fig. 6a)."""
    return dcor_per_vector(original, transformed, n_vectors=n_vectors, seed=seed)


def dcor_parameters_samples(original: torch.Tensor, transformed: torch.Tensor, hidden: int,
                            n_samples: int = DEFAULT_SAMPLES, seed: int = 0) -> float:
    """Bias-corrected sample-wise dcor of two weight matrices (Fig. 6a, beside the per-row convention).

    Samples are the matrix's vectors along its `hidden`-wide axis (the axis both STIP and a random projection
    transform; the last axis when both are that wide), paired by their index on the other axis, `n_samples` of
    them drawn; the value is sqrt(max(0, dcor.u_distance_correlation_sqr)), the bias-corrected dcor^2's root."""
    import dcor  # noqa: PLC0415 - dcor (numba) loads in seconds; only privacy rows need it

    if original.shape != transformed.shape or original.ndim != 2:
        raise ValueError(f"parameter dcor needs two matrices of one shape, got {tuple(original.shape)} and "
                         f"{tuple(transformed.shape)}")
    if original.shape[-1] == hidden:
        a, b = _as_rows(original), _as_rows(transformed)
    elif original.shape[0] == hidden:
        a, b = _as_rows(original.T), _as_rows(transformed.T)
    else:
        raise ValueError(f"a {tuple(original.shape)} matrix has no axis of the hidden size {hidden}")
    rows = _subsample(a.shape[0], n_samples, np.random.default_rng(seed))
    u = float(dcor.u_distance_correlation_sqr(a[rows], b[rows]))
    return float(np.sqrt(max(u, 0.0)))


def dcor_independent(d: int, n_vectors: int = DEFAULT_VECTORS, seed: int = 0) -> float:
    """Per-vector dcor of pairs of independent Gaussian vectors of length d: the floor that `dcor` at width d
    must be read against (at these widths a permutation reads about the same, while the tokens fall)."""
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n_vectors, d, generator=gen), torch.randn(n_vectors, d, generator=gen)
    return dcor_per_vector(x, y, n_vectors=n_vectors, seed=seed)
