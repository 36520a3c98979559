"""The identity value through the real nodes in an in-process ComfyUI (see conftest.py).

Real photos (tests/data, all 512×512: Grace Hopper cropped) go through the generated models: Face Parser Loader →
Face Parse → Region Embed (the generated full-size CLIP-ViT-H) → Face Encode (the unit ConsistentID checkpoint,
the generated buffalo_l pack). Covered:

- Save Identity → Load Identity gives the live identity bit for bit (tokens, uncond tokens, region features and
  names, ArcFace embeddings, faces, source), and Apply + Facial Encoder (the CLIP-L of the generated SD1.5
  checkpoint) + Merge Step Scheduler + two sampling steps give the same latent from both, a latent that another
  identity changes;
- three photos, one whose parse lacks the eyes and ears: each region part is the mean over the photos that show
  it, the tokens the mean of the photos' rows (three rows with combine 'concatenate'), one photo its own values;
- an identity refused by Load Identity and Apply with another adapter (another SD1.5 seed, SDXL), both named;
- pickles and a safetensors file that is no identity, under the identity extension in the identities folder:
  refused by Load Identity, the pickles' payload never run;
- Blend Identities at weight 1 and 0 is A and B exactly, 0.7 the weighted sum, other adapters refused;
- on_no_face 'skip' on a photo without a face gives no tokens, and Apply then warns and merges only the LoRA;
  a face_index past the faces found is refused.

CLIP-ViT-H dominates the run time (several seconds a photo or region on a small CPU), so each photo is parsed
and embedded once per module and the identities are shared between the tests.
"""
import io
import json
import logging
import shutil
import types

import numpy as np
import pytest
import torch
from PIL import Image

from identity_checks import FIX, Payload, assert_same_identity, pickles
from model_files import models  # noqa: F401  (fixture)

UNIT, OTHER, SDXL = "ConsistentID-v1-unit.bin", "ConsistentID-v1-unit-seed5.bin", "ConsistentID_SDXL-v1-unit.bin"
PHOTOS = ("astronaut.png", "grace_hopper.jpg", "camera.png")
A, G, C = PHOTOS
DROPPED = ("Left_Eye", "Left_Ear")  # left out of the camera photo's parse
PROMPT, NEGATIVE = "A man, in a forest, adventuring", "blurry, lowres"
IDENTITIES = "consistentid_identities"




@pytest.fixture(scope="module")
def nodes(pack):
    classes = {name: getattr(pack.load(f"nodes.{module}"), f"ConsistentID{name}") for module, names in (
        ("loader_nodes", ["Loader"]), ("insightface_nodes", ["InsightFaceLoader"]),
        ("face_nodes", ["FaceParserLoader", "FaceParse", "RegionEmbed"]),
        ("identity_nodes", ["FaceEncode", "SaveIdentity", "LoadIdentity", "BlendIdentities"]),
        ("apply_nodes", ["Apply"]), ("encoder_nodes", ["FacialEncoder"]))
        for name in names}
    return types.SimpleNamespace(**classes, MergeStep=pack.merge_step.ConsistentIDMergeStep)


@pytest.fixture(scope="module")
def adapters(nodes, models, tmp_path_factory):
    """The unit SD1.5 checkpoint, one of another seed (another projection), and the unit SDXL checkpoint."""
    from weightgen.consistentid import write_checkpoints

    other = write_checkpoints(tmp_path_factory.mktemp("other_seed"), size="unit", seed=5)["consistentid_sd15_unit"]
    shutil.copy(other, models / "consistentid" / OTHER)
    return {name: nodes.Loader.execute(name).result[0] for name in (UNIT, OTHER, SDXL)}


@pytest.fixture(scope="module")
def clip_vision(host):
    import comfy.clip_vision
    from weightgen.host_models import cached_host_models

    return comfy.clip_vision.load(str(cached_host_models(None, host.path)["clip_vision_h"]))


