"""The pack's models on an in-process host: one copy while node outputs hold it, none once the host has unloaded
its models and dropped its node outputs (what ``/free`` with ``unload_models`` and ``free_memory`` does), and
one prepared InsightFace per detection size."""
import gc
import logging
import weakref

from model_files import models  # noqa: F401  (fixture)


def _free(host) -> None:
    """The server's ``/free``, after the caller has dropped what the executor's node cache held."""
    host.mm.unload_all_models()
    gc.collect()


def _reads(caplog, name: str) -> int:
    return sum(f"[ConsistentID] Loaded {name} from " in record.getMessage() for record in caplog.records)


def test_consistentid_model_is_shared_while_used_and_released_by_free(host, pack, models, caplog):
    loader = pack.load("nodes.loader_nodes").ConsistentIDLoader
    managed = pack.load("nodes.managed")
    caplog.set_level(logging.INFO)

    model = loader.execute("ConsistentID-v1-unit.bin").result[0]
    assert loader.execute("ConsistentID-v1-unit.bin").result[0] is model  # a second loader node shares it
    encoder = managed.on_device(model.facial_encoder(managed.compute_dtype()))
    assert encoder in [loaded.model.model for loaded in host.mm.current_loaded_models if loaded.model is not None]
    assert _reads(caplog, "ConsistentID-v1-unit.bin") == 1

    released = [weakref.ref(model), weakref.ref(encoder)]
    del model, encoder
    _free(host)

    assert [ref() for ref in released] == [None, None]
    loader.execute("ConsistentID-v1-unit.bin")
    assert _reads(caplog, "ConsistentID-v1-unit.bin") == 2


def test_face_parser_is_released_by_free(host, pack, models, caplog):
    loader = pack.load("nodes.face_nodes").ConsistentIDFaceParserLoader
    managed = pack.load("nodes.managed")
    caplog.set_level(logging.INFO)

    parser = managed.on_device(loader.execute("face_parsing.pth").result[0])  # as Face Parse runs it
    released = weakref.ref(parser)
    del parser
    _free(host)

    assert released() is None


def test_two_det_sizes_get_two_prepared_face_analyses(host, pack, models):
    loader = pack.load("nodes.insightface_nodes").ConsistentIDInsightFaceLoader

    large = loader.execute("buffalo_l", "CPU", 640).result[0]
    small = loader.execute("buffalo_l", "CPU", 320).result[0]

    assert small is not large
    assert (tuple(large.det_size), tuple(small.det_size)) == ((640, 640), (320, 320))
    assert (large.models["detection"].input_size, small.models["detection"].input_size) == ((640, 640), (320, 320))
    assert loader.execute("buffalo_l", "CPU", 640).result[0] is large
    released = [weakref.ref(large), weakref.ref(small)]
    del large, small
    _free(host)
    assert [ref() for ref in released] == [None, None]


def test_a_pack_with_another_arcface_is_loaded_with_a_warning(host, pack, models, caplog):
    loader = pack.load("nodes.insightface_nodes").ConsistentIDInsightFaceLoader

    loader.execute("buffalo_l", "CPU", 640)
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]
    loader.execute("antelopev2", "CPU", 640)

    [warning] = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert warning.startswith("[ConsistentID · ConsistentID InsightFace Loader] The InsightFace pack 'antelopev2' "
                              "recognises faces with glintr100.onnx, not buffalo_l's w600k_r50.onnx: ConsistentID "
                              "was trained on buffalo_l's ArcFace embeddings")
    assert "Fix: Select buffalo_l" in warning
