"""Import hygiene: importing the agents loads neither the dataset generator nor the CLI and
simulator stacks, and the `python -m` entry points run without runpy's double-import warning.

Each check runs in a fresh interpreter (`sys.executable`), as this test process has long
imported everything."""

import subprocess
import sys

import pytest


# Modules that `from flowsoc.rl import TRQAM, ...` must not load. None of them is imported by
# jax, equinox, diffrax or optax themselves (checked with `python -c "import jax, equinox,
# diffrax, optax, sys; print([m for m in sys.modules if m.split('.')[0] in {...}])"`, which
# prints []), so each entry is a regression in flowsoc's own import chain if it appears.
NOT_LOADED = (
    "tyro",  # the generator's and the examples' CLI only
    "multiprocessing",  # the generator's worker pool and WorkerEnvs only
    "flowsoc.rl.ogbench",  # the OGBench world: datasets, generator, presets, CLI engine, experts
    "flowsoc.rl.datagen",
    "matplotlib",
    "ogbench",
    "gymnasium",
    "mujoco",
)


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300)


def test_importing_the_agents_loads_no_generator_cli_or_simulator():
    code = (
        "import sys\n"
        "from flowsoc.rl import TRQAM, QAM, BAM, AgentConfig\n"
        f"print(sorted(m for m in sys.modules if any(m == n or m.startswith(n + '.') for n in {NOT_LOADED!r})))\n"
    )
    result = _run("-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"loaded by `from flowsoc.rl import ...`: {result.stdout.strip()}"


@pytest.mark.parametrize("module", ["flowsoc.rl.datagen", "flowsoc.rl.experts"])
def test_cli_module_runs_without_runpy_warning(module):
    # runpy warns (here: fails) when importing the package `flowsoc.rl` already imported `module`.
    result = _run("-W", "error::RuntimeWarning", "-m", module, "--help")
    assert result.returncode == 0, result.stderr
    assert "RuntimeWarning" not in result.stderr
    assert "usage" in result.stdout.lower()
