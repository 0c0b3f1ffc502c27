#!/usr/bin/env python
"""Does frequency pre-training learn useful features? A CIFAR-10 benchmark for a 2-core CPU.

Every pre-trained method (MFM, FOLK, SR by default) gets the same wall-clock budget on the
50,000 CIFAR-10 training images, without labels. The budget becomes a step count per method
from a short throughput calibration (stored, so every seed and every re-run trains the same
number of steps; FOLK, about 2.7x the compute per image, sees fewer images). Scratch is the
same encoder, randomly initialised. Each checkpoint is then evaluated on the 10,000 test
images by:

- weighted kNN (k = 20, cosine, temperature 0.07) on the frozen features of all training images,
- a linear probe (standardised features, L-BFGS logistic regression) on all training features,
- fine-tuning on class-balanced 1 % and 10 % label subsets (validation curve saved per run),
- 5-way 5-shot episodes (prototype classifier) on the frozen test features.

Results are stored in ``results.json`` as each (method, seed, protocol) finishes; a re-run
skips what is done and resumes an interrupted pre-training from its last checkpoint. The
pre-trained backbones are ordinary checkpoints whose model cards carry the results.

    python -m benchmarks.cifar10_benchmark --output_dir outputs/cifar10_benchmark
    python -m benchmarks.cifar10_benchmark --data_dir <folder with train/ and test/ class folders> ...

With no ``--data_dir`` it extracts ``../shared/data/cifar10-jpeg.tar`` (CIFAR-10 re-encoded as
JPEG: numbers are close to, not equal to, CIFAR-10 numbers) into the user cache once.
"""

import argparse
import json
import os
import tarfile
import time
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

from benchmarks import mae_contender
from mfm_hub import MFMViTConfig, MFMViTModel, evaluation
from mfm_hub.data import DatasetReference
from mfm_hub.evaluation.few_shot import extract_features, run_episodes
from mfm_hub.folder_lock import claim_folder
from mfm_hub.pretraining import METHODS, method_flags
from mfm_hub.trainer import newest_complete_checkpoint
from mfm_hub.validation import require, require_at_least
from mfm_hub.visualization import plt
from training import run_classification, run_pretraining

ROOT = Path(__file__).resolve().parents[1]
#: Pre-training methods that are not mfm_hub's, with the script (`run_pretraining.main`'s signature) that trains each.
CONTENDERS = {"mae": mae_contender.main}

CIFAR10 = DatasetReference("uoft-cs/cifar10", "CIFAR-10 (test images; JPEG re-encoding of the original release)", "uoft-cs/cifar10")
SHARED_TAR = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar"
# Sized from the calibration in docs/BENCHMARKS.md: pre-training on this CPU is bound by decoding and
# augmenting (about 0.4 ms per image on one core), and this encoder is the largest measured
# that still sees 15 epochs of CIFAR-10 in the 15.5-minute budget (~950 images/s end to end).
ENCODER = dict(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=4, num_attention_heads=2, intermediate_size=256)
#: FOLK's prototypes for this encoder (the default 4,096 would dominate a width-64 model's step).
FOLK_HEAD = {"folk_head_output_dim": 1024}
PROTOCOLS = ["knn", "linear_probe", "fine_tune_1pct", "fine_tune_10pct", "five_shot"]
PROTOCOL_NAMES = {"knn": "kNN (k=20)", "linear_probe": "linear probe", "fine_tune_1pct": "fine-tune 1%",
                  "fine_tune_10pct": "fine-tune 10%", "five_shot": "5-way 5-shot"}
CARD_TASKS = {"knn": "Weighted kNN (k=20, cosine, T=0.07) on frozen features", "linear_probe": "Linear probe on frozen features",
              "fine_tune_1pct": "Fine-tuning, 1% of labels", "fine_tune_10pct": "Fine-tuning, 10% of labels",
              "five_shot": "Few-shot, 5-way 5-shot episodes"}


