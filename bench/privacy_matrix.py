"""The scheme x attack matrix of bench.privacy's rows: a pivot, its markdown headline, and the published anchors.

Rows with a `scheme` come from stip.attacks.matrix; the anchors from configs/reported/schemes/anchors.yaml.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml

from bench.app import CONFIG_DIR

ANCHORS = Path(CONFIG_DIR) / "reported" / "schemes" / "anchors.yaml"
ATTACK_ORDER = ("embedding_multiset", "weight_alignment_decode", "known_plaintext_cross_session",
                "hidden_state_sorted", "hidden_state_gram")
SCHEME_ORDER = ("stip", "stip_noise", "stip_fresh_keys", "rotation", "rotation_noise")
TALARIA_NOTE = (
    "No Talaria-kind arm (the device keeps the weight-free operations: norms, softmax attention, activations). "
    "It needs one round trip per linear layer (SmolLM2: 7 per block, 210 per token) and a reversible mask for "
    "each outsourced product (ReMO), which the one-call cloud of stip.parties and this matrix's arms do not "
    "have; its accuracy would be exact by construction and its cost is round trips, which the latency "
    "sweeps (bench) model, not this matrix. The published Talaria numbers stand beside the matrix unmeasured.")


def _params(rows: pd.DataFrame) -> pd.DataFrame:
    params = pd.DataFrame([json.loads(p) for p in rows["parameters"]], index=rows.index)
    return rows.join(params.drop(columns=[c for c in params if c in rows], errors="ignore"))


def _column(r: pd.Series) -> str:
    if r["attack"] == "known_plaintext_cross_session":
        return f"known_plaintext_cross_session (n={int(r['n'])})"
    if r["attack"].startswith("hidden_state"):
        return f"{r['attack']} (layer {int(r['layer'])})"
    return r["attack"]


def _column_order(column: str) -> tuple[int, float, str]:
    """Attacks in ATTACK_ORDER, then by their number (n or layer) as a number, not a string."""
    rank = next((i for i, a in enumerate(ATTACK_ORDER) if column.startswith(a)), len(ATTACK_ORDER))
    digits = "".join(ch for ch in column.rpartition("(")[2] if ch.isdigit())
    return rank, float(digits) if digits else 0.0, column


def scheme_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows of the matrix (those with a scheme), parameters spread into columns."""
    if "scheme" not in rows or rows["scheme"].isna().all():
        return rows.iloc[0:0]
    return _params(rows[rows["scheme"].notna()])


def success_matrix(rows: pd.DataFrame, metric: str = "token_recovery") -> pd.DataFrame:
    """scheme x attack: success on real tokens (fraction), one model at a time (the first if several)."""
    df = scheme_rows(rows)
    df = df[df["attack"].isin(ATTACK_ORDER) & (df["metric"] == metric)]
    if df.empty:
        return pd.DataFrame()
    df = df[df["model"] == df["model"].iloc[0]].assign(column=lambda d: d.apply(_column, axis=1))
    table = df.pivot_table(index="scheme", columns="column", values="value", aggfunc="first")
    order = [s for s in SCHEME_ORDER if s in table.index] + [s for s in table.index if s not in SCHEME_ORDER]
    cols = sorted(table.columns, key=_column_order)
    return table.loc[order, cols]


def beside(rows: pd.DataFrame) -> pd.DataFrame:
    """Per scheme: accuracy and cost columns (top-1 agreement, max |logit diff|, latency ratio, bytes, seconds)."""
    df = scheme_rows(rows)
    df = df[df["attack"].isin(["scheme_accuracy", "scheme_cost"])]
    if df.empty:
        return pd.DataFrame()
    df = df[df["model"] == df["model"].iloc[0]]
    return df.pivot_table(index="scheme", columns="metric", values="value", aggfunc="first")


def load_anchors(path: Path = ANCHORS) -> list[dict]:
    """The published numbers set beside the matrix (each with source, quote and what our arm leaves out)."""
    if not path.is_file():
        raise FileNotFoundError(f"no anchors file at {path}; restore configs/reported/schemes/anchors.yaml")
    return list(yaml.safe_load(path.read_text())["entries"])


def _value(v) -> str:
    if v is None:
        return "(qualitative)"
    if isinstance(v, dict):
        return f"{v['low']:g}..{v['high']:g}"
    if isinstance(v, list):
        return " -> ".join(f"{x:g}" for x in v)
    return f"{v:g}"


