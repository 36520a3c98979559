"""FaceSim and FGIS maths, the score chart, and the DINO ViT-S/16 loader on a generated file in the released
format."""
import pickle

import numpy as np
import pytest
import torch
from dino_reference import dino_cls, fgis as reference_fgis, pixels_of
from PIL import Image
from safetensors.torch import save_file

from consistentid_core import fgis
from consistentid_core.dino import IMAGE_SIZE, dino_embed, dino_pixels, load_dino
from consistentid_core.errors import WeightFileError
from consistentid_core.facesim import NO_FACE, face_similarity
from consistentid_core.parsing import load_face_parser, parse_labels
from consistentid_core.regions import REGION_PARTS, FaceRegions, face_regions
from consistentid_core.score_chart import BAR_COLOUR, MISSING_COLOUR, PLOT_HEIGHT, Bar, bar_chart
from consistentid_core.similarity import cosine, mean_of
from weightgen.dino import write_dino

PORTRAITS = ("astronaut.png", "grace_hopper.jpg")


@pytest.fixture(scope="module")
def photos(images_dir):
    return {name: np.array(Image.open(images_dir / name).convert("RGB")) for name in (*PORTRAITS, "chelsea.png")}


@pytest.fixture(scope="module")
def dino_file(models_dir):
    return write_dino(models_dir)["dino_vits16"]


@pytest.fixture(scope="module")
def dino_state(dino_file):
    return torch.load(dino_file, weights_only=True)


def _face_analysis(models_dir, name):
    from insightface.app import FaceAnalysis

    app = FaceAnalysis(name=name, root=str(models_dir / "insightface"), allowed_modules=["detection", "recognition"],
                       providers=["CPUExecutionProvider"])
    app.prepare(ctx_id=0, det_size=(640, 640))
    return app


# ---------------------------------------------------------------------------------------------------- similarity

def test_cosine():
    a = np.array([3.0, 4.0, 0.0], np.float32)
    assert cosine(a, a) == 1.0
    assert cosine(a, 10 * a) == pytest.approx(1.0, abs=1e-15)
    assert cosine(a, -a) == -1.0
    assert cosine(a, np.array([0.0, 0.0, 2.0])) == 0.0
    assert cosine(a, np.array([4.0, 3.0, 0.0])) == pytest.approx(24 / 25, abs=1e-15)
    assert cosine(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0])) == pytest.approx(2 ** -0.5, abs=1e-7)


def test_mean_of_skips_what_was_not_measured():
    assert mean_of([0.5, None, 1.0]) == 0.75
    assert mean_of([None, None]) is None and mean_of([]) is None


# ------------------------------------------------------------------------------------------------------ FaceSim

def test_facesim_of_a_photo_against_itself_and_another_portrait(models_dir, insightface_packs, photos):
    app = _face_analysis(models_dir, "buffalo_l")
    astronaut, grace = photos["astronaut.png"], photos["grace_hopper.jpg"]

    result = face_similarity(app, astronaut, [astronaut, grace])

    assert result.reference_has_face and result.has_face == [True, True]
    assert result.scores[0] == pytest.approx(1.0, abs=1e-6)
    # Independently: the dot product of the two unit ArcFace embeddings, images given in BGR.
    embed = [np.asarray(app.get(np.ascontiguousarray(p[..., ::-1]))[0].normed_embedding, np.float64)
             for p in (astronaut, grace)]
    assert result.scores[1] == pytest.approx(float(embed[0] @ embed[1]), abs=1e-6)
    assert result.scores[1] < 0.99
    assert result.records() == [{"image": 1, "facesim": result.scores[0], "face": True},
                                {"image": 2, "facesim": result.scores[1], "face": True}]
    assert f"image 2: {result.scores[1]:.4f}" in result.text()


