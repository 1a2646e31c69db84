"""The non-linear approximations of the 2PC papers, written once over a backend so that the same code
runs as a float64 plaintext simulation (`PlainOps`) and over CrypTen secret shares (`MpcOps`).

Families (BASELINES.md): `crypten`, `puma`, `nimbus`, `mpcformer`; plus `exact`, a plaintext-only
reference. A family picks one variant per function (`gelu`, `softmax`, `silu`) and the Newton-Raphson
iteration counts of `reciprocal` and `inv_sqrt`; any of them can be overridden per function:
`get_approximation({"base": "puma", "gelu": "nimbus", "inv_sqrt_iters": 4})`.

Choices recorded here (not given by the papers):
- `crypten` GELU is the tanh form, tanh(z) = 2 sigmoid(2z) - 1 with CrypTen's reciprocal-based sigmoid
  (CrypTen has no GELU and its erf diverges for |x| > ~2.5).
- Every family uses CrypTen's reciprocal (10 NR steps from 3 exp(1 - 2x) + 0.003). `crypten` keeps
  CrypTen's inv_sqrt (3 NR steps from 2.2 exp(-(x/2 + 0.2)) + 0.2 - x/1024), accurate only on ~[0.5, 150]
  and divergent above ~500; LayerNorm/RMSNorm inputs of real models leave that range (small variances at
  random init, thousands in LLaMA's residual stream). `puma`, `nimbus`, `mpcformer` use
  `range_reduced`: a start from one batched comparison against 4^k thresholds, then 5 NR steps (the
  papers use an accurate rsqrt; PUMA's is SPU's exponent-based one). It acts on one value per token.
  SiLU (LLaMA) is x * CrypTen's sigmoid for every family.
- Masked softmax positions (padding, causal) are zeroed by a public 0/1 mask: scores are multiplied by
  the mask before exp (so masked exps stay finite) and the numerators after it; the max ignores them.
- 2Quad divides its row sum by the (public) number of unmasked positions before the reciprocal and
  multiplies back after, because sums of (x + 5)^2 leave CrypTen's reciprocal range (STACK.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Protocol

import torch

from baselines.mpc.ops import PlainOps
from protocols.contract import AccuracyBound

Tensor = Any  # torch.Tensor (float64) in the simulation, crypten MPCTensor in MPC
MASK_FILL = 1.0e4  # what masked scores become for the max: below any real attention score
SOFTMAX_DENOMINATORS = ("raw", "scaled")


class Backend(Protocol):
    """What an approximation needs beyond the arithmetic both tensor types share (see ops.py)."""

    is_mpc: bool

    def lt(self, x: Tensor, c: float) -> Tensor: ...

    def gt(self, x: Tensor, c: float) -> Tensor: ...

    def max(self, x: Tensor, dim: int) -> Tensor: ...


PLAIN = PlainOps()


# ---------------------------------------------------------------- building blocks (CrypTen's algorithms)
def exp_limit(x: Tensor, iters: int) -> Tensor:
    """exp(x) ~ (1 + x / 2^iters)^(2^iters) by `iters` squarings (CrypTen's exp)."""
    y = x.div(2**iters).add(1.0)
    for _ in range(iters):
        y = y.square()
    return y


def reciprocal_positive(x: Tensor, iters: int = 10, initial: float | None = None) -> Tensor:
    """1/x for x > 0 by Newton-Raphson from 3 exp(1 - 2x) + 0.003 (CrypTen, reciprocal_all_pos)."""
    y = exp_limit(x.mul(-2.0).add(1.0), 8).mul(3.0).add(0.003) if initial is None else x.mul(0.0).add(initial)
    for _ in range(iters):
        y = y.add(y.sub(y.square().mul(x)))
    return y


def inv_sqrt_nr(x: Tensor, iters: int = 3) -> Tensor:
    """1/sqrt(x) by Newton-Raphson from 2.2 exp(-(x/2 + 0.2)) + 0.2 - x/1024 (CrypTen's inv_sqrt)."""
    y = exp_limit(x.div(2.0).add(0.2).neg(), 8).mul(2.2).add(0.2).sub(x.div(1024.0))
    for _ in range(iters):
        y = y.mul(y.square().mul(x).neg().add(3.0)).div(2.0)
    return y


RANGE_EXPONENTS = range(-8, 11)  # thresholds 4^k: [1.5e-5, 1e6] (16 fractional bits below, ring room above)


def inv_sqrt_range_reduced(ops: Backend, x: Tensor, iters: int = 4) -> Tensor:
    """1/sqrt(x) for x in [4^-8, 4^11] by Newton-Raphson from a piecewise-constant start.

    All thresholds are compared at once (one batched comparison on one value per token); since the
    indicators [x > 4^k] are monotone in k, the start sum_k [x > 4^k] (v_k - v_{k-1}) + v_lo telescopes to
    v_k = 2^-k / sqrt(2), within a factor sqrt(2) of 1/sqrt(x): 4 NR steps give 6e-4, 5 give ~2e-7.
    This plays the role of PUMA's (SPU's) exponent-based rsqrt; the local part is public arithmetic.
    """
    ks = list(RANGE_EXPONENTS)
    shape = (len(ks),) + (1,) * x.dim()
    thresholds = torch.tensor([4.0**k for k in ks], dtype=torch.float64).view(shape)
    starts = [2.0 ** (-k) / math.sqrt(2.0) for k in ks]
    v_lo = 2.0 ** (-(ks[0] - 1)) / math.sqrt(2.0)
    deltas = torch.tensor([starts[0] - v_lo] + [starts[i] - starts[i - 1] for i in range(1, len(ks))],
                          dtype=torch.float64).view(shape)
    if ops.is_mpc:
        thresholds, deltas = thresholds.float(), deltas.float()
    above = ops.gt(x.unsqueeze(0).expand(len(ks), *x.size()), thresholds)
    y = above.mul(deltas).sum(0).add(v_lo)
    for _ in range(iters):
        y = y.mul(y.square().mul(x).neg().add(3.0)).div(2.0)
    return y


def sigmoid_crypten(ops: Backend, x: Tensor) -> Tensor:
    """CrypTen's 'reciprocal' sigmoid: 1/(1 + exp(-|x|)) (9-step exp, 3 NR steps from 0.75), mirrored."""
    ltz = ops.lt(x, 0.0)
    pos = x.mul(ltz.mul(-2.0).add(1.0))
    pos_out = reciprocal_positive(exp_limit(pos.neg(), 9).add(1.0), iters=3, initial=0.75)
    return pos_out.add(ltz.mul(pos_out.mul(-2.0).add(1.0)))  # where(x < 0, 1 - p, p)


def indicators(ops: Backend, x: Tensor, tests: list[tuple[str, float]]) -> list[Tensor]:
    """[x < c] ("lt") or [x > c] ("gt") for each (op, c) of `tests`, in ONE comparison call.

    In MPC a comparison costs the same rounds whatever its size, so PUMA's GeLU asks its three at once on
    the stacked [x | x | -x] against [c0 | c1 | -c2] (x > c is -x < -c), instead of one after another.
    """
    if any(op not in ("lt", "gt") for op, _ in tests):
        raise ValueError(f"indicator tests must be ('lt' | 'gt', threshold); got {tests}")
    stacked = ops.cat([(x if op == "lt" else x.neg()).unsqueeze(0) for op, _ in tests], dim=0)
    shape = (len(tests),) + (1,) * x.dim()
    thresholds = torch.tensor([c if op == "lt" else -c for op, c in tests], dtype=torch.float64).view(shape)
    below = ops.lt(stacked, thresholds.float() if ops.is_mpc else thresholds)
    return [below[j] for j in range(len(tests))]


def _select(mask_keep: Tensor, value: Tensor) -> Tensor:
    """value where the 0/1 indicator is 1, else 0 (one multiplication in MPC)."""
    return value.mul(mask_keep)


# ---------------------------------------------------------------- GELU variants
def gelu_exact(ops: Backend, x: Tensor) -> Tensor:
    """Reference GELU, 0.5 x (1 + erf(x / sqrt 2)); plaintext only."""
    _plaintext_only(ops, "gelu=exact")
    return torch.nn.functional.gelu(x)


def gelu_crypten_tanh(ops: Backend, x: Tensor) -> Tensor:
    """0.5 x (1 + tanh(sqrt(2/pi)(x + 0.044715 x^3))), tanh = 2 sigmoid(2z) - 1 (CrypTen sigmoid)."""
    z = x.add(x.square().mul(x).mul(0.044715)).mul(math.sqrt(2.0 / math.pi))
    tanh = sigmoid_crypten(ops, z.mul(2.0)).mul(2.0).sub(1.0)
    return x.mul(tanh.add(1.0)).mul(0.5)


PUMA_F0 = (-0.5054031199708174, -0.42226581151983866, -0.11807612951181953, -0.011034134030615728)
PUMA_F1 = {0: 0.008526321541038084, 1: 0.5, 2: 0.3603292692789629, 4: -0.037688200365904236,
           6: 0.0018067462606141187}


def gelu_puma(ops: Backend, x: Tensor) -> Tensor:
    """PUMA's piecewise GeLU: 0 | cubic F0 on [-4,-1.95) | degree-6 F1 on [-1.95,3] | x (3 comparisons, batched)."""
    b0, b1, b2 = indicators(ops, x, [("lt", -4.0), ("lt", -1.95), ("gt", 3.0)])
    x2 = x.square()
    x3 = x2.mul(x)
    x4 = x2.square()
    x6 = x4.mul(x2)  # pow(p) for odd p >= 5 is broken in CrypTen: products of squares only
    f0 = x3.mul(PUMA_F0[3]).add(x2.mul(PUMA_F0[2])).add(x.mul(PUMA_F0[1])).add(PUMA_F0[0])
    f1 = (x6.mul(PUMA_F1[6]).add(x4.mul(PUMA_F1[4])).add(x2.mul(PUMA_F1[2]))
          .add(x.mul(PUMA_F1[1])).add(PUMA_F1[0]))
    in_f0 = b1.sub(b0)
    in_f1 = b1.add(b2).neg().add(1.0)
    return _select(in_f0, f0).add(_select(in_f1, f1)).add(_select(b2, x))


NIMBUS_GELU = (-0.006946478426716862, 0.32421075145645123, 0.17025471961795552)


def gelu_nimbus(ops: Backend, x: Tensor) -> Tensor:
    """Nimbus GELU: 0 below -1.8, a quadratic on [-1.8, 0.5], x above 0.5 (2 comparisons, batched)."""
    b_low, b_high = indicators(ops, x, [("lt", -1.8), ("gt", 0.5)])
    quad = x.square().mul(NIMBUS_GELU[2]).add(x.mul(NIMBUS_GELU[1])).add(NIMBUS_GELU[0])
    mid = b_low.add(b_high).neg().add(1.0)
    return _select(mid, quad).add(_select(b_high, x))


def gelu_quad(ops: Backend, x: Tensor) -> Tensor:
    """MPCFormer's Quad GeLU, 0.125 x^2 + 0.25 x + 0.5 (no comparison; needs distillation to be accurate)."""
    return x.square().mul(0.125).add(x.mul(0.25)).add(0.5)


# ---------------------------------------------------------------- exp variants (inputs are <= 0 after max)
def exp_crypten(ops: Backend, x: Tensor) -> Tensor:
    """CrypTen's exp, (1 + x/2^8)^(2^8)."""
    return exp_limit(x, 8)


def exp_puma(ops: Backend, x: Tensor) -> Tensor:
    """PUMA's exp: 0 where x < -14, else (1 + x/2^5)^(2^5)."""
    return _select(ops.lt(x, -14.0).neg().add(1.0), exp_limit(x, 5))


NIMBUS_EXP = (0.9708981428645548, 0.8318065569430768, 0.26332572942924737, 0.0291786417536755)


def exp_nimbus(ops: Backend, x: Tensor) -> Tensor:
    """Nimbus's exp: 0 for x <= -3.9, else a cubic fitted on the attention-score distribution."""
    x2 = x.square()
    cubic = x2.mul(x).mul(NIMBUS_EXP[3]).add(x2.mul(NIMBUS_EXP[2])).add(x.mul(NIMBUS_EXP[1])).add(NIMBUS_EXP[0])
    return _select(ops.gt(x, -3.9), cubic)


# ---------------------------------------------------------------- softmax variants
def _masked_for_max(x: Tensor, mask: torch.Tensor | None) -> Tensor:
    """Scores with masked positions pushed to -MASK_FILL so that the row max ignores them."""
    return x if mask is None else x.mul(mask).add((mask - 1.0) * MASK_FILL)


def _softmax_with_exp(exp_fn: Callable[[Backend, Tensor], Tensor]):
    """Softmax = subtract the row max -> exp -> one reciprocal of the row sum -> multiply."""

    def softmax(ops: Backend, x: Tensor, mask: torch.Tensor | None, approx: "Approximation") -> Tensor:
        logits = x.sub(ops.max(_masked_for_max(x, mask), dim=-1))
        if mask is not None:
            logits = logits.mul(mask)
        num = exp_fn(ops, logits)
        if mask is not None:
            num = num.mul(mask)
        return num.mul(row_sum_reciprocal(num.sum(-1, keepdim=True), x, mask, approx))

    softmax.__doc__ = f"max -> {exp_fn.__name__} -> reciprocal -> multiply."
    return softmax


RECIPROCAL_TARGET = 64.0  # scaled: the row sum / max(1, n / 64) lies in [64 / n, 64] (CrypTen's input_in_01: x 64)


def row_sum_reciprocal(total: Tensor, x: Tensor, mask: torch.Tensor | None, approx: "Approximation") -> Tensor:
    """1 / (row sum of max-subtracted exps), a sum in [1, n] for n attended positions.

    `raw`: CrypTen's reciprocal on the sum itself; its start 3 exp(1 - 2x) + 0.003 (an 8-squaring exp) blows up
    once x passes ~256, so rows of more than ~256 near-equal scores diverge. `scaled` (the remedy, as CrypTen's own
    input_in_01 and SPU's range-normalised reciprocal): divide by the public c = max(1, n / 64) first and by c
    again after, so the reciprocal sees [64 / n, 64]; dividing by a public value is local in 2PC (no rounds, no
    bytes), and with n <= 64 nothing changes.
    """
    if approx.softmax_denominator == "raw":
        return reciprocal_positive(total, iters=approx.reciprocal_iters)
    count = (torch.tensor(float(x.size(-1)), dtype=torch.float64) if mask is None
             else mask.sum(-1, keepdim=True).to(torch.float64))
    scale = (count / RECIPROCAL_TARGET).clamp(min=1.0)
    if bool((scale == 1.0).all()):
        return reciprocal_positive(total, iters=approx.reciprocal_iters)
    return reciprocal_positive(total.mul(1.0 / scale), iters=approx.reciprocal_iters).mul(1.0 / scale)


def softmax_exact(ops: Backend, x: Tensor, mask: torch.Tensor | None, approx: "Approximation") -> Tensor:
    """Reference softmax over unmasked positions; plaintext only."""
    _plaintext_only(ops, "softmax=exact")
    if mask is not None:
        x = x.masked_fill(mask == 0, float("-inf"))
    return torch.softmax(x, dim=-1)


def softmax_2quad(ops: Backend, x: Tensor, mask: torch.Tensor | None, approx: "Approximation") -> Tensor:
    """MPCFormer's 2Quad: (x + 5)^2 / sum over unmasked positions of (x + 5)^2 (no max)."""
    num = x.add(5.0).square()
    if mask is None:
        count = torch.full(tuple(x.size()[:-1]) + (1,), float(x.size(-1)), dtype=torch.float64)
    else:
        num = num.mul(mask)
        count = mask.sum(-1, keepdim=True).clamp(min=1.0)
    mean = num.sum(-1, keepdim=True).mul(1.0 / count)
    return num.mul(reciprocal_positive(mean, iters=approx.reciprocal_iters)).mul(1.0 / count)


# ---------------------------------------------------------------- SiLU variants (LLaMA)
def silu_exact(ops: Backend, x: Tensor) -> Tensor:
    """Reference SiLU; plaintext only."""
    _plaintext_only(ops, "silu=exact")
    return torch.nn.functional.silu(x)


def silu_crypten(ops: Backend, x: Tensor) -> Tensor:
    """x * sigmoid(x) with CrypTen's reciprocal-based sigmoid."""
    return x.mul(sigmoid_crypten(ops, x))


def _plaintext_only(ops: Backend, what: str) -> None:
    if ops.is_mpc:
        raise ValueError(f"approximation {what!r} is a plaintext reference and cannot run in MPC; "
                         f"choose one of {sorted(n for n in FAMILIES if n != 'exact')}")


GELU_VARIANTS: dict[str, Callable] = {"exact": gelu_exact, "crypten_tanh": gelu_crypten_tanh,
                                      "puma": gelu_puma, "nimbus": gelu_nimbus, "quad": gelu_quad}
EXP_VARIANTS: dict[str, Callable] = {"crypten": exp_crypten, "puma": exp_puma, "nimbus": exp_nimbus}
SOFTMAX_VARIANTS: dict[str, Callable] = {"exact": softmax_exact, "2quad": softmax_2quad,
                                         **{k: _softmax_with_exp(f) for k, f in EXP_VARIANTS.items()}}
SILU_VARIANTS: dict[str, Callable] = {"exact": silu_exact, "crypten": silu_crypten}


def _inv_sqrt_exact(ops: Backend, x: Tensor, iters: int) -> Tensor:
    _plaintext_only(ops, "inv_sqrt=exact")
    return x.rsqrt()


INV_SQRT_VARIANTS: dict[str, Callable] = {
    "exact": _inv_sqrt_exact,
    "crypten": lambda ops, x, iters: inv_sqrt_nr(x, iters=iters),
    "range_reduced": lambda ops, x, iters: inv_sqrt_range_reduced(ops, x, iters=iters),
}


def _check(kind: str, name: str, table: dict) -> None:
    if name not in table:
        raise ValueError(f"unknown {kind} variant {name!r}; choices: {sorted(table)}")


@dataclass(frozen=True)
class Approximation:
    """One named choice of approximation per non-linear function; call its methods with a backend."""

    name: str
    gelu_variant: str
    softmax_variant: str
    silu_variant: str = "crypten"
    inv_sqrt_variant: str = "crypten"
    reciprocal_iters: int = 10
    inv_sqrt_iters: int = 3
    softmax_denominator: str = "raw"  # raw (CrypTen's reciprocal of the row sum) | scaled (see row_sum_reciprocal)
    description: str = field(default="", compare=False)
    bound: AccuracyBound | None = field(default=None, compare=False)  # where a run counts as diverged (BOUNDS)

    def __post_init__(self) -> None:
        _check("gelu", self.gelu_variant, GELU_VARIANTS)
        _check("softmax", self.softmax_variant, SOFTMAX_VARIANTS)
        _check("silu", self.silu_variant, SILU_VARIANTS)
        _check("inv_sqrt", self.inv_sqrt_variant, INV_SQRT_VARIANTS)
        _check("softmax_denominator", self.softmax_denominator, {d: None for d in SOFTMAX_DENOMINATORS})

    @property
    def plaintext_only(self) -> bool:
        """True when a variant is the exact function (usable in the simulation, not in MPC)."""
        return "exact" in (self.gelu_variant, self.softmax_variant, self.silu_variant, self.inv_sqrt_variant)

    def gelu(self, ops: Backend, x: Tensor) -> Tensor:
        return GELU_VARIANTS[self.gelu_variant](ops, x)

    def softmax(self, ops: Backend, x: Tensor, mask: torch.Tensor | None = None) -> Tensor:
        """Softmax over the last dim; `mask` is a public 0/1 tensor broadcastable to x (1 = attend)."""
        return SOFTMAX_VARIANTS[self.softmax_variant](ops, x, mask, self)

    def silu(self, ops: Backend, x: Tensor) -> Tensor:
        return SILU_VARIANTS[self.silu_variant](ops, x)

    def inv_sqrt(self, ops: Backend, x: Tensor) -> Tensor:
        return INV_SQRT_VARIANTS[self.inv_sqrt_variant](ops, x, self.inv_sqrt_iters)

    def reciprocal(self, ops: Backend, x: Tensor) -> Tensor:
        """1/x for x > 0 (what softmax denominators need)."""
        return reciprocal_positive(x, iters=self.reciprocal_iters)


RR = {"inv_sqrt_variant": "range_reduced", "inv_sqrt_iters": 5}  # see the module docstring
# Below these a run is `diverged` (bench/status.py). Error bound 50: an order above the largest error any family
# showed on converged runs (4.7, MPCFormer on MiniLM logits; PUMA 1.15 on SmolLM2 logits), far below overflow
# (4.3e9). Top-1 bounds: under the lowest converged value measured (results/mpc_*, bert-tiny..gpt2-124m).
# Range: bert-tiny float64 simulation, seq_len 32..512 (docs/mpc.md "Approximations and where each holds").
_WAY_OUT = ("way out: run.seq_len <= {n}, or protocol.approx='{{base: {name}, softmax_denominator: scaled}}' "
            "(holds to 512)")
BOUNDS = {
    "crypten": AccuracyBound(0.85, 50.0, "holds to seq_len 128 at bert-tiny, diverges from 256 (softmax row sums "
                             "leave CrypTen's reciprocal range; its inv_sqrt leaves [0.5, 150] on MiniLM/SmolLM2); "
                             + _WAY_OUT.format(n=128, name="crypten")),
    "puma": AccuracyBound(0.85, 50.0, "holds to seq_len 256 at bert-tiny (top-1 >= 0.98), diverges from 320 "
                          "(softmax row sums past ~256); " + _WAY_OUT.format(n=256, name="puma")),
    "nimbus": AccuracyBound(0.6, 50.0, "holds to seq_len 256 at bert-tiny (top-1 >= 0.97; 0.68 on MiniLM-L6), "
                            "diverges from 320; " + _WAY_OUT.format(n=256, name="nimbus")),
    "mpcformer": AccuracyBound(None, 50.0, "no top-1 claim without distillation (0.05..0.63 measured); 2Quad's mean "
                               "denominator holds to seq_len 512 at bert-tiny"),
    "exact": None,  # a plaintext reference: a distilled student is judged against its teacher, whatever its gap
}
FAMILIES: dict[str, Approximation] = {
    "crypten": Approximation("crypten", "crypten_tanh", "crypten",
                             description="CrypTen 0.4.1 defaults; GELU in tanh form via sigmoid"),
    "puma": Approximation("puma", "puma", "puma", **RR,
                          description="PUMA (arXiv 2307.12533)"),
    "nimbus": Approximation("nimbus", "nimbus", "nimbus", **RR,
                            description="Nimbus (arXiv 2411.15707) example coefficients"),
    "mpcformer": Approximation("mpcformer", "quad", "2quad", **RR,
                               description="MPCFormer Quad + 2Quad, no distillation"),
    "exact": Approximation("exact", "exact", "exact", "exact", "exact", description="plaintext float64 reference"),
}
FAMILIES = {n: replace(a, bound=BOUNDS[n]) for n, a in FAMILIES.items()}
MPC_FAMILIES = tuple(n for n, a in FAMILIES.items() if not a.plaintext_only)
_OVERRIDES = {"gelu": "gelu_variant", "softmax": "softmax_variant", "silu": "silu_variant",
              "inv_sqrt": "inv_sqrt_variant",
              "reciprocal_iters": "reciprocal_iters", "inv_sqrt_iters": "inv_sqrt_iters",
              "softmax_denominator": "softmax_denominator"}


def get_approximation(spec: str | dict | Approximation) -> Approximation:
    """A family by name, or {"base": name, <function>: variant, ...} with per-function overrides."""
    if isinstance(spec, Approximation):
        return spec
    if isinstance(spec, str):
        if spec not in FAMILIES:
            raise ValueError(f"unknown approx {spec!r}; choices: {sorted(FAMILIES)} "
                             f"(or a dict with 'base' and overrides of {sorted(_OVERRIDES)})")
        return FAMILIES[spec]
    spec = dict(spec)
    base = get_approximation(spec.pop("base", "crypten"))
    unknown = set(spec) - set(_OVERRIDES)
    if unknown:
        raise ValueError(f"unknown approximation override(s) {sorted(unknown)}; choices: {sorted(_OVERRIDES)}")
    changes = {_OVERRIDES[k]: v for k, v in spec.items()}
    name = base.name + "".join(f"+{k}={v}" for k, v in sorted(spec.items()))
    return replace(base, name=name, **changes)
