"""The approximation families' plaintext simulations against their published formulas and the exact functions."""
from __future__ import annotations

import math

import pytest
import torch

from baselines.mpc.approximations import (
    FAMILIES,
    MPC_FAMILIES,
    PLAIN,
    exp_limit,
    exp_nimbus,
    exp_puma,
    get_approximation,
    inv_sqrt_nr,
    inv_sqrt_range_reduced,
    reciprocal_positive,
)

GRID = torch.linspace(-8.0, 8.0, 32001, dtype=torch.float64)
GELU = torch.nn.functional.gelu(GRID)


def test_puma_gelu_matches_published_pieces_and_stays_within_0_0141() -> None:
    x, y = GRID, get_approximation("puma").gelu(PLAIN, GRID)
    f0 = -0.011034134030615728 * x**3 - 0.11807612951181953 * x**2 - 0.42226581151983866 * x - 0.5054031199708174
    f1 = (0.0018067462606141187 * x**6 - 0.037688200365904236 * x**4 + 0.3603292692789629 * x**2 + 0.5 * x
          + 0.008526321541038084)
    expected = torch.where(x < -4, 0.0, torch.where(x < -1.95, f0, torch.where(x <= 3, f1, x)))
    assert torch.allclose(y, expected, atol=1e-12)
    err = (y - GELU).abs()
    # PUMA's stated bound holds except at the end of F1's segment: (2.97, 3] reaches 0.0199 at x = 3
    # with the published coefficients (F1(3) = 3.0158 vs GELU(3) = 2.9960).
    assert err[x <= 2.97].max() < 0.0141
    assert err.max() == pytest.approx(0.0199, abs=5e-4)


def test_nimbus_and_mpcformer_gelu_follow_their_formulas() -> None:
    x = GRID
    nimbus = torch.where(x < -1.8, 0.0, torch.where(
        x <= 0.5, 0.17025471961795552 * x**2 + 0.32421075145645123 * x - 0.006946478426716862, x))
    assert torch.allclose(get_approximation("nimbus").gelu(PLAIN, x), nimbus, atol=1e-12)
    assert torch.allclose(get_approximation("mpcformer").gelu(PLAIN, x), 0.125 * x**2 + 0.25 * x + 0.5, atol=1e-12)


@pytest.mark.parametrize("family, bound", [("crypten", 1e-3), ("puma", 0.02), ("nimbus", 0.18)])
def test_gelu_error_against_exact_on_grid(family: str, bound: float) -> None:
    assert (get_approximation(family).gelu(PLAIN, GRID) - GELU).abs().max() < bound


def test_mpcformer_quad_gelu_is_far_from_gelu_without_distillation() -> None:
    err = (get_approximation("mpcformer").gelu(PLAIN, GRID) - GELU).abs()
    assert err[GRID.abs() <= 2].max() > 0.5  # a quadratic cannot follow GELU; MPCFormer distils around it


def test_exp_variants_follow_their_formulas() -> None:
    x = torch.linspace(-20.0, 0.0, 2001, dtype=torch.float64)
    assert torch.allclose(exp_limit(x, 8), (1 + x / 256) ** 256)
    assert torch.allclose(exp_puma(PLAIN, x), torch.where(x < -14, 0.0, (1 + x / 32) ** 32))
    cubic = 0.0291786417536755 * x**3 + 0.26332572942924737 * x**2 + 0.8318065569430768 * x + 0.9708981428645548
    assert torch.allclose(exp_nimbus(PLAIN, x), torch.where(x <= -3.9, 0.0, cubic))


