"""What the MFM authors released (github.com/Jiahao000/MFM): every checkpoint file, where it
is, what the authors report for it, and its licence. Read by the zoo (`mfm_hub.zoo`), the
converter and the timm names (`mfm_hub.timm_models`), without importing either."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

ZOO_URL_ENV = "MFM_HUB_ZOO_URL"
DRIVE_URL = "https://drive.google.com/uc?id={file_id}"
SOURCE_URL = "https://github.com/Jiahao000/MFM"
OFFICIAL_LICENSE = "S-Lab License 1.0 (non-commercial use only), inherited from the official MFM release"
METHOD_NAMES = {"mfm": "MFM", "sr": "SR", "deblur": "Deblur", "denoise": "Denoise"}
BACKBONES = {"vit-b16": ("vit-base-patch16-224", "ViT-B/16"), "resnet50": ("resnet50", "ResNet-50")}


@dataclass(frozen=True)
class OfficialCheckpoint:
    """One released file. ``reported_top1`` is the authors' ImageNet-1k top-1 of the fine-tuned
    model (for a pre-trained file: of the fine-tuning(s) that started from it)."""

    method: str
    backbone: str
    pretrain_epochs: int
    finetune_epochs: Optional[int]
    reported_top1: tuple[tuple[int, float], ...]  # (fine-tune epochs, top-1 %)
    file_id: str

    @property
    def name(self) -> str:
        suffix = f"-ft{self.finetune_epochs}" if self.finetune_epochs else ""
        return f"{self.method}-{self.backbone}-pt{self.pretrain_epochs}{suffix}"

    @property
    def arch(self) -> str:
        return BACKBONES[self.backbone][0]

    @property
    def stage(self) -> str:
        return "fine-tuned" if self.finetune_epochs else "pre-trained"

    def url(self, url_template: Optional[str] = None) -> str:
        return (url_template or os.environ.get(ZOO_URL_ENV) or DRIVE_URL).format(file_id=self.file_id)


def _released() -> dict[str, OfficialCheckpoint]:
    """The official README's table (9 rows, 17 files: the MFM ResNet-50 pre-trained file
    serves both of its fine-tuning rows)."""
    rows = [  # method, backbone, fine-tune epochs, top-1, pre-trained file id, fine-tuned file id
        ("sr", "vit-b16", 100, 82.4, "1NvysdzymzbuIT5BlhczLy5qZJ7wL4dbO", "12a7w7t0weJO2wpuMYfFn0DTwYCk5DK1o"),
        ("deblur", "vit-b16", 100, 81.7, "1dvKolr_Xgp-eNwlHmzl0aULofknnOshS", "1mK7ViXL_o3bRVHR21zvSFdkU-iuWBlmy"),
        ("denoise", "vit-b16", 100, 82.7, "1gfyWJEeK-7iBI64YRGTE_Lna_gzTs8rG", "1CAv-a_75S-7p0jaiWUDv2ZSo1QYcVcSR"),
        ("mfm", "vit-b16", 100, 83.1, "1qgMuODAxAapwXZXbH2Bgo5s5O_zc1bdl", "1uxYn_q3BA0J5XlUMSnf8c2uQfLA0bkJo"),
        ("sr", "resnet50", 100, 77.9, "1_rpcvWJt3yHQYHdE3m5mCldUGH1S73EI", "1hIdAApYD7sVb-qf3WA_3KaJMCJKUk25T"),
        ("deblur", "resnet50", 100, 78.0, "174Bcn-oPm6IB9h6RDB8Ujkr92tRC_vqK", "1ThCmH-Vmh9S6PBuXrv5XAMY04mpOAqJ1"),
        ("denoise", "resnet50", 100, 77.5, "18MulyHunviyRrSIJFJhp8bfcamjr55-w", "18v7RrSsJp1lxXeKaZczuwUmm0OY59HJf"),
        ("mfm", "resnet50", 100, 78.5, "1rWXMJryJ2tq44EYfkZ8GREQoYLf1up9e", "1qr_kMb7bDEP1hwYD-bJ5mG7Co7KYlQSq"),
        ("mfm", "resnet50", 300, 80.1, "1rWXMJryJ2tq44EYfkZ8GREQoYLf1up9e", "1Uftl6c33gngKzWEj2c9ewmWGFBvGYgMo"),
    ]
    entries: dict[str, OfficialCheckpoint] = {}
    for method, backbone, finetune_epochs, top1, pretrained_id, finetuned_id in rows:
        finetuned = OfficialCheckpoint(method, backbone, 300, finetune_epochs, ((finetune_epochs, top1),), finetuned_id)
        entries[finetuned.name] = finetuned
        earlier = entries.get(f"{method}-{backbone}-pt300")
        reported = (earlier.reported_top1 if earlier else ()) + ((finetune_epochs, top1),)
        pretrained = OfficialCheckpoint(method, backbone, 300, None, reported, pretrained_id)
        entries[pretrained.name] = pretrained
    return dict(sorted(entries.items()))


OFFICIAL_CHECKPOINTS: dict[str, OfficialCheckpoint] = _released()


def get(name: str) -> OfficialCheckpoint:
    if name not in OFFICIAL_CHECKPOINTS:
        raise KeyError(f"No official checkpoint {name!r}. The zoo has: {', '.join(OFFICIAL_CHECKPOINTS)}.")
    return OFFICIAL_CHECKPOINTS[name]


__all__ = ["BACKBONES", "DRIVE_URL", "METHOD_NAMES", "OFFICIAL_CHECKPOINTS", "OFFICIAL_LICENSE", "SOURCE_URL", "ZOO_URL_ENV",
           "OfficialCheckpoint", "get"]