def _getter(s: pd.Series):
    def get(metric: str, fmt: str) -> str:
        return fmt.format(s[metric]) if metric in s and pd.notna(s[metric]) else "-"
    return get


def matrix_markdown(rows: pd.DataFrame) -> str:
    """The headline: the matrix, accuracy and cost beside it, then the anchors; '' when no matrix was run."""
    table = success_matrix(rows)
    if table.empty:
        return ""
    distinct = success_matrix(rows, "distinct_token_recovery")
    side = beside(rows)
    df = scheme_rows(rows)
    model = df["model"].iloc[0]
    first = df.iloc[0]
    lines = [f"## The scheme x attack matrix ({model}, real tokens only)", "",
             f"Success = fraction of real (non-pad) token positions the attack recovers ({int(first['n_real'])} "
             "real tokens for the embedding, weight and known-plaintext attacks; the hidden-state attacks read "
             "the first sequences, see Sizes), then / the fraction of distinct tokens whose every position is "
             "recovered. 1 = everything recovered. Accuracy: top-1 agreement of the device's decoded logits with "
             "plaintext on the same real tokens. Latency ratio: one call (device encode + cloud forward + "
             "device decode) over a plaintext forward, this host, medians of a few runs (the host is shared: "
             "a ratio, not a time).", ""]
    cols = list(table.columns)
    lines.append("| scheme | " + " | ".join(cols) + " | top-1 agreement | max abs logit diff | latency ratio "
                 "| transform s | re-transform per session |")
    lines.append("|---" * (len(cols) + 6) + "|")
    for scheme in table.index:
        cells = []
        for c in cols:
            v, d = table.loc[scheme, c], distinct.loc[scheme, c] if c in distinct else float("nan")
            cells.append("" if pd.isna(v) else f"{v:.3f} / {d:.3f}")
        s = side.loc[scheme] if scheme in side.index else pd.Series(dtype=float)
        get = _getter(s)
        retransform = "-"
        if "per_session_retransform_seconds" in s and pd.notna(s["per_session_retransform_seconds"]):
            retransform = (f"{s['per_session_retransform_seconds']:.1f} s, "
                           f"{s['per_session_cloud_bytes'] / 2**20:.1f} MiB to the cloud")
        lines.append(f"| {scheme} | " + " | ".join(cells) + f" | {get('top1_agreement', '{:.3f}')} | "
                     f"{get('max_abs_logit_diff', '{:.2g}')} | {get('latency_ratio_vs_plaintext', '{:.2f}')} | "
                     f"{get('transform_seconds', '{:.1f}')} | {retransform} |")
    sigma = df.loc[df["scheme"].str.endswith("noise"), "noise_sigma"]
    lines += ["", "Bytes on the wire are the same for every arm: "
              f"{int(side['upload_bytes_per_token'].iloc[0])} B up and {int(side['download_bytes_per_token'].iloc[0])} "
              "B down per token (float32 hidden vector up, float32 logits down)."
              + (f" Noise arms: sigma = {sigma.iloc[0]:.4g} (noise_sigma_rel x the embedding table's RMS)."
                 if len(sigma) else ""), "",
              "Which attack fits which arm: a rotation is not a permutation, so the value-multiset attacks "
              "(embedding_multiset, hidden_state_sorted) fail on it by construction; weight alignment on the "
              "rotation arms is orthogonal Procrustes (stip/attacks/rotation.py), on the permutation arms "
              "Hungarian matching of quantile fingerprints (stip/attacks/weights.py); hidden_state_gram matches "
              "inner products with the recovered prefix, blind to every orthogonal map (a permutation "
              "included). known_plaintext_cross_session learns the key from n known rows of one session and "
              "decodes another session: the same key except for stip_fresh_keys.", "",
              TALARIA_NOTE, "", "### Published anchors (reported, not measured here)", "",
              "| paper | system | quantity | value | unit | our arm and what it leaves out | source |",
              "|---|---|---|---|---|---|---|"]
    for a in load_anchors():
        rel = {"gt": "> ", "lt": "< ", "approx": "~ "}.get(a.get("relation", "eq"), "")
        lines.append(f"| {a['paper']} | {a['system']} | {a['quantity']} | {rel}{_value(a.get('value'))} | "
                     f"{a['unit']} | {a['ours']} | [{a['provenance']}]({a['source']}): \"{a['quote']}\" |")
    return "\n".join(lines) + "\n"
