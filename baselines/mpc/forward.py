"""The Transformer forward pass written once over a backend (`ops.PlainOps` or `ops.MpcOps`).

Weights come from the same `transformers` instance the other protocols use (`extract_weights`); the
server owns them, the device owns the token ids. Each operator is charged to one class:
`embedding` (one-hot x table, + positions), `linear` (every matmul, incl. QK^T and PV, residual adds),
`attention_softmax`, `activation` (GELU / SwiGLU gate), `layernorm` (LayerNorm / RMSNorm), `head`
(LM head or pooled output, and the reveal of the result to the device).

Supported: BERT (BertModel, BertForMaskedLM), GPT-2 (GPT2Model, GPT2LMHeadModel), LLaMA (LlamaModel,
LlamaForCausalLM: RMSNorm, SwiGLU, RoPE with public cos/sin, GQA). BertModel's pooler is not computed.

Norms divide their input by a public power of two calibrated by the server on its own model (see
`calibrate_norm_scales`) and take the sum of squares as one matmul (one truncation per token), so that
LLaMA's massive activations do not overflow CrypTen's 64-bit ring; the result is mathematically unchanged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from baselines.mpc.approximations import Approximation
from baselines.mpc.meter import Meter

Tensor = Any
EMBEDDING_MODES = ("mpc", "device")


@dataclass
class ModelWeights:
    """A model as plain tensors: linear weights stored [in, out]; `family` picks the forward."""

    family: str  # bert | gpt2 | llama
    output_name: str  # logits | last_hidden_state
    config: Any
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    act_fn: Callable[[torch.Tensor], torch.Tensor] | None = None  # the model's exact activation
    norm_scales: dict[str, float] = field(default_factory=dict)  # public power-of-two per norm (see calibrate)

    @property
    def n_layers(self) -> int:
        return self.config.num_hidden_layers


def _lin(t: dict, name: str, module: Any, transpose: bool = True) -> None:
    """Store a Linear ([out, in] -> [in, out]) or GPT-2 Conv1D (already [in, out]) as name.w / name.b."""
    w = module.weight.detach()
    t[f"{name}.w"] = w.t().contiguous() if transpose else w.contiguous()
    if getattr(module, "bias", None) is not None:
        t[f"{name}.b"] = module.bias.detach()


def _ln(t: dict, norms: dict, name: str, module: Any) -> None:
    norms[name] = module
    t[f"{name}.g"] = module.weight.detach()
    if getattr(module, "bias", None) is not None:
        t[f"{name}.b"] = module.bias.detach()


CALIBRATION_MAX_ABS = 16.0  # inputs to the squares of a norm are scaled to at most this, by a power of two


def extract_weights(model: Any, calibrate: bool = True) -> ModelWeights:
    """Read a supported `transformers` model, and (server-side) calibrate its norm scales."""
    norms: dict[str, Any] = {}  # norm name -> module, filled while extracting
    weights = _extract(model, norms)
    if calibrate:
        weights.norm_scales = calibrate_norm_scales(model, norms)
    return weights


def calibrate_norm_scales(model: Any, norms: dict[str, Any], seed: int = 0) -> dict[str, float]:
    """Public power-of-two scale per norm layer from a plaintext forward of random tokens at the server.

    CrypTen truncates each product locally; in 2PC that wraps with probability ~ |product| / 2^32, so the
    squares of LLaMA's massive activations (|x| ~ 2.4e4 in SmolLM2) come out as garbage. Dividing a norm's
    input by 2^k before squaring (max |x| / 2^k <= 16) keeps the products small; LayerNorm and RMSNorm are
    scale-invariant, so the result is unchanged. Uses only the server's model, never the user's input.
    """
    peaks: dict[str, float] = {}

    def hook(name: str) -> Callable:
        def record(_module: Any, args: tuple) -> None:
            peaks[name] = max(peaks.get(name, 0.0), float(args[0].detach().abs().max()))
        return record

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in norms.items()]
    try:
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, model.config.vocab_size, (2, 32), generator=g)
        with torch.no_grad():
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
    finally:
        for h in handles:
            h.remove()
    return {n: 2.0 ** max(0, math.ceil(math.log2(max(p, 1e-12) / CALIBRATION_MAX_ABS))) for n, p in peaks.items()}


def _extract(model: Any, norms: dict[str, Any]) -> ModelWeights:
    """Read the weights of a supported `transformers` model; errors name the unsupported class."""
    from transformers.activations import ACT2FN  # noqa: PLC0415

    cls = type(model).__name__
    cfg = model.config
    t: dict[str, torch.Tensor] = {}
    if cfg.model_type == "bert":
        bert = model if cls == "BertModel" else getattr(model, "bert", None)
        if bert is None or cls not in ("BertModel", "BertForMaskedLM"):
            raise ValueError(f"model class {cls!r} not supported by the MPC forward; "
                             "supported: BertModel, BertForMaskedLM, GPT2Model, GPT2LMHeadModel, "
                             "LlamaModel, LlamaForCausalLM")
        emb = bert.embeddings
        t["wte"] = emb.word_embeddings.weight.detach()
        t["wpe"] = emb.position_embeddings.weight.detach()
        t["tte"] = emb.token_type_embeddings.weight.detach()
        _ln(t, norms, "emb_ln", emb.LayerNorm)
        for i, layer in enumerate(bert.encoder.layer):
            att = layer.attention
            _lin(t, f"{i}.q", att.self.query)
            _lin(t, f"{i}.k", att.self.key)
            _lin(t, f"{i}.v", att.self.value)
            _lin(t, f"{i}.o", att.output.dense)
            _ln(t, norms, f"{i}.ln1", att.output.LayerNorm)
            _lin(t, f"{i}.fc1", layer.intermediate.dense)
            _lin(t, f"{i}.fc2", layer.output.dense)
            _ln(t, norms, f"{i}.ln2", layer.output.LayerNorm)
        out = "last_hidden_state"
        if cls == "BertForMaskedLM":
            pred = model.cls.predictions
            _lin(t, "head.dense", pred.transform.dense)
            _ln(t, norms, "head.ln", pred.transform.LayerNorm)
            _lin(t, "head.decoder", pred.decoder)
            if "head.decoder.b" not in t and getattr(pred, "bias", None) is not None:
                t["head.decoder.b"] = pred.bias.detach()
            out = "logits"
        return ModelWeights("bert", out, cfg, t, ACT2FN[cfg.hidden_act])
    if cfg.model_type == "gpt2":
        tr = model if cls == "GPT2Model" else getattr(model, "transformer", None)
        if tr is None or cls not in ("GPT2Model", "GPT2LMHeadModel"):
            raise ValueError(f"model class {cls!r} not supported by the MPC forward (gpt2 family: "
                             "GPT2Model, GPT2LMHeadModel)")
        t["wte"] = tr.wte.weight.detach()
        t["wpe"] = tr.wpe.weight.detach()
        h = cfg.n_embd
        for i, block in enumerate(tr.h):
            _ln(t, norms, f"{i}.ln1", block.ln_1)
            w, b = block.attn.c_attn.weight.detach(), block.attn.c_attn.bias.detach()
            for j, n in enumerate("qkv"):  # split the fused [H, 3H] projection once, in the clear
                t[f"{i}.{n}.w"] = w[:, j * h:(j + 1) * h].contiguous()
                t[f"{i}.{n}.b"] = b[j * h:(j + 1) * h].contiguous()
            _lin(t, f"{i}.o", block.attn.c_proj, transpose=False)
            _ln(t, norms, f"{i}.ln2", block.ln_2)
            _lin(t, f"{i}.fc1", block.mlp.c_fc, transpose=False)
            _lin(t, f"{i}.fc2", block.mlp.c_proj, transpose=False)
        _ln(t, norms, "ln_f", tr.ln_f)
        out = "last_hidden_state"
        if cls == "GPT2LMHeadModel":
            t["head.w"] = model.lm_head.weight.detach().t().contiguous()
            out = "logits"
        return ModelWeights("gpt2", out, cfg, t, ACT2FN[cfg.activation_function])
    if cfg.model_type == "llama":
        base = model if cls == "LlamaModel" else getattr(model, "model", None)
        if base is None or cls not in ("LlamaModel", "LlamaForCausalLM"):
            raise ValueError(f"model class {cls!r} not supported by the MPC forward (llama family: "
                             "LlamaModel, LlamaForCausalLM)")
        t["wte"] = base.embed_tokens.weight.detach()
        for i, layer in enumerate(base.layers):
            _ln(t, norms, f"{i}.ln1", layer.input_layernorm)
            for n, mod in (("q", layer.self_attn.q_proj), ("k", layer.self_attn.k_proj),
                           ("v", layer.self_attn.v_proj), ("o", layer.self_attn.o_proj),
                           ("gate", layer.mlp.gate_proj), ("up", layer.mlp.up_proj),
                           ("fc2", layer.mlp.down_proj)):
                _lin(t, f"{i}.{n}", mod)
            _ln(t, norms, f"{i}.ln2", layer.post_attention_layernorm)
        _ln(t, norms, "ln_f", base.norm)
        out = "last_hidden_state"
        if cls == "LlamaForCausalLM":
            t["head.w"] = model.lm_head.weight.detach().t().contiguous()
            out = "logits"
        weights = ModelWeights("llama", out, cfg, t, ACT2FN[cfg.hidden_act])
        weights.tensors["rope.inv_freq"] = base.rotary_emb.inv_freq.detach().float()
        weights.tensors["rope.scale"] = torch.tensor(float(getattr(base.rotary_emb, "attention_scaling", 1.0)))
        return weights
    raise ValueError(f"model_type {cfg.model_type!r} has no MPC forward; supported: bert, gpt2, llama")


PUBLIC_KEYS = ("rope.inv_freq", "rope.scale")  # public tables every party may hold


def share_weights(weights: ModelWeights, ops: Any, embedding: str) -> dict[str, Tensor]:
    """The server's weights in the backend (secret-shared from rank 0 in MPC); done once per run.

    With `embedding: device` the token table belongs to the device, which embeds locally.
    """
    shared = {}
    for k, v in weights.tensors.items():
        if k in PUBLIC_KEYS or (embedding == "device" and k in ("wte", "wpe", "tte")):
            continue
        shared[k] = ops.weight(v)
    return shared


class TransformerForward:
    """One family's forward pass over a backend, charging each operator to its class in `meter`."""

    def __init__(self, weights: ModelWeights, shared: dict[str, Tensor], ops: Any, approx: Approximation,
                 meter: Meter, embedding: str = "mpc", next_token: bool = False) -> None:
        if embedding not in EMBEDDING_MODES:
            raise ValueError(f"unknown embedding mode {embedding!r}; choices: {list(EMBEDDING_MODES)}")
        if ops.is_mpc and approx.plaintext_only:
            raise ValueError(f"approx {approx.name!r} is plaintext-only; in MPC use a real family")
        self.w, self.p, self.ops, self.approx, self.meter = weights, shared, ops, approx, meter
        self.embedding = embedding
        self.next_token = next_token  # reveal only the greedy next token (secure argmax), not the logits
        if next_token and "head.w" not in shared:
            raise ValueError(f"next_token needs a causal LM head (GPT2LMHeadModel, LlamaForCausalLM); "
                             f"the {weights.family} weights have none")
        self.cfg = weights.config

    # ------------------------------------------------------------------ building blocks
    def linear(self, x: Tensor, name: str) -> Tensor:
        y = x.matmul(self.p[f"{name}.w"])
        b = self.p.get(f"{name}.b")
        return y if b is None else y.add(b)

    def _normalise(self, x: Tensor, name: str, eps: float) -> Tensor:
        """x / sqrt(mean(x^2) + eps), on x scaled by the norm's public 2^-k (scale-invariant).

        The sum of squares is one [.., 1, H] @ [.., H, 1] matmul, so it is truncated once, not per term.
        """
        s = self.w.norm_scales.get(name, 1.0)
        xs = x if s == 1.0 else x.mul(1.0 / s)
        h = xs.size(-1)
        ss = xs.unsqueeze(-2).matmul(xs.unsqueeze(-1)).squeeze(-1)  # sum of squares, [..., 1]
        if self.approx.inv_sqrt_variant == "crypten":  # CrypTen's inv_sqrt is tuned for means in ~[0.5, 150]
            return xs.mul(self.approx.inv_sqrt(self.ops, ss.div(h).add(eps / (s * s))))
        # 1/sqrt(ss/h + e) = sqrt(h)/sqrt(ss + h e): the sum keeps 16 fractional bits where the mean would not
        # (a scaled-down ordinary token has mean squares ~1e-5, below fixed-point resolution).
        inv = self.approx.inv_sqrt(self.ops, ss.add(h * eps / (s * s))).mul(math.sqrt(h))
        return xs.mul(inv)

    def layernorm(self, x: Tensor, name: str, eps: float) -> Tensor:
        y = self._normalise(x.sub(x.mean(-1, keepdim=True)), name, eps).mul(self.p[f"{name}.g"])
        b = self.p.get(f"{name}.b")
        return y if b is None else y.add(b)

    def rmsnorm(self, x: Tensor, name: str, eps: float) -> Tensor:
        return self._normalise(x, name, eps).mul(self.p[f"{name}.g"])

    def gelu(self, x: Tensor) -> Tensor:
        if self.approx.gelu_variant == "exact":
            return self.w.act_fn(x)  # the model's own activation (erf GELU for BERT, gelu_new for GPT-2)
        return self.approx.gelu(self.ops, x)

    def embed(self, input_ids: torch.Tensor, table_keys: tuple[str, ...]) -> Tensor:
        """Token embedding as one-hot (device's) x table (server's), plus public-position rows."""
        b, s = input_ids.shape
        with self.meter.phase("embedding"):
            if self.embedding == "device":
                t = self.w.tensors
                x = t["wte"][input_ids]
                for k in table_keys:
                    x = x + (t[k][:s] if k == "wpe" else t[k][0])
                return self.ops.private_input(x)
            onehot = torch.nn.functional.one_hot(input_ids, self.w.tensors["wte"].shape[0])
            x = self.ops.private_input(onehot.to(torch.float32)).matmul(self.p["wte"])
            for k in table_keys:  # positions are public: the server shares the rows it needs
                x = x.add(self.p[k][:s] if k == "wpe" else self.p[k][0])
            return x

    def attention(self, h: Tensor, i: int, mask: torch.Tensor, n_heads: int, n_kv: int,
                  rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> Tensor:
        b, s = h.size(0), h.size(1)
        hd = h.size(2) // n_heads if rope is None else self.w.tensors[f"{i}.q.w"].shape[1] // n_heads
        ops = self.ops
        with self.meter.phase("linear"):
            q = self.linear(h, f"{i}.q").view(b, s, n_heads, hd).transpose(1, 2)
            k = self.linear(h, f"{i}.k").view(b, s, n_kv, hd).transpose(1, 2)
            v = self.linear(h, f"{i}.v").view(b, s, n_kv, hd).transpose(1, 2)
            if rope is not None:
                q, k = _apply_rope(ops, q, *rope), _apply_rope(ops, k, *rope)
            if n_kv != n_heads:
                rep = n_heads // n_kv
                k = ops.cat([k[:, j:j + 1] for j in range(n_kv) for _ in range(rep)], dim=1)
                v = ops.cat([v[:, j:j + 1] for j in range(n_kv) for _ in range(rep)], dim=1)
            scores = q.mul(1.0 / math.sqrt(hd)).matmul(k.transpose(-2, -1))
        with self.meter.phase("attention_softmax"):
            probs = self.approx.softmax(ops, scores, mask)
        with self.meter.phase("linear"):
            ctx = probs.matmul(v).transpose(1, 2).reshape(b, s, n_heads * hd)
            return self.linear(ctx, f"{i}.o")

    # ------------------------------------------------------------------ families
    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor | None:
        """Run the forward; returns the output revealed to the device (None at the server in MPC)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        run = {"bert": self._bert, "gpt2": self._gpt2, "llama": self._llama}[self.w.family]
        self._last = [int(n) - 1 for n in attention_mask.sum(-1)]  # public: each row's last attended position
        return run(input_ids, attention_mask)

    def _key_mask(self, attention_mask: torch.Tensor, causal: bool) -> torch.Tensor:
        """Public 0/1 mask [B, 1, S|1, S]: padding keys masked, plus the future when causal."""
        m = attention_mask[:, None, None, :].to(torch.float64)
        if causal:
            s = attention_mask.shape[-1]
            m = m * torch.tril(torch.ones(s, s, dtype=torch.float64))[None, None]
        return self.ops.public(m)

    def _finish(self, h: Tensor) -> torch.Tensor | None:
        """Reveal the outputs to the device; with `next_token`, only the greedy next token of each row:
        the LM head on the last attended position, then an argmax in MPC (tree max, one equality test),
        so the device learns one token id per row and nothing of the logits."""
        with self.meter.phase("head"):
            if self.next_token:
                last = self.ops.cat([h[i:i + 1, p:p + 1] for i, p in enumerate(self._last)], dim=0)
                return self.ops.reveal(self.ops.argmax(last.matmul(self.p["head.w"]), dim=-1))
            if "head.w" in self.p:
                h = h.matmul(self.p["head.w"])
            return self.ops.reveal(h)

    def _bert(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor | None:
        c = self.cfg
        eps = c.layer_norm_eps
        mask = self._key_mask(attention_mask, causal=False)
        h = self.embed(input_ids, ("wpe", "tte"))
        with self.meter.phase("layernorm"):
            h = self.layernorm(h, "emb_ln", eps)
        for i in range(c.num_hidden_layers):
            a = self.attention(h, i, mask, c.num_attention_heads, c.num_attention_heads)
            with self.meter.phase("linear"):
                a = a.add(h)
            with self.meter.phase("layernorm"):
                h = self.layernorm(a, f"{i}.ln1", eps)
            with self.meter.phase("linear"):
                f = self.linear(h, f"{i}.fc1")
            with self.meter.phase("activation"):
                f = self.gelu(f)
            with self.meter.phase("linear"):
                f = self.linear(f, f"{i}.fc2").add(h)
            with self.meter.phase("layernorm"):
                h = self.layernorm(f, f"{i}.ln2", eps)
        if "head.dense.w" in self.p:  # MLM head: dense -> GELU -> LayerNorm -> decoder
            with self.meter.phase("linear"):
                h = self.linear(h, "head.dense")
            with self.meter.phase("activation"):
                h = self.gelu(h)
            with self.meter.phase("layernorm"):
                h = self.layernorm(h, "head.ln", eps)
            with self.meter.phase("head"):
                return self.ops.reveal(self.linear(h, "head.decoder"))
        return self._finish(h)

    def _gpt2(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor | None:
        c = self.cfg
        eps = c.layer_norm_epsilon
        mask = self._key_mask(attention_mask, causal=True)
        h = self.embed(input_ids, ("wpe",))
        for i in range(c.n_layer):
            with self.meter.phase("layernorm"):
                a = self.layernorm(h, f"{i}.ln1", eps)
            a = self.attention(a, i, mask, c.n_head, c.n_head)
            with self.meter.phase("linear"):
                h = h.add(a)
            with self.meter.phase("layernorm"):
                m = self.layernorm(h, f"{i}.ln2", eps)
            with self.meter.phase("linear"):
                m = self.linear(m, f"{i}.fc1")
            with self.meter.phase("activation"):
                m = self.gelu(m)
            with self.meter.phase("linear"):
                h = h.add(self.linear(m, f"{i}.fc2"))
        with self.meter.phase("layernorm"):
            h = self.layernorm(h, "ln_f", eps)
        return self._finish(h)

    def _llama(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor | None:
        c = self.cfg
        eps = c.rms_norm_eps
        mask = self._key_mask(attention_mask, causal=True)
        rope = self._rope_tables(input_ids.shape[1])
        h = self.embed(input_ids, ())
        n_kv = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
        for i in range(c.num_hidden_layers):
            with self.meter.phase("layernorm"):
                a = self.rmsnorm(h, f"{i}.ln1", eps)
            a = self.attention(a, i, mask, c.num_attention_heads, n_kv, rope=rope)
            with self.meter.phase("linear"):
                h = h.add(a)
            with self.meter.phase("layernorm"):
                m = self.rmsnorm(h, f"{i}.ln2", eps)
            with self.meter.phase("linear"):
                gate, up = self.linear(m, f"{i}.gate"), self.linear(m, f"{i}.up")
            with self.meter.phase("activation"):
                act = self.w.act_fn(gate) if self.approx.silu_variant == "exact" else self.approx.silu(self.ops, gate)
                m = act.mul(up)
            with self.meter.phase("linear"):
                h = h.add(self.linear(m, f"{i}.fc2"))
        with self.meter.phase("layernorm"):
            h = self.rmsnorm(h, "ln_f", eps)
        return self._finish(h)

    def _rope_tables(self, s: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Public cos/sin [1, 1, S, head_dim] for positions 0..S-1 (the model's own inv_freq)."""
        inv = self.w.tensors["rope.inv_freq"].double()
        freqs = torch.outer(torch.arange(s, dtype=torch.float64), inv)
        emb = torch.cat([freqs, freqs], dim=-1)
        scale = float(self.w.tensors["rope.scale"])
        return (self.ops.public((emb.cos() * scale)[None, None]), self.ops.public((emb.sin() * scale)[None, None]))


def _apply_rope(ops: Any, x: Tensor, cos: torch.Tensor, sin: torch.Tensor) -> Tensor:
    """x cos + rotate_half(x) sin, with rotate_half(x) = cat(-x2, x1): public multiplications only."""
    half = x.size(-1) // 2
    rot = ops.cat([x[..., half:].neg(), x[..., :half]], dim=-1)
    return x.mul(cos).add(rot.mul(sin))


def simulate(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, approx: Approximation,
             embedding: str = "mpc", weights: ModelWeights | None = None, next_token: bool = False) -> torch.Tensor:
    """Plaintext float64 simulation of the MPC forward with `approx` (fast accuracy studies)."""
    from baselines.mpc.ops import PlainOps  # noqa: PLC0415

    ops = PlainOps()
    weights = weights or extract_weights(model)
    fwd = TransformerForward(weights, share_weights(weights, ops, embedding), ops, approx, Meter(), embedding,
                             next_token)
    return fwd(input_ids, attention_mask)
