"""flowsoc.rl: QAM, QAM-E, QAM-F, TRQAM, SQAM and BAM on the SOC core, and their training loops.

Two layers behind this one public face (the modules are private, as in `equinox.nn`):

- the algorithm: the agents, their configuration, networks and replay buffers;
- training: BC pre-training of the behaviour flow, offline training, many seeds at once and
  offline-to-online training, all on the core's run driver (`flowsoc.drive`), with the environment
  runners and the evaluation they use.

The OGBench world (datasets and their generator, presets from the papers, the examples' command
line, experts) is `flowsoc.rl.ogbench`. Importing the agents loads no dataset generator, command-line
library, multiprocessing or simulator. Needs the `rl` extra (`pip install -e '.[rl]'`).
"""

from ._agents import (
    AbstractActor as AbstractActor,
    AbstractFlowAgent as AbstractFlowAgent,
    AbstractPolicyObjective as AbstractPolicyObjective,
    AbstractTemperature as AbstractTemperature,
    BAM as BAM,
    BasicAdjoint as BasicAdjoint,
    EditedFlow as EditedFlow,
    FixedTemperature as FixedTemperature,
    FlowODE as FlowODE,
    LeanAdjointMatching as LeanAdjointMatching,
    OneStepDistillation as OneStepDistillation,
    QAM as QAM,
    QAME as QAME,
    QAMF as QAMF,
    ScalarAdjointMatching as ScalarAdjointMatching,
    SQAM as SQAM,
    Trainables as Trainables,
    TRQAM as TRQAM,
    TrustRegionTemperature as TrustRegionTemperature,
)
from ._buffers import (
    ACTION_CLIP_EPS as ACTION_CLIP_EPS,
    add_transitions as add_transitions,
    append_transitions as append_transitions,
    chunk_start_indices as chunk_start_indices,
    ChunkBatch as ChunkBatch,
    clip_actions as clip_actions,
    gather_chunks as gather_chunks,
    indexed_from_raw as indexed_from_raw,
    IndexedTransitions as IndexedTransitions,
    overwrite_rows as overwrite_rows,
    ReplayBuffer as ReplayBuffer,
    sample_chunks as sample_chunks,
    sparsify_rewards as sparsify_rewards,
    Transitions as Transitions,
)
from ._config import AgentConfig as AgentConfig, SMALL_NETWORKS as SMALL_NETWORKS
from ._custom_types import Agent as Agent, Evaluator as Evaluator, SeedEvaluator as SeedEvaluator
from ._envs import (
    EnvRunner as EnvRunner,
    InProcessEnvs as InProcessEnvs,
    make_env_runner as make_env_runner,
    run_actions as run_actions,
    Segment as Segment,
    WorkerEnvs as WorkerEnvs,
)
from ._errors import DatasetError as DatasetError
from ._evaluate import agent_policy as agent_policy, EvalResult as EvalResult, evaluate as evaluate
from ._networks import (
    count_params as count_params,
    CriticEnsemble as CriticEnsemble,
    ema_update as ema_update,
    MLP as MLP,
    OneStepPolicy as OneStepPolicy,
    TanhGaussian as TanhGaussian,
    VelocityMLP as VelocityMLP,
)
from ._online import (
    Collector as Collector,
    latest_online_checkpoint as latest_online_checkpoint,
    OnlineConfig as OnlineConfig,
    OnlineState as OnlineState,
    OnlineTrainer as OnlineTrainer,
    train_online as train_online,
    with_kl_budget as with_kl_budget,
)
from ._pretrain import (
    BCConfig as BCConfig,
    BCPretrainer as BCPretrainer,
    behaviour_flow_loss as behaviour_flow_loss,
    dataset_fingerprint as dataset_fingerprint,
    pretrain_behaviour as pretrain_behaviour,
)
from ._seeds import (
    aggregate as aggregate,
    create_agents as create_agents,
    fused_updates_seeds as fused_updates_seeds,
    seed_mesh as seed_mesh,
    SeedsResult as SeedsResult,
    SeedsTrainer as SeedsTrainer,
    shard_seeds as shard_seeds,
    stack_agents as stack_agents,
    train_offline_seeds as train_offline_seeds,
    unstack_agent as unstack_agent,
)
from ._sharded import (
    DataMode as DataMode,
    shard_at as shard_at,
    ShardedDataset as ShardedDataset,
)
from ._train import (
    fused_updates as fused_updates,
    load_agent_checkpoint as load_agent_checkpoint,
    load_transitions as load_transitions,
    NonFiniteLossError as NonFiniteLossError,
    OfflineTrainer as OfflineTrainer,
    plot_learning_curve as plot_learning_curve,
    save_agent_checkpoint as save_agent_checkpoint,
    train_offline as train_offline,
    TrainConfig as TrainConfig,
    TrainResult as TrainResult,
)
