"""Official MFM release files for the tests: random weights everywhere, saved the way the
release saves them (a dict with a pickled yacs ``CfgNode`` config), and the masks the parity
tests feed both implementations. The official structure itself is `benchmarks.reference_mfm`."""

import sys
import types

import torch
from torch import nn


def randomize_(module: nn.Module) -> None:
    """Random values everywhere (norms and biases too) so no default can hide a mismatch."""
    with torch.no_grad():
        for tensor in list(module.parameters()) + [b for n, b in module.named_buffers() if "running" in n]:
            tensor.copy_(torch.rand_like(tensor) * 0.2 + (0.9 if tensor.ndim == 1 else -0.1))



def save_like_the_release(state_dict, path):
    """torch.save a release-style dict, with the config pickled as a ``yacs.config.CfgNode``."""
    yacs, yacs_config = types.ModuleType("yacs"), types.ModuleType("yacs.config")

    class CfgNode(dict):
        def __init__(self, *args):
            super().__init__(*args)
            self.__dict__["__immutable__"] = True

    CfgNode.__module__, CfgNode.__qualname__ = "yacs.config", "CfgNode"
    yacs_config.CfgNode, yacs.config = CfgNode, yacs_config
    sys.modules.update({"yacs": yacs, "yacs.config": yacs_config})
    try:
        config = CfgNode({"MODEL": CfgNode({"TYPE": "vit"}), "DATA": CfgNode({"IMG_SIZE": 32})})
        torch.save({"model": state_dict, "config": config, "epoch": 299, "optimizer": {"state": {}, "param_groups": []}}, path)
    finally:
        del sys.modules["yacs"], sys.modules["yacs.config"]



def random_masks(batch, size):
    low = torch.zeros(size, size)
    c = size // 2
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    low[((yy - c) ** 2 + (xx - c) ** 2) < 3**2] = 1
    return torch.stack([low if i % 2 else 1 - low for i in range(batch)]).unsqueeze(1)
