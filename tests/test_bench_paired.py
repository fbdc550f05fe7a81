"""bench/paired_speedup.py: the paired speed-up of one benchmark row, run end to end on W1's small batch."""
import json
import os
import statistics
import sys

import pytest
import torch

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
sys.path.insert(0, BENCH)
import benchlib as bl  # noqa: E402
import paired_speedup  # noqa: E402


def test_median_interval_brackets_the_median():
    values = [1.0, 2.0, 3.0, 4.0, 100.0]
    m, lo, hi = paired_speedup.median_interval(values)
    assert m == 3.0
    assert min(values) <= lo <= m <= hi <= max(values)
    assert paired_speedup.median_interval([2.5] * 7) == (2.5, 2.5, 2.5)


@pytest.fixture
def keep_threads():
    """main() sets torch's thread count (--threads); the rest of the session keeps its own."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.mark.skipif(not bl.fused_available("cpu")[0], reason="needs the fused CPU kernels")
def test_paired_speedup_reports_the_median_of_per_round_ratios(tmp_path, capsys, keep_threads):
    out = tmp_path / "paired.json"
    paired_speedup.main(["--workload", "W1", "--pairs", "adjacent", "--target", "hard_negative_pairs",
                         "--impl", "eager", "--rounds", "3", "--products", "--json", str(out)])
    rec = json.loads(out.read_text())
    s = rec["seconds"]
    assert rec["case"] == "W1[adjacent] hard_negative_pairs fwdbwd" and rec["rounds"] == 3
    assert set(s) == {"fused", "eager", "products"} and all(len(v) == 3 and min(v) > 0 for v in s.values())
    for a, b in (("eager", "fused"), ("eager", "products"), ("fused", "products")):
        expected = statistics.median(x / y for x, y in zip(s[a], s[b]))
        got = rec["summary"][f"{a}/{b}"]
        assert got["median"] == pytest.approx(expected)
        assert got["ci95"][0] <= got["median"] <= got["ci95"][1]
    assert rec["machine"]["ee_cuda_path"].endswith("ee_cuda")
    assert "eager / fused:" in capsys.readouterr().out


def test_products_only_for_the_pairs_backward():
    with pytest.raises(SystemExit):
        paired_speedup.main(["--target", "hard_negative_points", "--products"])