def cifar10_folder(data_dir: str | None) -> Path:
    if data_dir is not None:
        folder = Path(data_dir)
    else:
        if not SHARED_TAR.exists():
            raise FileNotFoundError(f"No --data_dir given and {SHARED_TAR} does not exist: point --data_dir at a CIFAR-10 "
                                    f"image folder with train/<class>/ and test/<class>/.")
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mfm_hub" / "cifar10-jpeg"
        folder = cache / "cifar10"
        if not (cache / ".complete").exists():
            print(f"Extracting {SHARED_TAR} into {cache} (once)", flush=True)
            with tarfile.open(SHARED_TAR) as archive:
                archive.extractall(cache, filter="data")
            (cache / ".complete").touch()
    for split in ("train", "test"):
        if not (folder / split).is_dir():
            raise FileNotFoundError(f"{folder / split} is missing: --data_dir needs train/<class>/ and test/<class>/ image folders.")
    return folder


#: Arguments that say where a run is and how to report it, not what it measures.
RUN_STATE = ("fine_tune_epochs", "output_dir", "train_images", "report_only", "reuse_from")
#: Which methods and seeds a run covers. Every item is stored under its method and seed, so a
#: later run in the same folder may cover others (a third seed, one more method), keeping what is done.
COVERAGE = ("methods", "seeds")


def chosen_settings(options: dict, leave_out=RUN_STATE) -> dict:
    """The options that set what a run measures. Options left unset (None) or empty are not
    settings, so a folder stays valid when an option is added."""
    return {k: v for k, v in options.items() if k not in leave_out and v is not None and v != []}


class Results:
    """``results.json``: calibration and one entry per (method, seed, protocol), written
    atomically after each so an interrupted benchmark loses at most the running item."""

    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.exists() else {"runs": {}}

    def get(self, key: str):
        return self.data["runs"].get(key)

    def put(self, key: str, value) -> None:
        self.data["runs"][key] = value
        self.save()

    def save(self) -> None:
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.data, indent=1))
        temporary.replace(self.path)

    def check_settings(self, args, coverage: tuple[str, ...] = COVERAGE) -> None:
        """Refuse a run whose settings (the arguments, less where and how to report) differ from
        the folder's in anything but its ``coverage``; then the folder's settings are this run's."""
        settings = chosen_settings(vars(args))
        kept, asked = (chosen_settings(options, (*RUN_STATE, *coverage)) for options in (self.data.get("settings", settings), settings))
        if kept != asked:
            raise ValueError(f"{self.path.parent} holds a benchmark run with other settings ({kept}); only "
                             f"{', '.join(coverage)} may differ in one folder: use another --output_dir to run with {asked}.")
        self.data["settings"] = settings


