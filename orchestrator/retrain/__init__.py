"""Retraining a derived architecture from scratch, on the same data the search ran on, reporting top-1 accuracy.

Mirrors ``search``: the config (``retrain.config``), the state and step on the one training loop
(``retrain.loop``), the job with its record and Ray Train worker (``retrain.jobs``), and the one-process entry
(``retrain.local``)."""

from orchestrator.retrain.config import RetrainConfig, load_retrain_config, retrain_config_from_dict, retrain_data
from orchestrator.retrain.local import retrain_here
from orchestrator.retrain.loop import RetrainState, load_retrain_state, retrain_state_dict, train_net

__all__ = ["RetrainConfig", "load_retrain_config", "retrain_config_from_dict", "retrain_data", "RetrainState",
           "load_retrain_state", "retrain_state_dict", "train_net", "retrain_here"]
