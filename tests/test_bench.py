"""The benchmark runner works (tiny size; speed itself is measured by `python -m bench`)."""
import pytest


@pytest.mark.slow
def test_bench_runs_on_a_tiny_size(capsys):
    pytest.importorskip("torch")
    from bench.__main__ import main
    rows = main(["--iterations", "1", "--rounds", "1", "--threads", "1", "--batch", "2"])
    assert rows[0]["net"] == "lenet" and rows[0]["protonet_ms"] > 0 and rows[0]["ratio"] > 0
    assert "lenet" in capsys.readouterr().out
