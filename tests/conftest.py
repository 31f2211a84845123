import jax
import jax.random as jr
import pytest


# The numerical oracles of the core are checked in float64 (as Diffrax's own suite does).
jax.config.update("jax_enable_x64", True)
# Strict promotion, as in Diffrax's own suite: no implicit rank broadcasting, no implicit dtype mixing.
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture
def getkey():
    """A fresh PRNG key each call: `key = getkey()`."""
    state = {"key": jr.key(0)}

    def _getkey():
        state["key"], sub = jr.split(state["key"])
        return sub

    return _getkey
