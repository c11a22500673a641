"""ProxylessNAS search in one process (or one rank): config, state, the two steps and the driver.

The public surface is what a distributed wrapper needs: ``run_search`` with a ``Runtime`` and hooks,
``state_dict``/``load_state_dict`` and the fingerprints the ranks compare.
"""

from orchestrator.search.config import ArchConfig, SearchConfig, WeightConfig, config_from_dict, load_config
from orchestrator.search.driver import (
    SearchResult,
    load_checkpoint,
    local_batch,
    make_result,
    open_data,
    resolve_latency,
    run_search,
    save_checkpoint,
)
from orchestrator.search.state import (
    SearchState,
    alpha_fingerprint,
    init_state,
    load_state_dict,
    path_fingerprint,
    state_dict,
    weight_lr,
)
from orchestrator.search.steps import arch_step, arch_step_grad, arch_step_rl, no_sync, weight_step

__all__ = [
    "ArchConfig", "SearchConfig", "WeightConfig", "config_from_dict", "load_config",
    "SearchResult", "load_checkpoint", "local_batch", "make_result", "open_data", "resolve_latency", "run_search",
    "save_checkpoint", "SearchState", "alpha_fingerprint", "init_state", "load_state_dict", "path_fingerprint",
    "state_dict", "weight_lr", "arch_step", "arch_step_grad", "arch_step_rl", "no_sync", "weight_step",
]
