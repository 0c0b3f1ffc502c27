"""The pretext-task registry: one entry adds a task that the config, the model and the
pre-training CLI all accept by name."""


import pytest
import torch
from conftest import tiny_vit_config

from mfm_hub import MFMViTForPreTraining
from mfm_hub.pretext import PRETEXT_TASKS, Corruption, PretextTask, get_pretext_task, register_pretext_task
from training import run_pretraining


@pytest.fixture
def inverted_task():
    """A toy task registered for one test: the model restores colour-inverted images."""
    task = register_pretext_task(PretextTask(
        name="invert", title="Invert", description="colour inversion",
        check=lambda config: None, corrupt=lambda pixels, config, generator: Corruption(1.0 - pixels),
    ))
    yield task
    del PRETEXT_TASKS["invert"]


def test_a_registered_task_works_in_config_model_and_cli(inverted_task):
    config = tiny_vit_config(pretext_task="invert")
    assert config.loss_target is None and inverted_task.loss_target == "all"  # not a frequency mask: the whole image is the target
    model = MFMViTForPreTraining(config)
    x = torch.rand(2, 3, 32, 32)
    out = model(x)
    assert torch.isfinite(out.loss) and out.frequency_mask is None
    assert torch.equal(out.corrupted_pixel_values, 1.0 - x)
    assert run_pretraining.ModelArguments(pretext_task="invert").pretext_task == "invert"
    with pytest.raises(ValueError, match="only applies to frequency-mask corruptions, not 'invert'"):
        model(x, frequency_mask=torch.ones(2, 1, 32, 32))


def test_every_built_in_task_is_registered_with_its_loss_target():
    assert list(PRETEXT_TASKS) == ["mfm", "informed", "sr", "deblur", "denoise"]
    assert [get_pretext_task(name).loss_target for name in PRETEXT_TASKS] == ["masked", "masked", "all", "all", "all"]
    with pytest.raises(ValueError, match="Unknown pretext task 'jpeg'; registered: mfm, informed"):
        get_pretext_task("jpeg")
    with pytest.raises(ValueError, match="exactly one of `corrupt` and `sample_mask`"):
        register_pretext_task(PretextTask(name="broken", title="", description=""))
    assert "broken" not in PRETEXT_TASKS


def test_task_parameters_are_checked_by_their_task():
    with pytest.raises(ValueError, match="`sr_factor` must be an int >= 2"):
        tiny_vit_config(sr_factor=1)
    with pytest.raises(ValueError, match="`informed_keep_ratios` must be fractions"):
        tiny_vit_config(informed_keep_ratios=(1.5,))
