"""The demo (`mfm_hub.demo`): the pictures it computes, the inputs it refuses, the models it
loads, and one slow test that drives the page in a real headless Chromium."""

import io
import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_vit_config
from PIL import Image

from mfm_hub import FOLKViTForPreTraining, MFMViTForImageClassification, MFMViTForPreTraining
from mfm_hub.demo.panels import (
    DemoInputError,
    band_errors,
    image_to_pixels,
    load_reconstruction_model,
    objective_config,
    panel_images,
    read_image,
    run_task,
)
from mfm_hub.frequency import apply_frequency_mask, circle_mask
from mfm_hub.modeling_common import denormalize

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("MFM_TEST_ARTIFACTS", ROOT / "test-artifacts"))


def scene(size: int = 96) -> Image.Image:
    """A photo-like RGB test image: smooth shading, a disc and stripes (signal in every band)."""
    y, x = np.mgrid[0:size, 0:size] / size
    red = 0.5 + 0.4 * np.sin(2 * np.pi * 3 * x) * (((x - 0.5) ** 2 + (y - 0.4) ** 2) < 0.08)
    green = 0.3 + 0.5 * y
    blue = 0.5 + 0.3 * np.sign(np.sin(2 * np.pi * 12 * (x + y)))
    return Image.fromarray((np.stack([red, green, blue], -1).clip(0, 1) * 255).astype(np.uint8))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MFMViTForPreTraining(tiny_vit_config()).eval()


@pytest.fixture(scope="module")
def pixels(model):
    return image_to_pixels(scene(), model.config)


# --------------------------------------------------------------------------------------
# The pictures
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("task, values", [
    ("mfm", {"mask_radius": 40, "low_pass_prob": 1.0}),
    ("mfm", {"mask_radius": 40, "low_pass_prob": 0.0}),
    ("informed", {"informed_keep_ratios": 0.05, "compress_prob": 1.0}),
    ("sr", {"sr_factor": 4}),
    ("deblur", {"blur_sigma": 2.0, "blur_kernel_sizes": 7}),
    ("denoise", {"noise_sigma": 0.2}),
])
def test_every_task_gives_six_pictures_the_band_errors_and_a_finite_loss(model, pixels, task, values):
    result = run_task(model, pixels, task, values)
    panels = panel_images(result)
    assert len(panels) == 6
    for title, picture in panels.items():
        assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[2] == 3, title
        assert picture.shape[0] == picture.shape[1] >= 224, title  # 32-px panels are enlarged to stay legible
    assert result.original.shape == result.corrupted.shape == result.reconstruction.shape == (1, 3, 32, 32)
    assert np.isfinite(result.loss)
    bands = result.bands
    assert bands.radius.shape == bands.corrupted.shape == bands.reconstruction.shape and bands.radius.numel() >= 8
    assert (bands.removed is None) == (task in ("sr", "deblur", "denoise"))


@pytest.mark.parametrize("low_pass", [True, False])
def test_the_mask_removes_the_circle_the_radius_says(model, pixels, low_pass):
    result = run_task(model, pixels, "mfm", {"mask_radius": 40, "low_pass_prob": float(low_pass)})
    kept = circle_mask(32, 32, 40.0)
    expected = kept if low_pass else 1 - kept
    assert torch.equal(result.frequency_mask[0, 0], expected)
    assert result.removed_fraction == pytest.approx(1 - expected.mean().item())
    bands = result.bands
    inside = bands.radius < 40 - 8  # bands wholly inside the circle (a band here is ~6.6 units wide)
    outside = bands.radius > 40 + 8
    assert torch.all(bands.removed[inside] == (0.0 if low_pass else 1.0))
    assert torch.all(bands.removed[outside] == (1.0 if low_pass else 0.0))
    if low_pass:  # (a high-passed image leaves [0, 1] and is clipped, which touches every band)
        assert torch.all(bands.corrupted[inside] < 1e-6)  # kept bands are untouched
        assert torch.all(bands.corrupted[outside] > 0.999)  # removed bands are gone


def test_informed_mask_keeps_the_chosen_fraction(model, pixels):
    result = run_task(model, pixels, "informed", {"informed_keep_ratios": 0.1, "compress_prob": 1.0})
    assert result.frequency_mask.sum().item() == round(0.1 * 32 * 32)  # Com keeps exactly the k strongest


@pytest.mark.parametrize("task, values", [("mfm", {"mask_radius": 24, "low_pass_prob": 0.0}),
                                          ("informed", {"informed_keep_ratios": 0.02, "compress_prob": 0.0})])