@pytest.fixture(scope="module")
def photos(images_dir):
    """IMAGE batches of one photo each, 512×512 (Grace Hopper's 512×600 cropped to her face)."""
    arrays = {name: np.array(Image.open(images_dir / name).convert("RGB")) for name in PHOTOS}
    arrays[G] = arrays[G][44:556]
    assert {a.shape for a in arrays.values()} == {(512, 512, 3)}
    return {name: torch.from_numpy(a).float()[None] / 255 for name, a in arrays.items()}


@pytest.fixture(scope="module")
def region_embeds(nodes, models, clip_vision, photos):
    """Each photo's RegionFeatures through Face Parse and Region Embed; the camera photo's parse without the
    eyes and ears, as a parse that did not find them."""
    parser = nodes.FaceParserLoader.execute("face_parsing.pth").result[0]
    embeds = {}
    for name, image in photos.items():
        [found] = nodes.FaceParse.execute(parser, image, "512").result[0]
        assert list(found.masks) == ["Face", "Left_Eye", "Left_Ear", "Upper_Lip"]  # what the generated parser finds
        if name == C:
            found.masks = {part: mask for part, mask in found.masks.items() if part not in DROPPED}
        [embeds[name]] = nodes.RegionEmbed.execute(clip_vision, image, [found]).result[0]
    return embeds


@pytest.fixture(scope="module")
def insightface(nodes, models):
    return {pack: nodes.InsightFaceLoader.execute(pack, "CPU", 640).result[0] for pack in ("buffalo_l",
                                                                                          "buffalo_l_noface")}


@pytest.fixture(scope="module")
def encode(nodes, adapters, clip_vision, insightface, photos, region_embeds):
    """Face Encode of photos by name: ``encode(*names, adapter=UNIT, pack="buffalo_l", **options)``."""
    def run(*names, adapter=UNIT, pack="buffalo_l", face="highest score", face_index=0, combine="average",
            on_no_face="error"):
        image = torch.cat([photos[name] for name in names])
        return nodes.FaceEncode.execute(adapters[adapter], clip_vision, insightface[pack], image,
                                        [region_embeds[name] for name in names], face, face_index, combine,
                                        on_no_face).result[0]
    return run


@pytest.fixture(scope="module")
def single(encode):
    """The identity of each portrait alone, with the unit adapter."""
    return {name: encode(name) for name in (A, G)}


@pytest.fixture(scope="module")
def identities_folder(models, tmp_path_factory):
    """A temporary folder for consistentid_identities, first in the list (where Save Identity writes)."""
    import folder_paths

    folder = tmp_path_factory.mktemp("identities")
    folder_paths.add_model_folder_path(IDENTITIES, str(folder), is_default=True)
    yield folder
    folder_paths.folder_names_and_paths[IDENTITIES][0].remove(str(folder))


@pytest.fixture(scope="module")
def sd15(host):
    """MODEL and CLIP of the generated full-size SD1.5 checkpoint (no VAE), unloaded after the module. The UNet
    keeps fp16 weights (computed in fp32 on a CPU), which halves its memory next to CLIP-ViT-H."""
    from weightgen.host_models import cached_host_models

    path = cached_host_models(None, host.path)["sd15_checkpoint"]
    model, clip, _, _ = host.sd.load_checkpoint_guess_config(str(path), output_vae=False, output_clipvision=False,
                                                              model_options={"dtype": torch.float16})
    yield types.SimpleNamespace(model=model, clip=clip)
    host.mm.unload_all_models()


def _generate(host, nodes, sd15, consistentid, identity) -> torch.Tensor:
    """Apply → Facial Encoder → Merge Step (text-only at step 0, facial at step 1) → 2 euler steps."""
    model = nodes.Apply.execute(sd15.model, consistentid, identity, 1.0, 1.0, 0.0, 1.0).result[0]
    text_only, facial, negative = nodes.FacialEncoder.execute(consistentid, sd15.clip, identity, PROMPT,
                                                              NEGATIVE).result
    [positive] = nodes.MergeStep.execute(text_only, facial, 0, 2, "normal").result
    latent = torch.zeros(1, 4, 8, 8)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
    return host.sample.sample(model, noise, 2, 5.0, "euler", "normal", positive, negative, latent,
                              disable_pbar=True, seed=0)


