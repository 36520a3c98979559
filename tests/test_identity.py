"""The identity value without a host, on small synthetic tensors: region parts averaged over the photos that
show them (``combine_regions``), face-ID tokens averaged or concatenated (``combine_tokens``, and through
``encode_identity`` with a unit-size projection), ``blend`` (exact at weights 1 and 0, linear between, one-sided
parts, refusals), and identity files (bit-exact round trip with dtypes and metadata, and the refusals: another
format version, a safetensors file that is no identity, a damaged one, and pickles under the identity extension,
which are never unpickled: the file their payload would create stays absent)."""
import json
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from consistentid_core.errors import ConsistentIDError, ModelMismatchError, WeightFileError
from consistentid_core.face_id import FaceIDResult
from consistentid_core.identity import (FACE_COLUMNS, AdapterRef, Identity, check_adapter, blend, combine_regions, combine_tokens,
                                        encode_identity)
from consistentid_core.identity_file import FORMAT, FORMAT_VERSION, load_identity, save_identity
from consistentid_core.projection import ProjPlus
from consistentid_core.regions import RegionFeatures
from identity_checks import FIX, assert_same_identity, pickles
from weightgen.consistentid import UNIT_PROJECTION

SHAPE = (3, 5)  # a region's features: stands in for CLIP-H's [257, 1280]
ADAPTER = AdapterRef("sd15", "ConsistentID-v1.bin", "ab" * 32)
ADAPTER_METADATA = {"base_model": "sd15", "adapter": "ConsistentID-v1.bin", "adapter_sha256": "ab" * 32}
SOURCE = {"images_sha256": "photo-a"}


def _features(seed: int, n: int) -> torch.Tensor:
    return torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(seed))


def _regions(names: list[str], seed: int) -> RegionFeatures:
    return RegionFeatures(names, _features(seed, len(names)), _features(seed + 100, 1)[0])


def _identity(seed: int, names=("Face", "Left_Eye", "Nose", "Upper_Lip"), rows: int = 1, adapter=ADAPTER,
              **source) -> Identity:
    g = torch.Generator().manual_seed(seed)
    faces = torch.tensor([[10.0, 20.0, 110.0, 140.0, 0.9, 0.0]] * rows)
    return Identity(torch.randn(rows, 4, 8, generator=g), torch.randn(1, 4, 8, generator=g),
                    _regions(list(names), seed), torch.randn(rows, 512, generator=g), faces, adapter,
                    {**SOURCE, **source})


# ------------------------------------------------------------------------------------------ combining photos

def test_each_part_is_averaged_over_the_photos_that_show_it_in_slot_order():
    photos = [_regions(["Face", "Left_Eye", "Nose"], 1), _regions(["Face", "Right_Eye", "Upper_Lip"], 2),
              _regions(["Face", "Nose", "Lower_Lip"], 3)]
    combined = combine_regions(photos)

    # Ears appear in no photo; eyes keep the first photo's name (left), the mouth the first that has one.
    assert combined.names == ["Face", "Left_Eye", "Nose", "Upper_Lip"]
    f = [p.features for p in photos]
    expected = [(f[0][0] + f[1][0] + f[2][0]) / 3, (f[0][1] + f[1][1]) / 2, (f[0][2] + f[2][1]) / 2,
                (f[1][2] + f[2][2]) / 2]
    for got, want in zip(combined.features, expected):
        torch.testing.assert_close(got, want)
    assert torch.equal(combined.zero_features, photos[0].zero_features)


def test_one_photo_is_its_own_regions_exactly_and_no_region_gives_none():
    photo = _regions(["Face", "Left_Ear", "Upper_Lip"], 4)
    combined = combine_regions([photo])
    assert combined.names == photo.names and torch.equal(combined.features, photo.features)

    empty = combine_regions([_regions([], 5), _regions([], 6)])
    assert empty.names == [] and empty.features.shape == (0, *SHAPE)


