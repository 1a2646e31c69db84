"""The measurement vocabulary, defined once: every protocol's rows use these phases, metrics, units and sources.

Definitions (the same in every row, whatever the protocol):
- `latency` (s) at phase `total`: wall time of one request end to end, link included. `source=socket`:
  measured through the emulated link (socket protocols); `source=modelled`: measured compute +
  rounds x RTT + critical-path bytes / bandwidth (`NetworkProfile.time`), given for EVERY protocol
  that serves requests, so a cross-protocol comparison filters `source == "modelled"`.
  Phase `compute` holds compute alone (no link), where a protocol can separate it (MPC: `engine`).
- `bytes` (B) at phase `total`: bytes both sides send for the request; `uplink`/`downlink` per direction.
- `rounds` (count) at phase `total`: sequential communication rounds of the request (socket: request-reply
  exchanges; MPC: CrypTen collectives, the larger per-party count).
- generation (phase `generate` unless said): `rounds_per_token`: the socket's request-reply exchanges of
  forward requests (STIP `infer`; session open/close are in `rounds`, not here) / generated tokens;
  `drafted_tokens` / `accepted_tokens` (source host): mean drafts sent / accepted per forward round trip
  (full cloud: per forward pass of its own generate; 0 without speculation); `forward_passes_per_token`
  (full cloud, source host): the cloud model's forward calls / generated tokens;
  `bytes_per_token` at `uplink`/`downlink`: that direction's socket bytes of the whole request / generated
  tokens; `latency` at `per_token`: (last token's time - the first round trip's last token's time) / tokens
  after the first round trip (without speculation: the mean of the `token` rows).
- accuracy (`max_abs_error`, `sum_abs_error`, `top1_agreement`, `cosine_similarity`, `diverged_fraction`,
  phase `output`): see protocols.accuracy.
Protocol parameters (return mode, device layers, embedding placement, provider, transform) are never rows:
the runner writes them as columns of the runs table from the resolved config. A (phase, metric, source,
repeat) is unique within a run.
"""
from __future__ import annotations

# How a number was obtained.
SOURCES = {
    "socket": "measured where bytes cross the device-cloud socket, through the emulated link",
    "engine": "an MPC engine's own counters (CrypTen, SecretFlow SPU), every party on this host (loopback)",
    "host": "measured in-process on this host (timers, module sizes, RSS)",
    "modelled": "measured compute + rounds x RTT + bytes / bandwidth of the run's network profile (device compute x "
                "the declared device_slowdown where a protocol has one: model_split; its device_* rows say so)",
    "simulated": "an MPC forward simulated in float64 plaintext with the same approximations (no parties, no link)",
    "shapes": "derived from tensor shapes and dtypes, nothing run",
}
# The `security` column of MPC rows: who must be trusted for the measured numbers to mean privacy. Each label is
# read from the engine's own setting where the parties run (CrypTen: crypten.cfg.mpc.provider; SPU: the runtime
# config's protocol and, for SEMI2K, its beaver_type), never assumed from the config's name.
SECURITY = {
    "2pc-dealer-is-server": "two parties, semi-honest, the correlated randomness (Beaver triples) drawn in the clear "
                            "by the server itself (CrypTen TFP; SPU SEMI2K with beaver_type TrustedFirstParty, 0.9.5's "
                            "default: rank 0 deals): the server holds the triples' masks and could unmask the "
                            "device's input; a benchmark of the online cost, not a private deployment",
    "2pc-dealer-third-party": "two parties plus a third party that draws the correlated randomness in the clear "
                              "(CrypTen TTP; SPU SEMI2K with beaver_type TrustedThirdParty): private while the dealer "
                              "colludes with neither party",
    "2pc": "two parties, semi-honest, preprocessing by OT/HE between them (SPU Cheetah): secure against the server",
    "3pc-honest-majority": "three parties, semi-honest, at most one corrupted (SPU ABY3, as PUMA reports)",
}
# Labels written by earlier versions, kept only to read old results: what they meant and what to do.
LEGACY_SECURITY = {
    "2pc-dealer": "written before the labels were read from the engine (CrypTen TFP or TTP, SPU SEMI2K: dealer = "
                  "server or a third party, not told apart); regenerate the results with `make bench`",
}
# Metric -> unit.
METRICS = {
    "latency": "s",
    "cpu_time": "s",  # process CPU time (every thread) in a phase, beside its wall-time latency (source host)
    "bytes": "B",
    "rounds": "count",
    "messages": "count",
    "throughput": "tokens/s",
    "memory": "B",
    "memory_after_frame": "B",  # an image processor's RSS growth once it has preprocessed one frame (Fig. 8)
    "dcor": "ratio",
    "dcor_samples": "ratio",
    "dcor_samples_u": "ratio",  # sample-wise dcor, bias-corrected (u-centred) estimator (Fig. 6a, weights)
    "max_abs_error": "abs",
    "sum_abs_error": "abs",
    "top1_agreement": "ratio",
    "cosine_similarity": "ratio",
    "diverged_fraction": "ratio",
    "preprocessing_rounds": "count",
    "preprocessing_bytes": "B",
    "rounds_per_token": "count/token",
    "bytes_per_token": "B/token",
    "accepted_tokens": "count",
    "drafted_tokens": "count",
    "forward_passes_per_token": "count/token",
}
STIP_PHASES = ("device_embed", "device_permute", "uplink", "cloud_compute", "downlink", "device_recover")
MPC_PHASES = ("embedding", "linear", "attention_softmax", "activation", "layernorm", "head")
PHASES = {
    "total": "one request end to end (a forward pass)",
    "compute": "compute of one request without the link",
    **{p: "a step of the device-cloud request" for p in STIP_PHASES},
    **{p: "an MPC operator class" for p in MPC_PHASES},
    "weight_open": "MPC: the bytes of one forward that re-open the secret-shared weights (W - b of every Beaver "
                   "product with a weight, 8 B per element each way, in the same round as the input's mask); "
                   "a part of the operator classes' bytes, not added to them",
    "prefill": "generation: first token (prompt pass)",
    "token": "generation: one further token (seq_len = context length)",
    "per_token": "generation: mean over decode tokens",
    "generate": "generation: the whole request of max_new_tokens tokens",
    "output": "accuracy of the outputs against the plaintext model",
    "embeddings": "privacy: plaintext embeddings vs what is sent",
    "parameters": "privacy: original vs transformed weights",
    "device_embedding": "device memory: the embedding stage",
    "device_tokenizer": "device memory: the tokenizer",
    "device_model": "device memory: every module kept on the device",
}


def check(phase: str, metric: str, source: str) -> str:
    """The unit of a (phase, metric, source), naming the vocabulary on an unknown word."""
    for word, known, what in ((phase, PHASES, "phase"), (metric, METRICS, "metric"), (source, SOURCES, "source")):
        if word not in known:
            raise ValueError(f"{what} {word!r} is not in the measurement vocabulary; known: {sorted(known)} "
                             f"(add it to protocols/vocabulary.py with its definition)")
    return METRICS[metric]


def check_security(label: str | None) -> str | None:
    """A row's `security` label, refused (naming SECURITY) when it is not one this vocabulary defines."""
    if label is not None and label not in SECURITY:
        if label in LEGACY_SECURITY:
            raise ValueError(f"security {label!r} is an old label: {LEGACY_SECURITY[label]}; known: {sorted(SECURITY)}")
        raise ValueError(f"security {label!r} is not in the measurement vocabulary; known: {sorted(SECURITY)} "
                         f"(add it to protocols/vocabulary.py with its definition)")
    return label