def test_images_without_a_face_are_flagged(models_dir, insightface_packs, photos):
    app, noface = _face_analysis(models_dir, "buffalo_l"), _face_analysis(models_dir, "buffalo_l_noface")
    cat = photos["chelsea.png"]

    class NoFaceInTheCat:
        """The face pack, except that the cat photo goes to the pack that finds no face."""
        det_size = app.det_size

        def get(self, img):
            return (noface if img.shape == cat.shape else app).get(img)

    astronaut = photos["astronaut.png"]
    result = face_similarity(NoFaceInTheCat(), astronaut, [astronaut, cat, astronaut])

    assert result.has_face == [True, False, True]
    assert result.scores[1] is None and result.scores[0] == pytest.approx(1.0, abs=1e-6)
    assert result.records()[1] == {"image": 2, "facesim": None, "face": False}
    assert f"image 2: {NO_FACE}" in result.text()
    assert "mean of 2 image(s) with a score: 1.0000" in result.text()

    no_reference = face_similarity(NoFaceInTheCat(), cat, [astronaut, cat])
    assert not no_reference.reference_has_face and no_reference.scores == [None, None]
    assert no_reference.has_face == [True, False]
    assert "No face was found in the reference photo" in no_reference.text()

    with_no_face_at_all = face_similarity(noface, astronaut, [astronaut])
    assert with_no_face_at_all.records() == [{"image": 1, "facesim": None, "face": False}]


# -------------------------------------------------------------------------------------------------------- chart

def _bars_of(chart: np.ndarray, colour) -> list[tuple[int, int]]:
    """``(first column, height in pixels)`` of each run of columns holding ``colour``, left to right."""
    counts = (chart == np.array(colour, np.uint8)).all(axis=2).sum(axis=0)
    runs, start = [], None
    for x, count in enumerate([*counts, 0]):
        if count and start is None:
            start = x
        elif not count and start is not None:
            runs.append((start, int(counts[start:x].max())))
            start = None
    return runs


def test_chart_draws_a_bar_per_score_to_scale_and_marks_missing_ones():
    values = [1.0, 0.5, None, 0.25]
    chart = bar_chart("FaceSim per image", [("", [Bar(str(i), v, NO_FACE) for i, v in enumerate(values, 1)])])

    assert chart.dtype == np.uint8 and chart.ndim == 3 and chart.shape[2] == 3
    bars = _bars_of(chart, BAR_COLOUR)
    assert len(bars) == 3
    # Heights to the pixel: a filled rectangle covers both its end rows.
    heights = [height for _, height in bars]
    assert heights[0] == pytest.approx(PLOT_HEIGHT, abs=2)
    assert heights[1] == pytest.approx(PLOT_HEIGHT / 2, abs=2) and heights[2] == pytest.approx(PLOT_HEIGHT / 4, abs=2)
    # The missing score is an outlined slot between the second and the third bar.
    outlined = (chart == np.array(MISSING_COLOUR, np.uint8)).all(axis=2)
    columns = np.flatnonzero(outlined.any(axis=0))
    assert bars[1][0] < columns.min() and columns.max() < bars[2][0]


def test_chart_with_a_negative_score_and_groups():
    chart = bar_chart("FGIS", [("image 1", [Bar("face", 0.5), Bar("eyes", -0.2)]), ("image 2", [Bar("face", None)])])
    bars = _bars_of(chart, BAR_COLOUR)
    # The axis runs from -0.2 to 1: 0.5 is 0.5/1.2 of the plot, -0.2 below zero 0.2/1.2 of it.
    assert [h for _, h in bars] == [pytest.approx(PLOT_HEIGHT * 0.5 / 1.2, abs=2),
                                    pytest.approx(PLOT_HEIGHT * 0.2 / 1.2, abs=2)]
    assert (chart == np.array(MISSING_COLOUR, np.uint8)).all(axis=2).any()


# --------------------------------------------------------------------------------------------------------- DINO