def test_reconstruction_is_the_models_forward_for_the_same_mask(model, pixels, task, values):
    result = run_task(model, pixels, task, values, seed=3)
    with torch.no_grad():
        output = model(pixels, frequency_mask=result.frequency_mask)
    assert torch.equal(result.reconstruction, denormalize(output.reconstruction, model.config))
    assert result.loss == output.loss.item()


def test_pixel_space_task_is_the_forward_of_a_model_trained_on_it(model, pixels):
    """Putting SR to an MFM model reconstructs exactly as a model configured for SR would."""
    result = run_task(model, pixels, "sr", {"sr_factor": 4})
    sr_model = MFMViTForPreTraining(objective_config(model.config, "sr", {"sr_factor": 4})).eval()
    sr_model.load_state_dict(model.state_dict())
    with torch.no_grad():
        output = sr_model(pixels)
    assert torch.equal(result.reconstruction, denormalize(output.reconstruction, model.config))
    assert result.loss == output.loss.item()
    assert torch.equal(result.corrupted, output.corrupted_pixel_values)


def test_seed_reproduces_the_random_choices_and_another_changes_them(model, pixels):
    first, again, other = (run_task(model, pixels, "denoise", {"noise_sigma": 0.3}, seed=seed) for seed in (1, 1, 2))
    assert torch.equal(first.corrupted, again.corrupted)
    assert not torch.equal(first.corrupted, other.corrupted)


def test_band_errors_are_zero_for_the_original_and_one_for_a_black_image():
    original = image_to_pixels(scene(64), tiny_vit_config(image_size=64))
    bands = band_errors(original, original.clone(), torch.zeros_like(original))
    assert torch.all(bands.corrupted == 0)
    assert torch.allclose(bands.reconstruction, torch.ones_like(bands.reconstruction))
    mask = circle_mask(64, 64, 50.0)[None, None]
    low_passed = apply_frequency_mask(original, mask)
    bands = band_errors(original, low_passed, original, mask)
    assert torch.all(bands.reconstruction == 0)
    assert bands.corrupted[0] < 1e-6 and bands.corrupted[-1] > 0.999


def test_kept_magnitude_panel_of_a_pixel_task_shows_its_low_pass(model, pixels):
    result = run_task(model, pixels, "sr", {"sr_factor": 8})
    picture = panel_images(result)["kept magnitude |F(corrupted)| / |F(input)|"].astype(float).mean(-1)
    centre, corner = picture[100:124, 100:124].mean(), picture[:24, :24].mean()
    assert centre > 200 and corner < 100  # bicubic x8 keeps the low frequencies, loses the high ones


# --------------------------------------------------------------------------------------
# Refused inputs: a message for the person, not a traceback
# --------------------------------------------------------------------------------------


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("name, content, message", [
    ("notes.png", b"this is a text file, not a picture", "is not an image this demo can read"),
    ("empty.jpg", b"", "is not an image this demo can read"),
    ("cut.png", png_bytes(scene())[:300], "is damaged or truncated"),
    ("huge.png", png_bytes(Image.new("L", (8000, 6000))), "8000x6000: the demo takes up to 40 megapixels"),
])
def test_bad_uploads_are_refused_with_a_message(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DemoInputError, match=message):
        read_image(path)


def test_flat_image_is_refused(model):
    with pytest.raises(DemoInputError, match="one flat colour"):
        image_to_pixels(Image.new("RGB", (50, 40), (120, 30, 200)), model.config)


@pytest.mark.parametrize("mode", ["L", "I;16", "RGBA", "P", "CMYK", "LA", "1"])
def test_every_image_mode_is_read_as_rgb(tmp_path, model, mode):
    rgb = scene(48)
    image = rgb.convert("L").convert("I;16") if mode == "I;16" else rgb.convert(mode)
    path = tmp_path / f"image.{'tiff' if mode == 'CMYK' else 'png'}"
    image.save(path)
    picture = read_image(path)
    assert picture.mode == "RGB" and picture.size == (48, 48)
    assert image_to_pixels(picture, model.config).shape == (1, 3, 32, 32)


def test_non_square_and_tiny_images_are_resized_and_cropped(model):
    assert image_to_pixels(scene(200).resize((300, 120)), model.config).shape == (1, 3, 32, 32)
    assert image_to_pixels(scene(8), model.config).shape == (1, 3, 32, 32)


@pytest.mark.parametrize("task, values, message", [
    ("mfm", {"mask_radus": 10}, "has no parameters \\['mask_radus'\\]"),
    ("mfm", {"mask_radius": 0}, "`mask_radius` must be > 0"),
    ("mfm", {"mask_radius": 500}, "removes no frequency"),
    ("denoise", {"noise_sigma": -0.1}, "`noise_sigma` must be > 0"),
    ("jpeg", {}, "Unknown pretext task 'jpeg'"),
])
def test_bad_task_values_are_refused_by_the_config(model, task, values, message):
    with pytest.raises(ValueError, match=message):
        objective_config(model.config, task, values)


