"""The official model zoo end to end against a local HTTP server standing in for Google Drive:
one call downloads, converts, caches and loads; the cache then works with the server gone; a
cut-off download is never cached and resumes; a corrupt file is refused and deleted."""

import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from official_release import random_masks, randomize_, save_like_the_release
from parity import FLOAT32_NETWORK, assert_close

from benchmarks.reference_mfm import MEAN, STD, ReferenceMFM, official_resnet50
from mfm_hub import MFMResNetForPreTraining, MFMResNetModel, MFMViTModel, zoo

ENTRY = "mfm-resnet50-pt300"


class FileServer:
    """Serves ``files[file_id]`` at ``/<file_id>`` with HTTP Range support. ``cut_after``
    bytes: announce the full length but close the connection early (an interrupted
    download)."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.cut_after, self.requests = files, None, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                data = server.files.get(self.path.strip("/"))
                server.requests.append((self.path, self.headers.get("Range")))
                if data is None:
                    self.send_error(404)
                    return
                start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers.get("Range") else 0
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(data) - start))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                end = len(data) if server.cut_after is None else min(len(data), start + server.cut_after)
                self.wfile.write(data[start:end])

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url_template(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/{{file_id}}"

    def stop(self):
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="module")
def official_r50(tmp_path_factory):
    """An official-format MFM ResNet-50 pre-training file (random weights) and its module."""
    reference = ReferenceMFM(official_resnet50(), stride=32, features=2048)
    randomize_(reference)
    path = tmp_path_factory.mktemp("release") / "mfm_r50.pth"
    save_like_the_release(reference.state_dict(), path)
    return path.read_bytes(), reference.eval()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setattr(zoo.constants, "HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setattr(zoo.constants, "HF_HUB_OFFLINE", False)  # the tests' loopback file server stands in for the network
    monkeypatch.delenv(zoo.ZOO_URL_ENV, raising=False)
    return tmp_path / "hf_home" / "mfm_hub" / "zoo"


def test_one_call_downloads_converts_caches_and_loads_offline(official_r50, cache):
    data, reference = official_r50
    server = FileServer({zoo.get(ENTRY).file_id: data})
    try:
        model = zoo.load(ENTRY, url_template=server.url_template)
    finally:
        server.stop()
    assert isinstance(model, MFMResNetForPreTraining)
    assert (cache / ENTRY / "model.safetensors").exists() and not list((cache / "downloads").glob("*"))
    card = (cache / ENTRY / "README.md").read_text()
    assert "reported by the authors" in card and "78.5" in card and "80.1" in card and "S-Lab" in card
    assert "model-index" not in card and "pipeline_tag: image-feature-extraction" in card  # a pre-trained file has no result of its own

    # the server is gone: the cache alone serves the second call, with the same weights
    again = zoo.load(ENTRY, url_template=server.url_template)
    encoder = zoo.load(ENTRY, model_class=MFMResNetModel, url_template=server.url_template)
    assert isinstance(encoder, MFMResNetModel)
    x, mask = torch.rand(2, 3, 64, 64), random_masks(2, 64)
    with torch.no_grad():
        _, ref_rec, ref_loss = reference(x, mask)
        out = again.eval()(x, frequency_mask=mask)
    assert_close(out.reconstruction, ref_rec, FLOAT32_NETWORK, "reconstruction")
    assert_close(out.loss, ref_loss, FLOAT32_NETWORK, "loss")
    with torch.no_grad():
        features = encoder((x - MEAN) / STD).last_hidden_state
        ref_features = reference.encode((x - MEAN) / STD)
    assert_close(features, ref_features, FLOAT32_NETWORK, "features")


def test_interrupted_download_is_not_cached_and_resumes(official_r50, cache):
    data, _ = official_r50
    server = FileServer({zoo.get(ENTRY).file_id: data})
    server.cut_after = len(data) // 3
    try:
        with pytest.raises(OSError, match=f"Downloading {ENTRY} .* failed"):
            zoo.fetch(ENTRY, url_template=server.url_template, quiet=True)
        assert not (cache / ENTRY).exists()
        partial = [p for p in (cache / "downloads").iterdir()]
        assert partial and all(p.stat().st_size < len(data) for p in partial)
        server.cut_after = None
        folder = zoo.fetch(ENTRY, url_template=server.url_template, quiet=True)
    finally:
        server.stop()
    assert server.requests[-1][1] is not None and server.requests[-1][1].startswith("bytes=")  # resumed with a Range request
    assert isinstance(MFMResNetForPreTraining.from_pretrained(folder), MFMResNetForPreTraining)


def test_corrupt_download_is_refused_named_and_deleted(official_r50, cache):
    data, _ = official_r50
    corrupt = data[: len(data) // 2]  # complete as served, but a truncated zip
    server = FileServer({zoo.get(ENTRY).file_id: corrupt})
    try:
        with pytest.raises(ValueError, match=f"download of {ENTRY} .* not a usable official checkpoint and was deleted"):
            zoo.fetch(ENTRY, url_template=server.url_template, quiet=True)
    finally:
        server.stop()
    assert not (cache / ENTRY).exists() and not list((cache / "downloads").glob("*.pth"))


def test_timm_lists_every_checkpoint_under_its_own_names_and_builds_them():
    import timm

    listed = timm.list_models("mfm*", pretrained=True)
    assert len(listed) == len(zoo.OFFICIAL_CHECKPOINTS) and "mfm_vit_base_patch16_224.mfm_pt300_ft100_in1k" in listed
    assert "mfm_resnet50.mfm_pt300_ft300_in1k" in listed and "mfm_vit_base_patch16_224.sr_pt300_in1k" in listed
    assert set(timm.list_models("*mfm*")) == {"mfm_resnet50", "mfm_vit_base_patch16_224"}
    classifier = timm.create_model("mfm_resnet50.mfm_pt300_ft100_in1k", pretrained=False)
    assert classifier.num_classes == 1000 and classifier.pretrained_cfg["tag"] == "mfm_pt300_ft100_in1k"
    assert "S-Lab" in classifier.pretrained_cfg["license"]
    encoder = timm.create_model("mfm_vit_base_patch16_224", pretrained=False, num_classes=10)  # the default tag: MFM pre-training
    assert encoder.pretrained_cfg["tag"] == "mfm_pt300_in1k" and encoder.num_classes == 10
    assert timm.data.resolve_data_config(model=encoder)["crop_pct"] == 0.875
    with pytest.raises(ValueError, match="takes pretrained and num_classes only, not \\['drop_path_rate'\\]"):
        timm.create_model("mfm_vit_base_patch16_224", drop_path_rate=0.1)


@pytest.mark.slow
def test_timm_create_model_pretrained_loads_the_zoo_entry(official_r50, cache):
    import timm

    data, reference = official_r50
    server = FileServer({zoo.get(ENTRY).file_id: data})
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv(zoo.ZOO_URL_ENV, server.url_template)
            model = timm.create_model("mfm_resnet50.mfm_pt300_in1k", pretrained=True).eval()
    finally:
        server.stop()
    ours = zoo.load(ENTRY, model_class=MFMResNetModel).eval()  # now from the cache
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert_close(model.forward_features(x), ours(x).last_hidden_state, FLOAT32_NETWORK, "timm features")


def test_unknown_name_lists_the_zoo():
    with pytest.raises(KeyError, match="mfm-vit-b16-pt300-ft100"):
        zoo.get("mfm-vit-huge")


def test_registry_has_every_released_file():
    entries = zoo.OFFICIAL_CHECKPOINTS.values()
    assert len(zoo.OFFICIAL_CHECKPOINTS) == 17 and len({e.file_id for e in entries}) == 17
    assert sum(e.stage == "pre-trained" for e in entries) == 8
    assert zoo.get("mfm-resnet50-pt300").reported_top1 == ((100, 78.5), (300, 80.1))
    assert zoo.get("mfm-vit-b16-pt300-ft100").reported_top1 == ((100, 83.1),)
    table = zoo.table()
    assert all(f"`{name}`" in table for name in zoo.OFFICIAL_CHECKPOINTS)


@pytest.mark.slow
def test_publish_pushes_each_entry_and_reruns_cleanly(official_r50, tmp_path):
    from hub_server import LocalHub
    from test_hub import run_against_hub

    data, _ = official_r50
    server, hub = FileServer({zoo.get(ENTRY).file_id: data}), LocalHub().start()
    code = f"""
        import os
        from mfm_hub import zoo
        os.environ[zoo.ZOO_URL_ENV] = {server.url_template!r}
        print(zoo.publish("mfm-official", [{ENTRY!r}]))
        print(zoo.publish("mfm-official", [{ENTRY!r}]))  # again: same repository, nothing downloaded twice
        import mfm_hub
        from transformers import AutoImageProcessor, AutoModel
        model = AutoModel.from_pretrained("mfm-official/{ENTRY}")
        processor = AutoImageProcessor.from_pretrained("mfm-official/{ENTRY}")
        print(type(model).__name__, type(processor).__name__)
    """
    try:
        out = run_against_hub(hub, code, tmp_path)
    finally:
        server.stop()
        hub.stop()
    assert out.count(f"['mfm-official/{ENTRY}']") == 2 and "MFMResNetModel" in out
    assert len([r for r in server.requests if r[1] is None]) == 1
    files = hub.repos[f"mfm-official/{ENTRY}"]["files"]
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md"} <= set(files) and ".complete" not in files
    card = files["README.md"].decode()
    assert "license_name: s-lab-license-1.0" in card and "reported by the authors" in card and "xie2023masked" in card
    assert "auto_map" in files["config.json"].decode()


def test_readme_lists_the_whole_zoo_and_the_command_prints_it(capsys):
    from pathlib import Path

    assert zoo.table() in (Path(__file__).resolve().parents[1] / "README.md").read_text()
    zoo.main(["list"])
    assert capsys.readouterr().out.strip() == zoo.table()


def test_a_cache_entry_damaged_after_caching_is_downloaded_again_not_served(official_r50, cache):
    data, _ = official_r50
    server = FileServer({zoo.get(ENTRY).file_id: data})
    try:
        zoo.load(ENTRY, url_template=server.url_template)
        weights = cache / ENTRY / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a disk error, an interrupted copy
        assert zoo.cache_damage(cache / ENTRY).startswith("model.safetensors")
        model = zoo.load(ENTRY, url_template=server.url_template)
        assert isinstance(model, MFMResNetForPreTraining) and zoo.cache_damage(cache / ENTRY) is None
        assert len(server.requests) == 2  # fetched a second time
        with pytest.raises(ValueError, match="MFMViTModel is an mfm_vit model"):  # a whole entry, a wrong call: no re-download
            zoo.load(ENTRY, model_class=MFMViTModel, url_template=server.url_template)
        assert len(server.requests) == 2
    finally:
        server.stop()


def test_offline_mode_is_respected_naming_the_entry_without_a_network_attempt(official_r50, cache, monkeypatch):
    server = FileServer({zoo.get(ENTRY).file_id: official_r50[0]})
    monkeypatch.setattr(zoo.constants, "HF_HUB_OFFLINE", True)
    try:
        with pytest.raises(OSError, match=f"The zoo entry {ENTRY} is not in the cache .* HF_HUB_OFFLINE=1 forbids downloading it"):
            zoo.load(ENTRY, url_template=server.url_template)
        assert server.requests == []
    finally:
        server.stop()


@pytest.mark.parametrize("module", ["mfm_hub.zoo", "mfm_hub.convert_official", "mfm_hub.timm_export", "mfm_hub.demo"])
def test_module_commands_run_without_runpy_warnings(module):
    result = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", module, "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "RuntimeWarning" not in result.stderr, result.stderr[-2000:]
