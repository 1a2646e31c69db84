"""Schemes as arms of one matrix: each turns a plaintext model into what the cloud holds plus the device's side.

- `stip_arm`: STIP's permutations (stip.parties), optionally with the device's Gaussian noise.
- `fresh_key_arms`: STIP with a new key set per session; each session costs re-transforming the model.
- `rotation_arm`: a secret orthogonal rotation Q of the residual stream (computational invariance, as in
  SliceGPT / QuaRot; the ConjFormer / AloePri kind of covariant obfuscation). The RMSNorm scales are folded
  into the next linear layers (q, k, v, gate, up, lm_head), the writers into the residual (o, down) are
  left-multiplied by Q^T, so every norm sees x Q and is exact: RMSNorm(x Q) = RMSNorm(x) Q once its scale
  is ones, because ||x Q|| = ||x||. LayerNorm models are refused: LayerNorm subtracts the feature mean,
  and mean(x Q) != mean(x) Q unless Q fixes the all-ones direction (SliceGPT first folds the mean
  subtraction into the previous linear layer; not done here). Output rows are permuted by `pi_c` as
  STIP does, so the cloud's logits are in a secret vocabulary order too.

An arm is exact when its noise is zero: `Arm.logits` equals plaintext's within float tolerance
(tests/test_stip_schemes.py checks it).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from transformers import PreTrainedModel

from .errors import StipInputError
from .parties import ModelDeveloper
from .tied import untie_parameters

ROTATION_FAMILIES = ("llama", "mistral", "qwen2")  # RMSNorm pre-norm decoders with the Llama module names


@dataclass
class Arm:
    """One scheme applied to one model: what the cloud holds, and the device's encode / decode."""

    name: str
    kind: str  # "permutation" or "rotation": which attack variants apply
    cloud: PreTrainedModel
    embed: Callable[[torch.Tensor], torch.Tensor]  # ids -> plaintext embeddings (device only)
    encode: Callable[[torch.Tensor], torch.Tensor]  # ids -> what crosses the wire
    decode: Callable[[torch.Tensor], torch.Tensor]  # cloud logits -> logits in plaintext vocabulary order
    secret: dict[str, torch.Tensor]  # what the attacks are scored against: pi or Q, and pi_c
    noise_sigma: float = 0.0
    transform_seconds: float = 0.0  # developer-side time to produce `cloud`
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def exact(self) -> bool:
        """Whether the arm claims logits equal to plaintext's (no noise)."""
        return self.noise_sigma == 0.0

    @torch.no_grad()
    def logits(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """One full call: encode on the device, the cloud's forward, decode on the device."""
        wire = self.encode(ids)
        out = self.cloud(inputs_embeds=wire, attention_mask=attention_mask).logits
        return self.decode(out)

    def cloud_bytes(self) -> int:
        """Bytes of the cloud's parameters: what a re-transform ships to the cloud."""
        return sum(p.numel() * p.element_size() for p in self.cloud.state_dict().values())


def _noise(sigma: float, generator: torch.Generator | None) -> Callable[[torch.Tensor], torch.Tensor]:
    if not sigma >= 0.0:
        raise StipInputError(f"noise_sigma must be >= 0 (0 turns the noise off), got {sigma}")

    def add(x: torch.Tensor) -> torch.Tensor:
        if sigma == 0.0:
            return x
        return x + sigma * torch.randn(x.shape, generator=generator, dtype=x.dtype)
    return add


def _unpermute_logits(pi_c: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    inverse = torch.argsort(pi_c)
    return lambda logits: logits.index_select(-1, inverse)


def stip_arm(model: PreTrainedModel, seed: int | None, noise_sigma: float = 0.0, noise_seed: int = 0,
             name: str | None = None) -> Arm:
    """STIP (stip.parties) as an arm; `noise_sigma` > 0 is the device's N(0, sigma^2) noise defence."""
    start = time.perf_counter()
    developer = ModelDeveloper(model, seed=seed)
    cloud = developer.cloud_model()
    seconds = time.perf_counter() - start
    device = developer.data_owner()
    noisy = _noise(noise_sigma, torch.Generator().manual_seed(noise_seed))
    return Arm(name or ("stip" if noise_sigma == 0 else "stip_noise"), "permutation", cloud, device.embed,
               lambda ids: noisy(device.permute(device.embed(ids))), _unpermute_logits(developer.keys["pi_c"]),
               {"pi": developer.keys["pi"], "pi_c": developer.keys["pi_c"]}, noise_sigma, seconds)


def fresh_key_arms(model: PreTrainedModel, seeds: list[int | None]) -> list[Arm]:
    """One STIP arm per session, each with a key set of its own (its transform time is that session's cost)."""
    return [stip_arm(model, seed, name="stip_fresh_keys") for seed in seeds]


def random_orthogonal(d: int, generator: torch.Generator) -> torch.Tensor:
    """A Haar-random orthogonal matrix [d, d] in float64 (QR of a Gaussian, signs fixed by R's diagonal)."""
    q, r = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))[None, :]


