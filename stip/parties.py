"""The three STIP parties: model developer, data owner (device) and model server (cloud)."""
from __future__ import annotations

import copy
import inspect
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.cache_utils import DynamicCache, DynamicLayer

from .errors import StipInputError
from .families import Family, get_family
from .generation_rules import GenerationRules, RopeState, generation_rules
from .keycheck import WEIGHTS_ID_FIELD, check_keys, weights_fingerprint
from .keys import DEVELOPER_KEYS_FILE, USER_KEYS_FILE, KeyMismatchError, KeySet
from .pooling import LastTokenPooling, last_token_pooling
from .sampling import Sampling, choose_tokens
from .tied import untie_parameters
from .transform import generate_keys, output_dim, permute_features, transform_named_tensors

log = logging.getLogger(__name__)

SESSION_REFUSED = ("unknown session (none open under that id for this client, or it expired); open one with "
                   "open_session()")  # never the id itself, never whether it is another client's live session

KEY_ID_FIELD = "stip_key_id"  # the cloud config's record of the keys its weights were transformed with

# Which key each model output is permuted by (the head carries pi_c; hidden states carry pi).
# `position_logits`: a decoder classifier's score at every position; the device pools (stip/pooling.py).
OUTPUT_SPACES = {"logits": "pi_c", "position_logits": "pi_c",
                 "last_hidden_state": "pi", "pooler_output": "pi"}


def _family_of(model: PreTrainedModel) -> Family:
    return get_family(getattr(model.config, "model_type", type(model).__name__))


class ModelDeveloper:
    """Holds the trained model and every key; produces the cloud model and user packages."""

    def __init__(self, model: PreTrainedModel, seed: int | None = None, keys: KeySet | None = None) -> None:
        self.model = model
        self.family = _family_of(model)
        self.dims = self.family.dims(model.config)
        shapes = {n: tuple(t.shape) for n, t in model.state_dict().items()}
        for name in shapes:  # fail early, before any key is drawn, on an unsupported variant
            self.family.spaces_for(name)
        out_dim = output_dim(self.family, shapes)
        if keys is None:
            keys = generate_keys(self.dims, out_dim, model.config.model_type, seed)
        check_keys(keys, model.config.model_type, self.dims, out_dim)
        self.keys = keys

    def transformed_state_dict(self) -> dict[str, torch.Tensor]:
        """The cloud's parameters: every protected tensor permuted, device modules zeroed."""
        with torch.no_grad():
            return dict(transform_named_tensors(self.family, self.model.state_dict().items(), self.keys))

    def cloud_model(self) -> PreTrainedModel:
        """The stock transformers class and config with transformed weights, every tied pair untied.

        The config records the key id (`stip_key_id`) so a device can refuse other keys' weights.
        """
        cloud = copy.deepcopy(self.model)
        untie_parameters(cloud)  # LM head and embedding, BERT's decoder bias: each saved on its own
        cloud.config.tie_word_embeddings = False
        setattr(cloud.config, KEY_ID_FIELD, self.keys.key_id)
        setattr(cloud.config, WEIGHTS_ID_FIELD, weights_fingerprint(self.family.device_module(self.model), self.keys))
        new = self.transformed_state_dict()
        targets = cloud.state_dict(keep_vars=True)
        with torch.no_grad():
            for name, value in new.items():
                targets[name].copy_(value)
        return cloud.eval()

    def data_owner(self, noise_sigma: float = 0.0,
                   noise_generator: torch.Generator | None = None) -> "DataOwner":
        """The package a registered user receives: embedding module, pi and pi_c only.

        `noise_sigma` > 0 turns on the noise defence (DataOwner's docstring); off by default.
        """
        return DataOwner.from_model(self.model, self.keys.user_keys(), noise_sigma=noise_sigma,
                                    noise_generator=noise_generator)

    def save_keys(self, directory: str | os.PathLike) -> tuple[Path, Path]:
        """Write developer keys and user keys to separate owner-only (0600) files."""
        directory = Path(directory)
        dev = self.keys.save(directory / DEVELOPER_KEYS_FILE)
        user = self.keys.user_keys().save(directory / USER_KEYS_FILE)
        log.info("saved STIP keys for %s to %s (values not logged)", self.family.name, directory)
        return dev, user


