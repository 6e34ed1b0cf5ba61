"""Training-loop resource figures, logged every PPO iteration as ``perf/*`` metrics.

Process-wide samples (CPU, memory, GPU over time) come from MLflow's system-metrics logging
(``system/*``, enabled for every run in src/tracking/mlflow_run.py); these are the figures only
the loop knows: where each iteration's time went and how fast frames arrive.
"""

import time

import psutil
import torch


class Monitor:
    """Wall-clock laps of the training loop plus this process's RSS and CPU use."""

    def __init__(self, device: torch.device):
        self.device = device
        self.process = psutil.Process()
        self.mark = time.perf_counter()

    def start(self) -> None:
        self.mark = time.perf_counter()
        self.process.cpu_percent()  # the first call only sets the reference point

    def lap(self) -> float:
        """Seconds since the previous lap."""
        now = time.perf_counter()
        seconds, self.mark = now - self.mark, now
        return seconds

    def iteration(self, frames: int, collect_seconds: float, update_seconds: float) -> dict[str, float]:
        """This iteration's figures: frames/s (its frames over its collection + update time: what
        the Ray worker scaler compares), collection and update seconds, RSS (GB), CPU
        utilisation (percent of one core, since the last call), and GPU memory (GB, peak
        allocated by torch) on a CUDA learner."""
        figures = {
            "perf/frames_per_second": frames / max(collect_seconds + update_seconds, 1e-9),
            "perf/collect_seconds": collect_seconds,
            "perf/update_seconds": update_seconds,
            "perf/rss_gb": self.process.memory_info().rss / 1024**3,
            "perf/cpu_percent": self.process.cpu_percent(),
        }
        if self.device.type == "cuda":
            figures["perf/gpu_memory_gb"] = torch.cuda.max_memory_allocated(self.device) / 1024**3
        return figures
