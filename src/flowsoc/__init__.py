"""flowsoc: fine-tuning flow-matching models by stochastic optimal control.

The core (no RL in it): the memoryless SDE and the flow ODE as Diffrax terms, the lean adjoint
ODE, flow matching and adjoint matching losses with the trust-region parameter λ inside σ, the
Girsanov path KL, and exact Gaussian oracles (`flowsoc.gaussian`).
"""

import importlib.metadata

from . import gaussian as gaussian
from ._adjoint import lean_adjoint as lean_adjoint, LeanAdjointField as LeanAdjointField
from ._brownian import GridBrownianPath as GridBrownianPath
from ._checkpoint import (
    CheckpointError as CheckpointError,
    latest_checkpoint as latest_checkpoint,
    load_checkpoint as load_checkpoint,
    save_checkpoint as save_checkpoint,
)
from ._driver import (
    AbstractProgressMeter as AbstractProgressMeter,
    AbstractTrainer as AbstractTrainer,
    Block as Block,
    drive as drive,
    NonFiniteError as NonFiniteError,
    NoProgressMeter as NoProgressMeter,
    Saved as Saved,
    TextProgressMeter as TextProgressMeter,
    TqdmProgressMeter as TqdmProgressMeter,
)
from ._finetune import (
    finetune as finetune,
    FinetuneConfig as FinetuneConfig,
    Finetuner as Finetuner,
    FinetuneState as FinetuneState,
)
from ._kl import optimal_kl as optimal_kl, path_kl as path_kl
from ._logging import (
    AbstractLogger as AbstractLogger,
    MetricsLog as MetricsLog,
    TensorBoardLogger as TensorBoardLogger,
    WandbLogger as WandbLogger,
)
from ._losses import (
    adjoint_matching_loss as adjoint_matching_loss,
    flow_matching_loss as flow_matching_loss,
    soc_objective as soc_objective,
)
from ._metrics import (
    frechet_distance as frechet_distance,
    gaussian_frechet_distance as gaussian_frechet_distance,
)
from ._paths import (
    interpolate as interpolate,
    memoryless_drift as memoryless_drift,
    memoryless_sigma as memoryless_sigma,
    shifted_sigma as shifted_sigma,
    uniform_grid as uniform_grid,
    VelocityField as VelocityField,
)
from ._scalar_adjoint import (
    bridge_states as bridge_states,
    bridge_times as bridge_times,
    scalar_adjoint_matching_loss as scalar_adjoint_matching_loss,
)
from ._sde import (
    memoryless_terms as memoryless_terms,
    MemorylessDiffusion as MemorylessDiffusion,
    MemorylessDrift as MemorylessDrift,
    sample_ode as sample_ode,
    sample_sde as sample_sde,
)
from ._trust_region import DualDescent as DualDescent, DualState as DualState


__version__ = importlib.metadata.version("flowsoc")