class DataOwner:
    """The user's device: embeds, permutes with `pi`, and un-permutes outputs with `pi_c`.

    `noise_sigma` > 0 adds fresh N(0, sigma^2) noise to every permuted embedding it sends (the
    defence "Hidden No More" suggests; it costs accuracy, see stip/attacks/frontier.py);
    `noise_generator` seeds it for tests. Off (0.0) by default: outputs are then exact.
    """

    def __init__(self, embedding: nn.Module, keys: KeySet, family: Family,
                 pooling: LastTokenPooling | None = None, noise_sigma: float = 0.0,
                 noise_generator: torch.Generator | None = None,
                 generation: GenerationRules | None = None) -> None:
        if not noise_sigma >= 0.0:
            raise StipInputError(f"noise_sigma must be >= 0 (0 turns the noise defence off), got {noise_sigma}")
        self.noise_sigma = float(noise_sigma)
        self.noise_generator = noise_generator
        self.embedding = embedding.eval()
        self.family = family
        self.keys = keys.user_keys()
        self._inverse = {name: torch.argsort(self.keys[name]) for name in self.keys.tensors}
        self.hidden_size = int(self.keys["pi"].numel())
        self.pooling = pooling  # set for decoder sequence classifiers: the device pools (stip/pooling.py)
        self._float_dtype = _float_input_dtype(self.embedding)
        # the model's generation-time thresholds (stip/generation_rules.py); None: built without its config
        self.generation = generation
        self._weights_id: str | None = None

    @property
    def weights_id(self) -> str:
        """Keyed fingerprint of the device module (keycheck.weights_fingerprint); sent beside the key id."""
        if self._weights_id is None:
            self._weights_id = weights_fingerprint(self.embedding, self.keys)
        return self._weights_id

    @property
    def device_id(self) -> str | None:
        """What the device sends as `key_id`: the key id and its weights fingerprint, `key/weights`."""
        return None if self.key_id is None else f"{self.key_id}/{self.weights_id}"

    @property
    def key_id(self) -> str | None:
        """The id of the keys this device holds; ModelServer.infer refuses a cloud made with others."""
        return self.keys.key_id

    @classmethod
    def from_model(cls, model: PreTrainedModel, keys: KeySet, noise_sigma: float = 0.0,
                   noise_generator: torch.Generator | None = None) -> "DataOwner":
        """Extract the device-side module (input embedding, or ViTEmbeddings) from a model."""
        family = _family_of(model)
        shapes = {n: tuple(t.shape) for n, t in model.state_dict().items()}
        check_keys(keys, model.config.model_type, family.dims(model.config), output_dim(family, shapes),
                   user_only=True)
        embedding = copy.deepcopy(family.device_module(model))
        return cls(embedding, keys, family, pooling=last_token_pooling(model), noise_sigma=noise_sigma,
                   noise_generator=noise_generator, generation=generation_rules(model.config))

    @torch.no_grad()
    def embed(self, inputs: torch.Tensor, **device_inputs: torch.Tensor) -> torch.Tensor:
        """Plaintext embeddings (token ids, or pixel values for ViT); never leaves the device.

        Float inputs are cast to the module's dtype, as ViTModel.forward does. `device_inputs`
        are the further inputs the family embeds on the device (`Family.device_inputs`: GPT-2's
        and RoBERTa's token_type_ids, LLaVA's pixel_values), passed to its device module.
        """
        unknown = sorted(set(device_inputs) - set(self.family.device_inputs))
        if unknown:
            raise StipInputError(f"the {self.family.name} device embeds no {unknown}; it takes "
                                 f"{list(self.family.device_inputs) or 'no inputs besides ' + self.family.input_name}")
        if inputs.is_floating_point() and self._float_dtype is not None:
            inputs = inputs.to(self._float_dtype)
        return self.embedding(inputs, **{k: v for k, v in device_inputs.items() if v is not None})

    def permute(self, embeddings: torch.Tensor) -> torch.Tensor:
        """x @ pi, as an index selection over the feature dimension."""
        if embeddings.shape[-1] != self.hidden_size:
            raise StipInputError(f"embeddings have {embeddings.shape[-1]} features, pi expects {self.hidden_size}")
        return permute_features(embeddings, self.keys["pi"])

    def encode(self, inputs: torch.Tensor, **device_inputs: torch.Tensor) -> torch.Tensor:
        """Embed, permute and (if the defence is on) add noise: use request() for a whole call."""
        return self._add_noise(self.permute(self.embed(inputs, **device_inputs)))

    def _add_noise(self, x: torch.Tensor) -> torch.Tensor:
        """x + N(0, noise_sigma^2), fresh per call; x itself when the defence is off."""
        if self.noise_sigma == 0.0:
            return x
        noise = torch.randn(x.shape, generator=self.noise_generator, dtype=torch.float32)
        return x + (self.noise_sigma * noise).to(x.dtype)

    def request(self, inputs: torch.Tensor, attention_mask: torch.Tensor | None = None, session: str | None = None,
                last_only: bool = False, top_k: int | None = None, last_n: int | None = None,
                cache_length: int | None = None, **plain: torch.Tensor | None) -> dict[str, Any]:
        """Everything the cloud gets for one call: keyword arguments for ModelServer.infer.

        The family routes each plain input (`token_type_ids`, `pixel_values`, ...): embedded on
        the device (GPT-2 and RoBERTa token types, LLaVA pixels), sent in the clear (BERT token
        types, the attention mask), or refused. The device's key id goes with every call.
        `last_n` and `cache_length` (speculation, see ModelServer.infer) are sent only when set.
        """
        on_device, clear = self._route_inputs(plain, tuple(inputs.shape[:2]))
        if self.pooling is not None:
            self.pooling.positions(inputs)  # refuse before sending what the device could not pool
        x = self._add_noise(self.permute(self.embed(inputs, **on_device)))
        if attention_mask is not None:
            clear["attention_mask"] = attention_mask
        for name, value in clear.items():
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(x.shape[:2]):
                raise StipInputError(f"{name} has shape {tuple(getattr(value, 'shape', ()))}, expected "
                                     f"[batch, seq] = {list(x.shape[:2])} to match the inputs")
        speculation = {k: v for k, v in (("last_n", last_n), ("cache_length", cache_length)) if v is not None}
        return {"inputs_embeds": x, **clear, "key_id": self.device_id, "session": session,
                "last_only": last_only, "top_k": top_k, **speculation}

    def _route_inputs(self, named: Mapping[str, torch.Tensor | None],
                      token_shape: tuple[int, ...]) -> tuple[dict, dict]:
        """Split plain inputs into (embedded on the device, sent in the clear); refuse the rest."""
        on_device: dict[str, torch.Tensor] = {}
        clear: dict[str, torch.Tensor] = {}
        for name, value in named.items():
            if value is None:
                continue
            if not isinstance(value, torch.Tensor):
                raise StipInputError(f"input {name} must be a tensor, got {type(value).__name__}")
            if name not in self.family.device_inputs + self.family.extra_inputs:
                raise StipInputError(f"{self.family.name} models take no {name}; drop it from the request")
            if name.endswith("_ids") and tuple(value.shape) != token_shape:
                raise StipInputError(f"{name} has shape {tuple(value.shape)}, expected {token_shape} "
                                     "like the input ids")
            (on_device if name in self.family.device_inputs else clear)[name] = value
        return on_device, clear

    def decode(self, outputs: Mapping[str, torch.Tensor] | torch.Tensor,
               input_ids: torch.Tensor | None = None) -> Any:
        """Un-permute the cloud's outputs (a dict from ModelServer.infer, or one logits tensor).

        A decoder classifier's per-position scores are pooled here at the last non-pad token of
        `input_ids` (the ids the request was built from), as transformers does.
        """
        if isinstance(outputs, torch.Tensor):
            return self._unpermute(outputs, "pi_c" if "pi_c" in self.keys else "pi")
        if "topk_indices" in outputs:  # permuted vocabulary positions -> token ids
            return {"topk_values": outputs["topk_values"], "topk_indices": self.keys["pi_c"][outputs["topk_indices"]]}
        outputs = self._pool(outputs, input_ids)
        decoded = {}
        for name, value in outputs.items():
            if name not in OUTPUT_SPACES:
                raise StipInputError(f"unknown output '{name}'; expected one of {sorted(OUTPUT_SPACES)}")
            decoded[name] = self._unpermute(value, OUTPUT_SPACES[name])
        return decoded

    def _pool(self, outputs: Mapping[str, torch.Tensor], input_ids: torch.Tensor | None) -> dict:
        """Replace per-position classifier scores by the pooled `logits` (still permuted by pi_c)."""
        outputs = dict(outputs)
        if "position_logits" not in outputs:
            if self.pooling is not None and "logits" in outputs:
                raise StipInputError("this model pools at the last non-pad token but the server pooled "
                                     "itself, blind to padding; serve the cloud model with stip.ModelServer")
            return outputs
        if self.pooling is None:
            raise StipInputError("the server returned per-position classifier scores but this device has no "
                                 "pooling rule; build it with DataOwner.from_model(model, keys)")
        if input_ids is None:
            raise StipInputError("a decoder classifier pools at the last non-pad token: pass the "
                                 "request's ids, decode(outputs, input_ids=ids)")
        outputs["logits"] = self.pooling.pool(outputs.pop("position_logits"), input_ids)
        return outputs

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