def _save_and_load(nodes, consistentid, identity, prefix: str):
    """Save Identity with ``prefix``, then Load Identity of the file it wrote."""
    nodes.SaveIdentity.execute(identity, prefix)
    return nodes.LoadIdentity.execute(consistentid, f"{prefix}_00001_.safetensors").result[0]


def _file_source(identity) -> dict:
    """The source of ``identity`` read back from a file: the file's format keys added."""
    return {**identity.source, "format": "consistentid-identity", "format_version": "1"}


def _refusal(call, error) -> str:
    with pytest.raises(error) as err:
        call()
    return str(err.value)


# ---------------------------------------------------------------------------------------------- save / load

def test_a_saved_identity_loads_bit_identical_and_samples_as_the_live_one(host, pack, nodes, adapters, single,
                                                                          identities_folder, sd15):
    live = single[A]
    loaded = _save_and_load(nodes, adapters[UNIT], live, "people/astronaut")

    assert (identities_folder / "people" / "astronaut_00001_.safetensors").is_file()
    assert_same_identity(loaded, live, _file_source(live))
    assert live.regions.names == ["Face", "Left_Eye", "Left_Ear", "Upper_Lip"]
    assert live.cond_tokens.shape == (1, 4, 768) and live.arcface.shape == (1, 512) and live.faces.shape == (1, 6)
    assert (live.adapter.arch, live.adapter.name, live.adapter.sha256) == (
        "sd15", UNIT, adapters[UNIT].projection_sha256())
    assert not {"base_model", "adapter", "adapter_sha256"} & set(live.source)
    assert live.source["insightface"] == "buffalo_l" and live.source["combine"] == "average"

    latent = _generate(host, nodes, sd15, adapters[UNIT], live)
    assert torch.isfinite(latent).all()
    assert torch.equal(_generate(host, nodes, sd15, adapters[UNIT], loaded), latent)
    # The latent depends on the identity: another person's gives another one.
    assert not torch.allclose(_generate(host, nodes, sd15, adapters[UNIT], single[G]), latent, atol=1e-3)


# ------------------------------------------------------------------------------------------ several photos

def test_three_photos_average_each_part_over_the_photos_that_show_it(encode, single, region_embeds):
    average, rows = encode(*PHOTOS, combine="average"), encode(*PHOTOS, combine="concatenate")

    features = {name: dict(zip(region_embeds[name].names, region_embeds[name].features)) for name in PHOTOS}
    assert list(features[C]) == ["Face", "Upper_Lip"]
    for identity in (average, rows):
        assert identity.regions.names == ["Face", "Left_Eye", "Left_Ear", "Upper_Lip"]
        for part, got in zip(identity.regions.names, identity.regions.features):
            showing = [features[name][part] for name in PHOTOS if part in features[name]]
            assert len(showing) == (2 if part in DROPPED else 3)
            torch.testing.assert_close(got, sum(showing) / len(showing), rtol=1e-6, atol=1e-6)
        assert json.loads(identity.source["photo_regions"])[2] == ["Face", "Upper_Lip"]
        assert identity.arcface.shape == (3, 512) and identity.faces.shape == (3, 6)

    # Tokens: one row per photo, each that photo's own (as encoded alone, up to CLIP's batching), and their mean.
    assert rows.cond_tokens.shape == (3, 4, 768) and average.cond_tokens.shape == (1, 4, 768)
    torch.testing.assert_close(average.cond_tokens, rows.cond_tokens.mean(0, keepdim=True), rtol=1e-5, atol=1e-5)
    for row, name in enumerate((A, G)):
        torch.testing.assert_close(rows.cond_tokens[row:row + 1], single[name].cond_tokens, rtol=1e-4, atol=1e-4)
        assert torch.equal(rows.arcface[row:row + 1], single[name].arcface)
    assert (rows.cond_tokens[0] - rows.cond_tokens[1]).abs().max() > 1e-2  # the photos' tokens differ

    # One photo is its own regions and tokens exactly.
    alone = single[A]
    assert alone.regions.names == region_embeds[A].names
    assert torch.equal(alone.regions.features, region_embeds[A].features)
    assert torch.equal(encode(A, combine="concatenate").cond_tokens, alone.cond_tokens)