def test_tokens_are_averaged_or_kept_per_photo():
    tokens = _features(7, 3)
    assert torch.equal(combine_tokens(tokens, "average"), tokens.mean(0, keepdim=True))
    assert torch.equal(combine_tokens(tokens, "concatenate"), tokens)
    assert torch.equal(combine_tokens(tokens[:1], "average"), tokens[:1])  # one photo: its own tokens exactly
    with pytest.raises(ValueError, match="combine must be one of \\('average', 'concatenate'\\), got 'median'"):
        combine_tokens(tokens, "median")


def _face(seed: int, left: float) -> FaceIDResult:
    embedding = np.random.default_rng(seed).standard_normal(512).astype(np.float32)
    return FaceIDResult(embedding / np.linalg.norm(embedding), 1, np.array([left, 5, left + 50, 70], np.float32),
                        0.5, 0)


def test_encode_identity_averages_the_rows_of_the_concatenated_photos():
    torch.manual_seed(0)
    projection = ProjPlus(768, **UNIT_PROJECTION).eval()
    faces = [_face(1, 10.0), _face(2, 30.0), _face(3, 60.0)]
    hidden, zero = torch.randn(3, 257, 1280), torch.randn(257, 1280)
    regions = [_regions(["Face", "Nose"], 8), _regions(["Face"], 9), _regions(["Face", "Nose"], 10)]
    args = (projection, faces, hidden, zero, regions)

    rows = encode_identity(*args, "concatenate", False, ADAPTER, SOURCE)
    average = encode_identity(*args, "average", False, ADAPTER, SOURCE)
    single = encode_identity(projection, faces[:1], hidden[:1], zero, regions[:1], "average", False, ADAPTER, SOURCE)

    assert rows.cond_tokens.shape == (3, 4, 768) and average.cond_tokens.shape == (1, 4, 768)
    assert torch.equal(average.cond_tokens, rows.cond_tokens.mean(0, keepdim=True))
    torch.testing.assert_close(single.cond_tokens, rows.cond_tokens[:1], rtol=1e-5, atol=1e-6)
    assert torch.equal(average.uncond_tokens, single.uncond_tokens)
    assert torch.equal(average.arcface, torch.from_numpy(np.stack([f.embedding for f in faces])))
    assert average.faces.shape == (3, FACE_COLUMNS)
    assert average.faces[:, [0, 4, 5]].tolist() == [[10.0, 0.5, 0.0], [30.0, 0.5, 0.0], [60.0, 0.5, 0.0]]
    torch.testing.assert_close(average.regions.features[1], (regions[0].features[1] + regions[2].features[1]) / 2)
    assert torch.equal(single.regions.features, regions[0].features)

    # No face in any photo (on_no_face 'skip'): no tokens, but the uncond tokens and the regions stay.
    empty = encode_identity(projection, [], hidden[:0], zero, regions, "average", False, ADAPTER, SOURCE)
    assert empty.cond_tokens is None and empty.arcface.shape == (0, 512) and empty.faces.shape == (0, FACE_COLUMNS)
    assert torch.equal(empty.uncond_tokens, average.uncond_tokens)


# ------------------------------------------------------------------------------------------------- blending

def test_blend_at_weight_one_and_zero_is_each_identity_exactly():
    a, b = _identity(1, images_sha256="photo-a"), _identity(2, images_sha256="photo-b")
    kept = ("clip_vision_sha256", "insightface", "insightface_recognition",
            "insightface_recognition_sha256")
    for weight, side, other in ((1.0, a, "1·A + 0·B"), (0.0, b, "0·A + 1·B")):
        mixed = blend(a, b, weight)
        assert_same_identity(mixed, side, {**{k: v for k, v in a.source.items() if k in kept}, "blend": other,
                                           "images_sha256": side.source["images_sha256"]})


