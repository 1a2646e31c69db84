"""Functional theft: the cloud model plus one user's package is the original model.

Assumption: one registered user colludes with (or is) the cloud: `pi`, `pi_c` and the device
module plus the transformed weights run the plaintext model's function exactly.
"""
from __future__ import annotations

import torch
from transformers import PreTrainedModel

from ..parties import DataOwner, ModelServer

ASSUMPTION = "one user's package (pi, pi_c, embedding) joins the cloud's transformed weights"


@torch.no_grad()
def functional_theft(plain_model: PreTrainedModel, cloud_model: PreTrainedModel, user: DataOwner,
                     input_ids: torch.Tensor) -> dict[str, float]:
    """Run the stolen function (user package + cloud weights) and compare with the original model.

    Returns max |difference| of the logits (or, without a head, the last hidden state) and,
    with logits, the top-1 agreement with the original.
    """
    decoded = user.decode(ModelServer(cloud_model).infer(**user.request(input_ids)), input_ids=input_ids)
    name = "logits" if "logits" in decoded else "last_hidden_state"
    stolen, original = decoded[name], getattr(plain_model(input_ids=input_ids), name)
    result = {"max_abs_error": float((stolen - original).abs().max())}
    if name == "logits":
        result["top1_agreement"] = float((stolen.argmax(-1) == original.argmax(-1)).float().mean())
    return result
