"""STIP against 2PC MPC (each approximation) on the same model, inputs and network, in one run.

Writes results/mpc_vs_stip/speedup.csv: one row per (protocol, approx, network) with measured compute,
rounds, bytes, modelled latency on the network, and the speedup of STIP over that MPC variant.
Modelled time: MPC = compute + rounds x RTT + (wire bytes / 2) / bandwidth (full-duplex, symmetric opens);
STIP = device + cloud compute + 1 x RTT + (uplink + downlink bytes) / bandwidth (the two are sequential).

Usage: HF_HUB_OFFLINE=1 .venv/bin/python scripts/mpc_vs_stip.py --model bert-tiny --seq-len 32 \
           --networks lan,wan,wired
"""
from __future__ import annotations

import argparse
import csv
import os
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from baselines.mpc.approximations import MPC_FAMILIES
from baselines.mpc.session import run_mpc_forward
from protocols.contract import NetworkProfile
from transport.link import network_profile
from protocols.models import build_spec

ROOT = Path(__file__).resolve().parents[1]


def load_network(name: str) -> NetworkProfile:
    path = ROOT / "configs" / "network" / f"{name}.yaml"
    if not path.exists():
        choices = sorted(p.stem for p in (ROOT / "configs" / "network").glob("*.yaml"))
        raise ValueError(f"unknown network {name!r}; choices: {choices}")
    return network_profile(OmegaConf.to_container(OmegaConf.load(path)))


def run_stip(model, ids: torch.Tensor, mask: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median device and cloud compute of STIP's one-pass inference, and its payload bytes each way."""
    import stip

    dev = stip.ModelDeveloper(model, seed=0)
    device, server = dev.data_owner(), stip.ModelServer(dev.cloud_model())
    dev_t, cloud_t = [], []
    for _ in range(repeats + 1):  # first pass is warm-up
        t0 = time.perf_counter()
        x = device.encode(ids)
        t1 = time.perf_counter()
        with torch.no_grad():
            y = server.infer(x, attention_mask=mask)
        t2 = time.perf_counter()
        out = device.decode(y)
        t3 = time.perf_counter()
        dev_t.append((t1 - t0) + (t3 - t2))
        cloud_t.append(t2 - t1)
    up = x.numel() * x.element_size() + mask.numel() * mask.element_size()
    down = sum(v.numel() * v.element_size() for v in y.values())
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask)
    name = "logits" if "logits" in out else "last_hidden_state"
    err = (out[name].double() - getattr(ref, name).double()).abs().max().item()
    return {"device_s": float(torch.tensor(dev_t[1:]).median()), "cloud_s": float(torch.tensor(cloud_t[1:]).median()),
            "uplink_bytes": float(up), "downlink_bytes": float(down), "max_abs_error": err}


def _mpc_from_csv(path: Path, model: str, seq_len: int) -> dict[str, dict[str, float]]:
    """MPC measurements (compute, rounds, wire bytes, error) per approximation from an earlier run's CSV."""
    out: dict[str, dict[str, float]] = {}
    for r in csv.DictReader(path.open()):
        if r["protocol"] == "mpc" and r["model"] == model and int(r["seq_len"]) == seq_len:
            out.setdefault(r["approx"], {"latency": float(r["compute_s"]), "rounds": float(r["rounds"]),
                                         "bytes": float(r["bytes"]), "max_abs_error": float(r["max_abs_error"])})
    if not out:
        raise ValueError(f"{path} has no MPC rows for model {model!r} at seq_len {seq_len}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="bert-tiny", help="a configs/model/<name>.yaml")
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--approx", default=",".join(MPC_FAMILIES))
    ap.add_argument("--networks", default="lan,wan,wired,wireless")
    ap.add_argument("--repeats", type=int, default=5, help="STIP repeats (MPC runs once per approximation)")
    ap.add_argument("--out", default=str(ROOT / "results" / "mpc_vs_stip" / "speedup.csv"))
    ap.add_argument("--mpc-from", default=None,
                    help="reuse the measured MPC numbers of an earlier speedup CSV (same model, inputs) and "
                         "re-measure STIP only, e.g. after a disturbed STIP timing")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    networks = [load_network(n) for n in args.networks.split(",") if n]
    spec = build_spec(OmegaConf.load(ROOT / "configs" / "model" / f"{args.model}.yaml"), seed=0)
    model = spec.build()
    inputs = spec.make_inputs(args.batch_size, args.seq_len, 0)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    stip_m = run_stip(model, ids, mask, args.repeats)
    print("stip", stip_m)
    mpc = _mpc_from_csv(Path(args.mpc_from), args.model, args.seq_len) if args.mpc_from else {}
    for fam in [a for a in args.approx.split(",") if a and not args.mpc_from]:
        res = run_mpc_forward(model, ids, mask, approx=fam, timeout_s=3600)
        with torch.no_grad():
            ref = getattr(model(input_ids=ids, attention_mask=mask), res.output_name).double()
        tot = res.runs[0].phases["total"]
        mpc[fam] = {**tot, "max_abs_error": (res.output - ref).abs().max().item()}
        print("mpc", fam, {k: round(v, 4) for k, v in mpc[fam].items()})
    rows = []
    for net in networks:
        stip_time = stip_m["device_s"] + stip_m["cloud_s"] + net.time(1, stip_m["uplink_bytes"] + stip_m["downlink_bytes"])
        rows.append(dict(model=args.model, seq_len=args.seq_len, batch_size=args.batch_size, network=net.name,
                         protocol="stip", approx="", compute_s=stip_m["device_s"] + stip_m["cloud_s"], rounds=1,
                         bytes=stip_m["uplink_bytes"] + stip_m["downlink_bytes"], latency_modelled_s=stip_time,
                         max_abs_error=stip_m["max_abs_error"], speedup_of_stip=1.0))
        for fam, m in mpc.items():
            t = m["latency"] + net.time(m["rounds"], m["bytes"] / 2.0)
            rows.append(dict(model=args.model, seq_len=args.seq_len, batch_size=args.batch_size, network=net.name,
                             protocol="mpc", approx=fam, compute_s=m["latency"], rounds=m["rounds"], bytes=m["bytes"],
                             latency_modelled_s=t, max_abs_error=m["max_abs_error"], speedup_of_stip=t / stip_time))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for r in rows:
        print(f"{r['network']:9s} {r['protocol']:5s} {r['approx']:10s} {r['latency_modelled_s']:10.4f} s  "
              f"x{r['speedup_of_stip']:.0f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
