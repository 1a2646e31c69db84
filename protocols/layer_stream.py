"""Tab. 5 at full depth for models this host cannot hold: one seeded random layer at a time (layer streaming).

For a decoder of published shape (GPT-2, LLaMA, Mixtral), every layer i is built alone (a 1-layer model of the
full width, seeded by (seed, i)), run in plaintext on the carried plaintext hidden state, transformed IN PLACE
with the library's rules (stip.transform) under the model's one input permutation `pi` and layer i's own keys,
run on the carried permuted hidden state, compared, and dropped. The last layer also carries the final norm and
the LM head (with `pi_c`), so the logits are compared as in protocols.accuracy.

What it checks: that STIP's transform of every layer of the published shape is equivalent under one shared
`pi`, with the rounding error carried through the full depth exactly as a cloud running all layers would carry
it, and the device's recovery of the logits with `pi_c`. What it does not check: trained weights (every layer is
random, HF's initialisation with its 1-D parameters perturbed so that a forgotten norm transform shows), the
cloud checkpoint and socket path (tab5_full covers those for the models that fit), KV-cache generation, and the
model as one module (a bug that only shows across layers of one module, e.g. a shared buffer, is not seen).
"""
from __future__ import annotations

import gc
import logging
import time
from typing import Any, Iterator, Mapping

import torch
import yaml
from transformers import AutoModel, AutoModelForCausalLM, PreTrainedModel

from protocols.accuracy import accuracy
from protocols.models import hf_config
from protocols.paths import config_group
from stip.families import get_family
from stip.keycheck import model_metadata
from stip.keys import KEY_ID, KeySet, new_key_id
from stip.parties import ModelDeveloper
from stip.tied import untie_parameters
from stip.transform import generate_keys, permute_features, transform_named_tensors

log = logging.getLogger(__name__)
MODEL_DIR = config_group("model")
STREAMABLE = ("gpt2", "llama", "mistral", "mixtral")  # decoders whose final norm this module knows
FINAL_NORM = {"gpt2": "ln_f", "llama": "norm", "mistral": "norm", "mixtral": "norm"}


def model_yaml(name: str) -> dict[str, Any]:
    """configs/model/<name>.yaml as a mapping (the published config values)."""
    path = MODEL_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in MODEL_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"no model config {path}; choose one of {known}")
    spec = yaml.safe_load(path.read_text())
    if spec.get("model_type") not in STREAMABLE:
        raise ValueError(f"model {name!r} is a {spec.get('model_type')!r}; layer streaming supports {STREAMABLE}")
    if spec.get("weights", "random") != "random":
        raise ValueError(f"model {name!r} has real weights ({spec['weights']}); stream only published random shapes")
    return spec


def depth(spec: Mapping[str, Any]) -> int:
    """The published number of layers of a model yaml."""
    config = spec["config"]
    return int(config.get("num_hidden_layers", config.get("n_layer", 0)))


