"""Config of ``hydra/sweeper=ray_tune``, registered in Hydra's ConfigStore."""

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class RayTuneSweeperConf:
    _target_: str = "hydra_plugins.ray_tune_sweeper.ray_tune_sweeper.RayTuneSweeper"
    num_samples: int = 8  # samples of the search space (grid axes multiply this)
    metric: str = "val_sharpe"  # reported by each trial; must be a validation (val_*) metric
    mode: str = "max"  # max | min
    search_alg: str = "random"  # random | optuna (model-based, TPE)
    scheduler: str = "fifo"  # fifo | asha (stops weak trials on intermediate reports)
    grace_period: int = 1  # asha: reports before a trial may be stopped
    reduction_factor: int = 2  # asha
    max_concurrent_trials: Optional[int] = None
    cpus_per_trial: Optional[int] = None  # null = the run's resources.num_threads (also its threads)
    ray_address: Optional[str] = None  # null = start Ray here; "auto" or host:port = join a cluster
    num_cpus: Optional[int] = None  # CPUs for a locally started Ray (null = all of this machine)
    storage_path: Optional[str] = None  # null = <sweep dir>/ray_results
    resume: bool = True  # continue the same sweep found at storage_path (refused if it differs)
    seed: Optional[int] = None  # search algorithm seed (null = the run's seed)
    params: Dict[str, Any] = field(default_factory=dict)  # key: Hydra sweep expression


ConfigStore.instance().store(
    group="hydra/sweeper", name="ray_tune", node=RayTuneSweeperConf, provider="ray_tune_sweeper"
)
