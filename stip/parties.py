"""The three STIP parties: model developer, data owner (device) and model server (cloud)."""
from __future__ import annotations

import copy
import logging
import os
import uuid
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .families import Family, get_family
from .keys import DEVELOPER_KEYS_FILE, USER_KEYS_FILE, KeyMismatchError, KeySet
from .sampling import Sampling, choose_tokens
from .transform import expected_key_shapes, generate_keys, output_dim, permute_features, transform_named_tensors

log = logging.getLogger(__name__)

# Which key each model output is permuted by (the head carries pi_c; hidden states carry pi).
OUTPUT_SPACES = {"logits": "pi_c", "last_hidden_state": "pi", "pooler_output": "pi"}


class StipInputError(ValueError):
    """A request whose tensors do not fit the model (wrong hidden size, rank or dtype)."""


def _family_of(model: nn.Module) -> Family:
    return get_family(getattr(model.config, "model_type", type(model).__name__))


class ModelDeveloper:
    """Holds the trained model and every key; produces the cloud model and user packages."""

    def __init__(self, model: nn.Module, seed: int | None = None, keys: KeySet | None = None) -> None:
        self.model = model
        self.family = _family_of(model)
        self.dims = self.family.dims(model.config)
        shapes = {n: tuple(t.shape) for n, t in model.state_dict().items()}
        for name in shapes:  # fail early, before any key is drawn, on an unsupported variant
            self.family.spaces_for(name)
        out_dim = output_dim(self.family, shapes)
        if keys is None:
            keys = generate_keys(self.dims, out_dim, model.config.model_type, seed)
        keys.check_shapes(expected_key_shapes(self.dims, out_dim))
        self.keys = keys

    def transformed_state_dict(self) -> dict[str, torch.Tensor]:
        """The cloud's parameters: every protected tensor permuted, device modules zeroed."""
        with torch.no_grad():
            return dict(transform_named_tensors(self.family, self.model.state_dict().items(), self.keys))

    def cloud_model(self) -> nn.Module:
        """The stock transformers class and config with transformed weights (LM head untied)."""
        cloud = copy.deepcopy(self.model)
        out_emb = cloud.get_output_embeddings() if hasattr(cloud, "get_output_embeddings") else None
        if out_emb is not None and out_emb.weight is cloud.get_input_embeddings().weight:
            out_emb.weight = nn.Parameter(out_emb.weight.detach().clone())  # untie before transforming
        cloud.config.tie_word_embeddings = False
        new = self.transformed_state_dict()
        targets = cloud.state_dict(keep_vars=True)
        with torch.no_grad():
            for name, value in new.items():
                targets[name].copy_(value)
        return cloud.eval()

    def data_owner(self) -> "DataOwner":
        """The package a registered user receives: embedding module, pi and pi_c only."""
        return DataOwner.from_model(self.model, self.keys.user_keys())

    def save_keys(self, directory: str | os.PathLike) -> tuple[Path, Path]:
        """Write developer keys and user keys to separate owner-only (0600) files."""
        directory = Path(directory)
        dev = self.keys.save(directory / DEVELOPER_KEYS_FILE)
        user = self.keys.user_keys().save(directory / USER_KEYS_FILE)
        log.info("saved STIP keys for %s to %s (values not logged)", self.family.name, directory)
        return dev, user


