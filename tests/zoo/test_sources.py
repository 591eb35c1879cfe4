"""Model sources (timm / torchvision / factories, weights files) and image-folder data."""

from __future__ import annotations

import sys
import types
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from fxharden.zoo.data import CorruptDataError
from fxharden.zoo.folders import resolve_data, stratified
from fxharden.zoo.inputs import load_with_data
from fxharden.zoo.models import load_model, resolve_networks
from fxharden.zoo.options import DataOptions, ModelOptions
from fxharden.zoo.preprocess import Preprocess
from fxharden.zoo.sources import ModelSourceError, SourceKind, parse_source
from fxharden.zoo.weights import PretrainedUnavailableError, WeightsError


@pytest.fixture
def factory_module(monkeypatch):
    mod = types.ModuleType("userpkg_nets")

    def small(num_classes=10, width=4):
        return nn.Sequential(nn.Conv2d(3, width, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(width, num_classes))

    mod.small = small
    mod.broken = lambda: (_ for _ in ()).throw(RuntimeError("no GPU here"))
    mod.not_a_model = lambda: "hello"
    monkeypatch.setitem(sys.modules, "userpkg_nets", mod)
    return mod


def test_parse_sources_and_close_matches():
    assert parse_source("timm:test_resnet.r160_in1k").tag == "r160_in1k"
    assert parse_source("torchvision:resnet18").kind is SourceKind.TORCHVISION
    assert parse_source("LeNet-5").kind is SourceKind.RECIPE and parse_source("a.b:c").kind is SourceKind.FACTORY
    with pytest.raises(ModelSourceError, match="'resnet18'"):
        parse_source("timm:resnet1800")
    with pytest.raises(ModelSourceError, match="no pretrained tag 'nope'.*r160_in1k"):
        parse_source("timm:test_resnet.nope")


def test_factory_with_args_and_its_errors(factory_module):
    lm = load_model("userpkg_nets:small", num_classes=3, model_args={"width": 6})
    assert lm.model[0].out_channels == 6 and lm.num_classes == 3 and lm.arch_kwargs == {"num_classes": 3, "width": 6}
    with pytest.raises(ModelSourceError, match="factory raised RuntimeError: no GPU here"):
        load_model("userpkg_nets:broken")
    with pytest.raises(ModelSourceError, match="returned a str, not an nn.Module"):
        load_model("userpkg_nets:not_a_model")
    with pytest.raises(ModelSourceError, match=r"cannot import module 'nowhere_pkg.nets'.*does not look in the "
                                               r"current folder.*holds nowhere_pkg/.*PYTHONPATH=\. fxharden"):
        load_model("nowhere_pkg.nets:small")


def test_factory_import_errors_say_what_works(tmp_path, monkeypatch):
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "nets.py").write_text("import not_installed_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModelSourceError, match=r"mypkg.nets itself was found, but it imports 'not_installed_xyz'"):
        load_model("mypkg.nets:small")
    with pytest.raises(ModelSourceError, match=r"Package 'mypkg' was found but has no module 'mypkg.nope'"):
        load_model("mypkg.nope:small")


def test_weights_file_round_trip_head_mismatch_and_other_architecture(tmp_path):
    src = load_model("timm:test_resnet", num_classes=3).model
    path = tmp_path / "w.pth"
    torch.save({"state_dict": src.state_dict()}, path)
    with pytest.raises(WeightsError, match=r"head has 3 classes.*--num-classes 3"):
        load_model("timm:test_resnet", weights=str(path))
    same = load_model("timm:test_resnet", weights=str(path), num_classes=3).model.eval()
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(same(x), src.eval()(x))  # the reference: the model the file was saved from
    with pytest.warns(UserWarning, match="freshly initialised for 5 classes"):
        new_head = load_model("timm:test_resnet", weights=str(path), num_classes=5).model
    assert new_head.get_classifier().out_features == 5
    torch.testing.assert_close(new_head.conv1[0].weight, src.conv1[0].weight)
    with pytest.raises(WeightsError, match="another architecture.*File keys: conv1"):
        load_model("timm:test_vit", weights=str(path))


def test_weights_of_a_larger_variant_are_an_error_batch_norm_counters_are_not(tmp_path):
    import torchvision

    path = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34(num_classes=10).state_dict(), path)  # resnet18's + 96 keys
    with pytest.raises(WeightsError, match=r"80 keys that ResNet does not have: layer1\.2\..*larger variant.*"
                                           r"Pick the model the file was saved from"):
        load_model("torchvision:resnet18", weights=str(path), num_classes=10)
    src = load_model("torchvision:resnet18", num_classes=10).model.eval()
    state = src.state_dict()
    extra = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    extra["fc.num_batches_tracked"] = torch.tensor(0)  # carries no weights: ignored
    torch.save(extra, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lm = load_model("torchvision:resnet18", weights=str(path), num_classes=10)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(lm.model.eval()(x), src(x))


def test_torchvision_weights_path_and_offline_default(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    src = load_model("torchvision:mobilenet_v3_small", num_classes=4).model.eval()
    torch.save(src.state_dict(), tmp_path / "tv.pth")
    lm = load_model("torchvision:mobilenet_v3_small", weights=str(tmp_path / "tv.pth"), num_classes=4)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(lm.model.eval()(x), src(x))
    assert lm.preprocess.input_size == (3, 224, 224) and lm.preprocess.crop_pct == pytest.approx(224 / 256)
    with pytest.raises(WeightsError, match="weights are DEFAULT, IMAGENET1K_V1"):
        load_model("torchvision:mobilenet_v3_small", weights="IMAGENET9")


def test_pretrained_offline_names_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(PretrainedUnavailableError, match=r"HF_HOME=.*hf.*TORCH_HOME=.*HF_HUB_OFFLINE=1"):
        load_model("timm:test_resnet.r160_in1k", pretrained=True)


def test_resolve_networks_accepts_source_strings():
    (label, hm), = resolve_networks("timm:test_resnet")
    assert label == "timm:test_resnet" and hm.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 1000)  # timm's own head


def _folder(root, per_class=(4, 2, 2), size=(20, 30)):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, n in zip("abc", per_class):
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_image_folder_decodes_like_the_reference_transform(tmp_path):
    """uint8 images equal PIL -> resize -> centre crop done by hand; normalisation by mean/std."""
    from PIL import Image
    from torchvision.transforms import functional as F

    root = _folder(tmp_path / "f")
    pre = Preprocess((3, 16, 16), (0.5, 0.4, 0.3), (0.2, 0.2, 0.2), 0.8, "bilinear")
    data = resolve_data(root, preprocess=pre, workers=0)
    assert data.classes == ("a", "b", "c") and data.labels.tolist() == [0, 0, 0, 0, 1, 1, 2, 2]
    img = Image.open(root / "a" / "1.png").convert("RGB")
    ref = F.center_crop(F.resize(F.pil_to_tensor(img), 20, F.InterpolationMode.BILINEAR, antialias=True), 16)
    assert torch.equal(data.images[1], ref)
    x, _ = next(data.batches(8))
    torch.testing.assert_close(x[1], (ref.float() / 255 - torch.tensor([.5, .4, .3]).view(3, 1, 1)) / 0.2)


def test_folder_bad_input(tmp_path):
    from PIL import Image

    root = _folder(tmp_path / "f")
    Image.fromarray(np.full((20, 30), 65535, dtype=np.uint16)).save(root / "b" / "deep.png")
    Image.fromarray(np.zeros((20, 30, 4), dtype=np.uint8)).save(root / "c" / "rgba.png")
    (root / "c" / "zz_bad.jpg").write_bytes(b"not an image")
    pre = Preprocess((3, 8, 8), crop_pct=1.0)
    with pytest.raises(CorruptDataError, match="zz_bad.jpg.*--on-corrupt skip"):
        resolve_data(root, preprocess=pre, workers=0)
    with pytest.warns(UserWarning, match="skipping .*zz_bad.jpg"):
        data = resolve_data(root, preprocess=pre, on_corrupt="skip", workers=0)
    assert len(data) == 10 and int(data.images[6].min()) == 255  # 16-bit white stays white
    assert int(data.images[9].max()) == 255  # transparent RGBA over a white background
    with pytest.warns(UserWarning, match="max_images=99 is more than the 11 images"):
        resolve_data(root, preprocess=pre, on_corrupt="skip", max_images=99, workers=0)
    (tmp_path / "one" / "x").mkdir(parents=True)
    with pytest.raises(ValueError, match="only one class folder"):
        resolve_data(tmp_path / "one", preprocess=pre)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class subfolders"):
        resolve_data(tmp_path / "empty", preprocess=pre)


def test_stratified_keeps_class_shares_and_is_deterministic():
    labels = [0] * 50 + [1] * 30 + [2] * 20
    pick = stratified(labels, 10)
    assert sorted(np.bincount(np.asarray(labels)[pick]).tolist()) == [2, 3, 5] and pick == stratified(labels, 10)
    assert len(set(pick)) == 10


def test_random_model_gets_the_data_head_loaded_weights_must_match(tmp_path):
    root = _folder(tmp_path / "f")
    opts = DataOptions(path=root, input_size=32, workers=0)
    lm, data = load_with_data("timm:test_resnet", ModelOptions(), opts)
    assert lm.num_classes == data.num_classes == 3 and data.shape == (3, 32, 32)
    torch.save(load_model("timm:test_resnet", num_classes=5).model.state_dict(), tmp_path / "w5.pth")
    with pytest.raises(ValueError, match="outputs 5 classes but the data have 3.*--num-classes 3"):
        load_with_data("timm:test_resnet", ModelOptions(weights=str(tmp_path / "w5.pth"), num_classes=5), opts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lm, _ = load_with_data("timm:test_resnet", ModelOptions(weights=str(tmp_path / "w5.pth"), num_classes=3), opts)
    assert lm.num_classes == 3