@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_an_identity_blended_with_itself_is_itself(weight):
    # One Face Encode connected to both inputs: the two sides are told apart by position, not by object.
    a = _identity(1)
    mixed = blend(a, a, weight)
    assert torch.equal(mixed.cond_tokens, a.cond_tokens) and mixed.regions.names == a.regions.names
    assert torch.equal(mixed.regions.features, a.regions.features)
    assert mixed.arcface.shape[0] == (2 if 0 < weight < 1 else 1)


def test_blend_between_is_the_weighted_sum_of_tokens_and_of_each_part():
    a, b = _identity(1), _identity(2)
    mixed = blend(a, b, 0.7)
    for got, x, y in ((mixed.cond_tokens, a.cond_tokens, b.cond_tokens),
                      (mixed.uncond_tokens, a.uncond_tokens, b.uncond_tokens),
                      (mixed.regions.features, a.regions.features, b.regions.features),
                      (mixed.regions.zero_features, a.regions.zero_features, b.regions.zero_features)):
        torch.testing.assert_close(got, 0.7 * x + 0.3 * y)
    assert mixed.regions.names == a.regions.names
    assert torch.equal(mixed.arcface, torch.cat([a.arcface, b.arcface]))
    assert mixed.source["blend"] == "0.7·A + 0.3·B"


def test_a_part_only_one_identity_has_keeps_its_features_while_that_identity_takes_part():
    a = _identity(1, names=("Face", "Left_Eye"))
    b = _identity(2, names=("Face", "Right_Ear", "Lower_Lip"))
    mixed = blend(a, b, 0.7)
    assert mixed.regions.names == ["Face", "Left_Eye", "Right_Ear", "Lower_Lip"]
    torch.testing.assert_close(mixed.regions.features[0], 0.7 * a.regions.features[0] + 0.3 * b.regions.features[0])
    assert torch.equal(mixed.regions.features[1], a.regions.features[1])
    assert torch.equal(mixed.regions.features[2:], b.regions.features[1:])
    assert blend(a, b, 1.0).regions.names == ["Face", "Left_Eye"]
    assert blend(a, b, 0.0).regions.names == ["Face", "Right_Ear", "Lower_Lip"]


def test_blends_that_cannot_be_mixed_are_refused():
    a = _identity(1)
    with pytest.raises(ModelMismatchError) as err:
        blend(a, _identity(2, adapter=AdapterRef("sd15", "ConsistentID-v1-other.bin", "cd" * 32)), 0.5)
    assert str(err.value) == (
        "[ConsistentID] The two identities were encoded with different ConsistentID adapters "
        "('ConsistentID-v1.bin' and 'ConsistentID-v1-other.bin'), so their face-ID tokens cannot be mixed. "
        "Fix: Encode both with the same ConsistentID model.")
    with pytest.raises(ModelMismatchError, match="different ConsistentID adapters"):
        blend(a, _identity(2, adapter=AdapterRef("sdxl", "ConsistentID-v1.bin", "ab" * 32)), 0.5)

    no_face = Identity(None, a.uncond_tokens, a.regions, a.arcface[:0], a.faces[:0], ADAPTER, dict(SOURCE))
    with pytest.raises(ConsistentIDError, match=r"One of the identities has no face-ID tokens .* Fix: Encode it "):
        blend(a, no_face, 0.5)
    with pytest.raises(ConsistentIDError, match=r"The identities have 1 and 3 rows of face-ID tokens .* Fix: "
                                                r"Encode both with combine set to 'average'"):
        blend(a, _identity(2, rows=3), 0.5)


# ---------------------------------------------------------------------------------------------- identity files