class DataOwner:
    """The user's device: embeds, permutes with `pi`, and un-permutes outputs with `pi_c`."""

    def __init__(self, embedding: nn.Module, keys: KeySet, family: Family) -> None:
        self.embedding = embedding.eval()
        self.family = family
        self.keys = keys.user_keys()
        self._inverse = {name: torch.argsort(self.keys[name]) for name in self.keys.tensors}
        self.hidden_size = int(self.keys["pi"].numel())

    @classmethod
    def from_model(cls, model: nn.Module, keys: KeySet) -> "DataOwner":
        """Extract the device-side module (input embedding, or ViTEmbeddings) from a model."""
        family = _family_of(model)
        embedding = copy.deepcopy(family.device_module(model))
        owner = cls(embedding, keys, family)
        if owner.hidden_size != family.dims(model.config).hidden:
            raise KeyMismatchError(f"key 'pi' has {owner.hidden_size} features but the model's hidden size is "
                                   f"{family.dims(model.config).hidden}: the keys belong to another model")
        return owner

    @torch.no_grad()
    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        """Plaintext embeddings (token ids, or pixel values for ViT); never leaves the device."""
        return self.embedding(inputs)

    def permute(self, embeddings: torch.Tensor) -> torch.Tensor:
        """x @ pi, as an index selection over the feature dimension."""
        if embeddings.shape[-1] != self.hidden_size:
            raise StipInputError(f"embeddings have {embeddings.shape[-1]} features, pi expects {self.hidden_size}")
        return permute_features(embeddings, self.keys["pi"])

    def encode(self, inputs: torch.Tensor) -> torch.Tensor:
        """Embed then permute: what the device sends to the cloud."""
        return self.permute(self.embed(inputs))

    def decode(self, outputs: Mapping[str, torch.Tensor] | torch.Tensor) -> Any:
        """Un-permute the cloud's outputs (a dict from ModelServer.infer, or one logits tensor)."""
        if isinstance(outputs, torch.Tensor):
            return self._unpermute(outputs, "pi_c" if "pi_c" in self.keys else "pi")
        if "topk_indices" in outputs:  # permuted vocabulary positions -> token ids
            return {"topk_values": outputs["topk_values"], "topk_indices": self.keys["pi_c"][outputs["topk_indices"]]}
        decoded = {}
        for name, value in outputs.items():
            if name not in OUTPUT_SPACES:
                raise StipInputError(f"unknown output '{name}'; expected one of {sorted(OUTPUT_SPACES)}")
            decoded[name] = self._unpermute(value, OUTPUT_SPACES[name])
        return decoded

    def next_token(
        self,
        outputs: Mapping[str, torch.Tensor] | torch.Tensor,
        sampling: Sampling = Sampling(),
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Choose the next token ids [batch, 1] in the permuted vocabulary; only candidates cross pi_c.

        `outputs` is ModelServer.infer's answer (permuted `logits`, or `topk_values`/`topk_indices`)
        or a permuted logits tensor; for [batch, seq, vocab] logits the last position is used.
        """
        if "pi_c" not in self.keys:
            raise StipInputError("next_token needs a model with an output vocabulary (key 'pi_c'); "
                                 "this model has none: use decode()")
        pi_c = self.keys["pi_c"]
        if isinstance(outputs, torch.Tensor):
            outputs = {"logits": outputs}
        if "topk_values" in outputs:
            ids = pi_c[outputs["topk_indices"]]
            return choose_tokens(outputs["topk_values"], sampling, pi_c.numel(), ids, generator)
        if "logits" not in outputs:
            raise StipInputError(f"next_token needs 'logits' or 'topk_values', got {sorted(outputs)}")
        logits = outputs["logits"]
        if logits.dim() == 3:
            logits = logits[:, -1]
        if logits.dim() != 2 or logits.shape[-1] != pi_c.numel():
            raise StipInputError(f"logits of shape {tuple(logits.shape)} do not fit a {pi_c.numel()}-token "
                                 "vocabulary: outputs of another model, or keys of another model")
        return choose_tokens(logits, sampling, pi_c.numel(), pi_c, generator, self._inverse["pi_c"])

    def _unpermute(self, value: torch.Tensor, key: str) -> torch.Tensor:
        inverse = self._inverse[key]
        if value.shape[-1] != inverse.numel():
            raise StipInputError(f"output has {value.shape[-1]} features but '{key}' has {inverse.numel()}: "
                                 "outputs of another model, or keys of another model")
        return permute_features(value, inverse)


class ModelServer:
    """The untrusted cloud: runs the stock architecture on transformed weights.

    It keeps one KV cache per generation session; it never sees keys or plaintext.
    """

    def __init__(self, cloud_model: nn.Module, max_sessions: int = 256) -> None:
        self.model = cloud_model.eval()
        self.family = _family_of(cloud_model)
        if self.family.prepare_server is not None:
            self.family.prepare_server(self.model)
        self.hidden_size = self.family.dims(cloud_model.config).hidden
        self.max_sessions = max_sessions
        self._sessions: dict[str, dict] = {}

    def open_session(self) -> str:
        """Start a generation session; the server keeps its KV cache until closed."""
        if len(self._sessions) >= self.max_sessions:
            raise RuntimeError(f"too many open sessions ({self.max_sessions}); close finished ones")
        session = uuid.uuid4().hex
        self._sessions[session] = {"cache": None, "mask": None}
        return session

    def close_session(self, session: str) -> None:
        self._sessions.pop(session, None)

    def _check(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 3:
            raise StipInputError(f"inputs_embeds must be a float tensor [batch, seq, {self.hidden_size}], got "
                                 f"{type(x).__name__} {getattr(x, 'dtype', '')} {tuple(getattr(x, 'shape', ()))}")
        if x.shape[-1] != self.hidden_size:
            raise StipInputError(f"inputs_embeds have hidden size {x.shape[-1]}, this model expects "
                                 f"{self.hidden_size}: was it encoded for another model?")

    @torch.no_grad()
    def infer(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        session: str | None = None,
        last_only: bool = False,
        top_k: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Forward permuted embeddings; outputs stay permuted (logits by pi_c, hidden by pi)."""
        self._check(inputs_embeds)
        x = inputs_embeds.to(self.model.dtype)
        kwargs: dict[str, Any] = {}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        state = None
        if session is not None:
            if session not in self._sessions:
                raise StipInputError(f"unknown session '{session}'; open one with open_session()")
            state = self._sessions[session]
            if attention_mask is not None and state["mask"] is not None:
                attention_mask = torch.cat([state["mask"], attention_mask], dim=-1)
            kwargs.update(past_key_values=state["cache"], use_cache=True)
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
        if self.family.input_name == "pixel_values":
            out = self.model(pixel_values=x, **kwargs)
        else:
            out = self.model(inputs_embeds=x, **kwargs)
        if state is not None:
            state["cache"], state["mask"] = out.past_key_values, attention_mask
        result = {k: out[k] for k in OUTPUT_SPACES if k in out and out[k] is not None}
        if last_only or top_k:
            result = {k: v[:, -1] if v.dim() == 3 else v for k, v in result.items()}
        if top_k:
            if "logits" not in result:
                raise StipInputError("top_k needs a model with logits")
            values, indices = result["logits"].topk(int(top_k), dim=-1)
            result = {"topk_values": values, "topk_indices": indices}
        return result
