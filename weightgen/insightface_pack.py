"""Stand-ins for the InsightFace ``buffalo_l`` pack that ``FaceAnalysis`` loads unmodified.

``insightface`` routes each ONNX file by its signature: the detector is recognised by
its 9 outputs (SCRFD with key points: scores, boxes and landmarks for strides 8, 16 and
32, two anchors per cell), the recogniser by its square 112×112 input. Both graphs
here keep the real names and shapes but compute something tiny and deterministic:

- ``det_10g.onnx`` reports exactly one face, score 0.9, at a fixed place relative to the
  detector canvas: centred near 30 % of its width and height, so the box stays on the
  photo (letter-boxed into the canvas's top-left corner) for aspect ratios up to about
  2.4:1. Every other anchor scores 0.02, below the 0.5 threshold.
  The ``buffalo_l_noface`` detector scores every anchor 0.02.
- ``w600k_r50.onnx`` is a fixed random projection of the 16×16-pooled aligned crop
  to 512 values, so different photos (or channel orders) give different embeddings.
"""
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

STRIDES = (8, 16, 32)
ANCHORS = 2
FACE_SCORE, BACKGROUND_SCORE = 0.9, 0.02
FACE_CELL = (3, 10)  # the face's anchor cell sits at 3/10 of the stride-32 grid
# Face box (left, top, right, bottom) as fractions of the canvas width/height.
FACE_BOX = (0.12, 0.13, 0.12, 0.11)
# ArcFace's 5-point template in its 112×112 crop, centred on the face box.
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)
FACE_WIDTH = 0.24  # fraction of the canvas width the 112-pixel ArcFace crop spans
POOL = 16
EMBED_DIM = 512
# Output names of the released det_10g.onnx, in its order: scores, boxes, key points.
DETECTOR_OUTPUTS = ("448", "471", "494", "451", "474", "497", "454", "477", "500")
OPSET = [helper.make_opsetid("", 13)]


class _Graph:
    """Collects ONNX nodes; each :meth:`op` returns the name of its single output."""

    def __init__(self):
        self.nodes, self.initializers = [], []

    def const(self, name: str, value) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, *inputs: str, **attrs) -> str:
        out = f"{op_type.lower()}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def model(self, name: str, inputs, outputs) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=OPSET, producer_name="weightgen")
        model.ir_version = 8  # readable by onnxruntime releases users still run
        onnx.checker.check_model(model)
        return model


