"""What a policy checkpoint must carry to be used again, and the check that it fits a run.

The *contract* of a policy: the observed feature columns (in order), the normaliser (method,
window and the statistics fitted on the train split), the window size, the action space, and a
hash of the run's resolved config (provenance). A checkpoint stores it beside the weights; loading
it into a run whose contract differs in any field but the hash fails with the differences.
"""

import hashlib
import json
from typing import Any

from omegaconf import DictConfig

from src.config_checks import ConfigError, plain_dict

PROVENANCE = ("config_hash",)  # recorded, never compared


class CheckpointMismatchError(ConfigError):
    """A checkpoint's contract differs from the run that loads it."""


def config_hash(cfg: DictConfig) -> str:
    """sha256 of the resolved config, without where it is tracked or named."""
    config = plain_dict(cfg)
    for key in ("mlflow", "run_name"):
        config.pop(key, None)
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def policy_contract(cfg: DictConfig, features: list[str], scaler: dict) -> dict[str, Any]:
    """The contract of a policy trained by the run ``cfg`` on ``features``."""
    normalize = plain_dict(cfg.features.normalize)
    return {
        "features": list(features),
        "normalize": json.loads(json.dumps({**normalize, "stats": scaler})),  # as stored
        "window_size": int(cfg.env.window_size),
        "action_space": {
            "kind": cfg.env.action_space,
            "allow_short": bool(cfg.env.allow_short),
            "max_leverage": float(cfg.env.max_leverage),
        },
        "config_hash": config_hash(cfg),
    }


def check_contract(stored: dict | None, current: dict, path: str) -> None:
    """Raise ``CheckpointMismatchError`` listing every field where ``stored`` differs."""
    if stored is None:
        raise CheckpointMismatchError(
            f"agent.checkpoint={path} has no contract (features, normaliser, window, action space): retrain to make one"
        )
    different = [
        key
        for key in current
        if key not in PROVENANCE
        and json.dumps(stored.get(key), sort_keys=True) != json.dumps(current[key], sort_keys=True)
    ]
    if different:
        details = "; ".join(
            f"{key}: checkpoint {_short(stored.get(key))} != run {_short(current[key])}" for key in different
        )
        raise CheckpointMismatchError(
            f"agent.checkpoint={path} does not fit this run ({details}). "
            "Fix: use the data, features and env settings it was trained with"
        )


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 120 else text[:117] + "..."
