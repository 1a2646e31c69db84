"""The privacy experiment: every stip.attacks attack on the configured models, as tidy rows beside dcor.

`python -m bench.privacy [results_dir=results] [attacks.<name>.<size>=...]` writes
<results_dir>/<experiment_name>/rows.parquet, rows.csv, summary.md and (plots=true) one figure per attack.
"""
from __future__ import annotations

import json
import logging
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generic

import hydra
import pandas as pd
import torch
import transformers
from omegaconf import DictConfig, OmegaConf

from bench.app import CONFIG_DIR, _absolute
from bench.privacy_configs import (
    AttackConfig,
    BaselinesCfg,
    C,
    Drifting,
    FunctionalTheftCfg,
    HiddenStateCfg,
    KnownPlaintextCfg,
    LearnedInverterCfg,
    MoeRoutingCfg,
    MultisetCfg,
    NoiseFrontierCfg,
    OutputFrequencyCfg,
    RowLimited,
    SchemeMatrixCfg,
    SpeculationLengthCfg,
    VitPatchCfg,
    WeightAlignmentCfg,
    parse_attack,
)
from bench.privacy_matrix import matrix_markdown
from bench.privacy_plots import plot_all
from bench.results import atomic_write_bytes, atomic_write_csv, atomic_write_parquet
from protocols.models import load_smollm2, minilm_path
from protocols.privacy import dcor_both, dcor_independent
from stip.attacks import corpus, measure, speculation
from stip.attacks.corpus import TokenBatch
from stip.attacks.frontier import noise_frontier
from stip.attacks.matrix import MatrixCfg, scheme_matrix
from stip.draft_corpus import package_texts, public_corpus
from stip.parties import ModelDeveloper
from stip.prompts import prompt_suite
from stip.speculation import PromptLookup

log = logging.getLogger(__name__)

FIXED = ["attack", "model", "family", "assumption", "metric", "value", "unit", "n_queries", "seconds"]
COLUMNS = ["experiment", *FIXED, "defence", "scheme", "dcor", "dcor_samples", "dcor_independent", "parameters"]


@dataclass
class ModelCfg:
    source: str  # config | minilm | smollm2
    config_class: str | None = None
    model_class: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class PrivacyCfg:
    experiment_name: str = "privacy"
    results_dir: str = "outputs"
    seed: int = 0
    threads: int = 2
    plots: bool = True
    models: dict[str, ModelCfg] = field(default_factory=dict)
    attacks: dict[str, AttackConfig] = field(default_factory=dict)  # parsed per attack by validate
    n_sequences: int = 4
    seq_len: int = 16
    sentences: list[str] = field(default_factory=list)
    inputs: str = "corpus"      # corpus: real_tokens from the prompt suite + package texts | sentences
    real_tokens: int = 512      # real (non-pad) tokens attacked per real model
    row_len: int = 32           # tokens per row of the users' batch (a text's last row is padded)
    per_text: int = 48          # tokens taken from each text (so many texts are used)
    public_tokens: int = 8000   # the attacker's public text (learned inverter, fine-tune drift)


