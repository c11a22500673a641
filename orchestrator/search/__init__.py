"""ProxylessNAS search: config, state, the two steps and the loop of one rank (this package's surface), plus the
search as a job (``search.jobs``: its record and its Ray Train worker) and its one-process entry (``search.local``).
"""

from orchestrator.search.config import ArchConfig, SearchConfig, WeightConfig, config_from_dict, load_config
from orchestrator.search.loop import (
    SearchResult,
    load_checkpoint,
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
from orchestrator.search.steps import arch_step, arch_step_grad, arch_step_rl, weight_step

__all__ = [
    "ArchConfig", "SearchConfig", "WeightConfig", "config_from_dict", "load_config",
    "SearchResult", "load_checkpoint", "make_result", "open_data", "resolve_latency", "run_search",
    "save_checkpoint", "SearchState", "alpha_fingerprint", "init_state", "load_state_dict", "path_fingerprint",
    "state_dict", "weight_lr", "arch_step", "arch_step_grad", "arch_step_rl", "weight_step",
]