# --------------------------------------------------------------------------------------
# Which models it loads
# --------------------------------------------------------------------------------------


def test_loads_pretraining_folders_folk_students_and_a_runs_last_checkpoint(tmp_path, model):
    model.save_pretrained(tmp_path / "pretraining")
    loaded = load_reconstruction_model(str(tmp_path / "pretraining"))
    assert type(loaded) is MFMViTForPreTraining and not loaded.training
    assert torch.equal(loaded.decoder[0].weight, model.decoder[0].weight)

    folk = FOLKViTForPreTraining(tiny_vit_config(folk_head_hidden_dim=16, folk_head_bottleneck_dim=8, folk_head_output_dim=8))
    folk.save_pretrained(tmp_path / "folk")
    student = load_reconstruction_model(str(tmp_path / "folk"))
    assert type(student) is MFMViTForPreTraining
    assert torch.equal(student.decoder[0].weight, folk.student.decoder[0].weight)

    run = tmp_path / "run"  # what run_pretraining.py leaves: the exported encoder, and the Trainer's checkpoints
    model.base_model.save_pretrained(run)
    model.save_pretrained(run / "checkpoint-10")
    model.save_pretrained(run / "checkpoint-20")
    assert type(load_reconstruction_model(str(run))) is MFMViTForPreTraining


def test_refuses_models_without_a_decoder(tmp_path, model):
    model.base_model.save_pretrained(tmp_path / "encoder")
    with pytest.raises(ValueError, match="has no reconstruction decoder"):
        load_reconstruction_model(str(tmp_path / "encoder"))
    MFMViTForImageClassification(tiny_vit_config(num_labels=3)).save_pretrained(tmp_path / "classifier")
    with pytest.raises(ValueError, match="MFMViTForImageClassification, which has no reconstruction decoder"):
        load_reconstruction_model(str(tmp_path / "classifier"))
    with pytest.raises(ValueError, match="fine-tuned classifier without the reconstruction decoder"):
        load_reconstruction_model("mfm-vit-b16-pt300-ft100")


def test_command_line_serves_the_model_with_fashion_mnist_or_given_examples(tmp_path, model, monkeypatch):
    pytest.importorskip("gradio")
    from mfm_hub.demo import app

    model.save_pretrained(tmp_path / "model")
    (tmp_path / "examples").mkdir()
    scene().save(tmp_path / "examples" / "scene.png")
    (tmp_path / "examples" / "notes.txt").write_text("not an example")
    served = {}
    monkeypatch.setattr(app, "launch", lambda demo, host, port, folder: served.update(demo=demo, host=host, port=port, folder=folder))
    app.main(["--model", str(tmp_path / "model"), "--port", "7999", "--examples", str(tmp_path / "examples")])
    assert served["port"] == 7999 and served["folder"] == (tmp_path / "examples").resolve()
    assert app.example_images(tmp_path / "examples")[0] == [tmp_path / "examples" / "scene.png"]
    with pytest.raises(SystemExit, match="Cannot load --model"):
        app.main(["--model", str(tmp_path / "missing")])


def test_a_registered_task_appears_on_the_page_with_its_controls(model):
    pytest.importorskip("gradio")
    from mfm_hub.demo.app import build_demo
    from mfm_hub.pretext import PRETEXT_TASKS, Corruption, PretextTask, TaskParameter, register_pretext_task

    register_pretext_task(PretextTask(
        name="dim", title="Dimming", description="darken the image", corrupt=lambda pixels, config, generator: Corruption(pixels / 2),
        parameters=(TaskParameter("loss_gamma", "a field no other task shows", 0.5, 2, 0.5),),
    ))
    try:
        components = build_demo(model, "tiny").config["components"]
        fields = {parameter.field for entry in PRETEXT_TASKS.values() for parameter in entry.parameters}
    finally:
        PRETEXT_TASKS.pop("dim")
    task = next(component for component in components if component["props"].get("elem_id") == "task")
    assert ("Dimming", "dim") in [tuple(choice) for choice in task["props"]["choices"]]
    controls = {
        component["props"]["elem_id"] for component in components if str(component["props"].get("elem_id")).startswith("parameter-")
    }
    assert "loss_gamma" in fields and controls == {f"parameter-{field}" for field in fields}


# --------------------------------------------------------------------------------------
# The page, in a real browser
# --------------------------------------------------------------------------------------