def test_an_identity_file_round_trips_bit_for_bit(tmp_path):
    identity = _identity(3, names=("Face", "Right_Eye", "Lower_Lip"), rows=2)
    identity = Identity(identity.cond_tokens.half(), identity.uncond_tokens.half(), identity.regions,
                        identity.arcface, identity.faces, identity.adapter, identity.source)
    save_identity(identity, tmp_path / "anna.safetensors")
    loaded = load_identity(str(tmp_path / "anna.safetensors"))
    assert_same_identity(loaded, identity, {**SOURCE, "format": FORMAT, "format_version": FORMAT_VERSION})

    # No face (on_no_face 'skip'), no region, and a face row of NaN (on_no_face 'zero') survive too.
    empty = Identity(None, identity.uncond_tokens, _regions([], 4), identity.arcface[:1],
                     torch.full((1, FACE_COLUMNS), float("nan")), ADAPTER, dict(SOURCE))
    save_identity(empty, tmp_path / "empty.safetensors")
    assert_same_identity(load_identity(str(tmp_path / "empty.safetensors")), empty,
                         {**SOURCE, "format": FORMAT, "format_version": FORMAT_VERSION})


def test_an_identity_of_another_format_version_is_refused(tmp_path):
    path = tmp_path / "future.safetensors"
    save_file({"uncond_tokens": torch.zeros(1, 4, 8)}, path,
              {**SOURCE, **ADAPTER_METADATA, "format": FORMAT, "format_version": "2", "regions": "[]"})
    with pytest.raises(WeightFileError) as err:
        load_identity(str(path))
    assert str(err.value) == (
        "[ConsistentID] 'future.safetensors' is an identity of format version '2'; this version of the pack reads "
        "version 1. Fix: Update ComfyUI-ConsistentID, or encode the photos again with this version.")




def test_files_that_are_not_identities_are_refused(tmp_path):
    save_file({"weight": torch.ones(2)}, tmp_path / "lora.safetensors", {"format": "pt"})
    with pytest.raises(WeightFileError) as err:
        load_identity(str(tmp_path / "lora.safetensors"))
    assert str(err.value) == ("[ConsistentID] 'lora.safetensors' is a safetensors file but not a ConsistentID "
                              f"identity (its metadata has no format 'consistentid-identity'). {FIX}")

    # A file cut short.
    good = tmp_path / "good.safetensors"
    save_identity(_identity(5), good)
    (tmp_path / "cut.safetensors").write_bytes(good.read_bytes()[:200])
    with pytest.raises(WeightFileError) as err:
        load_identity(str(tmp_path / "cut.safetensors"))
    assert str(err.value).startswith("[ConsistentID] 'cut.safetensors' is not a readable identity file (")
    assert str(err.value).endswith(FIX)


def _tensors(identity: Identity) -> dict[str, torch.Tensor]:
    tensors = {"cond_tokens": identity.cond_tokens, "uncond_tokens": identity.uncond_tokens,
               "arcface": identity.arcface, "faces": identity.faces, "zero_features": identity.regions.zero_features}
    tensors.update({f"region.{n}": f for n, f in zip(identity.regions.names, identity.regions.features)})
    return tensors


