"""Figures of the privacy experiment: one per attack, and the noise defence's frontier.

`plot_all(rows, folder)` writes <folder>/attack_<name>.png and noise_frontier.png from bench.privacy's rows.
"""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from bench.privacy_matrix import beside, success_matrix  # noqa: E402

X_PARAMS = ("n", "layer", "drift", "sigma_rel")  # the first that varies becomes the x axis
X_LABELS = {"n": "known pairs / queries n", "layer": "layer attacked (block index)",
            "drift": "weight drift of the fine-tuned model (relative)", "sigma_rel": "noise sigma / embedding RMS"}
FRONTIER_ATTACKS = ("multiset", "known_plaintext", "weight_alignment_nearest")


def _with_params(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows with the JSON `parameters` column spread into columns."""
    params = pd.DataFrame([json.loads(p) for p in rows["parameters"]], index=rows.index)
    return rows.join(params.drop(columns=[c for c in params if c in rows], errors="ignore"))


def _label(r: pd.Series, keys: list[str]) -> str:
    extra = ", ".join(f"{k}={r[k]}" for k in keys if k in r and pd.notna(r[k]))
    return f"{r['model']} {r['metric']}" + (f" ({extra})" if extra else "")


def _varying(df: pd.DataFrame, cols: tuple[str, ...] | list[str]) -> list[str]:
    return [c for c in cols if c in df and df[c].nunique(dropna=True) > 1]


def plot_attack(rows: pd.DataFrame, attack: str, path: Path) -> Path:
    """Success of one attack: lines over its swept parameter, or bars when nothing is swept."""
    df = rows[rows["attack"] == attack]
    if "defence" in df:
        df = df[df["defence"].isna()]
    df = df[df["unit"].isin(["fraction", "ratio"])]
    if "key" in df:  # per-layer keys are summarised by layer_keys_mean_recovered
        df = df[~df["key"].fillna("").str.startswith("layers.")]
    if df.empty:
        raise ValueError(f"no plottable rows for attack {attack!r}")
    xs = _varying(df, X_PARAMS)
    others = [c for c in ("key", "observed", "drift", "layer", "n") if c not in xs[:1]]
    others = _varying(df, others)
    units = "/".join(sorted(df["unit"].unique()))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if xs:
        x = xs[0]
        for label, g in df.groupby(df.apply(_label, axis=1, keys=others), sort=False):
            g = g.sort_values(x)
            ax.plot(g[x], g["value"], marker="o", label=label)
        ax.set_xlabel(X_LABELS[x])
        if x == "n":
            ax.set_xscale("log", base=2)
        if x == "layer":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        labels = [f"{lab} [{u}]" for lab, u in zip(df.apply(_label, axis=1, keys=others), df["unit"])]
        ax.barh(range(len(df)), df["value"], color="tab:red")
        ax.set_yticks(range(len(df)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("attack success (fraction)" if units == "fraction"
                      else f"value ({units}; a ratio is an error: lower = better attack)")
    if xs:
        ax.set_ylabel(f"attack success ({units})")
        if len(ax.get_lines()) > 8:  # many series: the legend beside the axes, not over them
            fig.set_size_inches(12, 5.5)
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        else:
            ax.legend(fontsize=7, loc="best")
        if units == "fraction":
            ax.set_ylim(-0.05, 1.05)
    ax.grid(alpha=0.3)
    models = ", ".join(df["model"].unique())
    fig.suptitle(f"{attack}: {models}\n" + textwrap.fill(f"assumption: {df['assumption'].iloc[0]}", 100),
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_frontier(rows: pd.DataFrame, path: Path) -> Path:
    """Attack success vs top-1 agreement, one point per sigma, a panel per model."""
    df = rows[rows["defence"] == "noise"]
    if df.empty:
        raise ValueError("no noise_defence rows to plot (is attacks.noise_frontier enabled?)")
    models = list(df["model"].unique())
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models):
        m = df[(df["model"] == model) & (df["metric"] != "distinct_token_recovery")]  # one line per attack
        acc = m[m["attack"] == "noise_defence"].set_index("sigma_rel")
        for attack in FRONTIER_ATTACKS:
            a = m[m["attack"] == attack].set_index("sigma_rel").sort_index()
            ax.plot(acc.loc[a.index, "value"], a["value"], marker="o", label=attack)
            for s, v in a["value"].items():
                ax.annotate(f"σ={s:g}", (acc.loc[s, "value"], v), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
        ax.set_xlabel(f"accuracy kept: {acc['metric'].iloc[0]} with plaintext")
        ax.set_ylabel("attack success (fraction)")
        ax.set_title(f"noise defence frontier: {model}\nsigma relative to the embedding RMS", fontsize=9)
        ax.set_xlim(-0.05, 1.05)
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_matrix(rows: pd.DataFrame, path: Path) -> Path:
    """The scheme x attack matrix as a heatmap (success on real tokens), accuracy and latency in the row labels."""
    table = success_matrix(rows)
    if table.empty:
        raise ValueError("no scheme_matrix rows to plot (is attacks.scheme_matrix enabled?)")
    side = beside(rows)
    labels = []
    for scheme in table.index:
        s = side.loc[scheme] if scheme in side.index else pd.Series(dtype=float)
        acc = f"top-1 {s['top1_agreement']:.3f}" if "top1_agreement" in s else ""
        lat = f", x{s['latency_ratio_vs_plaintext']:.2f} latency" if "latency_ratio_vs_plaintext" in s else ""
        labels.append(f"{scheme}\n({acc}{lat})")
    fig, ax = plt.subplots(figsize=(2.0 + 1.5 * table.shape[1], 1.2 + 0.75 * table.shape[0]))
    ax.imshow(table.to_numpy(dtype=float), cmap="Reds", vmin=0, vmax=1, aspect="auto")
    for i in range(table.shape[0]):
        for j in range(table.shape[1]):
            v = table.iat[i, j]
            if pd.notna(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=9,
                        color="white" if v > 0.6 else "black")
    ax.set_xticks(range(table.shape[1]), [textwrap.fill(c.replace("_", " "), 16) for c in table.columns],
                  fontsize=7)
    ax.set_yticks(range(table.shape[0]), labels, fontsize=8)
    model = rows.loc[rows["scheme"].notna(), "model"].iloc[0]
    ax.set_title(f"attack success on real tokens (fraction of positions), {model}\n"
                 "row: scheme (top-1 agreement with plaintext, call latency / plaintext)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_all(rows: pd.DataFrame, folder: Path) -> list[Path]:
    """Every attack's figure plus the frontier (when measured) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    df = _with_params(rows)
    out = []
    plain = df if "defence" not in df else df[df["defence"].isna()]
    if "scheme" in plain:  # the matrix's rows get one figure of their own
        plain = plain[plain["scheme"].isna()]
    for attack in plain["attack"].unique():
        if plain[(plain["attack"] == attack) & plain["unit"].isin(["fraction", "ratio"])].empty:
            continue
        out.append(plot_attack(df, attack, folder / f"attack_{attack}.png"))
    if "defence" in df and (df["defence"] == "noise").any():
        out.append(plot_frontier(df, folder / "noise_frontier.png"))
    if "scheme" in df and df["scheme"].notna().any():
        out.append(plot_matrix(rows, folder / "scheme_matrix.png"))
    return out
