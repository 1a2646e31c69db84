"""The privacy experiment end to end at toy size: `python -m bench.privacy` writes tidy rows beside dcor."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from bench.app import CONFIG_DIR
from bench.privacy import ATTACKS, COLUMNS, validate
from bench.privacy_configs import AttackConfig, HiddenStateCfg, SpeculationLengthCfg, parse_attack
from stip.attacks.scoring import METRICS

ROOT = Path(__file__).resolve().parents[1]
TOY = [  # config-built models only, small sweeps: ~30 s on 2 cores
    "attacks.multiset.models=[gpt2,bert,llama]", "attacks.weight_alignment.models=[llama]",
    "attacks.known_plaintext.models=[llama]", "attacks.known_plaintext.ns=[1,4]",
    "attacks.hidden_state.models=[llama]", "attacks.hidden_state.layers=[1]", "attacks.hidden_state.drifts=[0.0]",
    "attacks.moe_routing.models=[mixtral]", "attacks.vit_patch.n_images=1",
    "attacks.functional_theft.models=[gpt2]", "attacks.output_frequency.enabled=false",
    "attacks.baselines.models=[llama]", "attacks.baselines.projection_ns=[16,128]",
    "attacks.baselines.split_layers=[1]",
    "attacks.noise_frontier.models=[llama]", "attacks.noise_frontier.sigmas_rel=[0.0,0.3,1.0,3.0,10.0]",
    "attacks.speculation_length.enabled=false",  # real SmolLM2 generation: tests/test_stip_attack_speculation.py
    "attacks.scheme_matrix.models=[llama]", "attacks.scheme_matrix.kpa_ns=[8,128]",
    "attacks.scheme_matrix.candidates=16", "attacks.scheme_matrix.hidden_tokens=6",
    "attacks.scheme_matrix.real_tokens=48", "attacks.scheme_matrix.row_len=16",
    "attacks.learned_inverter.models=[llama]", "attacks.learned_inverter.layers=[1]",
    "attacks.learned_inverter.drifts=[0]", "public_tokens=600",
]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("privacy")
    proc = subprocess.run([sys.executable, "-m", "bench.privacy", f"results_dir={out}", *TOY], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "privacy"


def test_rows_schema_and_files(toy_run):
    rows = pd.read_parquet(toy_run / "rows.parquet")
    assert list(rows.columns) == COLUMNS
    assert rows[["attack", "model", "family", "assumption", "metric", "unit"]].notna().all().all()
    assert (rows["seconds"] >= 0).all() and (rows["n_queries"] >= 0).all()
    unknown = set(rows["metric"]) - set(METRICS)
    assert not unknown, f"metrics outside the one vocabulary (stip/attacks/scoring.py METRICS): {unknown}"
    tokens = rows[rows["metric"] == "token_recovery"]
    assert all("n_real_tokens" in json.loads(p) for p in tokens["parameters"])  # real positions only
    assert rows["dcor"].between(0, 1).all()  # every row sits beside its model's dcor
    assert all(isinstance(json.loads(p), dict) for p in rows["parameters"])
    assert len(pd.read_csv(toy_run / "rows.csv")) == len(rows)
    assert {"multiset", "weight_alignment", "known_plaintext", "hidden_state", "moe_routing", "vit_patch",
            "functional_theft", "projection_multiset", "split_inversion", "noise_defence"} <= set(rows["attack"])
    summary = (toy_run / "summary.md").read_text()
    assert "| multiset | none | llama | token_recovery |" in summary and "## Sizes" in summary
    figures = {p.name for p in toy_run.glob("*.png")}
    assert {"attack_multiset.png", "attack_hidden_state.png", "noise_frontier.png"} <= figures


def test_multiset_recovers_every_token_of_untouched_embeddings(toy_run):
    rows = pd.read_parquet(toy_run / "rows.parquet")
    clean = rows[(rows["attack"] == "multiset") & rows["defence"].isna()]
    clean = clean[[json.loads(p)["drift"] == 0.0 for p in clean["parameters"]]]
    assert set(clean["model"]) == {"gpt2", "bert", "llama"}
    assert (clean["value"] == 1.0).all()


def test_noise_frontier_is_monotone_in_sigma_for_multiset(toy_run):
    rows = pd.read_parquet(toy_run / "rows.parquet")
    noisy = rows[(rows["attack"] == "multiset") & (rows["defence"] == "noise") & (rows["metric"] == "token_recovery")]
    sigma = [json.loads(p)["sigma_rel"] for p in noisy["parameters"]]
    success = noisy.assign(sigma=sigma).sort_values("sigma")["value"].tolist()
    assert success[0] == 1.0 and success[-1] < 0.1  # clean: all recovered; heavy noise: stopped
    assert all(a >= b for a, b in zip(success, success[1:])), success


def test_scheme_matrix_is_the_headline(toy_run):
    rows = pd.read_parquet(toy_run / "rows.parquet")
    matrix = rows[rows["scheme"].notna()]
    assert set(matrix["scheme"]) == {"stip", "stip_noise", "stip_fresh_keys", "rotation", "rotation_noise"}
    exact = matrix[(matrix["metric"] == "top1_agreement") & matrix["scheme"].isin(["stip", "rotation"])]
    assert (exact["value"] == 1.0).all()
    summary = (toy_run / "summary.md").read_text()
    assert summary.index("## The scheme x attack matrix") < summary.index("## Every attack")
    assert "Talaria" in summary and "ConjFormer" in summary
    assert (toy_run / "scheme_matrix.png").is_file()


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("privacy", overrides=list(overrides))


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "attack").glob("*.yaml")), ids=lambda p: p.stem)
def test_each_shipped_attack_yaml_parses_into_its_own_class(path):
    given = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    cls = ATTACKS[path.stem].config  # the registry knows the attack by its file's name
    assert cls is not AttackConfig and [a.config for a in ATTACKS.values()].count(cls) == 1
    assert list(given) and set(given) == {f.name for f in dataclasses.fields(cls)}  # exactly the file's keys
    typed = parse_attack(path.stem, cls, given)
    assert type(typed) is cls and typed == cls()  # the class's defaults are the file's values


def test_the_registry_is_the_composed_attacks():
    typed = validate(_compose())
    assert set(typed.attacks) == set(ATTACKS) == {p.stem for p in (ROOT / "configs" / "attack").glob("*.yaml")}
    assert all(type(a) is ATTACKS[name].config for name, a in typed.attacks.items())


def _privacy_overrides() -> list[list[str]]:
    """The argument lists configs/bench_profiles.yaml passes to bench.privacy (make bench, make bench-all)."""
    found: list[list[str]] = []

    def walk(node):
        if isinstance(node, dict):
            if node.get("module") == "bench.privacy":
                found.append(node["args"].replace("{results}", "/tmp/unused").split())
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(yaml.safe_load((ROOT / "configs" / "bench_profiles.yaml").read_text()))
    return found


def test_the_profiles_overrides_still_parse():
    profiles = _privacy_overrides()
    assert ["attacks.hidden_state.seq_len=4", "attacks.hidden_state.max_rows=1",
            "attacks.speculation_length.pairs=6"] in [args[1:] for args in profiles]  # make bench's
    for args in profiles:
        validate(_compose(*args))
    typed = validate(_compose("attacks.hidden_state.seq_len=4", "attacks.hidden_state.max_rows=1",
                              "attacks.speculation_length.pairs=6", "attacks.output_frequency.enabled=false"))
    hidden, spec = typed.attacks["hidden_state"], typed.attacks["speculation_length"]
    assert isinstance(hidden, HiddenStateCfg) and (hidden.seq_len, hidden.max_rows) == (4, 1)
    assert isinstance(spec, SpeculationLengthCfg) and spec.pairs == 6
    assert typed.attacks["output_frequency"].enabled is False and typed.attacks["multiset"].enabled is True
    assert hidden.drifts == [0.0, 10.0] and hidden.drift_lr == 1e-4  # yaml `1e-4` and ints typed as the class says


def test_unknown_key_names_the_attack_and_its_known_keys():
    with pytest.raises(ValueError, match=r"attacks\.multiset: unknown key\(s\) \['pairs'\]") as err:
        validate(_compose("+attacks.multiset.pairs=3"))  # speculation_length's key: the union took it silently
    assert "MultisetCfg" in str(err.value) and "'drifts'" in str(err.value) and "'max_rows'" in str(err.value)


@pytest.mark.parametrize("override, expected", [
    ("attacks.hidden_state.seq_len=abc", r"attacks\.hidden_state\.seq_len='abc' has the wrong type: .* expects int"),
    ("attacks.known_plaintext.ns=[1,x]", r"attacks\.known_plaintext\.ns=\[1, 'x'\] .* expects list\[int\]"),
    ("attacks.noise_frontier.sigmas_rel=0.3", r"attacks\.noise_frontier\.sigmas_rel=0\.3 .* expects list\[float\]"),
    ("attacks.vit_patch.enabled=maybe", r"attacks\.vit_patch\.enabled='maybe' .* expects bool"),
])
def test_wrong_type_names_the_key_and_the_expected_type(override, expected):
    with pytest.raises(ValueError, match=expected):
        validate(_compose(override))


def test_a_value_outside_the_choices_fails_before_any_attack_runs():
    with pytest.raises(ValueError, match=r"draft_corpus='web'.*choose from \['none', 'public'\]"):
        validate(_compose("attacks.speculation_length.draft_corpus=web"))
    with pytest.raises(ValueError, match=r"schemes=.*\['rot'\] not allowed"):
        validate(_compose("attacks.scheme_matrix.schemes=[stip,rot]"))
    with pytest.raises(ValueError, match=r"attacks\.baselines\.models names \['gpt3'\]"):
        validate(_compose("attacks.baselines.split_models=[gpt3]"))
