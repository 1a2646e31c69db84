"""STIP: Secure Transformer Inference Protocol (three parties, feature-space permutations).

    developer = stip.ModelDeveloper(model, seed=0)
    server = stip.ModelServer(developer.cloud_model())
    device = developer.data_owner()
    out = device.decode(server.infer(device.encode(input_ids)))
    next_ids = device.next_token(server.infer(device.encode(input_ids), last_only=True))
"""
from .families import FAMILIES, UnsupportedModelError, get_family
from .generate import generate
from .keys import DEVELOPER_KEYS_FILE, USER_KEYS_FILE, KeyMismatchError, KeySet
from .parties import DataOwner, ModelDeveloper, ModelServer, StipInputError
from .sampling import Sampling

__all__ = [
    "FAMILIES", "DEVELOPER_KEYS_FILE", "USER_KEYS_FILE", "DataOwner", "KeyMismatchError", "KeySet",
    "ModelDeveloper", "ModelServer", "Sampling", "StipInputError", "UnsupportedModelError", "generate",
    "get_family",
]