def pretraining_arguments(method: str, seed: int, steps: int, args, train_dir: Path, output: Path, num_checkpoints: int = 4,
                          keep: int = 1) -> list[str]:
    """The pre-training arguments of ``method``: ``num_checkpoints`` evenly spaced, the last ``keep`` of them kept."""
    save_every = max(1, steps // num_checkpoints)
    folk = ["--config_overrides", f"folk_head_output_dim={FOLK_HEAD['folk_head_output_dim']},folk_ema_momentum={args.folk_ema_momentum}"] \
        if method == "folk" else []
    return [
        "--model",
        str(Path(args.output_dir) / "encoder_config.json"),
        *(method_flags(method) if method in METHODS else []),
        "--train_dir",
        str(train_dir),
        "--output_dir",
        str(output),
        "--max_steps",
        str(steps),
        "--seed",
        str(seed),
        "--per_device_train_batch_size",
        str(args.batch_size),
        "--learning_rate",
        str(args.pretrain_learning_rate),
        "--warmup_steps",
        "0.05",
        "--save_strategy",
        "steps",
        "--save_steps",
        str(save_every),
        "--save_total_limit",
        str(keep),
        "--logging_steps",
        str(max(1, steps // 100)),
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        "--dataloader_num_workers",
        str(args.dataloader_num_workers),
        "--num_figure_images",
        "8",
        *folk,
        *args.pretraining_flags,
    ]


def calibrate(method: str, args, train_dir: Path, results: Results) -> float:
    """Images per second of ``method``'s pre-training step, data pipeline included."""
    key = f"calibration/{method}"
    if results.get(key) is None:
        output = Path(args.output_dir) / "calibration" / method
        argv = pretraining_arguments(method, 0, args.calibration_steps, args, train_dir, output)
        run_trainer(method, argv + ["--save_strategy", "no", "--overwrite_output_dir"], f"the {method} calibration")
        wall = json.loads((output / "train_results.json").read_text())["wall_time_s"]
        results.put(
            key, {"images_per_second": args.calibration_steps * args.batch_size / wall, "steps": args.calibration_steps, "wall_s": wall}
        )
    return results.get(key)["images_per_second"]


def run_trainer(method: str, argv: list[str], what: str) -> None:
    """Runs the script that pre-trains ``method`` (`run_pretraining.main`, or a contender's own:
    MAE). When SIGTERM stopped that script (it saved a checkpoint and returned 143), the benchmark
    exits 143 too, resumable by the same command, rather than failing as if training had broken."""
    code = CONTENDERS.get(method, run_pretraining.main)(argv)
    if code == 143:
        stop_resumably(what)
    if code != 0:
        raise RuntimeError(f"Pre-training for {what} exited with {code}.")


def stop_resumably(what: str) -> None:
    print(f"The benchmark stopped on SIGTERM during {what}; run the same command again to resume it.", flush=True)
    raise SystemExit(143)


def resume_or_start(output: Path) -> list[str]:
    """The flags that continue an interrupted training in ``output`` from its newest complete
    checkpoint (SIGTERM's or a periodic one; one cut short by a kill is passed over), or else
    start it afresh."""
    checkpoint = newest_complete_checkpoint(output) if output.is_dir() else None
    return ["--resume_from_checkpoint", str(checkpoint)] if checkpoint else ["--overwrite_output_dir"]


def pretrain(method: str, seed: int, steps: int, args, train_dir: Path, results: Results, num_checkpoints: int = 4,
             keep: int = 1) -> Path:
    output = Path(args.output_dir) / f"{method}-seed{seed}" / "encoder"
    key = f"{method}/seed{seed}/pretraining"
    if results.get(key) is not None:
        return output
    if method == "scratch":
        torch.manual_seed(seed)
        MFMViTModel(MFMViTConfig(**ENCODER)).save_pretrained(output)
        results.put(key, {"steps": 0, "wall_s": 0.0, "images_seen": 0})
        return output
    resume = resume_or_start(output)
    resuming = resume[0] == "--resume_from_checkpoint"
    # wall time of every segment of an interrupted-and-resumed run, so the total survives resumes
    segments = output.parent / "pretraining_segments.json"
    segments.parent.mkdir(parents=True, exist_ok=True)
    earlier = json.loads(segments.read_text()) if segments.exists() and resuming else []
    started = time.time()
    try:
        argv = pretraining_arguments(method, seed, steps, args, train_dir, output, num_checkpoints, keep)
        run_trainer(method, argv + resume, f"{method} seed {seed}")
    finally:
        segments.write_text(json.dumps(earlier + [round(time.time() - started, 1)]))
    trained = json.loads((output / "train_results.json").read_text())
    results.put(key, {"steps": steps, "wall_s": round(sum(json.loads(segments.read_text())), 1), "images_seen": steps * args.batch_size,
                      "resumed": resuming, "final_loss": [e["loss"] for e in trained["log_history"] if "loss" in e][-1]})
    return output


def frozen_features(encoder: Path, split_dir: Path, cache: Path, args) -> dict[str, torch.Tensor]:
    if cache.exists():
        return safetensors.torch.load_file(cache)
    dataset, column, _ = evaluation.load_labelled_split("train", str(split_dir))
    model = evaluation.load_encoder(str(encoder)).eval()
    features = extract_features(model, dataset, column, batch_size=256, crop_pct=1.0)
    tensors = {"features": features.contiguous(), "labels": torch.tensor(dataset["label"])}
    safetensors.torch.save_file(tensors, cache.with_suffix(".tmp"))
    cache.with_suffix(".tmp").replace(cache)  # a run cut off mid-write never leaves a half file to load
    return tensors


#: The protocols on frozen features (the others fine-tune).
FROZEN_FEATURE_PROTOCOLS = ("knn", "linear_probe", "five_shot")


def frozen_feature_top1(protocol: str, train: dict, test: dict, seed: int, args) -> float:
    """Test top-1 of a frozen-feature protocol on cached ``{"features", "labels"}``: weighted
    kNN (k = 20), the linear probe, or ``args.episodes`` 5-way 5-shot episodes (prototypes)."""
    if protocol == "five_shot":
        return float(np.mean(run_episodes(test["features"], test["labels"].numpy(), ways=5, shots=5, queries=15,
                                          episodes=args.episodes, classifier="prototype", seed=seed)))
    if protocol == "knn":
        predicted = evaluation.weighted_knn_predict(train["features"], train["labels"], test["features"], 10,
                                                    k=min(20, len(train["labels"])))
    else:
        predicted = evaluation.linear_probe_predict(train["features"], train["labels"], test["features"], 10)
    return float((predicted == test["labels"]).float().mean())


def fine_tune(encoder: Path, fraction: float, seed: int, data: Path, output: Path, args) -> dict:
    train_images = round(fraction * args.train_images)
    steps = max(1, round(args.fine_tune_epochs[fraction] * train_images / args.fine_tune_batch_size))
    argv = [
        "--model", str(encoder), "--output_dir", str(output), *resume_or_start(output), "--train_dir", str(data / "train"),
        "--validation_dir", str(data / "test"), "--train_fraction", str(fraction), "--seed", str(seed),
        "--max_steps", str(steps), "--per_device_train_batch_size", str(args.fine_tune_batch_size), "--learning_rate", "1e-3",
        "--eval_strategy", "steps", "--eval_steps", str(max(1, steps // 6)), "--per_device_eval_batch_size", "512",
        "--crop_pct", "1.0", "--mixup", "0", "--cutmix", "0", "--rand_augment", "", "--reprob", "0",
        "--report_to", "none", "--disable_tqdm", "true", "--dataloader_num_workers", str(args.dataloader_num_workers),
    ]
    try:
        result = run_classification.main(argv)
    except SystemExit as stop:  # SIGTERM: the fine-tune saved a checkpoint that a re-run resumes from
        if stop.code == 143:
            stop_resumably(f"the fine-tune in {output}")
        raise
    return {
        "top1": result["top1"],
        "steps": steps,
        "train_examples": result["train_examples"],
        "validation_curve": result["validation_curve"],
    }


def evaluate_checkpoint(method: str, seed: int, encoder: Path, data: Path, args, results: Results) -> None:
    run_dir = Path(args.output_dir) / f"{method}-seed{seed}"
    todo = [p for p in PROTOCOLS if results.get(f"{method}/seed{seed}/{p}") is None]
    if not todo:
        return
    if set(FROZEN_FEATURE_PROTOCOLS) & set(todo):
        train = frozen_features(encoder, data / "train", run_dir / "train_features.safetensors", args)
        test = frozen_features(encoder, data / "test", run_dir / "test_features.safetensors", args)
    for protocol in todo:
        started = time.time()
        if protocol in FROZEN_FEATURE_PROTOCOLS:
            value = {"top1": frozen_feature_top1(protocol, train, test, seed, args)}
        else:
            fraction = 0.01 if protocol == "fine_tune_1pct" else 0.1
            value = fine_tune(encoder, fraction, seed, data, run_dir / protocol, args)
        value["wall_s"] = round(time.time() - started, 1)
        results.put(f"{method}/seed{seed}/{protocol}", value)
        print(f"{method} seed {seed} {protocol}: top-1 {value['top1']:.4f} ({value['wall_s']:.0f} s)", flush=True)
        if method != "scratch":
            evaluation.add_to_model_index(encoder, f"mfm-{method}-cifar10-seed{seed}", "image-classification", CARD_TASKS[protocol],
                                          CIFAR10, {"accuracy": value["top1"]})


def summarise(args, results: Results, methods: list[str]) -> dict:
    summary = {}
    for method in methods:
        summary[method] = {}
        for protocol in PROTOCOLS:
            values = [results.get(f"{method}/seed{s}/{protocol}") for s in args.seeds]
            values = [v["top1"] for v in values if v is not None]
            if values:
                summary[method][protocol] = spread(values)
    return summary


def spread(values: list[float]) -> dict:
    """Mean, sample sd (0 for one value) and how many seeds they come from."""
    return {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, "seeds": len(values)}


def cell(entry: dict | None) -> str:
    """``mean ± sd`` over seeds in %, ``mean (1 seed)`` before a second seed has run, ``-`` before any."""
    if entry is None:
        return "-"
    spread = f" ± {100 * entry['sd']:.1f}" if entry["seeds"] > 1 else " (1 seed)"
    return f"{100 * entry['mean']:.1f}{spread}"


def write_outputs(args, results: Results, methods: list[str], steps: dict[str, int]) -> None:
    out = Path(args.output_dir)
    summary = summarise(args, results, methods)
    results.data["summary"] = summary
    results.save()
    header = "| method | pre-training | " + " | ".join(PROTOCOL_NAMES[p] for p in PROTOCOLS) + " |"
    lines = [header, "|---" * (len(PROTOCOLS) + 2) + "|"]
    for method in methods:
        epochs = steps.get(method, 0) * args.batch_size / args.train_images
        cells = [cell(summary[method].get(p)) for p in PROTOCOLS]
        lines.append(f"| {method} | {steps.get(method, 0)} steps, {epochs:.1f} epochs | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    print(table)

    fig, (bars, knn) = plt.subplots(1, 2, figsize=(12, 4), dpi=120, gridspec_kw={"width_ratios": [2, 1]})
    width = 0.8 / len(methods)
    x = np.arange(len(PROTOCOLS))
    highest = 0.0
    for i, method in enumerate(methods):
        means = [summary[method].get(p, {}).get("mean", np.nan) for p in PROTOCOLS]
        sds = [summary[method].get(p, {}).get("sd", 0.0) for p in PROTOCOLS]
        bars.bar(x + (i - (len(methods) - 1) / 2) * width, means, width, yerr=sds, capsize=2, label=method)
        highest = np.nanmax([highest, *np.add(means, sds)])
    bars.set_xticks(x, [PROTOCOL_NAMES[p] for p in PROTOCOLS], fontsize=8)
    bars.set_ylabel("CIFAR-10 test top-1")
    bars.set_ylim(0, 1.2 * highest if highest > 0 else 1)  # from zero, but tall enough to read a 1-point difference
    bars.legend(fontsize=7)
    bars.set_title(f"mean ± sd over seeds {args.seeds}", fontsize=9)
    for method in methods:
        points = [(results.get(f"{method}/seed{s}/pretraining") or {}).get("wall_s", np.nan) for s in args.seeds]
        accuracy = [(results.get(f"{method}/seed{s}/knn") or {}).get("top1", np.nan) for s in args.seeds]
        knn.scatter(np.array(points) / 60, accuracy, label=method)
    knn.set_xlabel("pre-training wall time (min, measured)")
    knn.set_ylabel("kNN top-1")
    knn.grid(alpha=0.3)
    knn.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "benchmark.png")
    plt.close(fig)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options `pretraining_arguments`, `calibrate`, `fine_tune` and the frozen-feature
    protocols read, shared with `benchmarks.compute_curve`."""
    parser.add_argument("--data_dir", default=None, help="CIFAR-10 image folder with train/ and test/ (default: the shared tar, extracted)")
    parser.add_argument("--calibration_steps", type=int, default=60)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--pretrain_learning_rate", type=float, default=1.5e-3)
    parser.add_argument("--folk_ema_momentum", type=float, default=0.99)
    parser.add_argument("--fine_tune_batch_size", type=int, default=64)
    parser.add_argument("--fine_tune_epochs_10pct", type=float, default=15)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--dataloader_num_workers", type=int, default=1,
                        help="data-loader workers (the compute curve's batched pre-training uses 0)")


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/cifar10_benchmark")
    parser.add_argument("--methods", nargs="+", default=["scratch", "mfm", "folk", "sr"], choices=["scratch", *METHODS, *CONTENDERS])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--budget_minutes", type=float, default=15.5, help="pre-training wall-clock budget per pre-trained method and seed")
    parser.add_argument("--pretrain_steps", type=int, default=None, help="skip the calibration: this many steps for every method")
    parser.add_argument("--fine_tune_epochs_1pct", type=float, default=60)
    add_run_arguments(parser)
    parser.add_argument("--report_only", action="store_true", help="only rewrite table.md and benchmark.png from results.json")
    parser.add_argument("--pretraining_flags", nargs=argparse.REMAINDER, default=[],
                        help="last: run_pretraining.py flags for every pre-trained method (a recipe variant, e.g. --mask_radius 32); "
                             "use a new --output_dir per variant")
    args = parser.parse_args(argv)
    require(args.budget_minutes > 0, "--budget_minutes", args.budget_minutes, "> 0")
    require_at_least(args, 1, "pretrain_steps", "calibration_steps", "batch_size", "fine_tune_batch_size", "episodes")
    require(len(args.seeds) >= 1, "--seeds", args.seeds, "at least one seed")
    args.fine_tune_epochs = {0.01: args.fine_tune_epochs_1pct, 0.1: args.fine_tune_epochs_10pct}
    return args


def main(argv=None) -> dict:
    args = parse_arguments(argv)
    data = cifar10_folder(args.data_dir)
    args.train_images = sum(1 for path in (data / "train").rglob("*") if path.is_file())
    out = claim_folder(args.output_dir)  # one benchmark per folder at a time; its sub-runs write inside it under this claim
    out.mkdir(parents=True, exist_ok=True)
    results = Results(out / "results.json")
    results.check_settings(args)
    results.data["hardware"] = f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    results.save()
    MFMViTConfig(**ENCODER).to_json_file(out / "encoder_config.json")

    pretrained = [m for m in args.methods if m != "scratch"]
    if args.pretrain_steps is not None:
        steps = {m: args.pretrain_steps for m in pretrained}
    else:
        budget = 60 * args.budget_minutes
        steps = {m: max(1, round(budget * calibrate(m, args, data / "train", results) / args.batch_size)) for m in pretrained}
    results.data["pretraining_steps"] = steps
    results.save()
    if args.report_only:
        write_outputs(args, results, args.methods, steps)
        return results.data
    started = time.time()
    for seed in args.seeds:
        for method in args.methods:
            encoder = pretrain(method, seed, steps.get(method, 0), args, data / "train", results)
            evaluate_checkpoint(method, seed, encoder, data, args, results)
            print(f"[{(time.time() - started) / 60:6.1f} min] {method} seed {seed} done", flush=True)
            write_outputs(args, results, args.methods, steps)
    return results.data


if __name__ == "__main__":
    main()
