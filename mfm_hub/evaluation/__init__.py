"""Shared pieces of the downstream evaluation scripts, one module per concern: `metrics`
(`evaluate` metrics that work offline), `features` (encoders, the evaluation preprocessing,
frozen features, kNN, logistic regression, linear probe), `labelled_data` (labelled splits,
checks, k-shot and fractional subsets) and `results` (results files, model-card
``model-index``). Figures are in `mfm_hub.visualization`."""

from .features import (
    EvalPreprocessing,
    eval_transform,
    frozen_features,
    linear_probe_predict,
    load_encoder,
    logistic_regression,
    timm_image_options,
    weighted_knn_predict,
)
from .labelled_data import (
    check_head_matches,
    fraction_indices,
    k_shot_indices,
    labelled_image_check,
    load_labelled_split,
    validate_examples,
)
from .metrics import MeanIoU, TopKAccuracy
from .results import ModelIndexEntry, add_to_model_index, report_results, results_card_dir, write_results

__all__ = [
    "EvalPreprocessing",
    "MeanIoU",
    "ModelIndexEntry",
    "TopKAccuracy",
    "add_to_model_index",
    "check_head_matches",
    "eval_transform",
    "fraction_indices",
    "frozen_features",
    "k_shot_indices",
    "labelled_image_check",
    "linear_probe_predict",
    "load_encoder",
    "load_labelled_split",
    "logistic_regression",
    "report_results",
    "results_card_dir",
    "timm_image_options",
    "validate_examples",
    "weighted_knn_predict",
    "write_results",
]
