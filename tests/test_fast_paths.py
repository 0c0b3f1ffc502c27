"""The speed switches change speed only: every attention kernel and torch.compile give the
same loss and gradients as the plain eager path (timings are in the benchmarks, never here)."""

import copy
import subprocess
import sys

import pytest
import torch
import torch._dynamo
import torch._inductor.config as inductor_config
import torch.nn.functional as F
from conftest import tiny_resnet_config, tiny_swin_config, tiny_vit_config
from parity import BFLOAT16_GRADIENTS, FLOAT32_GRADIENTS, assert_close, relative_error

from mfm_hub import MFMResNetForPreTraining, MFMSwinForPreTraining, MFMViTForPreTraining, MFMViTModel
from mfm_hub.attention import ATTENTION_BACKENDS, MEASURED_FASTEST, resolve_attention_backend

FAMILIES = {
    "vit": (MFMViTForPreTraining, tiny_vit_config),
    "resnet": (MFMResNetForPreTraining, tiny_resnet_config),
    "swin": (MFMSwinForPreTraining, tiny_swin_config),
}
TOLERANCE = {torch.float32: FLOAT32_GRADIENTS, torch.bfloat16: BFLOAT16_GRADIENTS}
#: channels-last bf16 gradients are at most this many times further from float32's than contiguous
#: bf16 ones (measured 0.93-1.19 over 5 random inits; uncorrelated gradients would be ~8x)
BF16_ERROR_RATIO = 2.0


def loss_and_gradients(model, pixels, dtype):
    model.zero_grad()
    torch.manual_seed(1)  # the same masks for every model
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        loss = model(pixels).loss
    loss.backward()
    return loss.detach().float(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def count_sdpa_calls(monkeypatch) -> list:
    calls = []
    fused = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or fused(*a, **k))
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_every_attention_backend_gives_the_same_loss_and_gradients(dtype, monkeypatch):
    calls = count_sdpa_calls(monkeypatch)
    reference = MFMViTForPreTraining(tiny_vit_config(attention_backend="math")).train()
    pixels = torch.rand(4, 3, 32, 32)
    expected_loss, expected_grads = loss_and_gradients(reference, pixels, dtype)
    assert not calls
    for backend in ATTENTION_BACKENDS:
        model = MFMViTForPreTraining(tiny_vit_config(attention_backend=backend)).train()
        model.load_state_dict(reference.state_dict())
        calls.clear()
        loss, grads = loss_and_gradients(model, pixels, dtype)
        chosen = MEASURED_FASTEST[("cpu", dtype)] if backend == "auto" else backend
        assert len(calls) == (4 if chosen == "sdpa" else 0), backend  # one call per block when the fused kernel runs
        assert_close(loss, expected_loss, TOLERANCE[dtype], "loss")
        assert_close(grads, expected_grads, TOLERANCE[dtype], "gradients")