# ----------------------------------------------------------------------------------------- adapter checks

def test_an_identity_of_another_adapter_is_refused_by_load_and_apply(pack, nodes, adapters, single,
                                                                     identities_folder, sd15):
    errors = pack.errors
    nodes.SaveIdentity.execute(single[A], "adapter_check")
    load = lambda name: nodes.LoadIdentity.execute(adapters[name], "adapter_check_00001_.safetensors")  # noqa: E731
    unit_hash, other_hash = adapters[UNIT].projection_sha256(), adapters[OTHER].projection_sha256()
    assert unit_hash != other_hash

    refused = {
        "ConsistentID Load Identity": _refusal(lambda: load(OTHER), errors.ModelMismatchError),
        "ConsistentID Apply": _refusal(lambda: nodes.Apply.execute(sd15.model, adapters[OTHER], single[A], 1.0, 1.0,
                                                                   0.0, 1.0), errors.ModelMismatchError)}
    for node, text in refused.items():
        assert text == (
            f"[ConsistentID · {node}] The identity was encoded with another SD1.5 ConsistentID adapter "
            f"('{UNIT}', projection hash {unit_hash[:12]}…) than '{OTHER}' ({other_hash[:12]}…); its face-ID tokens "
            "belong to that adapter. Fix: Load the adapter the identity was made with, or encode the photos again "
            "with this one.")
    assert _refusal(lambda: load(SDXL), errors.ModelMismatchError) == (
        f"[ConsistentID · ConsistentID Load Identity] The identity was encoded for SD1.5 (with '{UNIT}'), but the "
        f"ConsistentID model is SDXL ('{SDXL}'). Fix: Encode the photos again with this ConsistentID model, or load "
        "the adapter the identity was made with.")
    assert_same_identity(load(UNIT).result[0], single[A], _file_source(single[A]))


# -------------------------------------------------------------------------------------- files that are not

def test_a_pickle_or_other_file_named_as_an_identity_is_refused_unrun(pack, nodes, adapters, identities_folder,
                                                                      tmp_path):
    import safetensors.torch

    marker = tmp_path / "payload_ran"
    for name, payload in pickles(marker).items():
        (identities_folder / name).write_bytes(payload)
    torch.save(Payload(marker), identities_folder / "evil_torch.safetensors")
    safetensors.torch.save_file({"lora_up.weight": torch.ones(4, 4)}, identities_folder / "lora.safetensors",
                                {"format": "pt"})
    load = lambda name: nodes.LoadIdentity.execute(adapters[UNIT], name)  # noqa: E731
    where, fix = "[ConsistentID · ConsistentID Load Identity]", FIX

    for name in ("evil_p0.safetensors", "evil_p4.safetensors", "evil_torch.safetensors"):
        assert _refusal(lambda: load(name), pack.errors.WeightFileError) == (
            f"{where} '{name}' is not an identity file: it is not a safetensors file (a pickle or other file is "
            f"never opened, as it could run code). {fix}")
    text = _refusal(lambda: load("evil_brace.safetensors"), pack.errors.WeightFileError)
    assert text.startswith(f"{where} 'evil_brace.safetensors' is not a readable identity file (") and fix in text
    assert _refusal(lambda: load("lora.safetensors"), pack.errors.WeightFileError) == (
        f"{where} 'lora.safetensors' is a safetensors file but not a ConsistentID identity (its metadata has no "
        f"format 'consistentid-identity'). {fix}")
    assert not marker.exists()
    torch.load(io.BytesIO((identities_folder / "evil_torch.safetensors").read_bytes()), weights_only=False)
    assert marker.is_file()


