"""The README's first command: the quick-start example runs and its printed numbers are right."""

import pathlib
import subprocess
import sys


ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_quickstart_prints_exact_kl():
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()[1:] if line.strip()]
    assert len(rows) == 3
    for row in rows:
        lam, loss_base, loss_opt, path_kl, exact_kl = map(float, row[:5])
        assert loss_opt < 1e-3 * loss_base
        assert abs(path_kl - exact_kl) < 0.01 * exact_kl