def _perturb_vectors(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Random 1-D parameters (norm gains, biases): fresh ones (gamma = 1, beta = 0) would hide a missed transform."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.3 * torch.randn(p.shape, generator=gen))


def _layer_model(spec: Mapping[str, Any], layer: int, last: bool, seed: int) -> PreTrainedModel:
    """Layer `layer` alone at full width: a 1-layer base model (a causal LM with its head for the last layer)."""
    cfg = {**spec, "n_layers": 1}
    if not last:  # the token table is never used (inputs_embeds): keep it tiny
        cfg["config"] = {**spec["config"], "vocab_size": 8, "pad_token_id": None, "bos_token_id": None,
                         "eos_token_id": None}
    config = hf_config(cfg)
    torch.manual_seed(seed * 100_003 + layer)
    with torch.no_grad():
        model = (AutoModelForCausalLM if last else AutoModel).from_config(config)
    _perturb_vectors(model, torch.Generator().manual_seed(seed * 100_003 + layer))
    base = model.base_model
    if not last:  # the carried state is the layer's output: no final norm in between
        setattr(base, FINAL_NORM[spec["model_type"]], torch.nn.Identity())
    if spec["model_type"] == "gpt2" and layer > 0:  # positions are added once, before layer 0
        with torch.no_grad():
            base.wpe.weight.zero_()
    return model.eval()


def _layer_keys(model: PreTrainedModel, pi: torch.Tensor, pi_c: torch.Tensor | None, seed: int,
                layer: int) -> KeySet:
    """Layer `layer`'s own keys (stip.transform.generate_keys for a 1-layer model) with the model's pi, pi_c."""
    family = get_family(model.config.model_type)
    dims = family.dims(model.config)
    out_dim = None if pi_c is None else pi_c.numel()
    keys = generate_keys(dims, out_dim, model.config.model_type, seed * 100_003 + layer + 1)
    tensors = {**keys.tensors, "pi": pi, **({"pi_c": pi_c} if pi_c is not None else {})}
    metadata = {**model_metadata(model.config.model_type, dims, out_dim), **{
        k: v for k, v in keys.metadata.items() if k not in (KEY_ID,)}}
    metadata[KEY_ID] = new_key_id(tensors, seeded=True)
    return KeySet(tensors, metadata)


def _transform_in_place(developer: ModelDeveloper) -> None:
    """Overwrite the model's parameters with their transforms, one tensor at a time (peak: one tensor extra)."""
    untie_parameters(developer.model)  # the device keeps the plaintext embedding; the head is transformed alone
    targets = developer.model.state_dict(keep_vars=True)
    with torch.no_grad():
        for name, value in transform_named_tensors(developer.family, list(developer.model.state_dict().items()),
                                                   developer.keys):
            targets[name].copy_(value)


def _inputs(spec: Mapping[str, Any], batch: int, seq_len: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token ids and the plaintext token embeddings of a seeded table (what the device holds)."""
    config = hf_config({**spec, "n_layers": 1})
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, config.vocab_size, (batch, seq_len), generator=g)
    table = torch.randn(config.vocab_size, config.hidden_size, generator=g) * 0.02
    return ids, table[ids]


def stream_check(spec: Mapping[str, Any], batch: int, seq_len: int, seed: int = 0,
                 n_layers: int | None = None) -> Iterator[dict[str, Any]]:
    """Yield one record per layer (max |error| of the hidden state, and its max |value|) and one per metric of
    the logits (protocols.accuracy); `spec` is a model yaml mapping (`model_yaml`); `n_layers` cuts the depth
    (None: the published depth)."""
    name = spec["name"]
    total = int(n_layers or depth(spec))
    ids, plain = _inputs(spec, batch, seq_len, seed)
    mask = torch.ones_like(ids)
    gen = torch.Generator().manual_seed(seed + 1)
    hidden = plain.shape[-1]
    pi = torch.randperm(hidden, generator=gen)
    pi_c = torch.randperm(int(spec["config"]["vocab_size"]), generator=gen)
    cloud = permute_features(plain, pi)  # the device's uplink: x @ pi
    inverse = torch.argsort(pi)
    for layer in range(total):
        start = time.perf_counter()
        last = layer == total - 1
        model = _layer_model(spec, layer, last, seed)
        built = time.perf_counter()
        with torch.no_grad():
            out_plain = model(inputs_embeds=plain, attention_mask=mask, use_cache=False)
            developer = ModelDeveloper(model, keys=_layer_keys(model, pi, pi_c if last else None, seed, layer))
            _transform_in_place(developer)
            out_cloud = model(inputs_embeds=cloud, attention_mask=mask, use_cache=False)
        key = "logits" if last else "last_hidden_state"
        plain, cloud = out_plain[key], out_cloud[key]
        seconds = time.perf_counter() - start
        if last:
            recovered = permute_features(cloud, torch.argsort(pi_c))  # the device un-permutes with pi_c^T
            for metric, value in accuracy(recovered, plain, mask).items():
                yield {"model": name, "layer": layer, "stage": "logits", "metric": metric, "value": value,
                       "seconds": seconds, "build_seconds": built - start}
        else:
            err = (permute_features(cloud, inverse) - plain).abs().max().item()
            scale = plain.abs().max().item()
            yield {"model": name, "layer": layer, "stage": "hidden", "metric": "max_abs_error", "value": err,
                   "seconds": seconds, "build_seconds": built - start, "scale": scale}
        log.info("%s layer %d/%d: %.1f s", name, layer + 1, total, seconds)
        del model, developer, out_plain, out_cloud
        gc.collect()