# ------------------------------------------------------------------------------------------------ blending

def test_blend_is_a_or_b_exactly_at_the_ends_and_refuses_other_adapters(pack, nodes, encode, single):
    a, b = single[A], single[G]
    blend = lambda x, y, weight: nodes.BlendIdentities.execute(x, y, weight).result[0]  # noqa: E731
    for weight, side in ((1.0, a), (0.0, b)):
        mixed = blend(a, b, weight)
        assert_same_identity(mixed, side, {**{key: a.source[key] for key in (
            "clip_vision_sha256", "insightface", "insightface_recognition",
            "insightface_recognition_sha256")}, "blend": f"{weight:g}·A + {1 - weight:g}·B",
            "images_sha256": side.source["images_sha256"]})

    mixed = blend(a, b, 0.7)
    assert mixed.regions.names == a.regions.names == b.regions.names
    for got, x, y in ((mixed.cond_tokens, a.cond_tokens, b.cond_tokens),
                      (mixed.uncond_tokens, a.uncond_tokens, b.uncond_tokens),
                      (mixed.regions.features, a.regions.features, b.regions.features)):
        torch.testing.assert_close(got, 0.7 * x + 0.3 * y)
    assert (a.cond_tokens - b.cond_tokens).abs().max() > 1e-2

    other = encode(A, adapter=OTHER)
    assert _refusal(lambda: blend(a, other, 0.5), pack.errors.ModelMismatchError) == (
        "[ConsistentID · ConsistentID Blend Identities] The two identities were encoded with different ConsistentID "
        f"adapters ('{UNIT}' and '{OTHER}'), so their face-ID tokens cannot be mixed. Fix: Encode both with the "
        "same ConsistentID model.")


# ------------------------------------------------------------------------------------------- faces missing

def test_no_face_skipped_gives_no_tokens_and_apply_merges_only_the_lora(pack, nodes, adapters, encode, single,
                                                                        identities_folder, sd15, caplog):
    skipped = encode(A, pack="buffalo_l_noface", on_no_face="skip")
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "[ConsistentID] No face found in image 1 of 1; its face-ID tokens are left out."]
    caplog.clear()
    assert skipped.cond_tokens is None
    assert skipped.arcface.shape == (0, 512) and skipped.faces.shape == (0, 6)
    assert torch.equal(skipped.uncond_tokens, single[A].uncond_tokens)
    assert torch.equal(skipped.regions.features, single[A].regions.features)
    assert _save_and_load(nodes, adapters[UNIT], skipped, "nobody").cond_tokens is None

    patched = nodes.Apply.execute(sd15.model, adapters[UNIT], skipped, 1.0, 1.0, 0.0, 1.0).result[0]
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning == (
        "[ConsistentID · ConsistentID Apply] The identity has no face-ID tokens (no face was found and on_no_face "
        "was 'skip'), so only the adapter's LoRA applies. Fix: Use a clear, well-lit frontal photo of one face, or "
        "set Face Encode's on_no_face to 'error'.")
    assert "attn2" not in patched.model_options["transformer_options"].get("patches_replace", {})
    with_face = nodes.Apply.execute(sd15.model, adapters[UNIT], single[A], 1.0, 1.0, 0.0, 1.0).result[0]
    assert len(patched.patches) == 128 and set(patched.patches) == set(with_face.patches)
    assert len(with_face.model_options["transformer_options"]["patches_replace"]["attn2"]) == 32

    assert _refusal(lambda: encode(A, pack="buffalo_l_noface"), pack.errors.NoFaceError).startswith(
        "[ConsistentID · ConsistentID Face Encode] InsightFace found no face in image 1 of 1 (detection size "
        "(640, 640)).")
    assert _refusal(lambda: encode(A, face="index", face_index=1), pack.errors.InputImageError) == (
        "[ConsistentID · ConsistentID Face Encode] face_index 1 asks for face 2 from the left, but only 1 face(s) "
        "were found. Fix: Set face_index to 0..0 (0 is the leftmost face; the preview numbers them).")


