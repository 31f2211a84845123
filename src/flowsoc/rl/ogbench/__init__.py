"""flowsoc.rl.ogbench: the OGBench world of `flowsoc.rl`, behind one public face (the modules are
private, as in `equinox.nn`).

- datasets: find, generate (with OGBench's own environments and scripted oracles), validate and load
  the official files, and the large ones (10M, 100M transitions) as folders of shards (`open_shards`);
- environments and the evaluators the examples use;
- presets: the official QAM and TRQAM runs' settings, each value with its source;
- the examples' command-line engine (`run_offline`, `run_offline_to_online`);
- the locomotion experts (SAC) that the navigation datasets are generated with.

Command lines: `python -m flowsoc.rl.datagen` (datasets) and `python -m flowsoc.rl.experts` (experts).
"""

from ._data import (
    dataset_paths as dataset_paths,
    DatasetNotFoundError as DatasetNotFoundError,
    load_ogbench as load_ogbench,
    load_replay_buffer as load_replay_buffer,
    resolve_dataset as resolve_dataset,
    save_replay_buffer as save_replay_buffer,
    validate_dataset_file as validate_dataset_file,
)
from ._datagen import (
    generate as generate,
    GeneratedDataset as GeneratedDataset,
    GeneratedShards as GeneratedShards,
    GenerateOptions as GenerateOptions,
    maze_stats as maze_stats,
)
from ._datagen_recipes import (
    DatasetName as DatasetName,
    official_recipe as official_recipe,
    parse_dataset_name as parse_dataset_name,
    UnknownDatasetError as UnknownDatasetError,
    UnsupportedDatasetError as UnsupportedDatasetError,
)
from ._dataset_files import (
    data_dir as data_dir,
    DATA_DIR_ENV as DATA_DIR_ENV,
    DatasetMismatchError as DatasetMismatchError,
    DEFAULT_DATA_DIR as DEFAULT_DATA_DIR,
)
from ._envs import (
    make_envs as make_envs,
    ogbench_evaluator as ogbench_evaluator,
    ogbench_seeds_evaluator as ogbench_seeds_evaluator,
    OGBenchEnvFactory as OGBenchEnvFactory,
)
from ._experiment import (
    OfflineArgs as OfflineArgs,
    OfflineToOnlineArgs as OfflineToOnlineArgs,
    run_cli as run_cli,
    run_offline as run_offline,
    run_offline_seeds as run_offline_seeds,
    run_offline_to_online as run_offline_to_online,
)
from ._expert_actor import (
    ExpertError as ExpertError,
    load_expert as load_expert,
    NumpyActor as NumpyActor,
    SHIPPED as SHIPPED,
)
from ._experts import (
    expert_config as expert_config,
    ExpertArgs as ExpertArgs,
    make_xy_env as make_xy_env,
    SACTrainer as SACTrainer,
    train_expert as train_expert,
)
from ._presets import (
    BC_PRETRAIN_STEPS as BC_PRETRAIN_STEPS,
    domain_preset as domain_preset,
    DomainPreset as DomainPreset,
    paper_preset as paper_preset,
    PAPER_PRESETS as PAPER_PRESETS,
    PaperPreset as PaperPreset,
    QAM_SOURCE as QAM_SOURCE,
    QAME_REPORTED_TRQAM as QAME_REPORTED_TRQAM,
    SQAM_REPORTED as SQAM_REPORTED,
    SQAM_SOURCE as SQAM_SOURCE,
    TRQAM_SOURCE as TRQAM_SOURCE,
)
from ._sac import SAC as SAC, sac_updates as sac_updates, SACConfig as SACConfig, TanhGaussianActor as TanhGaussianActor
from ._shards import (
    check_shard_folder as check_shard_folder,
    load_shard as load_shard,
    open_shards as open_shards,
    shard_files as shard_files,
)