def _fold_reader(linear: nn.Linear, scale: torch.Tensor, rot: torch.Tensor) -> None:
    """A linear layer reading the normed residual: W <- (W diag(scale)) Q, so (n(x) Q) W'^T = n(x) diag(scale) W^T."""
    w = linear.weight.detach().double()
    linear.weight.data = ((w * scale.double()[None, :]) @ rot).to(linear.weight.dtype)


def _fold_writer(linear: nn.Linear, rot: torch.Tensor) -> None:
    """A linear layer writing into the residual: W <- Q^T W (and bias <- bias Q), so its output is rotated."""
    linear.weight.data = (rot.T @ linear.weight.detach().double()).to(linear.weight.dtype)
    if linear.bias is not None:
        linear.bias.data = (linear.bias.detach().double() @ rot).to(linear.bias.dtype)


def _linear(module: nn.Module, name: str) -> nn.Linear:
    """`module`'s submodule `name` as the nn.Linear the Llama-style families build there."""
    linear = module.get_submodule(name)
    if not isinstance(linear, nn.Linear):
        raise StipInputError(f"the rotation arm folds into nn.Linear layers; {name!r} is a {type(linear).__name__}")
    return linear


def rotate_model(model: PreTrainedModel, rot: torch.Tensor, pi_c: torch.Tensor | None = None) -> PreTrainedModel:
    """The cloud's copy: residual stream rotated by `rot`, norm scales folded, embeddings zeroed (device-side)."""
    config = model.config
    model_type = getattr(config, "model_type", type(model).__name__)
    if model_type not in ROTATION_FAMILIES:
        raise StipInputError(f"the rotation arm needs an RMSNorm decoder ({', '.join(ROTATION_FAMILIES)}); "
                             f"{model_type!r} is not one (LayerNorm's mean subtraction is not rotation-"
                             "invariant: fold it into the previous layer first, as SliceGPT does)")
    d = config.hidden_size
    if tuple(rot.shape) != (d, d):
        raise StipInputError(f"rotation has shape {tuple(rot.shape)}, the model's hidden size needs ({d}, {d})")
    cloud = copy.deepcopy(model)
    untie_parameters(cloud)
    cloud.config.tie_word_embeddings = False
    with torch.no_grad():
        for layer in cloud.get_submodule("model.layers").children():
            blocks = ((layer.get_parameter("input_layernorm.weight"),
                       ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn.o_proj"),
                      (layer.get_parameter("post_attention_layernorm.weight"),
                       ("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj"))
            for norm_weight, readers, writer in blocks:
                for reader in readers:
                    _fold_reader(_linear(layer, reader), norm_weight.detach(), rot)
                norm_weight.fill_(1.0)
                _fold_writer(_linear(layer, writer), rot)
        lm_head = _linear(cloud, "lm_head")
        final_norm = cloud.get_parameter("model.norm.weight")
        _fold_reader(lm_head, final_norm.detach(), rot)
        final_norm.fill_(1.0)
        if pi_c is not None:
            lm_head.weight.data = lm_head.weight.data.index_select(0, pi_c).contiguous()
        cloud.get_parameter("model.embed_tokens.weight").zero_()  # the device keeps the embedding, as in STIP
    return cloud.eval()


def rotation_arm(model: PreTrainedModel, seed: int, noise_sigma: float = 0.0, noise_seed: int = 0,
                 permute_outputs: bool = True) -> Arm:
    """The orthogonal-rotation arm (+ noise when `noise_sigma` > 0); `permute_outputs` adds STIP's pi_c."""
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    config = model.config
    rot = random_orthogonal(config.hidden_size, gen)
    vocab = model.get_output_embeddings().weight.shape[0]
    pi_c = torch.randperm(vocab, generator=gen) if permute_outputs else None
    cloud = rotate_model(model, rot, pi_c)
    seconds = time.perf_counter() - start
    embedding = copy.deepcopy(model.get_input_embeddings()).eval()
    rot32 = rot.to(embedding.get_parameter("weight").dtype)
    noisy = _noise(noise_sigma, torch.Generator().manual_seed(noise_seed))

    @torch.no_grad()
    def embed(ids: torch.Tensor) -> torch.Tensor:
        return embedding(ids)

    def decode(logits: torch.Tensor) -> torch.Tensor:
        return logits if pi_c is None else logits.index_select(-1, torch.argsort(pi_c))

    secret = {"Q": rot} | ({"pi_c": pi_c} if pi_c is not None else {})
    return Arm("rotation" if noise_sigma == 0 else "rotation_noise", "rotation", cloud, embed,
               lambda ids: noisy(embed(ids) @ rot32), decode, secret, noise_sigma, seconds)
