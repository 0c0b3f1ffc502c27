"""Robustness to ImageNet-C corruptions (`imagecorruptions-imaug`): identical, seeded corrupted
images for every model compared, and their error rates."""

from __future__ import annotations

import zlib

import numpy as np
import torch

try:
    from imagecorruptions import corrupt as apply_corruption
    from imagecorruptions import get_corruption_names
except ImportError:  # reported with the install command by `corruption_names`
    apply_corruption = get_corruption_names = None

SEVERITIES = (1, 2, 3, 4, 5)


def corruption_names(requested: list[str] | None = None) -> list[str]:
    """``requested`` checked against the package's corruptions, or its 15 common ones."""
    if apply_corruption is None:
        raise ImportError("The robustness evaluation needs the corruption package: pip install 'mfm_hub[robustness]' "
                          "(imagecorruptions-imaug).")
    corruptions = list(requested or get_corruption_names("common"))
    unknown = sorted(set(corruptions) - set(get_corruption_names("all")))
    if unknown:
        raise ValueError(f"Unknown corruptions {unknown}; choose from {get_corruption_names('all')}.")
    return corruptions



def corrupted_image(image: np.ndarray, corruption: str, severity: int, seed: int) -> np.ndarray:
    """One corruption of a ``(H, W, 3)`` uint8 image; the package draws from NumPy's global
    RNG, so it is seeded here per image for reproducible, identical inputs to both models."""
    if corruption == "clean":
        return image
    np.random.seed(seed % (2**32))
    return np.asarray(apply_corruption(image, corruption_name=corruption, severity=severity), dtype=np.uint8)



@torch.no_grad()
def error_rates(models: dict, images: list[np.ndarray], labels: np.ndarray, corruption: str, severity: int, to_input, batch_size: int,
                seed: int) -> dict[str, float]:
    wrong = {name: 0 for name in models}
    for start in range(0, len(images), batch_size):
        # zlib.crc32, not hash(): str hashes change from process to process
        batch = [
            corrupted_image(img, corruption, severity, seed + 1_000_003 * (start + i) + 7919 * severity + zlib.crc32(corruption.encode()))
            for i, img in enumerate(images[start : start + batch_size])
        ]
        pixels = torch.stack([to_input(torch.from_numpy(img).permute(2, 0, 1)) for img in batch])
        for name, model in models.items():
            predictions = model(pixel_values=pixels.to(model.device)).logits.argmax(-1).cpu().numpy()
            wrong[name] += int((predictions != labels[start:start + batch_size]).sum())
    return {name: count / len(images) for name, count in wrong.items()}

