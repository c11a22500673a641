"""Layers shared by the supernet and standalone networks.

``MBConv`` is the one block class: a supernet's mixed block holds one ``MBConv`` per candidate and a derived
network holds the chosen one, so extraction copies modules (and weights) rather than translating them.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class ConvBNAct(nn.Sequential):
    """Conv (no bias) + BatchNorm + optional ReLU6, the stem, feature-mix and MBConv sub-layers."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int,
        stride: int = 1,
        groups: int = 1,
        act: bool = True,
        bn_momentum: float = 0.1,
        bn_eps: float = 1e-3,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout, eps=bn_eps, momentum=bn_momentum),
        ]
        if act:
            layers.append(nn.ReLU6(inplace=True))
        super().__init__(*layers)


class MBConv(nn.Module):
    """Mobile inverted bottleneck: 1x1 expand (absent at expansion 1), kxk depthwise, 1x1 linear project.

    The identity shortcut is not part of the op: the owning block adds it, so that a ``zero`` op (skip)
    and an MBConv op share the same residual wiring.
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int,
        stride: int,
        expand: int,
        bn_momentum: float = 0.1,
        bn_eps: float = 1e-3,
        mid_channels: int | None = None,
    ) -> None:
        super().__init__()
        mid = mid_channels if mid_channels is not None else round(cin * expand)
        bn = dict(bn_momentum=bn_momentum, bn_eps=bn_eps)
        self.cin, self.cout, self.kernel, self.stride, self.expand, self.mid = cin, cout, kernel, stride, expand, mid
        self.expand_conv = ConvBNAct(cin, mid, 1, **bn) if expand != 1 else None
        self.depthwise = ConvBNAct(mid, mid, kernel, stride, groups=mid, **bn)
        self.project = ConvBNAct(mid, cout, 1, act=False, **bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.expand_conv is not None:
            x = self.expand_conv(x)
        return self.project(self.depthwise(x))


LINEAR_INITS = ("normal", "uniform")


def init_weights(module: nn.Module, *, linear: str = "normal", zero_last_gamma: bool = True) -> None:
    """MobileNet-style initialisation, used for every network the project builds.

    Convolutions: He normal with fan-out (the official ``he_fout``); BN: gamma 1, beta 0. ``linear``: ``normal`` is
    N(0, 0.01) (MobileNet, torchvision), ``uniform`` is U(±1/sqrt(fan_in)) as the official ``init_model``; biases 0.

    ``zero_last_gamma``: residual branches start at zero ("zero-init last BN gamma", Goyal et al. 2017;
    torchvision's ``zero_init_residual``, timm's ``zero_init_last``): in any module with ``shortcut`` set (a
    network's ``Block``, a supernet's ``MixedBlock``) the projecting BN of every ``MBConv`` gets gamma 0, so each
    residual block starts as the identity. In a single-path supernet this keeps the shortcut's signal intact while
    the sampled candidates change from step to step. The official code does not do it; with it, the binary gates'
    gradients of residual blocks are exactly 0 until weight training moves those gammas.
    """
    if linear not in LINEAR_INITS:
        raise ValueError(f"linear init must be one of {', '.join(LINEAR_INITS)}, got {linear!r}")
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linear == "normal":
                nn.init.normal_(m.weight, 0, 0.01)
            else:
                bound = 1.0 / math.sqrt(m.weight.shape[1])
                nn.init.uniform_(m.weight, -bound, bound)
            nn.init.zeros_(m.bias)
    if not zero_last_gamma:
        return
    for m in module.modules():
        if getattr(m, "shortcut", False) is True:
            for op in m.modules():
                if isinstance(op, MBConv):
                    nn.init.zeros_(op.project[1].weight)
