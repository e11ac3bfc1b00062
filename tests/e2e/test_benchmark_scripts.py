"""The export benchmark still measures what docs/speed.md says it does: both outputs identical, the
warm row's hash cached, and every part of the breakdown found in a real run (a renamed function
would drop its row silently otherwise)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_export  # noqa: E402


def test_bench_export_rows_and_breakdown(tmp_path):
    out = subprocess.run([sys.executable, "benchmarks/bench_export.py", "--size-gb", "0.25", "--runs", "1",
                          "--breakdown"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "TMPDIR": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert "outputs identical: True" in text and "warm row's hash cached: True" in text
    assert text.startswith("command: python benchmarks/bench_export.py --size-gb 0.25 --runs 1 --breakdown\n")
    assert "machine: " in text and " cores" in text
    for row in (bench_export.HAND_ROW, bench_export.WARM_ROW, bench_export.COLD_ROW):
        assert row in text
    warm, cold = text.split("hash cache warm (median")[1], text.split("hash cache cold (median")[1]
    for _, _, label in bench_export.PARTS:
        if label.startswith("the run's steps"):
            continue
        assert label in cold, label  # the cold run hashes the source: every part took place
    assert "import torch" in warm and "write model.safetensors" in warm
    seconds = {line.rsplit(None, 1)[0].strip(): float(line.rsplit(None, 1)[1])
               for line in cold.splitlines()[1:] if line.startswith("  ")}
    assert seconds["SHA-256 of the source (its own thread)"] > 0.05  # a 256 MiB file really read


def test_bench_export_refuses_nonsense_arguments():
    for args in (["--runs", "0"], ["--size-gb", "-1"], ["--size-gb", "nan"]):
        out = subprocess.run([sys.executable, "benchmarks/bench_export.py", *args], cwd=ROOT, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 2 and "--runs must be at least 1" in out.stderr, args
