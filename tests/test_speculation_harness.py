"""The harness's `speculate` option: speculative STIP generation through the socket, the cloud's checks.

The runner-level rows (experiment=speculation at toy size) are checked in test_measurement_contract.py.
"""
from __future__ import annotations

import contextlib
import threading

import pytest
import torch

import stip
from protocols.cloud_and_traffic import greedy_tokens
from protocols.contract import RunRequest
from protocols.speculation import check_cloud_drafting
from protocols.stip_over_socket import RemoteModelServer, StipCloudHandler, StipConfig
from transport import CloudError, RemoteCloud
from transport.cloud_server import CloudServer

from helpers.stip_models import tiny_llama


@contextlib.contextmanager
def stip_cloud():
    """A STIP cloud handler served in this process (a thread), a client to it, and the device."""
    handler = StipCloudHandler.__new__(StipCloudHandler)  # the weights without a checkpoint on disk
    developer = stip.ModelDeveloper(tiny_llama(), seed=0)
    handler.server = stip.ModelServer(developer.cloud_model())
    server = CloudServer(handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    cloud = RemoteCloud(f"127.0.0.1:{server.port}", timeout_s=10).start()
    try:
        yield cloud, developer
    finally:
        cloud.close()
        server.close()
        thread.join(5)


def test_speculative_generation_crosses_the_socket_with_identical_tokens():
    with stip_cloud() as (cloud, developer):
        ids = torch.tensor([[5, 6, 7, 8, 5, 6, 7, 8, 5, 6]])
        remote, stats = RemoteModelServer(cloud), stip.GenerationStats()
        before = cloud.meter.snapshot()
        tokens = stip.generate(developer.data_owner(), remote, ids, 12, speculate=stip.PromptLookup(4, 2),
                               stats=stats)
        delta = cloud.meter.delta(before, cloud.meter.snapshot())
    assert torch.equal(tokens[:, ids.shape[1]:], greedy_tokens(developer.model, ids, 12))
    assert len(remote.calls) == stats.round_trips and all(c["rounds"] == 1 for c in remote.calls)
    assert min(delta["messages_up"], delta["messages_down"]) == stats.round_trips + 2  # + open/close session
    assert sum(stats.drafted) > 0


def test_the_cloud_checks_last_n_and_cache_length():
    with stip_cloud() as (cloud, developer):
        session = cloud.call("open_session")[1]["session"]
        request = developer.data_owner().request(torch.tensor([[1, 2, 3]]), session=session, top_k=2, last_n=2)
        tensors = {k: v for k, v in request.items() if isinstance(v, torch.Tensor)}
        meta = {k: v for k, v in request.items() if not isinstance(v, torch.Tensor)}
        with pytest.raises(CloudError, match="last_n must be an integer"):
            cloud.call("infer", tensors, {**meta, "last_n": "2"})
        with pytest.raises(CloudError, match="cache_length=-1 is out of range"):
            cloud.call("infer", tensors, {**meta, "cache_length": -1})
        out, _ = cloud.call("infer", tensors, meta)
        assert tuple(out["topk_indices"].shape) == (1, 2, 2)


def test_speculate_and_prompt_suite_options_are_validated():
    with pytest.raises(ValueError, match="protocol.speculate='beam'"):
        StipConfig(speculate="beam")
    with pytest.raises(ValueError, match="protocol.draft_tokens=0"):
        StipConfig(draft_tokens=0)
    assert StipConfig().drafter() is None
    # STIP's defaults are the ones every committed run used (configs/protocol/stip.yaml once listed them)
    assert StipConfig(speculate="prompt_lookup", draft_tokens=4).drafter() == stip.PromptLookup(4, 3, latest=True)
    assert StipConfig(speculate="prompt_lookup", draft_latest=False).drafter() == stip.PromptLookup(16, 3,
                                                                                                   latest=False)
    with pytest.raises(ValueError, match="protocol.draft_corpus='wiki'"):
        StipConfig(draft_corpus="wiki")
    with pytest.raises(ValueError, match="needs a model with a tokenizer"):
        StipConfig(speculate="prompt_lookup", draft_corpus="public").drafter(None)
    with pytest.raises(ValueError, match="full cloud drafts with transformers' prompt lookup"):
        check_cloud_drafting(StipConfig(speculate="prompt_lookup", draft_latest=True))
    with pytest.raises(ValueError, match="run.inputs='files'"):
        RunRequest(1, 8, 1, 0, 0, task="generate", max_new_tokens=2, inputs="files")
    with pytest.raises(ValueError, match="batch_size 1"):
        RunRequest(2, 8, 1, 0, 0, task="generate", max_new_tokens=2, inputs="prompt_suite")
