"""The nonlinear approximations of PUMA and Nimbus as jax functions, patched into the Flax models (runs in .venv-spu).

Copied from SecretFlow SPU's own code, coefficient for coefficient:
- PUMA: `hack_gelu` and `hack_softmax` (its zeroing moved before the sum, see puma_softmax) of
  examples/python/ml/flax_llama7b/flax_llama7b.py at secretflow/spu commit 8a8def9f (2023-07-17, the PUMA release);
  LayerNorm is SPU's own rsqrt (PUMA patches none).
- Nimbus: `ours_fake_gelu` (degree 2 on [-1.8, 0.5]) and `ours_fake_softmax` (cubic exp above -3.9) of
  examples/python/ml/Nimbus/nonlinear.py at secretflow/spu commit 9ef61f5d (2024-10-31, "Nimbus update").
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import jax.nn as jnn
import jax.numpy as jnp
from transformers import modeling_flax_utils as mfu

APPROXIMATIONS = ("puma", "nimbus")


def puma_gelu(x):
    """PUMA's GeLU: 0 below -4, cubic on [-4, -1.95), degree-6 even+linear on [-1.95, 3], x above 3."""
    b0 = x < -4.0
    b1 = x < -1.95
    b2 = x > 3.0
    b3 = b1 ^ b2 ^ True  # x in [-1.95, 3.0]
    b4 = b0 ^ b1  # x in [-4, -1.95)
    a = jnp.array([-0.5054031199708174, -0.42226581151983866, -0.11807612951181953, -0.011034134030615728])
    b = jnp.array([0.008526321541038084, 0.5, 0.3603292692789629, 0.0, -0.037688200365904236, 0.0,
                   0.0018067462606141187])
    x2 = jnp.square(x)
    x3 = jnp.multiply(x, x2)
    x4 = jnp.square(x2)
    x6 = jnp.square(x3)
    seg1 = a[3] * x3 + a[2] * x2 + a[1] * x + a[0]
    seg2 = b[6] * x6 + b[4] * x4 + b[2] * x2 + b[1] * x + b[0]
    return b2 * x + b4 * seg1 + b3 * seg2


def puma_softmax(x, axis=-1, where=None, initial=None):
    """PUMA's softmax: max-subtracted exp (SPU's exp, fxp_exp_mode taylor), exp of inputs below -14 zeroed.

    As PUMA's paper defines exp (0 below -14), the zeroing comes before the sum. The example's `hack_softmax`
    zeroes after dividing, which equals this only while no score is far below -14: a causal mask's bias (clamped
    to about -1.8e13 in SPU's fixed point) sends the Taylor exp to +-1e8 and the row sum with it (GPT-2's top-1
    fell to 6% at 16 tokens). Same operations, one multiplication moved.
    """
    x_max = jnp.max(x, axis, where=where, initial=initial, keepdims=True)
    x = x - x_max
    b = x > -14
    nexp = b * jnp.exp(x)
    divisor = jnp.sum(nexp, axis, where=where, keepdims=True)
    return nexp / divisor


def nimbus_gelu(x):
    """Nimbus's GeLU: 0 below -1.8, a degree-2 polynomial on [-1.8, 0.5], x above 0.5."""
    left, right = -1.8, 0.5
    zero_mask = x < left
    right_mask = x > right
    poly_mask = zero_mask ^ right_mask ^ True
    c = jnp.array([0.17025471961795552, 0.32421075145645123, -0.006946478426716862])
    poly = c[0] * jnp.square(x) + c[1] * x + c[2]
    return right_mask * x + poly_mask * poly


def nimbus_exp(x):
    """Nimbus's exp on (-3.9, 0]: a cubic in Horner form."""
    c = jnp.array([0.0291786417536755, 0.26332572942924737, 0.8318065569430768, 0.9708981428645548])
    return x * (x * (x * c[0] + c[1]) + c[2]) + c[3]


def nimbus_softmax(x, axis=-1, where=None, initial=None):
    """Nimbus's softmax: max-subtracted, its cubic exp above -3.9 and 0 below."""
    x = x - jnp.max(x, axis=axis, keepdims=True)
    e = nimbus_exp(x) * (x > -3.9)
    return e / jnp.sum(e, axis, keepdims=True)


FUNCTIONS: dict[str, dict[str, Callable]] = {
    "puma": {"gelu": puma_gelu, "softmax": puma_softmax},
    "nimbus": {"gelu": nimbus_gelu, "softmax": nimbus_softmax},
}


@contextlib.contextmanager
def patched(approx: str) -> Iterator[None]:
    """Within the block, the Flax models' GeLU (ACT2FN gelu, gelu_new) and jax.nn.softmax are `approx`'s."""
    if approx not in FUNCTIONS:
        raise ValueError(f"approx {approx!r} has no SPU implementation; choices: {list(APPROXIMATIONS)}")
    fns = FUNCTIONS[approx]
    keys = [k for k in ("gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh") if k in mfu.ACT2FN]
    saved_act = {k: mfu.ACT2FN[k] for k in keys}
    saved_softmax = jnn.softmax
    try:
        for k in keys:
            mfu.ACT2FN[k] = fns["gelu"]
        jnn.softmax = fns["softmax"]
        yield
    finally:
        mfu.ACT2FN.update(saved_act)
        jnn.softmax = saved_softmax
