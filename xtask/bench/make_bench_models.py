"""Generates the serving benchmark's models into a folder under target/ (never committed):

- mlp.onnx: `x: float[batch, 64]` -> 256 -> 256 -> `probs: float[batch, 10]` (about 0.4 MB);
- cnn.onnx: a ResNet-18-shaped network on `image: float[batch, 3, 224, 224]` -> 1000 logits,
  random weights (about 45 MB), batch-norm folded into the convolutions as exporters do.
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


if __name__ == "__main__":
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    mlp(os.path.join(out, "mlp.onnx"))
    cnn(os.path.join(out, "cnn.onnx"))
    for f in ("mlp.onnx", "cnn.onnx"):
        print(f"{f}: {os.path.getsize(os.path.join(out, f))} bytes")