def _check_last_n(last_n: int | None, last_only: bool, seq: int) -> None:
    """`last_n` must be a positive int no larger than the request, and not combined with last_only."""
    if last_n is None:
        return
    if isinstance(last_n, bool) or not isinstance(last_n, int) or not 1 <= last_n <= seq:
        raise StipInputError(f"last_n={last_n!r} must be an int in [1, {seq}] (the request's length)")
    if last_only:
        raise StipInputError("last_only and last_n both choose the returned positions; pass one of them")


def _check_croppable(cache: Any, family: str) -> None:
    """Refuse a roll-back that could not be exact: every layer must keep the states it would drop."""
    for i, layer in enumerate(getattr(cache, "layers", [None])):
        exact = isinstance(layer, DynamicLayer) and (not layer.is_sliding or getattr(layer, "record_past", False))
        if not exact:
            raise StipInputError(f"the {family} KV cache layer {i} ({type(layer).__name__}) cannot be rolled "
                                 "back exactly (only full layers and sliding-window layers that record their "
                                 "past can); generate without speculate for this model")


def _float_input_dtype(module: nn.Module) -> torch.dtype | None:
    """The dtype float inputs are cast to: ViTModel.forward casts pixel_values to its patch projection's."""
    for name, param in module.named_parameters():
        if name.endswith("projection.weight"):
            return param.dtype
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), None)


