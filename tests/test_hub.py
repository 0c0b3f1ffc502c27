"""Hub round trip through the real `huggingface_hub` client over HTTP, against the
loopback test hub of `hub_server.py` (127.0.0.1 only).

Each scenario runs in a subprocess because `huggingface_hub` reads its endpoint and
offline flag once, at import.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import ROOT
from hub_server import LocalHub

pytestmark = pytest.mark.slow


@pytest.fixture
def local_hub():
    hub = LocalHub().start()
    yield hub
    hub.stop()


def run_against_hub(hub: LocalHub, code: str, tmp_path: Path) -> str:
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.endpoint,
        "HF_HUB_OFFLINE": "0",
        "HF_TOKEN": "hf_local_test_token",
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "NO_PROXY": "127.0.0.1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),  # the scripts' `training` package
    }
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_push_and_load_back(local_hub, tmp_path):
    out = run_against_hub(
        local_hub,
        """
        import torch, mfm_hub
        from transformers import AutoBackbone, AutoImageProcessor, AutoModel, AutoModelForImageClassification
        config = mfm_hub.MFMViTConfig(image_size=32, patch_size=4, hidden_size=48, num_hidden_layers=4, num_attention_heads=3)
        model = mfm_hub.MFMViTForPreTraining(config).eval()
        model.push_to_hub("org/mfm-tiny")
        x = torch.rand(2, 3, 32, 32)
        loaded = AutoModel.from_pretrained("org/mfm-tiny").eval()
        assert torch.equal(loaded(x).last_hidden_state, model.base_model(x).last_hidden_state)
        assert type(AutoBackbone.from_pretrained("org/mfm-tiny")).__name__ == "MFMViTBackbone"
        classifier = AutoModelForImageClassification.from_pretrained("org/mfm-tiny", num_labels=3)
        assert type(classifier).__name__ == "MFMViTForImageClassification"
        assert AutoImageProcessor.from_pretrained("org/mfm-tiny").crop_size == {"height": 32, "width": 32}
        torch.save(model.base_model(x).last_hidden_state, "reference.pt")
        torch.save(x, "inputs.pt")
        print("pushed-and-loaded")
    """,
        tmp_path,
    )
    assert "pushed-and-loaded" in out
    files = set(local_hub.repos["org/mfm-tiny"]["files"])
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "modeling_mfm_vit.py", "configuration_mfm.py"} <= files

    # a user without mfm_hub imported loads the same repo through the uploaded remote code
    out = run_against_hub(local_hub, """
        import sys, torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained("org/mfm-tiny", trust_remote_code=True).eval()
        assert "mfm_hub" not in sys.modules, "the installed package must not be used"
        assert type(model).__module__.startswith("transformers_modules")
        assert torch.equal(model(torch.load("inputs.pt")).last_hidden_state, torch.load("reference.pt"))
        print("remote-code-ok")
    """, tmp_path)
    assert "remote-code-ok" in out


def test_push_to_hub_keeps_the_image_processor_a_repository_already_has(local_hub, tmp_path):
    out = run_against_hub(local_hub, """
        import mfm_hub
        from transformers import AutoImageProcessor, CLIPImageProcessor
        config = mfm_hub.MFMViTConfig(image_size=32, patch_size=4, hidden_size=48, num_hidden_layers=4, num_attention_heads=3)
        model = mfm_hub.MFMViTModel(config)
        model.push_to_hub("org/with-processor")  # a new repository: the model's processor goes up with it
        assert AutoImageProcessor.from_pretrained("org/with-processor").crop_size == {"height": 32, "width": 32}
        CLIPImageProcessor(crop_size={"height": 40, "width": 40}, size={"shortest_edge": 48}).push_to_hub("org/with-processor")
        model.push_to_hub("org/with-processor")  # the user's processor is kept
        assert AutoImageProcessor.from_pretrained("org/with-processor").crop_size == {"height": 40, "width": 40}
        print("kept")
    """, tmp_path)
    assert "kept" in out


def test_converter_pushes(local_hub, tmp_path):
    out = run_against_hub(local_hub, """
        import torch, mfm_hub
        from mfm_hub.convert_official import main
        model = mfm_hub.MFMResNetForPreTraining(mfm_hub.config_from_preset("resnet18"))
        state = {k.replace("mfm_resnet.", ""): v for k, v in model.state_dict().items()}
        torch.save({"model": state, "epoch": 1}, "r18.pth")
        main(["--checkpoint", "r18.pth", "--arch", "resnet18", "--output", "converted", "--push-to-hub", "org/r18"])
        print("converted")
    """, tmp_path)
    assert "converted" in out
    files = local_hub.repos["org/r18"]["files"]
    assert "model.safetensors" in files and b"S-Lab License" in files["README.md"]


def test_runs_on_a_hub_model_name_it_and_keep_its_licence(local_hub, tmp_path):
    """Fine-tuning, few-shot and robustness runs on ``owner/name``: every card they write names it
    as ``base_model`` and carries the licence its Hub card states, or none where it has no card
    (never the project's own); a results card goes to ``--output_dir``, never into ``./owner/name``."""
    out = run_against_hub(
        local_hub,
        """
        import json
        from pathlib import Path
        import numpy as np
        from huggingface_hub import ModelCard
        from PIL import Image
        import mfm_hub
        from transformers import AutoModelForImageClassification
        from training import run_classification, run_few_shot, run_robustness

        rng = np.random.default_rng(0)
        for label in ("a", "b"):
            Path("data", label).mkdir(parents=True)
            for index in range(4):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(f"data/{label}/{index}.png")
        config = mfm_hub.MFMViTConfig(image_size=32, patch_size=4, hidden_size=48, num_hidden_layers=2, num_attention_heads=3)
        for repository in ("org/enc", "org/bare"):
            mfm_hub.MFMViTModel(config).push_to_hub(repository)
        ModelCard("---\\nlicense: cc-by-nc-4.0\\n---\\n\\n# enc\\n").push_to_hub("org/enc")

        def fine_tune(model, output):
            run_classification.main(["--model", model, "--train_dir", "data", "--validation_dir", "data", "--output_dir", output,
                                     "--max_steps", "1", "--per_device_train_batch_size", "4", "--eval_strategy", "no"])
            return ModelCard.load(f"{output}/README.md")

        def metadata(card):
            return card.data.base_model, card.data.license

        print("CARDS", json.dumps({
            "fine_tune": metadata(fine_tune("org/enc", "ft")),
            "fine_tune_bare": [*metadata(bare := fine_tune("org/bare", "ft_bare")), "base model org/bare" in bare.text],
        }))
        AutoModelForImageClassification.from_pretrained("ft").push_to_hub("org/cls")
        ModelCard.load("ft/README.md").push_to_hub("org/cls")
        run_few_shot.main(["--model", "org/enc", "--data_dir", "data", "--split", "train", "--ways", "2", "--shots", "1",
                           "--queries", "1", "--episodes", "2", "--output_dir", "fs"])
        run_robustness.main(["--model", "org/cls", "--baseline", "ft", "--data_dir", "data", "--split", "train",
                             "--corruptions", "pixelate", "--output_dir", "rob"])
        print("CARDS", json.dumps({name: metadata(ModelCard.load(f"{name}/README.md")) for name in ("fs", "rob")}))
        print("CARDS", json.dumps({"results": [bool(ModelCard.load(f"{name}/README.md").data.eval_results) for name in ("fs", "rob")]}))
        """,
        tmp_path,
    )
    lines = [json.loads(line.removeprefix("CARDS ")) for line in out.splitlines() if line.startswith("CARDS ")]
    cards = {key: value for line in lines for key, value in line.items()}
    assert cards["fine_tune"] == ["org/enc", "cc-by-nc-4.0"]
    assert cards["fine_tune_bare"] == ["org/bare", None, True]
    assert cards["fs"] == ["org/enc", "cc-by-nc-4.0"] and cards["rob"] == ["org/cls", "cc-by-nc-4.0"]
    assert cards["results"] == [True, True]
    assert not (tmp_path / "org").exists()
