"""Face-ID vectors through a real ``FaceAnalysis`` on the generated InsightFace packs."""
import logging
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from consistentid_core.errors import InputImageError, NoFaceError
from consistentid_core.face_id import FaceIDResult, face_embedding, face_ids, face_number, id_vectors, photos_used
from weightgen.insightface_pack import DETECTOR_OUTPUTS, write_packs

PORTRAITS = ("astronaut.png", "grace_hopper.jpg")
NO_FACE = ("chelsea.png", "coffee.png")


def face_id_batch(app, images, **kwargs) -> torch.Tensor:
    return id_vectors(face_ids(app, images, **kwargs))


def _face_analysis(models_dir, name):
    from insightface.app import FaceAnalysis

    app = FaceAnalysis(name=name, root=str(models_dir / "insightface"), allowed_modules=None,
                       providers=["CPUExecutionProvider"])
    app.prepare(ctx_id=0, det_size=(640, 640))
    return app


@pytest.fixture(scope="module")
def app(models_dir, insightface_packs):
    return _face_analysis(models_dir, "buffalo_l")


@pytest.fixture(scope="module")
def noface_app(models_dir, insightface_packs):
    return _face_analysis(models_dir, "buffalo_l_noface")


@pytest.fixture(scope="module")
def photos(images_dir):
    return {name: np.array(Image.open(images_dir / name).convert("RGB")) for name in PORTRAITS + NO_FACE}


class _NoFaceFor:
    """Delegates to the face pack, except for images of one shape, which go to the no-face pack."""

    def __init__(self, app, noface_app, shape):
        self.app, self.noface_app, self.shape = app, noface_app, shape
        self.det_size = app.det_size

    def prepare(self, **kwargs):
        raise AssertionError("the detection size did not change, prepare must not run")

    def get(self, img):
        return (self.noface_app if img.shape == self.shape else self.app).get(img)


def test_generated_pack_is_recognised_like_buffalo_l(app, insightface_packs):
    assert set(insightface_packs) == {"insightface_buffalo_l", "insightface_noface"}
    for pack in insightface_packs.values():
        assert sorted(p.name for p in pack.iterdir()) == ["det_10g.onnx", "w600k_r50.onnx"]
        assert sum(p.stat().st_size for p in pack.iterdir()) < 400_000
    assert set(app.models) == {"detection", "recognition"}
    detector, recogniser = app.models["detection"], app.models["recognition"]
    assert detector.input_name == "input.1" and detector.output_names == list(DETECTOR_OUTPUTS)
    assert detector.use_kps and detector.fmc == 3 and detector._num_anchors == 2
    # w600k_r50 normalises with 127.5/127.5 (not the mxnet 0/1 variant) and has a 112x112 input
    assert (recogniser.input_mean, recogniser.input_std, recogniser.input_size) == (127.5, 127.5, (112, 112))


def test_generator_is_deterministic_per_seed(tmp_path):
    first, again, other = (write_packs(tmp_path / name, seed=seed)
                           for name, seed in (("a", 0), ("b", 0), ("c", 1)))
    for key in first:
        for file in ("det_10g.onnx", "w600k_r50.onnx"):
            assert (first[key] / file).read_bytes() == (again[key] / file).read_bytes()
        assert (first[key] / "w600k_r50.onnx").read_bytes() != (other[key] / "w600k_r50.onnx").read_bytes()
    onnx.checker.check_model(str(first["insightface_buffalo_l"] / "det_10g.onnx"))


@pytest.mark.parametrize("name", PORTRAITS)
def test_portrait_gives_one_unit_norm_face(app, photos, name):
    rgb = photos[name]
    result = face_embedding(app, rgb)
    assert result.num_faces == 1 and result.index == 0
    assert result.score > 0.5
    assert result.embedding.dtype == np.float32 and result.embedding.shape == (512,)
    assert np.linalg.norm(result.embedding) == pytest.approx(1.0, abs=1e-5)
    x1, y1, x2, y2 = result.bbox
    assert 0 <= x1 < x2 <= rgb.shape[1] and 0 <= y1 < y2 <= rgb.shape[0]
    # Deterministic across calls, and exactly the official `app.get(np.array(pil_rgb))[0].normed_embedding`.
    np.testing.assert_array_equal(face_embedding(app, rgb).embedding, result.embedding)
    np.testing.assert_array_equal(app.get(rgb)[0].normed_embedding, result.embedding)