def test_auto_follows_the_measured_table_per_call():
    weight = torch.zeros(1)
    assert resolve_attention_backend("auto", weight) == MEASURED_FASTEST[("cpu", torch.float32)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert resolve_attention_backend("auto", weight) == MEASURED_FASTEST[("cpu", torch.bfloat16)]
        assert resolve_attention_backend("sdpa", weight) == "sdpa"
    assert resolve_attention_backend("auto", weight.to(torch.float16)) == "sdpa"  # not measured: PyTorch's fused kernel


def test_transformers_eager_attention_means_math(monkeypatch):
    calls = count_sdpa_calls(monkeypatch)
    model = MFMViTModel(tiny_vit_config(attn_implementation="eager")).eval()
    model(torch.randn(1, 3, 32, 32))
    assert not calls and model.encoder.blocks[0].attn.backend == "math"


def test_a_bad_attention_backend_is_refused():
    with pytest.raises(ValueError, match="`attention_backend` must be one of auto, sdpa, math, got 'flash'"):
        tiny_vit_config(attention_backend="flash")


@pytest.mark.parametrize("family", FAMILIES)
def test_torch_compile_traces_masking_and_loss_whole_and_matches_eager(family):
    model_class, make_config = FAMILIES[family]
    model = model_class(make_config()).train()
    size = model.config.image_size
    pixels = torch.rand(4, 3, size, size)
    explanation = torch._dynamo.explain(model)(pixels)
    assert explanation.graph_break_count == 0, [str(reason.reason) for reason in explanation.break_reasons]

    # inductor draws random numbers its own way unless told to use eager's generator; torch's own
    # patch, because pytest >= 9.2's monkeypatch deletes a config entry on undo
    with inductor_config.patch(fallback_random=True):
        compiled = torch.compile(model)
        expected_loss, expected_grads = loss_and_gradients(model, pixels, torch.float32)
        loss, grads = loss_and_gradients(compiled, pixels, torch.float32)
    assert_close(loss, expected_loss, FLOAT32_GRADIENTS, "loss")
    assert_close(grads, expected_grads, FLOAT32_GRADIENTS, "gradients")


def test_resnet_runs_channels_last_from_init_and_from_a_checkpoint_with_the_same_results(tmp_path):
    model = MFMResNetForPreTraining(tiny_resnet_config()).train()

    def channels_last(resnet) -> bool:
        encoder = resnet.mfm_resnet.eval()  # eval: the probe must not move the batch-norm statistics
        with torch.no_grad():
            layout = encoder(torch.rand(1, 3, 64, 64)).last_hidden_state.is_contiguous(memory_format=torch.channels_last)
        encoder.train()
        return layout

    assert channels_last(model) and all(p.is_contiguous() for p in model.parameters())  # NHWC activations, default-layout weights
    model.save_pretrained(tmp_path)
    loaded = MFMResNetForPreTraining.from_pretrained(tmp_path).train()
    assert channels_last(loaded)
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[name]), name

    contiguous = MFMResNetForPreTraining(tiny_resnet_config()).train()
    contiguous.load_state_dict(model.state_dict())
    for module in contiguous.modules():
        if hasattr(module, "memory_format"):
            module.memory_format = torch.contiguous_format
    assert not channels_last(contiguous)
    pixels = torch.rand(4, 3, 64, 64)
    # the reference is float64 in the default layout: between the two float32 paths the default
    # layout's is the less accurate one on some inputs (5e-4 of the largest gradient vs 5e-6)
    exact = copy.deepcopy(contiguous).double()
    expected_loss, expected_grads = (tensor.float() for tensor in loss_and_gradients(exact, pixels.double(), torch.float32))
    loss, grads = loss_and_gradients(model, pixels, torch.float32)
    assert_close(loss, expected_loss, FLOAT32_GRADIENTS, "loss")
    assert_close(grads, expected_grads, FLOAT32_GRADIENTS, "gradients")
    # bf16 batch norm over a few values per channel scatters each path's gradients by ~20% (L2) from
    # float32's, so the two bf16 paths are compared by their error against float32, not to each other
    bf16_errors = {}
    for name, candidate in (("contiguous", contiguous), ("channels-last", model)):
        bf16_loss, bf16_grads = loss_and_gradients(candidate, pixels, torch.bfloat16)
        assert_close(bf16_loss, expected_loss, BFLOAT16_GRADIENTS, f"{name} bf16 loss")
        bf16_errors[name] = relative_error(bf16_grads, expected_grads, "l2")
    assert bf16_errors["channels-last"] <= BF16_ERROR_RATIO * bf16_errors["contiguous"], bf16_errors


FAULTS_SCRIPT = """
import resource, sys, torch
from mfm_hub.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
faults = []
for _ in range(30):  # 64 MiB allocated, touched and freed, as a training step's activations are
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(2**24).fill_(1.0)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, *faults)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_kept_freed_memory_is_reused_without_page_faults():
    def faulting_allocations(mode):
        output = subprocess.run([sys.executable, "-c", FAULTS_SCRIPT, mode], capture_output=True, text=True, check=True).stdout.split()
        return output[0] == "True", sum(int(faults) > 1_000 for faults in output[1:])

    applied, faulting = faulting_allocations("keep")
    default_applied, default_faulting = faulting_allocations("default")
    assert applied and not default_applied
    assert default_faulting == 30  # 16,384 pages of 4 KiB mapped and faulted in again on every allocation
    # Kept memory is faulted in only while the heap grows to the working set: small allocations
    # that land at its top can make it grow a few more times (at most 5 of 30 in 40 runs measured).
    assert faulting <= 10


def test_folk_traces_whole_too():
    from mfm_hub import FOLKViTForPreTraining

    model = FOLKViTForPreTraining(tiny_vit_config(pretext_task="informed", folk_head_output_dim=64, folk_head_hidden_dim=32,
                                                  folk_head_bottleneck_dim=16)).train()
    explanation = torch._dynamo.explain(model)(torch.rand(4, 2, 3, 32, 32))
    assert explanation.graph_break_count == 0, [str(reason.reason) for reason in explanation.break_reasons]
