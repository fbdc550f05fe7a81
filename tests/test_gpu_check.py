"""bench/gpu_check.sh --dry-run: the GPU check script's logic, stage by stage, on a machine without a GPU
(the build shown, the CUDA tests collected, the sanitizers' case and a quick benchmark on the CPU kernels)."""
from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_check_dry_run(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(tmp_path), PYTHONPATH=ROOT)
    res = subprocess.run(["bash", os.path.join(ROOT, "bench", "gpu_check.sh"), "--dry-run"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    for stage in ("info", "build", "import", "tests", "memcheck", "racecheck", "bench"):
        assert f"=== [{stage}] ok" in out, (stage, out[-4000:])
    assert "sanitize_case: " in out and "on cpu, all returned" in out
    assert (tmp_path / "gpu_bench.json").exists() and (tmp_path / "summary.txt").exists()
