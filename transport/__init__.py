"""Device-cloud runtime: the cloud in its own process, reached over TCP through an emulated link.

    with CloudProcess("pkg.module:make_handler", {"checkpoint": path}, network=profile) as cloud:
        tensors, meta = cloud.call("infer", {"inputs_embeds": x}, {"session": None})
        cloud.last_timing      # {"uplink": s, "cloud_compute": s, "downlink": s}
        cloud.meter.snapshot() # bytes/messages/link time per direction

Modules: transport.wire (frame format), framing (frames over sockets), link (NetworkProfile emulation),
meter (traffic counters), cloud (server process), client (CloudProcess), testing (echo handler).
"""
from transport.client import CallRecord, CloudError, CloudProcess, CloudTimeout, CloudUnavailable
from transport.link import EmulatedLink
from transport.meter import TrafficMeter

__all__ = ["CallRecord", "CloudError", "CloudProcess", "CloudTimeout", "CloudUnavailable", "EmulatedLink",
           "TrafficMeter"]
