"""The Whisper encoder as one ONNX Runtime graph that returns every requested depth in one pass.

CTranslate2 returns only an encoder's last layer, so reading several depths took one run per
depth. This module builds the same encoder as an ONNX graph straight from the CTranslate2
``model.bin`` variables (the sha256-verified weights, no other source), with one output per
requested depth (the hidden states after that block, through the encoder's final layer norm, as
a copy of the encoder stopped there computes), and runs it with ONNX Runtime.

``compute_type: int8`` quantizes the weights of the linear layers (per output channel, signed
7-bit, activations quantized per tensor at run time); three layers stay in float32 (below).
The convolutions, layer norms, attention and GELU stay float32.

Graphs are built once per (weights, depths, compute type, recipe) into the model cache and
checked against their recorded sha256 on every load, like the weights they come from.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ser.features.ct2_layers import read_variables
from ser.features.model_files import install_folder, sha256_of

# Bump when the graph or its quantization changes, so cached graphs and features are rebuilt.
RECIPE = 1
OPSET = 20
LAYER_NORM_EPS = 1e-5
# The second FFN linear of blocks 3, 4 and 5 (0-based) sees outlier activations (peaks 60-106
# against a typical 3-14) that one per-tensor activation scale cannot hold in 8 bits; those
# three stay float32 (shared/notes/one-pass-encoder.md measured the damage).
FLOAT_LAYERS = ("layer_3/ffn/linear_1", "layer_4/ffn/linear_1", "layer_5/ffn/linear_1")
# Weights are quantized to 7 bits: an AVX2 or AVX-512 CPU without VNNI multiplies unsigned by
# signed 8-bit values in pairs summed into 16 bits, which saturates with full 8-bit weights, so the
# same clip gave pooled features 10% apart on the two kinds of CPU; with 7 bits no sum overflows
# and they agree to float32 rounding (docs/RESULTS.md, "Encoder").
REDUCE_RANGE = True


class GraphError(RuntimeError):
    """The encoder graph cannot be built, or its cached file is not the one that was built."""


def build_graph(model_bin: str | os.PathLike, depths: list[int]):
    """A float32 ``onnx.ModelProto``: input ``mel`` (batch, n_mels, frames; frames even), one
    output ``depth_<d>`` (batch, frames / 2, d_model) per depth."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = {name[len("encoder/"):]: value for name, value in read_variables(model_bin, "encoder/").items()}
    n_layers = 1 + max(int(match.group(1)) for name in weights if (match := re.match(r"layer_(\d+)/", name)))
    if not depths or max(depths) > n_layers or min(depths) < 1:
        raise GraphError(f"{model_bin}: depths {depths} asked of an encoder with {n_layers} layers")
    num_heads = int(weights["num_heads"])
    d_model = weights["conv1/weight"].shape[0]
    n_mels = weights["conv1/weight"].shape[1]

    initializers, nodes, added = [], [], set()

    def const(name: str, value: np.ndarray) -> str:
        if name not in added:
            initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
            added.add(name)
        return name

    def weight(name: str, transpose: bool = False) -> str:
        value = weights[name].astype(np.float32)
        return const(name, value.T if transpose else value)

    def node(op: str, inputs: list[str], output: str, domain: str = "", **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=output, domain=domain, **attrs))
        return output

    def linear(x: str, prefix: str) -> str:
        product = node("MatMul", [x, weight(f"{prefix}/weight", transpose=True)], f"{prefix}/matmul")
        return node("Add", [product, weight(f"{prefix}/bias")], f"{prefix}/out")

    def layer_norm(x: str, prefix: str, output: str) -> str:
        return node("LayerNormalization", [x, weight(f"{prefix}/gamma"), weight(f"{prefix}/beta")], output,
                    axis=-1, epsilon=LAYER_NORM_EPS)

    x = node("Conv", ["mel", weight("conv1/weight"), weight("conv1/bias")], "conv1", pads=[1, 1])
    x = node("Gelu", [x], "conv1/gelu")
    x = node("Conv", [x, weight("conv2/weight"), weight("conv2/bias")], "conv2", pads=[1, 1], strides=[2])
    x = node("Gelu", [x], "conv2/gelu")
    x = node("Transpose", [x], "frames", perm=[0, 2, 1])
    length = node("Shape", [x], "length", start=1, end=2)
    positions = node("Slice", [weight("position_encodings/encodings"), const("zero", np.array([0], np.int64)),
                               length, const("axis0", np.array([0], np.int64))], "positions")
    x = node("Add", [x, positions], "layer_0/in")
    outputs = []
    for index in range(max(depths)):
        block = f"layer_{index}"
        normed = layer_norm(x, f"{block}/self_attention/layer_norm", f"{block}/attention/norm")
        qkv = linear(normed, f"{block}/self_attention/linear_0")
        nodes.append(helper.make_node("Split", [qkv, const(f"{block}/split", np.array([d_model] * 3, np.int64))],
                                      [f"{block}/q", f"{block}/k", f"{block}/v"], axis=-1, name=f"{block}/split"))
        attended = node("MultiHeadAttention", [f"{block}/q", f"{block}/k", f"{block}/v"], f"{block}/attended",
                        domain="com.microsoft", num_heads=num_heads)
        x = node("Add", [x, linear(attended, f"{block}/self_attention/linear_1")], f"{block}/mid")
        normed = layer_norm(x, f"{block}/ffn/layer_norm", f"{block}/ffn/norm")
        hidden = node("Gelu", [linear(normed, f"{block}/ffn/linear_0")], f"{block}/ffn/gelu")
        x = node("Add", [x, linear(hidden, f"{block}/ffn/linear_1")], f"layer_{index + 1}/in")
        if index + 1 in depths:
            outputs.append(layer_norm(x, "layer_norm", f"depth_{index + 1}"))
    graph = helper.make_graph(
        nodes, "whisper_encoder",
        [helper.make_tensor_value_info("mel", TensorProto.FLOAT, ["batch", n_mels, "mel_frames"])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", "frames", d_model]) for name in outputs],
        initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model


def quantize(source: Path, target: Path) -> None:
    """int8 weights for every linear layer but :data:`FLOAT_LAYERS`."""
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    keep_float = [f"{name}/matmul" for name in FLOAT_LAYERS]
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs a generic pre-processing hint at every call
    try:
        quantize_dynamic(source, target, weight_type=QuantType.QInt8, per_channel=True,
                         reduce_range=REDUCE_RANGE, op_types_to_quantize=["MatMul"], nodes_to_exclude=keep_float,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    finally:
        root.setLevel(level)


def graph_file(model_bin: Path, model_sha256: str, depths: list[int], compute_type: str, cache: Path,
               verify: Callable[[], None] = lambda: None) -> Path:
    """The ONNX file of this encoder for ``depths``, built once into ``cache`` from ``model_bin``
    (``verify`` raises unless its sha256 is ``model_sha256``) and checked against its recorded
    hash on every call."""
    import onnxruntime

    name = (f"whisper-onnx-{model_sha256[:12]}-d{'-'.join(map(str, depths))}-{compute_type}"
            f"-r{RECIPE}-ort{onnxruntime.__version__}")
    target = cache / name
    record = target / "graph.json"
    if record.is_file():
        facts = json.loads(record.read_text())
        path = target / "encoder.onnx"
        if facts.get("source_sha256") == model_sha256 and path.is_file():
            actual = sha256_of(path)
            if actual != facts.get("sha256"):
                raise GraphError(f"{path}: sha256 {actual} does not match the {facts.get('sha256')} recorded when "
                                 "it was built; the file is corrupted or was replaced. Delete the folder to "
                                 "rebuild it from the verified weights")
            return path
    if compute_type not in ("int8", "float32"):
        raise GraphError(f"features.whisper.compute_type={compute_type}: choose int8 or float32")
    verify()
    cache.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".whisper-onnx-", dir=cache))
    try:
        import onnx

        model = build_graph(model_bin, depths)
        float_path = scratch / ("encoder.onnx" if compute_type == "float32" else "float32.onnx")
        onnx.save_model(model, float_path)
        if compute_type == "int8":
            quantize(float_path, scratch / "encoder.onnx")
            float_path.unlink()
        facts = {"source_sha256": model_sha256, "depths": depths, "compute_type": compute_type,
                 "recipe": RECIPE, "onnxruntime": onnxruntime.__version__, "sha256": sha256_of(scratch / "encoder.onnx")}
        (scratch / "graph.json").write_text(json.dumps(facts, indent=2) + "\n")
        install_folder(scratch, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return graph_file(model_bin, model_sha256, depths, compute_type, cache, verify)


def open_session(path: Path, threads: int):
    """An ONNX Runtime session on ``threads`` intra-op threads that sleep when idle (a pool of
    workers, or a server between requests, must not spin on cores others need)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(1, int(threads))
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
