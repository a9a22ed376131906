"""Generates the example models (run by `cargo xtask models`; each well under 1 MB):

- pipeline/models/scaler.onnx: `raw: float[batch, 4]` -> `scaled` (standardise with fixed stats);
- pipeline/models/scorer.onnx: `features: float[batch, 4]` -> `score: float[batch, 1]`;
- recurrent/models/gru.onnx: a GRU with `x: float[seq, batch, 3]` and an initial state
  `h0: float[1, batch, 8]` -> `y: float[seq, 1, batch, 8]`, `h: float[1, batch, 8]`.

- image/models/classifier.onnx: a small CNN on `pixels: float[batch, 3, 32, 32]` -> `probs: float[batch, 10]`;
- text/tokenizer.json: a WordPiece tokenizer trained here on text/corpus.txt (PyPI `tokenizers`)
  when it is missing (training is not reproducible byte for byte, so the committed file rules);
- text/models/sentiment.onnx: `input_ids`, `attention_mask: int64[batch, seq]` -> `probs: float[batch, 2]`
  (mean of embeddings over the unmasked tokens, then a linear layer).

examples/iris/iris.onnx is written by tests/models/make_models.py (the ZipMap classifier).
"""

import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else None
RNG = np.random.default_rng(7)
OPSET = [helper.make_opsetid("", 17)]


def save(model, rel):
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = os.path.join(OUT, os.path.basename(rel)) if OUT else os.path.join(HERE, rel)
    onnx.save(model, path)
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


def scaler():
    mean = numpy_helper.from_array(np.array([5.8, 3.0, 3.8, 1.2], np.float32), "mean")
    std = numpy_helper.from_array(np.array([0.8, 0.4, 1.8, 0.8], np.float32), "std")
    graph = helper.make_graph(
        [helper.make_node("Sub", ["raw", "mean"], ["centered"]), helper.make_node("Div", ["centered", "std"], ["scaled"])],
        "scaler",
        [helper.make_tensor_value_info("raw", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("scaled", TensorProto.FLOAT, ["batch", 4])],
        [mean, std],
    )
    save(helper.make_model(graph, opset_imports=OPSET, producer_name="nimify-examples"), "pipeline/models/scaler.onnx")


def scorer():
    w = numpy_helper.from_array(RNG.standard_normal((4, 1)).astype(np.float32), "w")
    b = numpy_helper.from_array(np.array([0.1], np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["features", "w", "b"], ["logit"]), helper.make_node("Sigmoid", ["logit"], ["score"])],
        "scorer",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1])],
        [w, b],
    )
    save(helper.make_model(graph, opset_imports=OPSET, producer_name="nimify-examples"), "pipeline/models/scorer.onnx")


def gru():
    hidden, inputs = 8, 3
    w = numpy_helper.from_array((RNG.standard_normal((1, 3 * hidden, inputs)) * 0.5).astype(np.float32), "W")
    r = numpy_helper.from_array((RNG.standard_normal((1, 3 * hidden, hidden)) * 0.5).astype(np.float32), "R")
    b = numpy_helper.from_array(np.zeros((1, 6 * hidden), np.float32), "B")
    graph = helper.make_graph(
        [helper.make_node("GRU", ["x", "W", "R", "B", "", "h0"], ["y", "h"], hidden_size=hidden)],
        "gru",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["seq", "batch", inputs]),
            helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, "batch", hidden]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["seq", 1, "batch", hidden]),
            helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, "batch", hidden]),
        ],
        [w, r, b],
    )
    save(helper.make_model(graph, opset_imports=OPSET, producer_name="nimify-examples"), "recurrent/models/gru.onnx")


def classifier():
    def conv(name, cin, cout):
        w = numpy_helper.from_array((RNG.standard_normal((cout, cin, 3, 3)) * np.sqrt(2 / (cin * 9))).astype(np.float32), f"{name}_w")
        b = numpy_helper.from_array(np.zeros(cout, np.float32), f"{name}_b")
        return w, b

    w1, b1 = conv("c1", 3, 8)
    w2, b2 = conv("c2", 8, 16)
    fw = numpy_helper.from_array((RNG.standard_normal((16, 10)) * 0.5).astype(np.float32), "fc_w")
    fb = numpy_helper.from_array(np.zeros(10, np.float32), "fc_b")
    nodes = [
        helper.make_node("Conv", ["pixels", "c1_w", "c1_b"], ["h1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "c2_w", "c2_b"], ["h2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    graph = helper.make_graph(nodes, "classifier",
                              [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 3, 32, 32])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 10])],
                              [w1, b1, w2, b2, fw, fb])
    save(helper.make_model(graph, opset_imports=OPSET, producer_name="nimify-examples"), "image/models/classifier.onnx")


def tokenizer_and_sentiment():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    # WordPiece training breaks ties differently from run to run, so the committed tokenizer is
    # the source of truth: it is trained only when missing (delete it to retrain).
    path = os.path.join(HERE, "text", "tokenizer.json")
    if os.path.exists(path):
        tok = Tokenizer.from_file(path)
    else:
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        trainer = trainers.WordPieceTrainer(vocab_size=400, special_tokens=["[PAD]", "[UNK]"], show_progress=False)
        tok.train([os.path.join(HERE, "text", "corpus.txt")], trainer)
        tok.save(path)
    vocab = tok.get_vocab_size()
    emb = numpy_helper.from_array(RNG.standard_normal((vocab, 16)).astype(np.float32), "embeddings")
    w = numpy_helper.from_array(RNG.standard_normal((16, 2)).astype(np.float32), "w")
    b = numpy_helper.from_array(np.zeros(2, np.float32), "b")
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    last = numpy_helper.from_array(np.array([-1], np.int64), "last")
    nodes = [
        helper.make_node("Gather", ["embeddings", "input_ids"], ["e"]),
        helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["m", "last"], ["m3"]),
        helper.make_node("Mul", ["e", "m3"], ["em"]),
        helper.make_node("ReduceSum", ["em", "axes"], ["s"], keepdims=0),
        helper.make_node("ReduceSum", ["m3", "axes"], ["n"], keepdims=0),
        helper.make_node("Div", ["s", "n"], ["mean"]),
        helper.make_node("Gemm", ["mean", "w", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    graph = helper.make_graph(nodes, "sentiment",
                              [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
                               helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 2])],
                              [emb, w, b, axes, last])
    save(helper.make_model(graph, opset_imports=OPSET, producer_name="nimify-examples"), "text/models/sentiment.onnx")


if __name__ == "__main__":
    classifier()
    tokenizer_and_sentiment()
    scaler()
    scorer()
    gru()