def test_generated_dino_file_has_the_released_keys_and_shapes(dino_file, dino_state):
    assert dino_file.name == "dino_deitsmall16_pretrain.pth"
    assert len(dino_state) == 4 + 12 * 12 + 2
    assert list(dino_state)[:4] == ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"]
    shapes = {k: tuple(v.shape) for k, v in dino_state.items()}
    assert shapes["cls_token"] == (1, 1, 384) and shapes["pos_embed"] == (1, 197, 384)
    assert shapes["patch_embed.proj.weight"] == (384, 3, 16, 16)
    for i in range(12):
        assert shapes[f"blocks.{i}.norm1.weight"] == shapes[f"blocks.{i}.norm2.bias"] == (384,)
        assert shapes[f"blocks.{i}.attn.qkv.weight"] == (1152, 384) and shapes[f"blocks.{i}.attn.qkv.bias"] == (1152,)
        assert shapes[f"blocks.{i}.attn.proj.weight"] == (384, 384)
        assert shapes[f"blocks.{i}.mlp.fc1.weight"] == (1536, 384)
        assert shapes[f"blocks.{i}.mlp.fc2.weight"] == (384, 1536)
    assert shapes["norm.weight"] == shapes["norm.bias"] == (384,)
    assert all(v.dtype == torch.float32 for v in dino_state.values())


def test_loaded_dino_computes_the_vit_s16_cls_embedding(dino_file, dino_state, photos, tmp_path):
    model = load_dino(str(dino_file))
    pixels = torch.stack([pixels_of(Image.fromarray(photos[name])) for name in PORTRAITS]).float()

    embeddings = dino_embed(model, pixels)

    assert embeddings.shape == (2, 384) and embeddings.dtype == torch.float32
    torch.testing.assert_close(embeddings.double(), dino_cls(dino_state, pixels), atol=2e-4, rtol=0)
    assert cosine(embeddings[0], embeddings[1]) < 0.99  # different photos, different embeddings
    # The same tensors as .safetensors load to the same model.
    copy = tmp_path / "dino_vits16.safetensors"
    save_file(dino_state, str(copy))
    torch.testing.assert_close(dino_embed(load_dino(str(copy)), pixels), embeddings, atol=0, rtol=0)


