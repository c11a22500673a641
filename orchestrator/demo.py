"""The demo job on the embedded data. At this stage: supernet, derive, extract and export on the demo space."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import torch

from orchestrator.export import export_net_config, export_onnx
from orchestrator.metrics import describe
from orchestrator.spaces import get_space
from orchestrator.supernet import ArchLogits, Supernet

log = logging.getLogger(__name__)


def main(out_dir: str = "demo-out") -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(0)
    space = get_space("digits-32")
    supernet, logits = Supernet(space).eval(), ArchLogits(space)
    with torch.no_grad():
        logits.alpha.normal_(0, 1)
    arch = logits.derive()
    path = space.indices(arch)
    x = torch.randn(4, 3, space.resolution, space.resolution)
    net = supernet.extract(arch).eval()
    diff = (supernet(x, path) - net(x)).abs().max().item()
    log.info("space %s (%s), %d blocks, %.3g architectures", space.name, space.fingerprint(), space.num_blocks,
             space.search_space_size())
    log.info("derived: %s", arch)
    log.info("supernet vs extracted net, max |diff| = %.2e", diff)
    log.info("info: %s", describe(arch))
    out = Path(out_dir)
    export_net_config(arch, out / "net.config")
    export_onnx(net, out / "net.onnx")
    log.info("wrote %s and %s", out / "net.config", out / "net.onnx")
    log.info("random architecture: %s", space.random_arch(random.Random(0)))
