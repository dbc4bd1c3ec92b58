"""The soak runner works (tiny size; the 20000-iteration soak is run by hand, see README)."""
import pytest


@pytest.mark.slow
def test_soak_reports_memory_and_rate(capsys):
    from bench.soak import main
    result = main(["--iterations", "40", "--every", "20"])
    assert result["iterations"] == 40 and result["rss_after_warmup_mib"] > 10
    assert result["rate_min"] > 0 and "resident memory" in capsys.readouterr().out