def test_the_preview_boxes_every_face_and_the_one_used_in_green(pack):
    face_id = pack.load("consistentid_core.face_id")
    boxes = np.array([[60, 10, 90, 40], [10, 10, 40, 40], [110, 10, 140, 40]], np.float32)
    used = face_id.FaceIDResult(np.zeros(512, np.float32), 3, boxes[0], 0.9, 0, boxes)
    photo = np.full((64, 160, 3), 128, np.uint8)
    preview = pack.load("nodes.identity_nodes")._preview(photo, used)
    assert photo.max() == photo.min() == 128  # drawn on a copy
    green, red = (0, 220, 0), (220, 40, 40)
    assert tuple(preview[40, 75]) == green  # bottom edge of the face used (the middle one)
    assert tuple(preview[40, 25]) == red and tuple(preview[40, 125]) == red
    assert tuple(preview[55, 75]) == (128, 128, 128)
    no_face = face_id.FaceIDResult(None, 0, None, None)
    assert np.array_equal(pack.load("nodes.identity_nodes")._preview(photo, no_face), photo)


# ------------------------------------------------------------------------------------- reliability of files

@pytest.mark.parametrize("prefix, why", [
    ("", "a part of it is empty"), (".", "a part of it is empty"), ("..", "a part of it is empty"),
    (".hidden", "starts with '.' or '~'"), ("~", "starts with '.' or '~'"), ("family//anna", "a part of it is empty"),
    ("x" * 300, "it is 300 characters long, more than 200"), ("anna\nbob", "it holds a control character"),
    ("an\0na", "it holds a control character"), ("a:b", "it holds a control character"),
    ("CON", "a name Windows reserves"), ("family/nul.txt", "a name Windows reserves")])
def test_save_prefixes_that_would_write_hidden_or_odd_files_are_refused(pack, nodes, single, identities_folder,
                                                                       prefix, why):
    before = sorted(p.name for p in identities_folder.rglob("*"))
    with pytest.raises(pack.errors.ConsistentIDError) as refused:
        nodes.SaveIdentity.execute(single[A], prefix)
    assert str(refused.value).startswith("[ConsistentID · ConsistentID Save Identity] filename_prefix ")
    assert why in str(refused.value) and "Fix: Use a name inside the identities folder" in str(refused.value)
    assert sorted(p.name for p in identities_folder.rglob("*")) == before


def test_identity_files_get_the_mode_of_comfyuis_outputs(nodes, single, identities_folder):
    import os

    mask = os.umask(0)
    os.umask(mask)
    nodes.SaveIdentity.execute(single[A], "modes/anna")
    assert (identities_folder / "modes" / "anna_00001_.safetensors").stat().st_mode & 0o777 == 0o666 & ~mask


def test_a_changed_identity_file_is_refused_by_load_identity_by_name(pack, nodes, adapters, single,
                                                                    identities_folder):
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    nodes.SaveIdentity.execute(single[A], "changed/anna")
    path = identities_folder / "changed" / "anna_00001_.safetensors"
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    tensors = load_file(path)
    tensors["cond_tokens"] = tensors["cond_tokens"].clone()
    tensors["cond_tokens"][0, 0, 0] = float("nan")
    save_file(tensors, path, metadata)
    with pytest.raises(pack.errors.ConsistentIDError) as refused:
        nodes.LoadIdentity.execute(adapters[UNIT], "changed/anna_00001_.safetensors")
    assert str(refused.value) == (
        "[ConsistentID · ConsistentID Load Identity] 'anna_00001_.safetensors' is not a valid identity file: "
        "cond_tokens holds NaN or infinite values. Fix: Select a file written by ConsistentID Save Identity, or "
        "encode the photos again.")
