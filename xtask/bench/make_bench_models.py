"""Generates the serving benchmark's models into a folder under target/ (never committed):

- mlp.onnx: `x: float[batch, 64]` -> 256 -> 256 -> `probs: float[batch, 10]` (about 0.4 MB);
- cnn.onnx: a ResNet-18-shaped network on `image: float[batch, 3, 224, 224]` -> 1000 logits,
  random weights (about 45 MB), batch-norm folded into the convolutions as exporters do;
- bert.onnx: a BERT-like encoder, 2 layers, hidden 384, 6 heads, feed-forward 1536, on
  `embeddings: float[batch, 128, 384]` -> mean-pooled `pooled: float[batch, 384]` (about 14 MB).
"""

import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

RNG = np.random.default_rng(0)


def mlp(path):
    dims = [64, 256, 256, 10]
    inits, nodes, prev = [], [], "x"
    for i, (a, b) in enumerate(zip(dims, dims[1:])):
        inits += [numpy_helper.from_array((RNG.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32), f"w{i}"),
                  numpy_helper.from_array(np.zeros(b, np.float32), f"b{i}")]
        nodes += [helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [f"h{i}"])]
        prev = f"h{i}"
        if i < len(dims) - 2:
            nodes.append(helper.make_node("Relu", [prev], [f"r{i}"]))
            prev = f"r{i}"
    nodes.append(helper.make_node("Softmax", [prev], ["probs"], axis=-1))
    graph = helper.make_graph(nodes, "bench_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


class Net:
    def __init__(self):
        self.nodes, self.inits, self.n = [], [], 0

    def name(self, p):
        self.n += 1
        return f"{p}{self.n}"

    def conv(self, x, cin, cout, k, stride, relu=True):
        w, b, y = self.name("w"), self.name("b"), self.name("conv")
        fan_in = cin * k * k
        self.inits += [numpy_helper.from_array((RNG.standard_normal((cout, cin, k, k)) * np.sqrt(2 / fan_in)).astype(np.float32), w),
                       numpy_helper.from_array(np.zeros(cout, np.float32), b)]
        self.nodes.append(helper.make_node("Conv", [x, w, b], [y], kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4))
        if relu:
            r = self.name("relu")
            self.nodes.append(helper.make_node("Relu", [y], [r]))
            return r
        return y

    def block(self, x, cin, cout, stride):
        h = self.conv(x, cin, cout, 3, stride)
        h = self.conv(h, cout, cout, 3, 1, relu=False)
        skip = x if (cin == cout and stride == 1) else self.conv(x, cin, cout, 1, stride, relu=False)
        s, r = self.name("add"), self.name("relu")
        self.nodes += [helper.make_node("Add", [h, skip], [s]), helper.make_node("Relu", [s], [r])]
        return r


def cnn(path):
    net = Net()
    x = net.conv("image", 3, 64, 7, 2)
    p = net.name("pool")
    net.nodes.append(helper.make_node("MaxPool", [x], [p], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]))
    x, cin = p, 64
    for cout, stride in [(64, 1), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1)]:
        x = net.block(x, cin, cout, stride)
        cin = cout
    g, f = net.name("gap"), net.name("flat")
    net.nodes += [helper.make_node("GlobalAveragePool", [x], [g]), helper.make_node("Flatten", [g], [f])]
    net.inits += [numpy_helper.from_array((RNG.standard_normal((512, 1000)) / np.sqrt(512)).astype(np.float32), "fc_w"),
                  numpy_helper.from_array(np.zeros(1000, np.float32), "fc_b")]
    net.nodes.append(helper.make_node("Gemm", [f, "fc_w", "fc_b"], ["logits"]))
    graph = helper.make_graph(net.nodes, "bench_cnn", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 224, 224])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1000])], net.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def bert(path, layers=2, hidden=384, heads=6, ff=1536, seq=128):
    inits, nodes, n = [], [], [0]

    def name(p):
        n[0] += 1
        return f"{p}{n[0]}"

    def const(value, dtype=np.float32):
        c = name("c")
        inits.append(numpy_helper.from_array(np.asarray(value, dtype), c))
        return c

    def op(kind, inputs, **attrs):
        y = name(kind.lower())
        nodes.append(helper.make_node(kind, inputs, [y], **attrs))
        return y

    def dense(x, a, b):
        w = const(RNG.standard_normal((a, b)) / np.sqrt(a))
        return op("Add", [op("MatMul", [x, w]), const(np.zeros(b))])

    def norm(x):
        return op("LayerNormalization", [x, const(np.ones(hidden)), const(np.zeros(hidden))], axis=-1, epsilon=1e-12)

    head = hidden // heads
    split = const([0, 0, heads, head], np.int64)
    merge = const([0, 0, hidden], np.int64)
    x = "embeddings"
    for _ in range(layers):
        q, k, v = (op("Transpose", [op("Reshape", [dense(x, hidden, hidden), split])], perm=[0, 2, 1, 3]) for _ in range(3))
        scores = op("Mul", [op("MatMul", [q, op("Transpose", [k], perm=[0, 1, 3, 2])]), const(1 / np.sqrt(head))])
        context = op("MatMul", [op("Softmax", [scores], axis=-1), v])
        attended = op("Reshape", [op("Transpose", [context], perm=[0, 2, 1, 3]), merge])
        x = norm(op("Add", [x, dense(attended, hidden, hidden)]))
        h = dense(x, hidden, ff)
        gelu = op("Mul", [op("Mul", [h, const(0.5)]), op("Add", [op("Erf", [op("Mul", [h, const(1 / np.sqrt(2))])]), const(1.0)])])
        x = norm(op("Add", [x, dense(gelu, ff, hidden)]))
    nodes.append(helper.make_node("ReduceMean", [x], ["pooled"], axes=[1], keepdims=0))
    graph = helper.make_graph(nodes, "bench_bert", [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", seq, hidden])],
                              [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", hidden])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)


if __name__ == "__main__":
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    mlp(os.path.join(out, "mlp.onnx"))
    cnn(os.path.join(out, "cnn.onnx"))
    bert(os.path.join(out, "bert.onnx"))
    for f in ("mlp.onnx", "cnn.onnx", "bert.onnx"):
        print(f"{f}: {os.path.getsize(os.path.join(out, f))} bytes")
