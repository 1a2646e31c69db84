"""The artifact-module contract of report/artifacts: units convert, verdicts need reasons, ids resolve."""
import pytest

from report.artifacts import Comparison, convert, modules, paper_value


def test_convert_between_units_of_one_dimension():
    assert convert(25, "min", "s") == 1500
    assert convert(1, "GiB", "MiB") == 1024
    with pytest.raises(ValueError, match="cannot convert 'ms' to 'MiB'"):
        convert(1, "ms", "MiB")


def test_a_gap_needs_a_reason_and_a_known_status():
    with pytest.raises(ValueError, match="no reason"):
        Comparison(artifact="fig2", quantity="latency", unit="s", status="differs", measured=1.0, paper=2.0)
    with pytest.raises(ValueError, match="status 'close'"):
        Comparison(artifact="fig2", quantity="latency", unit="s", status="close", reason="x")
    c = Comparison(artifact="fig2", quantity="latency", unit="s", status="reproduced", measured=3.0, paper=2.0)
    assert c.ratio == 1.5 and c.record()["ratio"] == 1.5


def test_paper_value_reads_configs_reported_in_the_asked_unit():
    assert paper_value("fig2-ciphergpt-latency", "s") == 25 * 60
    with pytest.raises(KeyError, match="no-such-entry"):
        paper_value("no-such-entry", "s")


def test_every_artifact_module_follows_the_contract():
    for mod in modules():
        assert isinstance(mod.ARTIFACT, str) and isinstance(mod.EXPERIMENTS, tuple)
