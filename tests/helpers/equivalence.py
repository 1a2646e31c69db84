"""The STIP-vs-plaintext comparison every equivalence test uses."""
import torch

import stip


def run_both(model, inputs):
    """Plaintext output and STIP output (decoded) for the same inputs."""
    developer = stip.ModelDeveloper(model, seed=0)
    server = stip.ModelServer(developer.cloud_model())
    device = developer.data_owner()
    extra = dict(inputs)
    main = extra.pop(device.family.input_name)
    with torch.no_grad():
        reference = model(**inputs)
    request = device.request(main, **extra)  # the family decides what is embedded, sent or refused
    return reference, device.decode(server.infer(**request), input_ids=main)


def assert_equivalent(reference, decoded):
    assert decoded, "no outputs"
    for name, value in decoded.items():
        ref = reference[name]
        rel = (value - ref).abs().max() / ref.abs().max()
        assert rel < 1e-4, f"{name}: relative error {rel:.2e}"
        assert torch.equal(value.argmax(-1), ref.argmax(-1)), f"{name}: top-1 differs"