def test_different_portraits_give_different_vectors(app, photos):
    a, b = (face_embedding(app, photos[name]).embedding for name in PORTRAITS)
    assert float(a @ b) < 0.99


def test_rgb_passed_as_bgr_by_default(app, photos):
    rgb = photos["astronaut.png"]
    official = face_embedding(app, rgb).embedding
    corrected = face_embedding(app, rgb, bgr_input=True).embedding
    assert float(official @ corrected) < 0.999
    np.testing.assert_array_equal(corrected, app.get(np.ascontiguousarray(rgb[..., ::-1]))[0].normed_embedding)


def test_prepare_runs_only_when_the_detection_size_changes(app, photos, monkeypatch):
    calls = []
    prepare = app.prepare
    monkeypatch.setattr(app, "prepare", lambda **kw: (calls.append(kw), prepare(**kw)))
    try:
        face_embedding(app, photos["astronaut.png"])
        face_embedding(app, photos["astronaut.png"], det_size=None)
        assert calls == []
        assert face_embedding(app, photos["astronaut.png"], det_size=(512, 512)).num_faces == 1
        assert calls == [{"ctx_id": 0, "det_thresh": 0.5, "det_size": (512, 512)}]
        assert tuple(app.det_size) == (512, 512)
        face_embedding(app, photos["astronaut.png"], det_size=None)
        assert len(calls) == 1
    finally:
        prepare(ctx_id=0, det_size=(640, 640))


def test_batch_is_embedded_image_by_image(app, photos):
    images = [photos["astronaut.png"], photos["grace_hopper.jpg"], photos["astronaut.png"]]
    batch = face_id_batch(app, images)
    assert batch.dtype == torch.float32 and batch.shape == (3, 512)
    for row, image in zip(batch, images):
        np.testing.assert_array_equal(row.numpy(), face_embedding(app, image).embedding)
    assert torch.equal(batch[0], batch[2]) and not torch.equal(batch[0], batch[1])


@pytest.mark.parametrize("name", NO_FACE)
def test_noface_pack_finds_nothing(noface_app, photos, name):
    result = face_embedding(noface_app, photos[name])
    assert (result.embedding, result.num_faces, result.bbox, result.score) == (None, 0, None, None)


def test_no_face_error_names_the_image_of_the_batch(app, noface_app, photos):
    routed = _NoFaceFor(app, noface_app, photos["chelsea.png"].shape)
    images = [photos["astronaut.png"], photos["chelsea.png"], photos["grace_hopper.jpg"]]
    with pytest.raises(NoFaceError) as caught:
        face_id_batch(routed, images, on_no_face="error")
    message = str(caught.value)
    assert "no face in image 2 of 3" in message
    assert "frontal photo of one face" in message and "set on_no_face to 'zero'" in message


def test_no_face_zero_gives_the_official_zero_vector(app, noface_app, photos, caplog):
    routed = _NoFaceFor(app, noface_app, photos["coffee.png"].shape)
    images = [photos["coffee.png"], photos["grace_hopper.jpg"], photos["chelsea.png"]]
    with caplog.at_level(logging.WARNING):
        batch = face_id_batch(routed, images, on_no_face="zero")
    assert torch.count_nonzero(batch[0]) == 0
    np.testing.assert_array_equal(batch[1].numpy(), face_embedding(app, photos["grace_hopper.jpg"]).embedding)
    assert "No face found in image 1 of 3; using the zero ID vector" in caplog.text

    batch = face_id_batch(noface_app, [photos[name] for name in NO_FACE], on_no_face="zero")
    assert torch.equal(batch, torch.zeros(2, 512))


