"""Tiny, deterministic ONNX models for tests, the benchmark and the vendor simulator.

They are built operator by operator with `onnx.helper` (no training, no weights to
download), so their behaviour is known exactly:

* `bright_spot_model` "detects" bright spots: a heatmap that is high where 4×4 blocks
  of the 0..1 input are brighter than a threshold, and a score that is its maximum;
* `constant_model` answers the same score for every image (handy for routing tests).

`onnx` is a development dependency; it is imported only when a model is built.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

#: Opset and IR version every ONNX Runtime since 1.14 reads.
OPSET = 17
IR_VERSION = 8
INPUT_NAME = "image"
SCORES_NAME = "scores"
HEATMAP_NAME = "heatmap"


def _onnx() -> ModuleType:
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "building toy ONNX models needs the 'onnx' package (pip install 'lods[dev]')"
        ) from exc
    return onnx


def _save(onnx: ModuleType, graph: object, path: Path, doc: str) -> Path:
    model = onnx.helper.make_model(
        graph,
        opset_imports=[onnx.helper.make_opsetid("", OPSET)],
        producer_name="lods.solutions.toymodels",
        doc_string=doc,
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def bright_spot_model(
    path: Path, *, size: int = 64, threshold: float = 0.6, sharpness: float = 20.0
) -> Path:
    """Write a bright-spot detector to `path` and return `path`.

    Input "image": float32 (N, 1, size, size) in 0..1. Outputs "heatmap": (N, 1, size/4,
    size/4) = sigmoid(sharpness * (avgpool4(image) - threshold)), and "scores": (N, 1) =
    the heatmap's maximum. A bright square scores near 1 with the heatmap high over it; a
    uniform dark image scores near 0.
    """
    if size < 8 or size % 4:
        raise ValueError("size must be a multiple of 4, at least 8")
    onnx = _onnx()
    helper, tp = onnx.helper, onnx.TensorProto
    cells = size // 4
    nodes = [
        helper.make_node(
            "AveragePool", [INPUT_NAME], ["pooled"], kernel_shape=[4, 4], strides=[4, 4]
        ),
        helper.make_node("Sub", ["pooled", "threshold"], ["shifted"]),
        helper.make_node("Mul", ["shifted", "sharpness"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], [HEATMAP_NAME]),
        helper.make_node("GlobalMaxPool", [HEATMAP_NAME], ["peak"]),
        helper.make_node("Flatten", ["peak"], [SCORES_NAME], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "bright_spot",
        inputs=[helper.make_tensor_value_info(INPUT_NAME, tp.FLOAT, ["N", 1, size, size])],
        outputs=[
            helper.make_tensor_value_info(HEATMAP_NAME, tp.FLOAT, ["N", 1, cells, cells]),
            helper.make_tensor_value_info(SCORES_NAME, tp.FLOAT, ["N", 1]),
        ],
        initializer=[
            helper.make_tensor("threshold", tp.FLOAT, [], [float(threshold)]),
            helper.make_tensor("sharpness", tp.FLOAT, [], [float(sharpness)]),
        ],
    )
    return _save(onnx, graph, path, "Bright-spot detector (Lods toy model, not a medical device)")


def constant_model(path: Path, *, score: float, size: int = 32) -> Path:
    """Write a model answering `score` for every image to `path` and return `path`.

    Input "image": float32 (N, 1, size, size); output "scores": (N, 1), all `score`.
    """
    if size < 1:
        raise ValueError("size must be positive")
    onnx = _onnx()
    helper, tp = onnx.helper, onnx.TensorProto
    nodes = [
        helper.make_node("GlobalAveragePool", [INPUT_NAME], ["mean"]),
        helper.make_node("Flatten", ["mean"], ["flat"], axis=1),
        helper.make_node("Mul", ["flat", "zero"], ["nothing"]),
        helper.make_node("Add", ["nothing", "score"], [SCORES_NAME]),
    ]
    graph = helper.make_graph(
        nodes,
        "constant",
        inputs=[helper.make_tensor_value_info(INPUT_NAME, tp.FLOAT, ["N", 1, size, size])],
        outputs=[helper.make_tensor_value_info(SCORES_NAME, tp.FLOAT, ["N", 1])],
        initializer=[
            helper.make_tensor("zero", tp.FLOAT, [], [0.0]),
            helper.make_tensor("score", tp.FLOAT, [], [float(score)]),
        ],
    )
    return _save(onnx, graph, path, "Constant-score model (Lods toy model, not a medical device)")