def _nan_at(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[0] = float("nan")
    return t


# How a saved identity can be changed, and what Load Identity says: (tensors, regions metadata) -> message part.
BAD_FILES = {
    "a tensor missing": (lambda t: {k: v for k, v in t.items() if k != "uncond_tokens"}, None,
                         "it lacks uncond_tokens"),
    "regions [] with region tensors": (lambda t: t, "[]", "it holds tensors its regions do not name (region.Face"),
    "an unknown region": (lambda t: {**t, "region.tail": t["region.Face"].clone()}, '["Face", "tail"]',
                          "it names regions ConsistentID does not have ('tail'; known: Face, Left_Eye"),
    "a region twice": (lambda t: t, '["Face", "Face"]', "it names a region twice (Face, Face)"),
    "regions not a list": (lambda t: t, '"Face"', "its metadata 'regions' is not a list of region names"),
    "int64 cond_tokens": (lambda t: {**t, "cond_tokens": t["cond_tokens"].long()}, None,
                          "cond_tokens is int64, not floating point"),
    "NaN cond_tokens": (lambda t: {**t, "cond_tokens": _nan_at(t["cond_tokens"])}, None,
                        "cond_tokens holds NaN or infinite values"),
    "inf in a region": (lambda t: {**t, "region.Face": t["region.Face"] * float("inf")}, None,
                        "region.Face holds NaN or infinite values"),
    "NaN zero_features": (lambda t: {**t, "zero_features": _nan_at(t["zero_features"])}, None,
                          "zero_features holds NaN or infinite values"),
    "3 face-ID tokens": (lambda t: {**t, "cond_tokens": t["cond_tokens"][:, :3]}, None,
                         "cond_tokens has the shape [1, 3, 8], not [rows, 4, 8]"),
    "uncond of another width": (lambda t: {**t, "uncond_tokens": torch.zeros(1, 4, 16)}, None,
                                "cond_tokens and uncond_tokens differ in width (8 and 16)"),
    "4096 rows of tokens": (lambda t: {**t, "cond_tokens": t["cond_tokens"].expand(4096, 4, 8).contiguous()}, None,
                            "cond_tokens has 4096 rows; an identity has 1 (photos averaged) to 64"),
    "a region of another size": (lambda t: {**t, "region.Nose": torch.zeros(3, 6)}, None,
                                 "region.Nose has the shape [3, 6], not [3, 5]"),
    "arcface 511 wide": (lambda t: {**t, "arcface": torch.zeros(1, 511)}, None,
                         "arcface has the shape [1, 511], not [rows, 512]"),
    "faces and arcface rows differ": (lambda t: {**t, "faces": torch.cat([t["faces"], t["faces"]])}, None,
                                      "arcface has 1 rows and faces 2"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_a_changed_identity_file_is_refused_whole_with_its_name(tmp_path, case):
    change, regions, expected = BAD_FILES[case]
    identity = _identity(6)
    metadata = {**SOURCE, **ADAPTER_METADATA, "format": FORMAT, "format_version": FORMAT_VERSION,
                "regions": regions or json.dumps(identity.regions.names)}
    save_file({k: v.contiguous().clone() for k, v in change(_tensors(identity)).items()}, tmp_path / "anna.safetensors",
              metadata)
    with pytest.raises(WeightFileError) as err:
        load_identity(str(tmp_path / "anna.safetensors"))
    assert str(err.value).startswith(f"[ConsistentID] 'anna.safetensors' is not a valid identity file: {expected}")
    assert str(err.value).endswith(FIX)


def test_an_identity_of_another_width_than_its_adapter_is_refused():
    with pytest.raises(ModelMismatchError) as err:
        check_adapter(_identity(7), "sd15", ADAPTER.sha256, ADAPTER.name)
    assert str(err.value) == (
        "[ConsistentID] The identity's face-ID tokens are 8 wide, but an SD1.5 adapter's are 768: the identity file "
        "was changed after it was saved. Fix: Encode the photos again with this ConsistentID model.")


def test_a_pickle_named_like_an_identity_is_refused_without_running(tmp_path):
    for payload in pickles(tmp_path / "probe").values():  # each payload is live when unpickled
        pickle.loads(payload)
        assert (tmp_path / "probe").is_file()
        (tmp_path / "probe").unlink()

    marker = tmp_path / "marker"
    for name, payload in pickles(marker).items():
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(WeightFileError) as err:
            load_identity(str(tmp_path / name))
        text = str(err.value)
        if name == "evil_brace.safetensors":  # passed to the safetensors reader, which refuses its header
            assert text.startswith(f"[ConsistentID] '{name}' is not a readable identity file (")
        else:
            assert text == (f"[ConsistentID] '{name}' is not an identity file: it is not a safetensors file (a "
                            f"pickle or other file is never opened, as it could run code). {FIX}")
        assert not marker.exists()