def test_several_faces_use_the_highest_score_and_say_which(caplog):
    def face(score, value):
        return SimpleNamespace(det_score=np.float32(score), bbox=np.array([10, 20, 110, 140], np.float32) + value,
                               normed_embedding=np.full(512, value, np.float32))

    crowd = SimpleNamespace(det_size=(640, 640), get=lambda img: [face(0.6, 1), face(0.9, 2), face(0.7, 3)])
    result = face_embedding(crowd, np.zeros((64, 64, 3), np.uint8))
    assert (result.num_faces, result.index, result.score) == (3, 1, pytest.approx(0.9))
    with caplog.at_level(logging.WARNING):
        batch = face_id_batch(crowd, [np.zeros((64, 64, 3), np.uint8)])
    assert torch.equal(batch, torch.full((1, 512), 2.0))
    assert "image 1 of 1: 3 faces found; using face 1 (numbered from the left from 0, as face_index and the preview " \
           "count), the highest detector score (0.900), box x1,y1,x2,y2 = 12, 22, 112, 142" in caplog.text


def _crowd():
    """Three faces, detector order by score; boxes left to right: face 2, face 0, face 1; face 1 the largest."""
    def face(score, x, size, value):
        return SimpleNamespace(det_score=np.float32(score), bbox=np.array([x, 10, x + size, 10 + size], np.float32),
                               normed_embedding=np.full(512, value, np.float32))
    return SimpleNamespace(det_size=(640, 640), get=lambda img: [face(0.9, 50, 20, 1), face(0.8, 90, 40, 2),
                                                                 face(0.7, 5, 30, 3)])


@pytest.mark.parametrize("choose, index, kept", [("highest score", 0, 0), ("largest", 0, 1), ("index", 0, 2),
                                                 ("index", 1, 0), ("index", 2, 1)])
def test_the_face_to_use_is_chosen_by_score_size_or_position(choose, index, kept):
    result = face_embedding(_crowd(), np.zeros((64, 64, 3), np.uint8), choose=choose, index=index)
    assert result.index == kept and result.embedding[0] == kept + 1
    # One numbering everywhere: left to right from 0 (face 2 is leftmost, then 0, then 1).
    assert face_number(result) == [1, 2, 0][kept]
    assert result.boxes.shape == (3, 4) and np.array_equal(result.bbox, result.boxes[kept])


def test_a_face_index_past_the_faces_found_is_refused():
    with pytest.raises(InputImageError) as caught:
        face_embedding(_crowd(), np.zeros((64, 64, 3), np.uint8), choose="index", index=3)
    assert "face_index 3 asks for face 4 from the left, but only 3 face(s) were found" in str(caught.value)
    assert "Set face_index to 0..2" in str(caught.value)


def test_skip_leaves_no_face_images_without_a_vector(app, noface_app, photos, caplog):
    routed = _NoFaceFor(app, noface_app, photos["coffee.png"].shape)
    with caplog.at_level(logging.WARNING):
        results = face_ids(routed, [photos["coffee.png"], photos["grace_hopper.jpg"]], on_no_face="skip")
    assert results[0].embedding is None and results[1].embedding is not None
    assert "No face found in image 1 of 2; its face-ID tokens are left out" in caplog.text


def test_bad_arguments_are_refused(app, photos):
    with pytest.raises(ValueError, match="on_no_face must be one of"):
        face_ids(app, [photos["astronaut.png"]], on_no_face="ignore")
    with pytest.raises(ValueError, match="choose must be one of"):
        face_embedding(app, photos["astronaut.png"], choose="smallest")
    with pytest.raises(InputImageError, match=r"RGB uint8 \[H, W, 3\], got uint8 \[64, 64\]"):
        face_embedding(app, np.zeros((64, 64), np.uint8))


def test_done_is_called_after_each_image(app, photos):
    images = [photos["astronaut.png"], photos["grace_hopper.jpg"]]
    seen = []
    results = face_ids(app, images, done=lambda: seen.append(len(seen)))
    assert seen == [0, 1] and len(results) == 2


def test_photos_used_follow_on_no_face():
    found, missing = FaceIDResult(np.ones(512, np.float32), 1, None, 0.9), FaceIDResult(None, 0, None, None)
    results = [found, missing, found]
    assert photos_used(results, "zero") == [0, 1, 2]
    assert photos_used(results, "skip") == [0, 2]
