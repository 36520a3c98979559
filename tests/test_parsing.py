"""BiSeNet face parser: key layout, golden logits, both release layouts, bad files."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from consistentid_core.errors import WeightFileError
from consistentid_core.parsing import (BiSeNet, load_face_parser, official_state_dict, parse_labels, parse_logits,
                                       parser_input)


@pytest.fixture(scope="module")
def photo(images_dir) -> np.ndarray:
    return np.array(Image.open(images_dir / "grace_hopper.jpg").convert("RGB"))


def test_state_dict_layout_is_the_official_one(spec_dir):
    lines = (spec_dir / "bisenet_keys.txt").read_text().splitlines()
    expected = {}
    for line in lines[1:]:
        name, _, shape = line.partition(" [")
        if name != "outputs":
            expected[name] = [int(d) for d in shape.rstrip("]").split(",") if d.strip()]
    ours = {name: list(tensor.shape) for name, tensor in BiSeNet().state_dict().items()}
    assert list(ours) == list(expected)
    assert ours == expected


def test_golden_g3_bisenet_logits(golden_dir):
    model = load_face_parser(str(golden_dir / "g3_bisenet_state_dict.safetensors"))
    outputs = load_file(golden_dir / "g3_bisenet_outputs.safetensors")
    stats = json.loads((golden_dir / "g3_bisenet.json").read_text())["stats"]
    names = sorted(key.removesuffix(".argmax") for key in outputs if key.endswith(".argmax"))
    assert names, "no photos in g3_bisenet_outputs.safetensors"
    # One forward per photo: the logits parse_labels computes are captured as the golden run did.
    captured = {}
    model.conv_out.register_forward_hook(lambda module, args, out: captured.__setitem__("lowres", out.clone()))
    model.register_forward_hook(lambda module, args, out: captured.__setitem__("full", out.clone()))
    for name in names:
        rgb = np.array(Image.open(golden_dir / f"photo_{name}.png").convert("RGB"))
        labels = parse_labels(model, rgb, 512)
        torch.testing.assert_close(captured["lowres"], outputs[f"{name}.logits_lowres"], atol=1e-4, rtol=1e-4,
                                   msg=name)
        torch.testing.assert_close(captured["full"][..., ::4, ::4], outputs[f"{name}.logits_stride4"], atol=1e-4,
                                   rtol=1e-4, msg=name)

        assert labels.dtype == np.uint8 and labels.shape == (512, 512)
        differs = labels != outputs[f"{name}.argmax"].numpy()
        for y, x in stats[name]["ambiguous_pixels_yx_margin_below_1e3"]:
            differs[y, x] = False
        assert not differs.any(), f"{name}: argmax differs at {np.argwhere(differs)[:5].tolist()}"


def test_parse_logits_is_the_upsampled_head(face_parser_files, photo):
    model = load_face_parser(str(face_parser_files["face_parsing_official"]))
    with torch.inference_mode():
        lowres = model.head_logits(parser_input(photo, 64))
    full = torch.nn.functional.interpolate(lowres, (64, 64), mode="bilinear", align_corners=True)
    assert lowres.shape == (1, 19, 8, 8)
    assert torch.equal(parse_logits(model, photo, 64), full)


def test_both_release_layouts_load_and_agree(face_parser_files, photo):
    official = load_face_parser(str(face_parser_files["face_parsing_official"]))
    facexlib = load_face_parser(str(face_parser_files["face_parsing_facexlib"]))
    assert face_parser_files["face_parsing_official"].name == "face_parsing.pth"
    assert face_parser_files["face_parsing_facexlib"].name == "parsing_bisenet.pth"
    assert not official.training and next(official.parameters()).dtype == torch.float32
    a, b = parse_logits(official, photo, 128), parse_logits(facexlib, photo, 128)
    assert a.shape == (1, 19, 128, 128)
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)
    labels = parse_labels(official, photo, 128)
    assert len(np.unique(labels)) >= 3, "random weights should not give a constant parse"


def test_wrapped_prefixed_and_old_files_convert(face_parser_files, tmp_path, photo):
    state = torch.load(face_parser_files["face_parsing_official"], weights_only=True)
    variants = {
        "dataparallel.pth": {f"module.{k}": v for k, v in state.items()},
        "wrapped.pth": {"params": state},
        "old_torch.pth": {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")},
    }
    expected = parse_logits(load_face_parser(str(face_parser_files["face_parsing_official"])), photo, 64)
    for name, content in variants.items():
        torch.save(content, tmp_path / name)
        assert torch.equal(parse_logits(load_face_parser(str(tmp_path / name)), photo, 64), expected), name


def test_safetensors_file_loads(face_parser_files, tmp_path, photo):
    state = torch.load(face_parser_files["face_parsing_official"], weights_only=True)
    save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, tmp_path / "p.safetensors")
    model = load_face_parser(str(tmp_path / "p.safetensors"))
    assert next(model.parameters()).dtype == torch.float32
    assert parse_labels(model, photo, 64).shape == (64, 64)


def assert_names_both_layouts(err: WeightFileError, path) -> None:
    text = str(err)
    assert str(path) in text
    assert "face_parsing.pth" in text and "parsing_bisenet.pth" in text
    assert "Fix:" in text


def test_corrupt_file_is_refused(tmp_path):
    path = tmp_path / "face_parsing.pth"
    path.write_bytes(b"PK\x03\x04 a truncated torch.save archive")
    with pytest.raises(WeightFileError, match="is not a readable checkpoint") as err:
        load_face_parser(str(path))
    assert_names_both_layouts(err.value, path)


def test_truncated_safetensors_is_refused(tmp_path):
    path = tmp_path / "face_parsing.safetensors"
    save_file({"cp.resnet.conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(WeightFileError, match="is not a readable checkpoint") as err:
        load_face_parser(str(path))
    assert_names_both_layouts(err.value, path)


def test_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "face_parsing.pth"
    torch.save({"model": Image.new("L", (2, 2))}, path)
    with pytest.raises(WeightFileError, match="would run code"):
        load_face_parser(str(path))


def test_consistentid_checkpoint_is_refused(tmp_path):
    path = tmp_path / "ConsistentID-v1.bin"
    torch.save({"image_proj": {"proj.0.weight": torch.zeros(4, 4)},
                "adapter_modules": {"1.to_k_ip.weight": torch.zeros(4, 4)}}, path)
    with pytest.raises(WeightFileError, match="is not a 19-class BiSeNet face parser") as err:
        load_face_parser(str(path))
    text = str(err.value)
    assert "missing keys (160): cp.resnet.conv1.weight" in text
    assert "unexpected keys (2): image_proj, adapter_modules" in text
    assert_names_both_layouts(err.value, path)


def test_wrong_class_count_is_refused():
    state = BiSeNet(n_classes=11).state_dict()
    with pytest.raises(WeightFileError, match=r"wrong shapes \(3\): conv_out.conv_out.weight \(11, 256, 1, 1\) "
                                              r"\(expected \(19, 256, 1, 1\)\)"):
        official_state_dict(state)


def test_safetensors_named_pth_is_read_by_its_contents(face_parser_files, tmp_path):
    official = load_face_parser(str(face_parser_files["face_parsing_official"]))
    path = tmp_path / "face_parsing.pth"
    save_file(official.state_dict(), path)
    renamed = load_face_parser(str(path))
    for key, value in official.state_dict().items():
        torch.testing.assert_close(renamed.state_dict()[key], value)


def test_missing_file_is_refused(tmp_path):
    path = tmp_path / "face_parsing.pth"
    with pytest.raises(WeightFileError, match="does not exist") as err:
        load_face_parser(str(path))
    assert_names_both_layouts(err.value, path)


def test_labels_follow_the_parse_size_not_the_photo(face_parser_files, photo):
    model = load_face_parser(str(face_parser_files["face_parsing_official"]))
    assert photo.shape[:2] == (600, 512)
    labels = parse_labels(model, photo, 96)
    assert labels.shape == (96, 96) and labels.dtype == np.uint8 and labels.max() < 19
