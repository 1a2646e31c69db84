"""STIP: Secure Transformer Inference Protocol (three parties, feature-space permutations).

    developer = stip.ModelDeveloper(model, seed=0)
    server = stip.ModelServer(developer.cloud_model())
    device = developer.data_owner()
    request = device.request(input_ids, attention_mask=attention_mask)  # what the cloud may see (+ key id)
    out = device.decode(server.infer(**request), input_ids=input_ids)
    next_ids = device.next_token(server.infer(**device.request(input_ids, last_only=True)))
    tokens = stip.generate(device, server, input_ids, 64, speculate=stip.PromptLookup(num_tokens=8))
"""
from .device_package import load_device_package, save_device_package
from .draft_corpus import DraftCorpus
from .errors import StipInputError
from .families import FAMILIES, UnsupportedModelError, get_family
from .generate import generate
from .keys import DEVELOPER_KEYS_FILE, USER_KEYS_FILE, KeyMismatchError, KeySet
from .parties import DataOwner, ModelDeveloper, ModelServer
from .sampling import Sampling
from .speculation import Drafter, GenerationStats, PromptLookup

__all__ = [
    "FAMILIES", "DEVELOPER_KEYS_FILE", "USER_KEYS_FILE", "DataOwner", "DraftCorpus", "Drafter", "GenerationStats",
    "KeyMismatchError", "KeySet", "ModelDeveloper", "ModelServer", "PromptLookup", "Sampling", "StipInputError",
    "UnsupportedModelError", "generate", "get_family", "load_device_package", "save_device_package",
]
