"""MAE (He et al., 2022) as a contender of the compute-curve benchmark, not part of mfm_hub's API.

transformers' `ViTMAEForPreTraining` with the benchmark's encoder (same width, depth, heads,
patch and image size) and MAE's recipe: 75 % of the patches removed, the loss on per-patch
normalised pixels, a light decoder (as wide as the encoder, half as deep). It
is trained by `training/run_pretraining.py`'s own arguments, optimisation recipe, input path
and Trainer, so it differs from MFM in the objective only. Its encoder becomes an
`MFMViTModel` (`encoder_from_mae`, exact: the same computation, tested), so every protocol
evaluates it exactly as it evaluates MFM and FOLK.

    python -m benchmarks.mae_contender <run_pretraining.py arguments>   # --model must be a ViT config
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional

import torch
from transformers import ViTMAEConfig, ViTMAEForPreTraining, set_seed

from mfm_hub import MFMViTConfig, MFMViTModel, image_processor_for_config
from mfm_hub.arguments import claim_training_output, resolve_learning_rate, setup_training_process
from mfm_hub.configuration_mfm import resolve_config
from mfm_hub.data import collate_pretraining
from mfm_hub.trainer import EpochCallback, MFMPretrainingTrainer, SaveOnSigterm
from mfm_hub.visualization import plot_loss_curve
from training import run_pretraining

#: MAE's decoder for this encoder size: MAE-B uses 8 blocks of 512 for a 768-wide encoder; here
#: the decoder is as wide as the encoder and this fraction of its depth.
DECODER_DEPTH_RATIO = 0.5


def mae_config(encoder: MFMViTConfig, mask_ratio: float = 0.75) -> ViTMAEConfig:
    """A `ViTMAEConfig` whose encoder computes what ``encoder`` computes (width, depth, heads, MLP,
    layer-norm epsilon), with MAE's masking, normalised-pixel loss and light decoder."""
    return ViTMAEConfig(
        image_size=encoder.image_size, patch_size=encoder.patch_size, num_channels=encoder.num_channels,
        hidden_size=encoder.hidden_size, num_hidden_layers=encoder.num_hidden_layers, num_attention_heads=encoder.num_attention_heads,
        intermediate_size=encoder.intermediate_size, layer_norm_eps=encoder.layer_norm_eps, qkv_bias=True, hidden_act="gelu",
        decoder_hidden_size=encoder.hidden_size, decoder_num_attention_heads=encoder.num_attention_heads,
        decoder_intermediate_size=encoder.intermediate_size,
        decoder_num_hidden_layers=max(1, round(DECODER_DEPTH_RATIO * encoder.num_hidden_layers)),
        mask_ratio=mask_ratio, norm_pix_loss=True,
        image_mean=list(encoder.image_mean), image_scale=list(encoder.image_scale),
    )


class ImageInputViTMAE(ViTMAEForPreTraining):
    """`ViTMAEForPreTraining` that takes images in [0, 1], as mfm_hub's pre-training models do,
    and normalises them by the config's ``image_mean`` / ``image_scale`` (MAE's input)."""

    def forward(self, pixel_values: torch.Tensor, **kwargs):
        mean = torch.tensor(self.config.image_mean, device=pixel_values.device).view(1, -1, 1, 1)
        scale = torch.tensor(self.config.image_scale, device=pixel_values.device).view(1, -1, 1, 1)
        return super().forward(pixel_values=(pixel_values - mean) / scale, **kwargs)


def encoder_from_mae(mae: ViTMAEForPreTraining, encoder: MFMViTConfig) -> MFMViTModel:
    """MAE's encoder as an `MFMViTModel` of config ``encoder``. q, k and v are fused into one
    projection; MAE's key bias is dropped because it adds the same amount to every key's score
    for a given query, which the softmax cancels (so the outputs are unchanged)."""
    state = {name: value.detach() for name, value in mae.vit.state_dict().items()}
    mapped = {
        "encoder.cls_token": state["embeddings.cls_token"],
        "encoder.pos_embed": state["embeddings.position_embeddings"],
        "encoder.patch_embed.proj.weight": state["embeddings.patch_embeddings.projection.weight"],
        "encoder.patch_embed.proj.bias": state["embeddings.patch_embeddings.projection.bias"],
        "encoder.norm.weight": state["layernorm.weight"],
        "encoder.norm.bias": state["layernorm.bias"],
    }
    for index in range(encoder.num_hidden_layers):
        theirs, ours = f"layers.{index}.", f"encoder.blocks.{index}."
        renamed = {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.o_proj", "mlp.fc1": "mlp.fc1",
                   "mlp.fc2": "mlp.fc2"}
        for mine, their_name in renamed.items():
            for kind in ("weight", "bias"):
                mapped[f"{ours}{mine}.{kind}"] = state[f"{theirs}{their_name}.{kind}"]
        mapped[ours + "attn.qkv.weight"] = torch.cat([state[f"{theirs}attention.{p}_proj.weight"] for p in "qkv"])
        mapped[ours + "attn.q_bias"] = state[theirs + "attention.q_proj.bias"]
        mapped[ours + "attn.v_bias"] = state[theirs + "attention.v_proj.bias"]
    model = MFMViTModel(encoder)
    model.load_state_dict(mapped, strict=True)
    return model.eval()


def main(argv: Optional[list[str]] = None) -> int:
    """`run_pretraining.main` for MAE: the same arguments (``--model`` a ViT config; pretext
    task, objective and config overrides do not apply), writing the converted encoder, its
    image processor, ``loss_curve.png`` and ``train_results.json`` into the output folder."""
    model_args, data_args, args = run_pretraining.parse_arguments(sys.argv[1:] if argv is None else argv)
    claim_training_output(args)
    setup_training_process(args)
    resolve_learning_rate(args)
    set_seed(args.seed)
    encoder = resolve_config(model_args.model)
    if not isinstance(encoder, MFMViTConfig):
        raise ValueError(f"The MAE contender needs a ViT encoder config, got a {type(encoder).__name__} from {model_args.model}.")
    model = ImageInputViTMAE(mae_config(encoder))
    train_images, _, _ = run_pretraining.build_dataset(data_args, encoder.image_size, args.seed)
    sigterm = SaveOnSigterm()
    trainer = MFMPretrainingTrainer(model=model, args=args, train_dataset=train_images, data_collator=collate_pretraining,
                                    callbacks=[EpochCallback(train_images), sigterm])
    started = time.time()
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    wall_time = time.time() - started
    if sigterm.stopped(trainer):
        return 143
    output = Path(args.output_dir)
    encoder_from_mae(trainer.model, encoder).save_pretrained(output)
    image_processor_for_config(encoder).save_pretrained(output)
    plot_loss_curve(trainer.state.log_history, output / "loss_curve.png", title="MAE pre-training (benchmark contender)")
    (output / "train_results.json").write_text(json.dumps({"global_step": trainer.state.global_step, "wall_time_s": round(wall_time, 1),
                                                            "log_history": trainer.state.log_history}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