def validate(cfg: DictConfig) -> PrivacyCfg:
    """The composed config as typed dataclasses, each attack's node as its own class (ATTACKS): an unknown
    attack or key, a wrong type or a value outside an attack's choices fails here, naming it, before any runs."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain.pop("hydra", None)
    given = plain.pop("attacks", None) or {}
    typed = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(PrivacyCfg), plain))
    unknown = set(given) - set(ATTACKS)
    if unknown:
        raise ValueError(f"unknown attack(s) {sorted(unknown)}; known: {sorted(ATTACKS)}")
    typed.attacks = {name: parse_attack(name, ATTACKS[name].config, node) for name, node in given.items()}
    for name, attack in typed.attacks.items():
        missing = [m for m in attack.model_names() if m not in typed.models]
        if missing:
            raise ValueError(f"attacks.{name}.models names {missing}, not in models: {sorted(typed.models)}")
    return typed


def randomise_vectors(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random 1-D parameters (norms, biases) so no attack profits from the defaults' symmetry."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return model.eval()


class Models:
    """Loads each configured model once, with its inputs (ids or images)."""

    def __init__(self, cfg: PrivacyCfg):
        self.cfg = cfg
        self._cache: dict[str, tuple[torch.nn.Module, Any]] = {}

    def get(self, name: str) -> tuple[torch.nn.Module, Any]:
        """(model, tokenizer or None)."""
        if name not in self._cache:
            spec = self.cfg.models[name]
            if spec.source == "config":
                torch.manual_seed(self.cfg.seed)
                config = getattr(transformers, spec.config_class)(**spec.kwargs)
                model = randomise_vectors(getattr(transformers, spec.model_class)(config), self.cfg.seed)
                self._cache[name] = (model, None)
            elif spec.source == "minilm":
                self._cache[name] = (transformers.AutoModel.from_pretrained(minilm_path()).eval(),
                                     transformers.AutoTokenizer.from_pretrained(minilm_path()))
            elif spec.source == "smollm2":
                self._cache[name] = load_smollm2()
            else:
                raise ValueError(f"models.{name}.source must be config, minilm or smollm2, got {spec.source!r}")
        return self._cache[name]

    def ids(self, name: str) -> torch.Tensor:
        """The users' token ids [rows, seq] (right-padded; `batch(name).mask` marks the real ones)."""
        return self.batch(name).ids

    def batch(self, name: str) -> TokenBatch:
        """The users' tokens: random ids of random lengths, padded (config models), or `real_tokens` real
        tokens from the prompt suite and package texts (real models; `inputs=sentences`: the sentences)."""
        model, tok = self.get(name)
        cfg = self.cfg
        if tok is None:
            vocab = model.get_input_embeddings().weight.shape[0]
            pad = getattr(model.config, "pad_token_id", None)
            return corpus.random_batch(vocab, cfg.n_sequences, cfg.seq_len, cfg.seed, pad_id=pad if pad else 0)
        if cfg.inputs == "sentences":
            return corpus.token_batch(tok, [(f"sentence:{i}", s) for i, s in enumerate(cfg.sentences)],
                                      max_tokens=10**6, seq_len=max(len(tok(s)["input_ids"]) for s in cfg.sentences),
                                      per_text=10**6, corpus="privacy.yaml sentences")
        if cfg.inputs != "corpus":
            raise ValueError(f"inputs={cfg.inputs!r}; choose corpus or sentences")
        return corpus.token_batch(tok, corpus.user_texts(n_packages=64), max_tokens=cfg.real_tokens,
                                  seq_len=cfg.row_len, per_text=cfg.per_text)

    def public_batch(self, name: str, tokens: int | None = None) -> TokenBatch:
        """The attacker's own text (never a user's): public package texts, or other random ids."""
        model, tok = self.get(name)
        n = tokens or self.cfg.public_tokens
        if tok is None:
            vocab = model.get_input_embeddings().weight.shape[0]
            pad = getattr(model.config, "pad_token_id", None)
            rows = max(2, n // self.cfg.seq_len)
            return corpus.random_batch(vocab, rows, self.cfg.seq_len, self.cfg.seed + 1, pad_id=pad if pad else 0)
        return corpus.token_batch(tok, corpus.public_texts(), max_tokens=n, seq_len=64, per_text=512,
                                  corpus=corpus.PUBLIC)


def _candidates(model: torch.nn.Module, ids: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """The true tokens of `ids` plus random distractors, n in all (or the true ones if more)."""
    vocab = model.get_input_embeddings().weight.shape[0]
    extra = torch.randperm(vocab, generator=torch.Generator().manual_seed(seed))
    pool = torch.unique(torch.cat([ids.reshape(-1), extra]), sorted=False)
    true = torch.unique(ids.reshape(-1))
    rest = pool[~torch.isin(pool, true)][: max(0, n - true.numel())]
    return torch.cat([true, rest])


def package_corpus() -> tuple[list[str], list[str]]:
    """(users' texts, public texts): installed packages' METADATA descriptions, alternating by name."""
    files = sorted(Path(sysconfig.get_paths()["purelib"]).glob("*.dist-info/METADATA"))
    bodies = [b for f in files if len(b := f.read_text(errors="ignore").partition("\n\n")[2]) > 500]
    return bodies[0::2], bodies[1::2]


def _chunks(tokenizer: Any, texts: list[str], max_tokens: int, size: int) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    for text in texts:
        ids = tokenizer(text, return_tensors="pt")["input_ids"][0]
        for start in range(0, ids.numel() - size + 1, size):
            out.append(ids[start:start + size][None])
            if len(out) * size >= max_tokens:
                return out
    return out


Rows = list[dict[str, Any]]


def _users(m: Models, name: str, a: RowLimited) -> TokenBatch:
    """The users' batch, cut to a.max_rows rows when set."""
    b = m.batch(name)
    return b.rows(slice(0, a.max_rows)) if a.max_rows else b


def _drift_kwargs(m: Models, name: str, a: Drifting) -> dict[str, Any]:
    """Drift stand-in arguments: a fine-tune runs on the attacker-side public text, never the users' tokens."""
    out: dict[str, Any] = dict(drifts=a.drifts, drift_kind=a.drift_kind, drift_lr=a.drift_lr)
    if a.drift_kind == "finetune":
        out["drift_text"] = m.public_batch(name, 512).ids[:8]
    return out


def _multiset(m: Models, name: str, a: MultisetCfg, seed: int) -> Rows:
    b = _users(m, name, a)
    return measure.measure_multiset(name, m.get(name)[0], b.ids, seed=seed, mask=b.mask, **_drift_kwargs(m, name, a))


def _weights(m: Models, name: str, a: WeightAlignmentCfg, seed: int) -> Rows:
    b = _users(m, name, a)
    return measure.measure_weights(name, m.get(name)[0], b.ids, seed=seed, hungarian_limit=a.hungarian_limit,
                                   mask=b.mask, **_drift_kwargs(m, name, a))


def _kpa(m: Models, name: str, a: KnownPlaintextCfg, seed: int) -> Rows:
    b = m.batch(name)
    ns = [n for n in a.ns if n <= b.n_real]  # known pairs come from real tokens only
    return measure.measure_kpa(name, m.get(name)[0], b.ids, ns=ns, sigma_rel=a.sigma_rel, seed=seed, mask=b.mask)


def _hidden(m: Models, name: str, a: HiddenStateCfg, seed: int) -> Rows:
    model = m.get(name)[0]
    b = _users(m, name, a)
    ids, mask = b.ids[:, : a.seq_len], b.mask[:, : a.seq_len]
    cands = None if a.candidates <= 0 else _candidates(model, ids[mask], a.candidates, seed)
    return measure.measure_hidden(name, model, ids, layers=a.layers, candidates=cands, seed=seed, mask=mask,
                                  order=a.order, tolerance=a.tolerance, **_drift_kwargs(m, name, a))


def _inverter(m: Models, name: str, a: LearnedInverterCfg, seed: int) -> Rows:
    model = m.get(name)[0]
    b, pub = _users(m, name, a), m.public_batch(name)
    layers = [layer for layer in a.layers if layer < model.config.get_text_config().num_hidden_layers]
    return measure.measure_inverter(name, model, b.ids, pub.ids, layers=layers, mask=b.mask,
                                    public_mask=pub.mask, features=a.features, kind=a.kind, seed=seed,
                                    public_corpus=pub.corpus, **_drift_kwargs(m, name, a))


def _moe(m: Models, name: str, a: MoeRoutingCfg, seed: int) -> Rows:
    b = _users(m, name, a)
    return measure.measure_moe(name, m.get(name)[0], b.ids, seed=seed, mask=b.mask)


def _vit(m: Models, name: str, a: VitPatchCfg, seed: int) -> Rows:
    model = m.get(name)[0]
    size = model.config.image_size
    images = torch.randn(a.n_images, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return measure.measure_vit_patches(name, model, images, seed=seed)


def _theft(m: Models, name: str, a: FunctionalTheftCfg, seed: int) -> Rows:
    return measure.measure_theft(name, m.get(name)[0], m.ids(name), seed=seed)


def _frequency(m: Models, name: str, a: OutputFrequencyCfg, seed: int) -> Rows:
    model, tok = m.get(name)
    if tok is None:
        raise ValueError(f"output_frequency needs a real tokenizer; model {name!r} has none")
    users, public = package_corpus()
    return measure.measure_frequency(name, model, _chunks(tok, users, a.tokens, a.chunk),
                                     _chunks(tok, public, a.tokens, a.chunk),
                                     corpus="installed packages' METADATA descriptions (alternate packages)",
                                     seed=seed, methods=a.methods)


def _baselines(m: Models, name: str, a: BaselinesCfg, seed: int) -> Rows:
    model = m.get(name)[0]
    b = m.batch(name)
    rows = measure.measure_projection(name, model, b.ids, ns=a.projection_ns, seed=seed, mask=b.mask)
    if name in a.split_models:
        short = _users(m, name, a)
        ids, mask = short.ids[:, : a.seq_len], short.mask[:, : a.seq_len]
        cands = None if a.candidates <= 0 else _candidates(model, ids[mask], a.candidates, seed)
        rows += measure.measure_split(name, model, ids, layers=a.split_layers, candidates=cands, mask=mask)
    return rows


def _frontier(m: Models, name: str, a: NoiseFrontierCfg, seed: int) -> Rows:
    b = m.batch(name)
    return noise_frontier(name, m.get(name)[0], b.ids, a.sigmas_rel, seed=seed, kpa_rows=a.kpa_rows, mask=b.mask)


def _speculation(m: Models, name: str, a: SpeculationLengthCfg, seed: int) -> Rows:
    model, tok = m.get(name)
    if tok is None:
        raise ValueError(f"speculation_length needs a real tokenizer; model {name!r} has none")
    drafter = PromptLookup(corpus=public_corpus(tok) if a.draft_corpus == "public" else None)
    snippets = speculation.public_snippets(package_texts()[::-1], a.pairs)  # the corpus holds the first texts
    tasks = {"shipped suite: copying / code / summarisation / open-ended":
             [(p.category, p.text) for p in prompt_suite()],
             "public snippets: copy them / continue them": speculation.task_prompts(snippets)}
    return measure.measure_speculation(name, model, tok, tasks, a.new_tokens, drafter, seed=seed)


def real_tokens(m: Models, name: str, a: SchemeMatrixCfg, seed: int) -> TokenBatch:
    """The users' real tokens (stip.attacks.corpus: prompt suite, then package texts; random ids of random
    lengths for config-built models), right-padded; the matrix scores real positions only."""
    model, tok = m.get(name)
    if tok is None:
        vocab = model.get_input_embeddings().weight.shape[0]
        return corpus.random_batch(vocab, max(1, a.real_tokens // a.row_len), a.row_len, seed=seed)
    return corpus.token_batch(tok, corpus.user_texts(), max_tokens=a.real_tokens, seq_len=a.row_len,
                              per_text=a.per_text)


def _scheme_matrix(m: Models, name: str, a: SchemeMatrixCfg, seed: int) -> Rows:
    model, _ = m.get(name)
    tokens = real_tokens(m, name, a, seed)
    cfg = MatrixCfg(noise_sigma_rel=a.noise_sigma_rel, hidden_layer=a.hidden_layer,
                    hidden_sequences=a.hidden_sequences, hidden_tokens=a.hidden_tokens, candidates=a.candidates,
                    kpa_ns=a.kpa_ns, latency_reps=a.latency_reps, seed=seed)
    return scheme_matrix(name, model, tokens, cfg, schemes=a.schemes)


@dataclass(frozen=True)
class Attack(Generic[C]):
    """One attack: its own config class (configs/attack/<name>.yaml's keys) and the function that runs it."""

    config: type[C]
    run: Callable[[Models, str, C, int], Rows]


ATTACKS: dict[str, Attack[Any]] = {  # the one registry, keyed by the attack's name in configs/privacy.yaml
    "multiset": Attack(MultisetCfg, _multiset),
    "weight_alignment": Attack(WeightAlignmentCfg, _weights),
    "known_plaintext": Attack(KnownPlaintextCfg, _kpa),
    "hidden_state": Attack(HiddenStateCfg, _hidden),
    "moe_routing": Attack(MoeRoutingCfg, _moe),
    "vit_patch": Attack(VitPatchCfg, _vit),
    "functional_theft": Attack(FunctionalTheftCfg, _theft),
    "output_frequency": Attack(OutputFrequencyCfg, _frequency),
    "baselines": Attack(BaselinesCfg, _baselines),
    "noise_frontier": Attack(NoiseFrontierCfg, _frontier),
    "speculation_length": Attack(SpeculationLengthCfg, _speculation),
    "scheme_matrix": Attack(SchemeMatrixCfg, _scheme_matrix),
    "learned_inverter": Attack(LearnedInverterCfg, _inverter),
}


@torch.no_grad()
def model_dcor(m: Models, name: str, seed: int) -> dict[str, float]:
    """dcor (both conventions) between the plain and the permuted embeddings of the model's inputs."""
    model = m.get(name)[0]
    device = ModelDeveloper(model, seed=seed).data_owner()
    if m.cfg.models[name].kwargs.get("image_size"):
        size = model.config.image_size
        pixels = torch.randn(m.cfg.n_sequences, 3, size, size, generator=torch.Generator().manual_seed(seed))
        plain, wire = device.embedding(pixels), device.encode(pixels)
    else:
        b = m.batch(name)
        plain, wire = device.embed(b.ids)[b.mask], device.encode(b.ids)[b.mask]  # real positions only
    out = dcor_both(plain.reshape(-1, plain.shape[-1]), wire.reshape(-1, wire.shape[-1]), seed=seed)
    return {**out, "dcor_independent": dcor_independent(plain.shape[-1], seed=seed)}


def tidy(rows: Rows, dcors: dict[str, dict[str, float]], experiment: str) -> pd.DataFrame:
    """Fixed columns, the model's dcor beside every row, the attack's parameters as one JSON column."""
    records = []
    for r in rows:
        params = {k: v for k, v in r.items() if k not in FIXED}
        d = dcors.get(r["model"], {})
        records.append({"experiment": experiment, **{k: r[k] for k in FIXED}, "defence": params.get("defence"),
                        "scheme": params.get("scheme"),
                        "dcor": d.get("dcor"),
                        "dcor_samples": d.get("dcor_samples"), "dcor_independent": d.get("dcor_independent"),
                        "parameters": json.dumps(params, sort_keys=True, default=str)})
    return pd.DataFrame.from_records(records, columns=COLUMNS)


def summary_markdown(df: pd.DataFrame, cfg: PrivacyCfg, sizes: dict[str, Any], seconds: float) -> str:
    """Per attack and model: assumption, best success, cost (seconds, queries), dcor; and the sizes."""
    success = df[(df["unit"] == "fraction") & df["scheme"].isna()]  # the matrix's rows are in its headline
    success = success.assign(defence=success["defence"].fillna("none"))
    g = success.groupby(["attack", "defence", "model", "metric"], sort=False).agg(
        assumption=("assumption", "first"), max_value=("value", "max"), min_value=("value", "min"),
        seconds=("seconds", "max"), n_queries=("n_queries", "max"), dcor=("dcor", "first"),
        dcor_independent=("dcor_independent", "first")).reset_index()
    lines = [f"# Privacy attacks ({cfg.experiment_name}): measured by `python -m bench.privacy`", "",
             f"Total wall time {seconds:.0f} s on {torch.get_num_threads()} threads. Success is a fraction "
             "(1 = everything recovered); min..max over the swept parameters (drift, layer, n, sigma; see "
             "rows.csv `parameters`). dcor: plain vs permuted embeddings of the same model's real tokens (per "
             "vector); beside it (indep.) what two independent random vectors of the same width give: a dcor "
             "at that floor says nothing about what the attacks recover.", "",
             matrix_markdown(df), "## Every attack (STIP unless the defence column says otherwise)", "",
             "| attack | defence | model | metric | success (min..max) | max seconds | max queries | dcor "
             "| assumption |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in g.itertuples():
        dc = "" if pd.isna(r.dcor) else f"{r.dcor:.3f} (indep. {r.dcor_independent:.3f})"
        lines.append(f"| {r.attack} | {r.defence} | {r.model} | {r.metric} | {r.min_value:.3f}..{r.max_value:.3f} | "
                     f"{r.seconds:.2f} | {r.n_queries} | {dc} | {r.assumption} |")
    real = (f"{cfg.real_tokens} real tokens ({cfg.per_text} per text, rows of {cfg.row_len}) of the shipped prompt "
            "suite and package texts" if cfg.inputs == "corpus" else f"{len(cfg.sentences)} sentences")
    lines += ["", "## Sizes", "", f"- inputs: {cfg.n_sequences} x <= {cfg.seq_len} random ids, right-padded "
              f"(config-built models); {real} (real models). Every token rate is over real (non-pad) positions "
              "only, per position (token_recovery) and per distinct token (distinct_token_recovery); key rates "
              "over secret keys only (forced keys listed in `parameters`)"]
    for name, spec in cfg.models.items():
        lines.append(f"- model {name}: {spec.source} {spec.model_class or ''} {spec.kwargs or ''}".rstrip())
    for name, given in sizes.items():
        if given.get("enabled", True):
            lines.append(f"- {name}: " + json.dumps({k: v for k, v in given.items() if k != "enabled"}))
    return "\n".join(lines) + "\n"


def run(cfg: DictConfig) -> Path:
    """Run every enabled attack on its models; write rows.parquet, rows.csv, summary.md (+ figures)."""
    typed = validate(cfg)
    torch.set_num_threads(typed.threads)
    start = time.perf_counter()
    models = Models(typed)
    rows: Rows = []
    used: list[str] = []
    for attack, a in typed.attacks.items():
        if not a.enabled:
            continue
        for name in a.models:
            log.info("attack %s on %s", attack, name)
            rows += ATTACKS[attack].run(models, name, a, typed.seed)
            used += [name] if name not in used else []
    dcors = {name: model_dcor(models, name, typed.seed) for name in used}
    df = tidy(rows, dcors, typed.experiment_name)
    out = _absolute(typed.results_dir) / typed.experiment_name
    atomic_write_parquet(out / "rows.parquet", df)
    atomic_write_csv(out / "rows.csv", df)
    sizes = OmegaConf.to_container(cfg.attacks, resolve=True)
    atomic_write_bytes(out / "summary.md", summary_markdown(df, typed, sizes, time.perf_counter() - start).encode())
    if typed.plots:
        plot_all(df, out)
    log.info("wrote %d rows to %s in %.0f s", len(df), out, time.perf_counter() - start)
    return out


@hydra.main(config_path=CONFIG_DIR, config_name="privacy", version_base="1.3")
def main(cfg: DictConfig) -> None:
    print(run(cfg))


if __name__ == "__main__":
    main()