CHROMIUM, CHROMEDRIVER = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
LOOPBACK = {"127.0.0.1", "::1", "localhost"}


@pytest.fixture
def outbound_connections(monkeypatch):
    """Every non-loopback host this process looks up or connects to while the test runs."""
    attempts = []
    lookup, connect = socket.getaddrinfo, socket.socket.connect

    def recording_lookup(host, *args, **kwargs):
        if host not in LOOPBACK and host is not None:
            attempts.append(f"lookup {host}")
        return lookup(host, *args, **kwargs)

    def recording_connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in LOOPBACK:
            attempts.append(f"connect {address}")
        return connect(sock, address)

    monkeypatch.setattr(socket, "getaddrinfo", recording_lookup)
    monkeypatch.setattr(socket.socket, "connect", recording_connect)
    return attempts


@pytest.mark.slow
@pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None, reason="needs Chromium and its driver (`apt-get install chromium chromium-driver`)"
)
def test_page_in_a_headless_browser(model, outbound_connections, tmp_path):
    """Upload an image, change the radius, switch the task, upload a bad image and a text file:
    each time the page shows what it should; nothing is requested from outside this machine."""
    pytest.importorskip("gradio")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from mfm_hub.demo.app import build_demo, launch

    scene(160).save(tmp_path / "scene.png")
    (tmp_path / "notes.png").write_text("a text file with an image's name")
    (tmp_path / "notes.txt").write_text("a text file")
    with socket.socket() as probe:  # a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    demo = build_demo(model, "tiny test model", examples=[tmp_path / "scene.png"])
    _, url = launch(demo, "127.0.0.1", port, tmp_path, block=False)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1500"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    browser = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
    wait = WebDriverWait(browser, 60)
    try:
        browser.get(url)
        upload = wait.until(lambda page: page.find_element(By.CSS_SELECTOR, "#upload input[type=file]"))

        def summary():
            return browser.find_element(By.ID, "summary").text

        def pictures():
            return [element.get_attribute("src") for element in browser.find_elements(By.CSS_SELECTOR, "[id^=panel-] img")]

        upload.send_keys(str(tmp_path / "scene.png"))
        wait.until(lambda _: "loss" in summary() and len(pictures()) == 6)
        first_summary, first = summary(), pictures()
        assert "MFM" in first_summary and "the mask removes" in first_summary
        assert browser.find_element(By.CSS_SELECTOR, "#band-errors img").get_attribute("src")

        radius = browser.find_element(By.CSS_SELECTOR, "#parameter-mask_radius input[type=number]")
        radius.send_keys(Keys.CONTROL, "a")
        radius.send_keys("60", Keys.ENTER)
        wait.until(lambda _: summary() != first_summary and "loss" in summary())
        # the kept frequencies, the corrupted input and the reconstruction change (the pictures follow the text)
        wait.until(lambda _: all(now != before for now, before in zip(pictures()[2:5], first[2:5])))
        assert pictures()[0] == first[0]  # the same input
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "demo.png"))

        task = browser.find_element(By.CSS_SELECTOR, "#task input")
        task.click()
        task.send_keys(Keys.CONTROL, "a")
        task.send_keys("SR", Keys.ENTER)
        wait.until(lambda _: summary().startswith("SR"))
        assert browser.find_element(By.ID, "parameter-sr_factor").is_displayed()
        assert not browser.find_elements(By.CSS_SELECTOR, "#parameter-mask_radius input[type=number]") or \
            not browser.find_element(By.ID, "parameter-mask_radius").is_displayed()

        browser.find_element(By.CSS_SELECTOR, "#upload button[aria-label=Clear]").click()
        wait.until(lambda page: page.find_element(By.CSS_SELECTOR, "#upload input[type=file]")).send_keys(str(tmp_path / "notes.png"))
        wait.until(lambda page: "is not an image this demo can read" in page.find_element(By.TAG_NAME, "body").text)
        browser.save_screenshot(str(ARTIFACTS / "demo-bad-upload.png"))
        browser.find_element(By.CSS_SELECTOR, "#upload button[aria-label=Clear]").click()
        wait.until(lambda page: page.find_element(By.CSS_SELECTOR, "#upload input[type=file]")).send_keys(str(tmp_path / "notes.txt"))
        wait.until(lambda page: "Invalid file type" in page.find_element(By.TAG_NAME, "body").text)

        requested = set()
        for entry in browser.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                requested.add(message["params"]["request"]["url"])
        outside = sorted(address for address in requested if not address.startswith((url.rstrip("/"), "data:", "blob:")))
        assert not outside, f"the page requested {outside}"
    finally:
        browser.quit()
        demo.close()
    assert not outbound_connections, f"the server reached out: {outbound_connections}"
