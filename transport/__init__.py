"""Device-cloud runtime: the cloud in its own process, reached over TCP through an emulated link.

    with CloudProcess("pkg.module:make_handler", {"checkpoint": path}, network=profile) as cloud:
        tensors, meta = cloud.call("infer", {"inputs_embeds": x}, {"session": None})
        cloud.last_timing      # {"uplink": s, "cloud_compute": s, "downlink": s}
        cloud.meter.snapshot() # bytes/messages/link time per direction

A cloud serving on another host (``python -m transport serve``, TLS + token off loopback) is
reached with ``RemoteCloud("host:port", token=..., ca_file=...)``, which calls like CloudProcess.

Modules: transport.wire (frame format), framing (frames over sockets), link (NetworkProfile emulation),
meter (traffic counters), limits (ServerLimits), cloud (server process), client (CloudProcess,
RemoteCloud), serve (the standalone server command), checks (request validation for handlers),
testing (echo handler).
"""
from transport.client import (
                              CallRecord,
                              CloudClient,
                              CloudError,
                              CloudProcess,
                              CloudTimeout,
                              CloudUnavailable,
                              RemoteCloud,
                              parse_address,
)
from transport.limits import ServerLimits
from transport.link import EmulatedLink
from transport.meter import TrafficMeter

__all__ = ["CallRecord", "CloudClient", "CloudError", "CloudProcess", "CloudTimeout", "CloudUnavailable",
           "EmulatedLink", "RemoteCloud", "ServerLimits", "TrafficMeter", "parse_address"]
