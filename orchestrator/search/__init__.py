"""ProxylessNAS search in one process: config, state, the two steps and the driver.

The public surface is what a distributed wrapper needs: ``run_search`` (or ``weight_step``/``arch_step`` with
a ``sync`` all-reduce), ``state_dict``/``load_state_dict`` and ``alpha_fingerprint``.
"""

from orchestrator.search.config import ArchConfig, DataConfig, SearchConfig, WeightConfig, config_from_dict, load_config
from orchestrator.search.driver import (
    SearchResult,
    load_checkpoint,
    load_data,
    make_result,
    resolve_latency,
    run_search,
    save_checkpoint,
)
from orchestrator.search.state import SearchState, alpha_fingerprint, init_state, load_state_dict, state_dict, weight_lr
from orchestrator.search.steps import arch_step, arch_step_grad, arch_step_rl, no_sync, weight_step

__all__ = [
    "ArchConfig", "DataConfig", "SearchConfig", "WeightConfig", "config_from_dict", "load_config",
    "SearchResult", "load_checkpoint", "load_data", "make_result", "resolve_latency", "run_search", "save_checkpoint",
    "SearchState", "alpha_fingerprint", "init_state", "load_state_dict", "state_dict", "weight_lr",
    "arch_step", "arch_step_grad", "arch_step_rl", "no_sync", "weight_step",
]
