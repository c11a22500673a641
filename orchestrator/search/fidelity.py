"""``fidelity: official | paper | project``: every switch where this project departs from ProxylessNAS, set at once.

- ``official``: the defaults of the official ``search/imagenet_arch_search.py`` (mit-han-lab/proxylessnas), whose
  gradient mode is ``full_v2``.
- ``paper``: the official code with the two-path mode the paper describes (``grad_binary_mode=two``): pair
  probabilities in E[LAT] and the rescale, so candidates outside the sampled pair keep their probabilities.
- ``project``: this project's defaults (the dataclass defaults of ``SearchConfig``).

The presets hold behaviour switches only, never hyperparameters (learning rates, targets, schedules), so one
key moves any config (the demo's short schedule, an ImageNet search) between the three behaviours.

Precedence, from weakest to strongest: the dataclass defaults; a file's ``fidelity``; ``--set fidelity=NAME`` (it
overrides every switch of the file); the other ``--set`` keys, whatever their order on the command line. A file
that names a preset and also sets one of that preset's switches to another value (``fidelity: official`` beside
``arch: {rl_baseline_decay: 0.99}``) is refused with one line naming the key: the file would otherwise say two
things, and whichever won, one of them would be silently ignored. The same value is accepted. The typed config
records the resolved switches, not the name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


KEY = "fidelity"

PROJECT: dict[str, Any] = {
    "arch.grad_mode": "two",
    "arch.latency_probs": "full",
    "arch.rescale": True,
    "arch.skip_zero_active": False,
    "arch.rl_baseline": "after",
    "arch.rl_baseline_decay": 0.99,
    "arch.skip_first_search_epoch": False,
    "arch.mul_log_unit": "profile",
    "arch.rl_schedule": "update_every",
    "init.linear": "normal",
    "init.zero_last_gamma": True,
    "derive": "budget",
}

OFFICIAL: dict[str, Any] = {
    "arch.grad_mode": "full_v2",  # grad_binary_mode default
    "arch.latency_probs": "pair",  # current_prob_over_ops in two mode (full_v2 always weighs the whole block)
    "arch.rescale": True,  # rescale_updated_arch_param, two mode only
    "arch.skip_zero_active": True,  # set_arch_param_grad: AP_path_alpha.grad = None when zero is active
    "arch.rl_baseline": "before",  # rl_update_step: baseline moves, then advantages
    "arch.rl_baseline_decay": 0.01,  # baseline += 0.99 * (avg_reward - baseline)
    "arch.skip_first_search_epoch": True,  # train(): `if epoch > 0`
    "arch.mul_log_unit": "official",  # expected_flops in raw MACs, ref_values['flops']['1.00'] = 300e6
    "arch.rl_schedule": "per_epoch",  # rl_update_steps_per_epoch=300 spread by get_split_list, test_batch_size=1000
    "init.linear": "uniform",  # MyNetwork.init_model: uniform(-1/sqrt(fan_in), 1/sqrt(fan_in))
    "init.zero_last_gamma": False,
    "derive": "argmax",  # the paper's and the official code's derived net: each block's most probable op
}
# Colour distortion is no switch: like the official code, the data spec's default is ``normal`` in a search and
# ``strong`` in a retrain (``data.color_jitter`` left unset), whatever the preset.

PRESETS: dict[str, dict[str, Any]] = {
    "official": OFFICIAL,
    "paper": {**OFFICIAL, "arch.grad_mode": "two"},
    "project": PROJECT,
}


def preset(name: Any) -> dict[str, Any]:
    """The dotted switch values of preset ``name``; ``ValueError`` naming the key for an unknown one."""
    if not isinstance(name, str) or name not in PRESETS:
        raise ValueError(f"{KEY}: unknown preset {name!r} (known: {', '.join(PRESETS)})")
    return dict(PRESETS[name])


def _has(d: dict, dotted: str) -> bool:
    node: Any = d
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _get(d: dict, dotted: str) -> Any:
    node: Any = d
    for part in dotted.split("."):
        node = node[part]
    return node


def _put(d: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = d
    for p in parents:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ValueError(f"{dotted}: {p!r} is not a section")
        node = nxt
    node[leaf] = value


def _copy(d: dict) -> dict:
    return {k: _copy(v) if isinstance(v, dict) else v for k, v in d.items()}


def apply_fidelity(data: dict, overrides: Sequence[str] = ()) -> tuple[dict, list[str]]:
    """Resolve ``fidelity`` in a raw config dict and in ``--set`` overrides (see the module docstring).

    Returns the dict without the ``fidelity`` key and with the presets applied, and the overrides still to apply
    (every one but ``fidelity=...``). The input is not modified."""
    out = _copy(data)
    if KEY in out:
        name = out.pop(KEY)
        for key, value in preset(name).items():
            if not _has(out, key):
                _put(out, key, value)
            elif _get(out, key) != value:
                raise ValueError(f"{key}: set to {_get(out, key)!r} beside fidelity: {name}, which sets "
                                 f"{value!r}; remove one of the two (--set {key}=... overrides a preset)")
    rest: list[str] = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if sep and key.strip() == KEY:
            import yaml  # here: a config given as a dict needs no PyYAML (test_torch_only)

            try:
                name = yaml.safe_load(raw)
            except yaml.YAMLError:
                name = raw
            for k, value in preset(name).items():
                _put(out, k, value)
        else:
            rest.append(item)
    return out, rest