def _detector(with_face: bool) -> onnx.ModelProto:
    g = _Graph()
    shape = g.op("Shape", "input.1")
    height = g.op("Gather", shape, g.const("axis_h", np.int64(2)), axis=0)
    width = g.op("Gather", shape, g.const("axis_w", np.int64(3)), axis=0)
    size_xy = g.op("Cast", g.op("Concat", g.op("Unsqueeze", width, g.const("ax0", np.array([0]))),
                                g.op("Unsqueeze", height, "ax0"), axis=0), to=TensorProto.FLOAT)
    # Distances are predicted in stride units; the values only matter at the stride-32 face anchor.
    box = g.op("Mul", g.op("Tile", size_xy, g.const("reps2", np.array([2]))),
               g.const("box", np.array(FACE_BOX, np.float32) / 32))
    kps_offsets = (ARCFACE_TEMPLATE - ARCFACE_TEMPLATE.mean(0)) / 112 * FACE_WIDTH / 32
    kps = g.op("Mul", g.op("Tile", size_xy, g.const("reps5", np.array([5]))),
               g.const("kps", kps_offsets.reshape(-1)))

    scores, boxes, points = [], [], []
    for stride in STRIDES:
        cells_h = g.op("Div", height, g.const(f"s{stride}", np.int64(stride)))
        cells_w = g.op("Div", width, f"s{stride}")
        count = g.op("Mul", g.op("Mul", cells_h, cells_w), g.const(f"a{stride}", np.int64(ANCHORS)))
        column = g.op("Concat", g.op("Unsqueeze", count, "ax0"), g.const(f"one{stride}", np.array([1])), axis=0)
        zeros = g.op("ConstantOfShape", column)
        if with_face and stride == STRIDES[-1]:
            num, den = (g.const(f"cell_{k}", np.int64(v)) for k, v in zip(("num", "den"), FACE_CELL))
            row = g.op("Div", g.op("Mul", cells_h, num), den)
            col = g.op("Div", g.op("Mul", cells_w, num), den)
            anchor = g.op("Mul", g.op("Add", g.op("Mul", row, cells_w), col), f"a{stride}")
            one_hot = g.op("OneHot", g.op("Unsqueeze", anchor, "ax0"), count,
                           g.const("score_values", np.array([BACKGROUND_SCORE, FACE_SCORE], np.float32)))
            scores.append(g.op("Transpose", one_hot, perm=[1, 0]))
        else:
            scores.append(g.op("Add", zeros, g.const(f"bg{stride}", np.float32(BACKGROUND_SCORE))))
        boxes.append(g.op("Add", zeros, box))
        points.append(g.op("Add", zeros, kps))

    results = [*scores, *boxes, *points]
    g.nodes += [helper.make_node("Identity", [src], [dst], name=f"out_{dst}")
                for src, dst in zip(results, DETECTOR_OUTPUTS)]
    widths = [1] * 3 + [4] * 3 + [10] * 3
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [f"anchors{STRIDES[i % 3]}", w])
               for i, (name, w) in enumerate(zip(DETECTOR_OUTPUTS, widths))]
    image = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "?", "?"])
    return g.model("det_10g", [image], outputs)


def _recogniser(seed: int) -> onnx.ModelProto:
    features = 3 * (112 // POOL) ** 2
    weight = np.random.default_rng(seed).standard_normal((features, EMBED_DIM)) / np.sqrt(features)
    g = _Graph()
    pooled = g.op("AveragePool", "input.1", kernel_shape=[POOL, POOL], strides=[POOL, POOL])
    embedding = g.op("MatMul", g.op("Flatten", pooled), g.const("projection", weight.astype(np.float32)))
    g.nodes.append(helper.make_node("Identity", [embedding], ["683"], name="out_683"))
    crop = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])
    output = helper.make_tensor_value_info("683", TensorProto.FLOAT, ["None", EMBED_DIM])
    return g.model("w600k_r50", [crop], [output])


# The detector and recogniser file names of the two packs the tests write: buffalo_l's (ConsistentID's) and
# antelopev2's (InstantID's, and a pack the loaders must tell apart from buffalo_l).
BUFFALO_L_FILES = ("det_10g.onnx", "w600k_r50.onnx")
ANTELOPEV2_FILES = ("scrfd_10g_bnkps.onnx", "glintr100.onnx")


def write_pack(models_dir: Path, name: str, with_face: bool = True, seed: int = 0,
               files: tuple[str, str] = BUFFALO_L_FILES) -> Path:
    """Write the pack ``insightface/models/<name>/``: the detector and the recogniser under ``files``'
    names (insightface routes them by signature, so other packs' names, e.g. antelopev2's, work too)."""
    pack = Path(models_dir) / "insightface" / "models" / name
    pack.mkdir(parents=True, exist_ok=True)
    onnx.save(_detector(with_face), pack / files[0])
    onnx.save(_recogniser(seed), pack / files[1])
    return pack


def write_packs(models_dir: Path, seed: int = 0) -> dict[str, Path]:
    """Write ``insightface/models/buffalo_l/`` and a ``buffalo_l_noface/`` whose detector never fires."""
    return {"insightface_buffalo_l": write_pack(models_dir, "buffalo_l", True, seed),
            "insightface_noface": write_pack(models_dir, "buffalo_l_noface", False, seed)}