@pytest.mark.parametrize("family, bound", [("crypten", 0.01), ("puma", 0.05), ("nimbus", 0.1), ("mpcformer", 0.7)])
def test_softmax_against_exact_with_padding(family: str, bound: float) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 16, 16, generator=g, dtype=torch.float64) * 2
    mask = torch.ones(4, 1, 1, 16, dtype=torch.float64)
    mask[1, ..., 10:] = 0
    approx = get_approximation(family)
    y = approx.softmax(PLAIN, x, mask)
    ref = get_approximation("exact").softmax(PLAIN, x, mask)
    assert (y - ref).abs().max() < bound
    assert y[1, ..., 10:].abs().max() == 0  # masked keys get no weight
    assert torch.allclose(y.sum(-1), torch.ones(4, 3, 16, dtype=torch.float64), atol=1e-6)


def test_mpcformer_2quad_is_the_published_ratio() -> None:
    x = torch.randn(2, 8, dtype=torch.float64)
    expected = (x + 5) ** 2 / ((x + 5) ** 2).sum(-1, keepdim=True)
    assert torch.allclose(get_approximation("mpcformer").softmax(PLAIN, x), expected, atol=1e-9)


def test_newton_raphson_reciprocal_and_inv_sqrt_converge_in_their_ranges() -> None:
    v = torch.linspace(1.0, 150.0, 1000, dtype=torch.float64)
    assert ((reciprocal_positive(v) * v) - 1).abs().max() < 1e-6
    assert ((inv_sqrt_nr(v, 3) * v.sqrt()) - 1).abs().max() < 5e-3
    small = torch.linspace(1e-3, 1e-2, 100, dtype=torch.float64)
    assert ((inv_sqrt_nr(small, 3) * small.sqrt()) - 1).abs().max() > 0.5  # CrypTen's 3 steps fail here
    assert ((inv_sqrt_nr(small, 12) * small.sqrt()) - 1).abs().max() < 1e-6


def test_registry_names_the_choices_and_accepts_per_function_overrides() -> None:
    assert set(MPC_FAMILIES) == {"crypten", "puma", "nimbus", "mpcformer"}
    with pytest.raises(ValueError, match="choices"):
        get_approximation("bumblebee")
    with pytest.raises(ValueError, match="gelu variant"):
        get_approximation({"base": "puma", "gelu": "relu"})
    with pytest.raises(ValueError, match="override"):
        get_approximation({"base": "puma", "layernorm": "batchnorm"})
    mixed = get_approximation({"base": "puma", "gelu": "nimbus", "inv_sqrt_iters": 3})
    assert (mixed.gelu_variant, mixed.softmax_variant, mixed.inv_sqrt_iters) == ("nimbus", "puma", 3)
    assert mixed.name == "puma+gelu=nimbus+inv_sqrt_iters=3"
    assert FAMILIES["crypten"].inv_sqrt_iters == 3 and math.isclose(FAMILIES["crypten"].reciprocal_iters, 10)


def test_range_reduced_inv_sqrt_covers_real_normalisation_inputs() -> None:
    v = torch.logspace(-4.5, 6, 5000, dtype=torch.float64).view(50, 100, 1)
    rel = (inv_sqrt_range_reduced(PLAIN, v, iters=5) * v.sqrt() - 1).abs().max()
    assert rel < 1e-6
    assert FAMILIES["puma"].inv_sqrt_variant == "range_reduced" and FAMILIES["crypten"].inv_sqrt_variant == "crypten"
    big = torch.tensor([600.0, 5000.0], dtype=torch.float64)
    assert not torch.isfinite(inv_sqrt_nr(big, 3) * big.sqrt()).all() or \
        (inv_sqrt_nr(big, 3) * big.sqrt() - 1).abs().min() > 0.5


def test_crypten_tanh_gelu_diverges_beyond_its_exp_range() -> None:
    # CrypTen's sigmoid: exp(-t) as (1 - t/512)^512 with t = |2z|; past t = 1024 (GELU input ~24) |base| > 1.
    y = get_approximation("crypten").gelu(PLAIN, torch.tensor([10.0, 25.0], dtype=torch.float64))
    assert abs(y[0].item() - 10.0) < 1e-3 and not (abs(y[1].item() - 25.0) < 1.0)