def test_dino_refuses_a_pickle_that_would_run_code(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "dino_deitsmall16_pretrain.pth"
    evil.write_bytes(pickle.dumps({"cls_token": Payload()}, protocol=2))
    with pytest.raises(WeightFileError, match="was refused: reading it would run code") as err:
        load_dino(str(evil))
    assert not marker.exists()
    assert "dino_deitsmall16_pretrain.pth" in err.value.fix


@pytest.mark.parametrize("change", ["drop a block", "ViT-B width", "extra head"])
def test_dino_refuses_other_layouts(tmp_path, dino_state, change):
    state = dict(dino_state)
    if change == "drop a block":
        state = {k: v for k, v in state.items() if not k.startswith("blocks.11.")}
    elif change == "ViT-B width":
        state["pos_embed"] = torch.zeros(1, 197, 768)
    else:
        state["head.weight"] = torch.zeros(1000, 384)
    path = tmp_path / "other.pth"
    torch.save(state, path)
    expected = {"drop a block": "missing keys (12): blocks.11.", "ViT-B width": "pos_embed [1, 197, 768]",
                "extra head": "unexpected keys (1): head.weight"}[change]
    with pytest.raises(WeightFileError, match="is not a DINO ViT-S/16 backbone") as err:
        load_dino(str(path))
    assert expected in str(err.value)


def test_dino_pixels_pad_black_to_a_centred_square():
    white = Image.new("RGB", (200, 100), (255, 255, 255))
    pixels = dino_pixels(white)
    assert pixels.shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    black = (0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    white_value = (1 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(pixels[:, :50, 0].mean(dim=1).numpy(), black, atol=1e-5)
    np.testing.assert_allclose(pixels[:, -50:, 0].mean(dim=1).numpy(), black, atol=1e-5)
    np.testing.assert_allclose(pixels[:, 60:164, 112].numpy(), np.repeat(white_value[:, None], 104, 1), atol=1e-5)
    torch.testing.assert_close(pixels, pixels_of(white).float(), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------------------- FGIS

@pytest.fixture(scope="module")
def parsed(face_parser_files, photos):
    parser = load_face_parser(str(face_parser_files["face_parsing_official"]))
    return {name: face_regions(parse_labels(parser, photos[name], 512)) for name in PORTRAITS}


def test_fgis_of_two_portraits_equals_an_independent_computation(dino_file, dino_state, photos, parsed):
    model = load_dino(str(dino_file))
    astronaut, grace = (photos[name] for name in PORTRAITS)
    ref, gen = (parsed[name] for name in PORTRAITS)

    [result] = fgis.fgis_scores(lambda p: dino_embed(model, p), astronaut, ref, [grace], [gen])

    scores, mean = reference_fgis(dino_state, astronaut, ref.masks, grace, gen.masks)
    assert len(scores) >= 3  # the random parser keeps several regions in both portraits
    assert {k: v for k, v in result.scores.items() if v is not None} == pytest.approx(scores, abs=1e-4)
    assert result.fgis == pytest.approx(mean, abs=1e-4)
    assert result.fgis == pytest.approx(np.mean(list(scores.values())), abs=1e-4)
    assert min(scores.values()) < 0.99  # the regions differ, so the comparison is not of constants
    assert list(result.scores) == ["face", "eyes", "ears", "nose", "mouth"]
    assert result.missing == {region: "both" for region in REGION_PARTS if region not in scores}


def test_fgis_of_a_photo_against_itself_is_one(dino_file, photos, parsed):
    model = load_dino(str(dino_file))
    astronaut, ref = photos["astronaut.png"], parsed["astronaut.png"]
    [result] = fgis.fgis_scores(lambda p: dino_embed(model, p), astronaut, ref, [astronaut], [ref])
    assert result.fgis == pytest.approx(1.0, abs=1e-5)


def test_fgis_names_regions_missing_on_either_side_and_leaves_them_out():
    def regions(*names):
        return FaceRegions(np.zeros((8, 8), np.uint8), {name: np.full((8, 8), 255, np.uint8) for name in names})

    def embed(pixels):
        # A distinct, known embedding per position in the call: the reference's regions, then the image's.
        return torch.eye(len(pixels), 4) + 0.5

    rgb = np.zeros((64, 64, 3), np.uint8)
    [result] = fgis.fgis_scores(embed, rgb, regions("Face", "Left_Eye", "Nose"), [rgb],
                                [regions("Face", "Right_Eye", "Upper_Lip")])
    # Reference rows: face e0, eyes e1, nose e2; image rows: face e3, eyes e4 (all + 0.5); Right_Eye is "eyes".
    rows = torch.eye(5, 4) + 0.5
    assert result.scores == pytest.approx({"face": cosine(rows[0], rows[3]), "eyes": cosine(rows[1], rows[4]),
                                           "ears": None, "nose": None, "mouth": None})
    assert result.missing == {"ears": "both", "nose": "image", "mouth": "reference"}
    assert result.fgis == pytest.approx((result.scores["face"] + result.scores["eyes"]) / 2)
    assert "nose: not in the image" in result.line(1) and "mouth: not in the reference" in result.line(1)
    assert "ears: in neither image" in result.line(1)

    [nothing] = fgis.fgis_scores(embed, rgb, regions("Nose"), [rgb], [regions("Face")])
    assert nothing.fgis is None and "no common region" in nothing.line(1)
    assert nothing.row(1) == {"image": 1, "fgis": None, "regions": dict.fromkeys(REGION_PARTS),
                                 "missing": {"face": "reference", "eyes": "both", "ears": "both", "nose": "image",
                                             "mouth": "both"}}
    chart = fgis.chart([result, nothing])
    assert len(_bars_of(chart, BAR_COLOUR)) == 3  # face, eyes and the FGIS of image 1