class ModelServer:
    """The untrusted cloud: runs the stock architecture on transformed weights.

    It keeps one KV cache per generation session; it never sees keys or plaintext. A decoder
    sequence classifier runs its stock base model and score head and returns per-position
    scores (`position_logits`): pooling needs the token ids, which only the device has.
    """

    def __init__(self, cloud_model: PreTrainedModel, max_sessions: int = 256, *, session_ttl_s: float | None = None,
                 max_sessions_per_owner: int | None = None) -> None:
        self.model = cloud_model.eval()
        self.family = _family_of(cloud_model)
        if self.family.prepare_server is not None:
            self.family.prepare_server(self.model)
        self.hidden_size = self.family.dims(cloud_model.config).hidden
        self.key_id: str | None = getattr(cloud_model.config, KEY_ID_FIELD, None)
        self.weights_id: str | None = getattr(cloud_model.config, WEIGHTS_ID_FIELD, None)
        self.pools_last_token = last_token_pooling(cloud_model) is not None
        self._takes_position_ids = "position_ids" in inspect.signature(self.model.forward).parameters
        # causal LMs of transformers 5 compute the head only at the kept positions; others (BERT's MLM, ViT,
        # base models) have no equivalent and run their head everywhere, sliced afterwards as before
        self.takes_logits_to_keep = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        self.max_sessions = max_sessions
        self.session_ttl_s = session_ttl_s  # a session unused this long is dropped (None: kept until closed)
        self.max_sessions_per_owner = max_sessions_per_owner  # None: only max_sessions bounds an owner
        self._sessions: dict[str, dict] = {}
        self._session_owner: dict[str, tuple[str | None, float]] = {}  # id -> (owner, last used, monotonic)
        # transformers 5 names the cache `cache` (`past_key_values` is deprecated, gone in 5.40)
        self._cache_kwarg = "cache" if "cache" in inspect.signature(self.model.forward).parameters \
            else "past_key_values"
        self.generation_rules = generation_rules(cloud_model.config)
        # RoPE state a forward changes (dynamic, longrope): each session gets its own, from the original
        self._rope = RopeState(self.model) if self.generation_rules.rope else None
        self._forward_lock = threading.Lock()  # the RoPE state swap and the forward happen as one

    def open_session(self, owner: str | None = None) -> str:
        """Start a generation session; the server keeps its KV cache until closed or unused for session_ttl_s.

        `owner` (e.g. the connection that asks) binds the session: another owner can neither use nor close it.
        """
        self.expire_sessions()
        if len(self._sessions) >= self.max_sessions:
            raise RuntimeError(f"too many open sessions ({self.max_sessions}); close finished ones")
        held = sum(1 for o, _ in self._session_owner.values() if o == owner)
        if owner is not None and self.max_sessions_per_owner is not None and held >= self.max_sessions_per_owner:
            raise RuntimeError(f"this client holds {held} open sessions (max_sessions_per_owner="
                               f"{self.max_sessions_per_owner}); close finished ones")
        session = uuid.uuid4().hex
        self._sessions[session] = {"cache": None, "mask": None, "length": 0, "step": 0, "batch": None,
                                   "last_position": None, "rope": None}
        self._session_owner[session] = (owner, time.monotonic())
        return session

    def close_session(self, session: str, owner: str | None = None) -> None:
        """Drop a session's KV cache (unknown ids and other owners' sessions are ignored alike)."""
        if session in self._sessions and self._session_owner[session][0] == owner:  # another's: as if unknown
            self._sessions.pop(session, None)
            self._session_owner.pop(session, None)

    def check_session(self, session: str, owner: str | None = None) -> None:
        """Refuse a session id that is unknown, expired or another owner's; mark it used."""
        self.expire_sessions()
        if session not in self._sessions or self._session_owner[session][0] != owner:
            raise StipInputError(SESSION_REFUSED)  # the same words for a live id of another client: no oracle, no echo
        self._session_owner[session] = (owner, time.monotonic())

    def expire_sessions(self) -> list[str]:
        """Drop sessions unused for session_ttl_s; returns their ids."""
        if self.session_ttl_s is None:
            return []
        cutoff = time.monotonic() - self.session_ttl_s
        stale = [s for s, (_, used) in self._session_owner.items() if used < cutoff]
        for s in stale:
            self._sessions.pop(s, None)
            self._session_owner.pop(s, None)
        return stale

    def close_owner_sessions(self, owner: str) -> int:
        """Drop every session of `owner` (its connection closed); returns how many."""
        mine = [s for s, (o, _) in self._session_owner.items() if o == owner]
        for s in mine:
            self._sessions.pop(s, None)
            self._session_owner.pop(s, None)
        return len(mine)

    def check_key_id(self, key_id: str | None) -> None:
        """Raise KeyMismatchError if the device's key id (`key` or `key/weights`, DataOwner.device_id) is not
        this cloud model's, or its weights fingerprint is not the one the model was made from."""
        key_id, _, weights = (key_id or "").partition("/")
        key_id = key_id or None
        if key_id is not None and key_id == self.key_id and weights and self.weights_id \
                and weights != self.weights_id:
            raise KeyMismatchError(f"the device's embedding weights (fingerprint {weights[:12]}...) are not the ones "
                                   f"this cloud model was made from ({self.weights_id[:12]}...): same keys, other "
                                   "weights (a fine-tune re-transformed with old keys?); give the device the package "
                                   "made from this checkpoint's model (stip device-package)")
        if key_id is not None and key_id != self.key_id:
            found = f"key id {self.key_id}" if self.key_id else "no stip_key_id in its config (not a STIP cloud model?)"
            raise KeyMismatchError(f"the device holds keys {key_id} but the cloud model has {found}: its weights "
                                   "were transformed with other keys; serve the checkpoint made with the device's "
                                   "keys, or give the device the user keys of this checkpoint")

    def _check(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 3:
            raise StipInputError(f"inputs_embeds must be a float tensor [batch, seq, {self.hidden_size}], got "
                                 f"{type(x).__name__} {getattr(x, 'dtype', '')} {tuple(getattr(x, 'shape', ()))}")
        if x.shape[-1] != self.hidden_size:
            raise StipInputError(f"inputs_embeds have hidden size {x.shape[-1]}, this model expects "
                                 f"{self.hidden_size}: was it encoded for another model?")

    def _check_plain(self, name: str, value: torch.Tensor, shape: tuple[int, int],
                     session: str | None) -> None:
        """A plain per-token input must be an integer or bool tensor [batch, seq] matching the embeddings."""
        if name != "attention_mask" and name not in self.family.extra_inputs:
            way_out = (f": {self.family.name} embeds it on the device; build the request with "
                       f"DataOwner.request(..., {name}=...)" if name in self.family.device_inputs
                       else "; drop it from the request")
            raise StipInputError(f"{self.family.name} models take no {name} on the cloud{way_out}")
        if not isinstance(value, torch.Tensor) or value.is_floating_point() or value.is_complex():
            raise StipInputError(f"{name} must be an integer or bool tensor, got {type(value).__name__} "
                                 f"{getattr(value, 'dtype', '')}")
        if tuple(value.shape) != shape:
            hint = " (in a session: of the new tokens only; the server keeps the past)" if session else ""
            raise StipInputError(f"{name} has shape {tuple(value.shape)}, expected [batch, seq] = "
                                 f"{list(shape)} to match inputs_embeds{hint}")

    def _session_inputs(self, session: str, attention_mask: torch.Tensor | None,
                        shape: tuple[int, int], cache_length: int | None = None) -> dict[str, Any]:
        """Cache, full mask and position ids of a session step, as model.generate builds them.

        generate derives position ids from the mask (cumsum - 1, pads at 0) at the prompt, then
        counts on from each row's last position; a bare forward would use 0..n-1 and shift every
        left-padded row. New tokens sent without a mask are attended.
        """
        if session not in self._sessions:
            raise StipInputError(SESSION_REFUSED)
        state = self._sessions[session]
        batch, seq = shape
        if state["batch"] is not None and batch != state["batch"]:
            raise StipInputError(f"session '{session}' has batch {state['batch']}, this request has {batch}")
        self._roll_back(session, cache_length)
        if state["cache"] is None:  # recording past states lets sliding-window layers be cropped exactly
            cache = DynamicCache(config=self.model.config)
            cache.activate_past_recording()
            state["cache"] = cache
        kwargs: dict[str, Any] = {self._cache_kwarg: state["cache"], "use_cache": True}
        if attention_mask is None and state["mask"] is None:
            return kwargs
        past = state["mask"]
        if past is None:  # the mask starts now: every earlier token was attended
            past = torch.ones(batch, state["length"], dtype=torch.long)
        new = attention_mask if attention_mask is not None else torch.ones(batch, seq, dtype=past.dtype)
        full = torch.cat([past, new.to(past.dtype)], dim=-1)
        kwargs["attention_mask"] = full
        if self._takes_position_ids:
            if state["last_position"] is None:
                positions = (full.long().cumsum(-1) - 1).masked_fill(full == 0, 0)[:, -seq:]
            else:
                positions = state["last_position"] + 1 + torch.arange(seq)
            kwargs["position_ids"] = positions
        return kwargs

    def _roll_back(self, session: str, cache_length: int | None) -> None:
        """Keep the first `cache_length` cached tokens (the device's accepted drafts), crop the rest.

        Called before every step: `crop(0)` also trims sliding-window layers, which record their
        past so that drafts the device rejects can be removed exactly (as assisted decoding does).
        """
        state = self._sessions[session]
        cache = state["cache"]
        if cache_length is None:
            drop = 0
        else:
            low, high = state["length"] - state["step"], state["length"]
            if isinstance(cache_length, bool) or not isinstance(cache_length, int) or state["step"] == 0 \
                    or not low <= cache_length <= high:
                allowed = f"an int in [{low}, {high}]" if state["step"] else "none before the first step"
                raise StipInputError(f"cache_length={cache_length!r} does not fit session '{session}': it holds "
                                     f"{high} tokens, {state['step']} of them from the last request; a roll-back "
                                     "may only drop tokens of that request (rejected drafts, or all of it to redo "
                                     f"it), so cache_length must be {allowed}")
            drop = high - cache_length
        if cache is None:
            return
        if drop:
            _check_croppable(cache, self.family.name)
        cache.crop(-drop)
        if drop and cache_length == 0:  # the whole prompt is redone: positions come from its mask again
            state.update(cache=None, mask=None, length=0, step=0, batch=None, last_position=None, rope=None)
        elif drop:
            mask, last = state["mask"], state["last_position"]
            state.update(length=cache_length, step=state["step"] - drop,
                         mask=None if mask is None else mask[:, :cache_length],
                         last_position=None if last is None else last - drop)

    def _end_step(self, session: str, kwargs: Mapping[str, Any], cache: Any, shape: tuple[int, int]) -> None:
        state = self._sessions[session]
        positions = kwargs.get("position_ids")
        state.update(cache=cache, mask=kwargs.get("attention_mask"), length=state["length"] + shape[1],
                     step=shape[1], batch=shape[0],
                     last_position=None if positions is None else positions[:, -1:])

    @torch.no_grad()
    def infer(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        session: str | None = None,
        last_only: bool = False,
        top_k: int | None = None,
        key_id: str | None = None,
        last_n: int | None = None,
        cache_length: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Forward permuted embeddings; outputs stay permuted (logits by pi_c, hidden by pi).

        Plain inputs the family cannot take on the cloud are refused (GPT-2's token types are
        embedded on the device). In a session, `attention_mask` covers the new tokens only.
        `key_id` (the device's `DataOwner.key_id`) makes the server refuse a request encoded with
        other keys than its weights were transformed with (e.g. a stale checkpoint).
        Speculation (stip.generate(..., speculate=...)): `last_n` returns the last n positions
        ([batch, n, ...], with `top_k` [batch, n, k]); `cache_length` first crops the session's
        cache to that many tokens, dropping the drafts of the last request the device rejected.
        """
        self.check_key_id(key_id)
        self._check(inputs_embeds)
        shape = (int(inputs_embeds.shape[0]), int(inputs_embeds.shape[1]))
        _check_last_n(last_n, last_only, shape[1])
        if cache_length is not None and session is None:
            raise StipInputError(f"cache_length={cache_length!r} crops a session's KV cache; pass the session")
        plain = {k: v for k, v in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids))
                 if v is not None}
        for name, value in plain.items():
            self._check_plain(name, value, shape, session)
        if self.pools_last_token and (session is not None or last_only or top_k or last_n):
            raise StipInputError("a decoder classifier returns per-position scores for the device to pool; "
                                 "session, last_only, last_n and top_k do not apply")
        x = inputs_embeds.to(self.model.dtype)
        kwargs: dict[str, Any] = {k: v for k, v in plain.items() if k != "attention_mask"}
        if session is not None:
            kwargs.update(self._session_inputs(session, attention_mask, shape, cache_length))
        elif attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
        keep = last_n or (1 if last_only or top_k else None)  # positions the reply carries (None: all)
        if keep and self.takes_logits_to_keep:
            kwargs["logits_to_keep"] = int(keep)  # the head runs on those positions only: same work as plain
        result, cache = self._generation_forward(x, kwargs, session, last_n)
        if session is not None:
            self._end_step(session, kwargs, cache, shape)
        if last_n:
            result = {k: v[:, -last_n:] if v.dim() == 3 else v for k, v in result.items()}
        elif last_only or top_k:
            result = {k: v[:, -1] if v.dim() == 3 else v for k, v in result.items()}
        if top_k:
            if "logits" not in result:
                raise StipInputError("top_k needs a model with logits")
            values, indices = result["logits"].topk(int(top_k), dim=-1)
            result = {"topk_values": values, "topk_indices": indices}
        return result

    def _generation_forward(self, x: torch.Tensor, kwargs: dict[str, Any], session: str | None,
                            last_n: int | None) -> tuple[dict[str, torch.Tensor], Any]:
        """The forward, from the session's own RoPE state (a stateless call: the original state).

        Refuses what transformers' generation would compute differently (stip/generation_rules.py):
        drafts across a RoPE frequency change, and a cached step across Phi-3's cache recompute.
        """
        if session is not None:
            self._check_thresholds(session, int(x.shape[1]), last_n)
        if self._rope is None:
            return self._forward(x, kwargs)
        with self._forward_lock:
            self._rope.restore(None if session is None else self._sessions[session]["rope"])
            out = self._forward(x, kwargs)
            if session is not None:
                self._sessions[session]["rope"] = self._rope.capture()
            self._rope.restore(None)
        return out

    def _check_thresholds(self, session: str, seq: int, last_n: int | None) -> None:
        rules, past = self.generation_rules, self._sessions[session]["length"]
        if rules.recomputes(past, past + seq):
            raise StipInputError(f"this {rules.model_type} model drops its KV cache when the sequence grows past "
                                 f"{rules.recompute_at} tokens (transformers recomputes it there); this request "
                                 f"grows a {past}-token session to {past + seq}: send the whole sequence in a new "
                                 "session (stip.generate does)")
        drafts = (last_n or 1) - 1
        limit = rules.max_drafts(past + seq - drafts)
        if drafts and limit is not None and drafts > limit:
            raise StipInputError(f"{drafts} drafted tokens at sequence length {past + seq - drafts} would change "
                                 f"the RoPE frequencies ({dict(rules.rope)}) or cross a cache recompute "
                                 f"({rules.recompute_at}) that greedy decoding applies one token at a time; "
                                 f"send at most {limit} drafts here (stip.generate limits them itself)")

    def _forward(self, x: torch.Tensor, kwargs: dict[str, Any]) -> tuple[dict[str, torch.Tensor], Any]:
        """The stock forward (a decoder classifier: its base model + score head, unpooled)."""
        if self.pools_last_token:
            hidden = self.model.base_model(inputs_embeds=x, **kwargs).last_hidden_state
            return {"position_logits": self.model.score(hidden)}, None
        if self.family.input_name == "pixel_values":
            out = self.model(pixel_values=x, **kwargs)
        else:
            out = self.model(inputs_embeds=x, **kwargs)
        result = {k: out[k] for k in OUTPUT_SPACES if k in out and out[k] is not None}
        return result, kwargs.get(self._cache_kwarg)  # the session's cache object, updated in place
