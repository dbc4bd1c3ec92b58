"""ONNX export (``protonet export``, ``Net.to_onnx``): every layer type round-trips through
onnxruntime to protonet's numbers; Caffe's pooling rounding; errors, dropped layers,
dynamic batch, blob names, opsets, and the command line with its exit codes."""
import os
import sys

import numpy as np
import pytest

import protonet
from protonet import ProtonetError
from protonet.cli import main
from protonet.io import parse_net

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from protonet.export import EXPORTERS, export  # noqa: E402
from protonet.export.check import format_rows, runtime_opset  # noqa: E402


def shape_text(shape):
    return "shape { " + " ".join(f"dim: {d}" for d in shape) + " }"


def inputs(**shapes):
    """Input layers: inputs(data=(2, 3, 8, 8), label=(2,))."""
    return "\n".join(f'layer {{ name: "{n}" type: "Input" top: "{n}" '
                     f"input_param {{ {shape_text(s)} }} }}" for n, s in shapes.items())


def randomize(net, seed=0):
    """Random learned blobs; BatchNorm gets real statistics (positive variance and factor)."""
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        if layer.type == "BatchNorm":
            c = layer.blobs[0].count
            factor = rng.uniform(0.5, 2.0)
            layer.blobs[0].data[...] = rng.standard_normal(c) * factor
            layer.blobs[1].data[...] = rng.uniform(0.2, 2.0, c) * factor
            layer.blobs[2].data[...] = factor
            continue
        for blob in layer.blobs:
            blob.data[...] = rng.standard_normal(blob.shape)
    return net


def build(text, phase=protonet.TEST, **kw):
    return randomize(protonet.Net(parse_net(text, "<test>"), phase, seed=0, **kw))


def roundtrip(tmp_path, text, **kw):
    """Export ``text``'s net with random weights, check it in onnxruntime; the report."""
    net = build(text)
    report = export(net, str(tmp_path / "m.onnx"), check=True, **kw)
    assert report.rows, "the check did not run"
    assert report.ok, format_rows(report.rows, report.tolerance)
    return report


def ops(path):
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def run_onnx(path, **feeds):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {k: np.asarray(v, np.float32)
                                              for k, v in feeds.items()})))


X = inputs(data=(2, 3, 6, 7))

LAYERS = {
    # vision
    "conv": (inputs(data=(2, 3, 9, 9)), 'type: "Convolution" convolution_param { num_output: 4 '
             "kernel_size: 3 stride: 2 pad: 1 }"),
    "conv_group_dilation": (inputs(data=(2, 4, 10, 11)), 'type: "Convolution" '
                            "convolution_param { num_output: 6 group: 2 kernel_h: 3 kernel_w: 2 "
                            "dilation: 2 pad_h: 2 pad_w: 1 stride_h: 1 stride_w: 2 "
                            "bias_term: false }"),
    "conv_1d": (inputs(data=(2, 3, 10)), 'type: "Convolution" convolution_param { '
                "num_output: 4 kernel_size: 3 pad: 1 }"),
    "conv_3d": (inputs(data=(1, 2, 5, 6, 7)), 'type: "Convolution" convolution_param { '
                "num_output: 3 kernel_size: 3 pad: 1 stride: 2 }"),
    "conv_axis2": (inputs(data=(2, 3, 4, 6, 6)), 'type: "Convolution" convolution_param { '
                   "num_output: 5 kernel_size: 3 axis: 2 }"),
    "deconv": (inputs(data=(1, 4, 5, 6)), 'type: "Deconvolution" convolution_param { '
               "num_output: 6 kernel_size: 4 stride: 2 pad: 1 group: 2 }"),
    "deconv_dilated": (inputs(data=(2, 3, 4, 4)), 'type: "Deconvolution" convolution_param { '
                       "num_output: 2 kernel_size: 3 stride: 3 dilation: 2 pad: 2 }"),
    "deconv_3d": (inputs(data=(1, 2, 3, 4, 5)), 'type: "Deconvolution" convolution_param { '
                  "num_output: 3 kernel_size: 2 stride: 2 }"),
    "im2col": (inputs(data=(2, 3, 7, 8)), 'type: "Im2col" convolution_param { kernel_size: 3 '
               "stride: 2 pad: 1 }"),
    "spp_max": (inputs(data=(2, 3, 13, 11)), 'type: "SPP" spp_param { pyramid_height: 3 }'),
    "spp_ave": (inputs(data=(2, 3, 9, 10)), 'type: "SPP" spp_param { pyramid_height: 2 '
                "pool: AVE }"),
    "spp_one_level": (X, 'type: "SPP" spp_param { pyramid_height: 1 }'),
    # common
    "ip": (inputs(data=(2, 3, 4, 5)), 'type: "InnerProduct" inner_product_param { '
           "num_output: 7 }"),
    "ip_transpose_nobias": (inputs(data=(3, 12)), 'type: "InnerProduct" inner_product_param { '
                            "num_output: 5 transpose: true bias_term: false }"),
    "ip_axis2": (inputs(data=(2, 3, 4, 5)), 'type: "InnerProduct" inner_product_param { '
                 "num_output: 6 axis: 2 }"),
    "softmax": (X, 'type: "Softmax"'),
    "softmax_axis2": (X, 'type: "Softmax" softmax_param { axis: 2 }'),
    "flatten": (X, 'type: "Flatten"'),
    "flatten_range": (inputs(data=(2, 3, 4, 5, 6)), 'type: "Flatten" flatten_param { axis: 2 '
                      "end_axis: -2 }"),
    "reshape": (X, 'type: "Reshape" reshape_param { shape { dim: 0 dim: -1 dim: 7 } }'),
    "reshape_axis": (X, 'type: "Reshape" reshape_param { shape { dim: 2 dim: -1 } axis: 2 '
                     "num_axes: 1 }"),
    "tile": (X, 'type: "Tile" tile_param { axis: 1 tiles: 3 }'),
    "reduction_sum_all": (X, 'type: "Reduction"'),
    "reduction_asum": (X, 'type: "Reduction" reduction_param { operation: ASUM axis: 1 }'),
    "reduction_sumsq": (X, 'type: "Reduction" reduction_param { operation: SUMSQ axis: 2 '
                        "coeff: 0.5 }"),
    "reduction_mean": (X, 'type: "Reduction" reduction_param { operation: MEAN axis: 1 '
                       "coeff: 2 }"),
    "argmax": (X, 'type: "ArgMax"'),
    "argmax_top3_values": (X, 'type: "ArgMax" argmax_param { top_k: 3 out_max_val: true }'),
    "argmax_axis": (X, 'type: "ArgMax" argmax_param { axis: 1 top_k: 2 }'),
    "argmax_axis_values": (X, 'type: "ArgMax" argmax_param { axis: 3 out_max_val: true }'),
    "embed": (inputs(data=(2, 5)), 'type: "Embed" embed_param { input_dim: 10 num_output: 4 }'),
    "embed_nobias": (inputs(data=(3,)), 'type: "Embed" embed_param { input_dim: 6 '
                     "num_output: 2 bias_term: false }"),
    "dropout": (X, 'type: "Dropout" dropout_param { dropout_ratio: 0.3 }'),
    # normalization
    "lrn_across": (inputs(data=(2, 7, 5, 5)), 'type: "LRN" lrn_param { local_size: 5 '
                   "alpha: 0.1 beta: 0.75 k: 2 }"),
    "lrn_within": (inputs(data=(2, 3, 6, 5)), 'type: "LRN" lrn_param { local_size: 3 '
                   "alpha: 0.2 beta: 0.6 norm_region: WITHIN_CHANNEL }"),
    "batchnorm": (X, 'type: "BatchNorm"'),
    "batchnorm_2d": (inputs(data=(4, 5)), 'type: "BatchNorm"'),
    "batchnorm_batch_stats": (X, 'type: "BatchNorm" batch_norm_param { '
                              "use_global_stats: false eps: 0.001 }"),
    "mvn": (X, 'type: "MVN"'),
    "mvn_across_mean_only": (X, 'type: "MVN" mvn_param { across_channels: true '
                             "normalize_variance: false }"),
    "mvn_2d": (inputs(data=(4, 6)), 'type: "MVN"'),
    "scale": (X, 'type: "Scale" scale_param { bias_term: true }'),
    "scale_two_axes": (X, 'type: "Scale" scale_param { axis: 1 num_axes: 2 }'),
    "scale_last_axis": (X, 'type: "Scale" scale_param { axis: -1 }'),
    "bias": (X, 'type: "Bias" bias_param { axis: 2 num_axes: 2 }'),
    # neurons
    "relu": (X, 'type: "ReLU"'),
    "relu_leaky": (X, 'type: "ReLU" relu_param { negative_slope: 0.1 }'),
    "prelu": (X, 'type: "PReLU"'),
    "prelu_shared": (X, 'type: "PReLU" prelu_param { channel_shared: true }'),
    "elu": (X, 'type: "ELU" elu_param { alpha: 0.5 }'),
    "sigmoid": (X, 'type: "Sigmoid"'),
    "tanh": (X, 'type: "TanH"'),
    "absval": (X, 'type: "AbsVal"'),
    "power": (X, 'type: "Power" power_param { power: 2 scale: 0.5 shift: 1 }'),
    "power_cube": (X, 'type: "Power" power_param { power: 3 }'),
    "power_constant": (X, 'type: "Power" power_param { power: 2 scale: 0 shift: 3 }'),
    "power_zero": (X, 'type: "Power" power_param { power: 0 }'),
    "exp": (X, 'type: "Exp"'),
    "exp_base": (X, 'type: "Exp" exp_param { base: 2 scale: 0.5 shift: 1 }'),
    "log": (X, 'type: "Log" log_param { base: 10 shift: 6 }'),
    "bnll": (X, 'type: "BNLL"'),
    "threshold": (X, 'type: "Threshold" threshold_param { threshold: 0.3 }'),
    "clip": (X, 'type: "Clip" clip_param { min: -0.5 max: 0.7 }'),
    "clip_min_above_max": (X, 'type: "Clip" clip_param { min: 0.5 max: -0.5 }'),
    "swish": (X, 'type: "Swish" swish_param { beta: 1.5 }'),
}


@pytest.mark.parametrize("case", sorted(LAYERS))
def test_layer_round_trip(tmp_path, case):
    head, body = LAYERS[case]
    report = roundtrip(tmp_path, head + f'\nlayer {{ name: "y" bottom: "data" top: "y" {body} }}')
    assert [name for name, _ in report.outputs] == ["y"]


MULTI = {
    "conv_two_bottoms": inputs(a=(2, 3, 6, 6), b=(2, 3, 6, 6)) + """
        layer { name: "c" type: "Convolution" bottom: "a" bottom: "b" top: "ya" top: "yb"
                convolution_param { num_output: 2 kernel_size: 3 } }""",
    "crop": inputs(a=(2, 3, 10, 12), b=(2, 3, 6, 7)) + """
        layer { name: "c" type: "Crop" bottom: "a" bottom: "b" top: "y"
                crop_param { axis: 2 offset: 1 offset: 3 } }""",
    "crop_axis1_one_offset": inputs(a=(2, 5, 8, 8), b=(2, 3, 4, 4)) + """
        layer { name: "c" type: "Crop" bottom: "a" bottom: "b" top: "y"
                crop_param { axis: 1 offset: 1 } }""",
    "concat": inputs(a=(2, 3, 4, 5), b=(2, 2, 4, 5), c=(2, 1, 4, 5)) + """
        layer { name: "c" type: "Concat" bottom: "a" bottom: "b" bottom: "c" top: "y" }""",
    "concat_axis2": inputs(a=(2, 3, 4, 5), b=(2, 3, 1, 5)) + """
        layer { name: "c" type: "Concat" bottom: "a" bottom: "b" top: "y"
                concat_param { axis: 2 } }""",
    "slice_points": inputs(a=(2, 6, 4)) + """
        layer { name: "s" type: "Slice" bottom: "a" top: "y1" top: "y2" top: "y3"
                slice_param { axis: 1 slice_point: 1 slice_point: 4 } }""",
    "slice_even": inputs(a=(2, 3, 8)) + """
        layer { name: "s" type: "Slice" bottom: "a" top: "y1" top: "y2"
                slice_param { axis: 2 } }""",
    "split": inputs(a=(2, 3)) + """
        layer { name: "s" type: "Split" bottom: "a" top: "s1" top: "s2" }
        layer { name: "r" type: "ReLU" bottom: "s1" top: "y1" }
        layer { name: "t" type: "TanH" bottom: "s2" top: "y2" }""",
    "eltwise_sum_coeffs": inputs(a=(2, 3, 4), b=(2, 3, 4), c=(2, 3, 4)) + """
        layer { name: "e" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "y"
                eltwise_param { operation: SUM coeff: 1 coeff: -0.5 coeff: 2 } }""",
    "eltwise_prod": inputs(a=(2, 3, 4), b=(2, 3, 4), c=(2, 3, 4)) + """
        layer { name: "e" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "y"
                eltwise_param { operation: PROD } }""",
    "eltwise_max": inputs(a=(2, 3, 4), b=(2, 3, 4), c=(2, 3, 4)) + """
        layer { name: "e" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "y"
                eltwise_param { operation: MAX } }""",
    "scale_bottom": inputs(a=(2, 3, 4, 5), s=(3, 4)) + """
        layer { name: "e" type: "Scale" bottom: "a" bottom: "s" top: "y"
                scale_param { bias_term: true } }""",
    "scale_scalar_bottom": inputs(a=(2, 3, 4), s=()) + """
        layer { name: "e" type: "Scale" bottom: "a" bottom: "s" top: "y" }""",
    "bias_bottom": inputs(a=(2, 3, 4, 5), b=(2, 3)) + """
        layer { name: "e" type: "Bias" bottom: "a" bottom: "b" top: "y"
                bias_param { axis: 0 } }""",
    "embed_index_read_twice": inputs(i=(2, 5)) + """
        layer { name: "e" type: "Embed" bottom: "i" top: "y1"
                embed_param { input_dim: 7 num_output: 3 } }
        layer { name: "p" type: "Power" bottom: "i" top: "y2" power_param { scale: 2 } }""",
    "batch_reindex": inputs(a=(4, 3, 2), i=(5,)) + """
        layer { name: "r" type: "BatchReindex" bottom: "a" bottom: "i" top: "y" }""",
    "filter": inputs(a=(4, 3), b=(4, 2, 2), s=(4, 1)) + """
        layer { name: "f" type: "Filter" bottom: "a" bottom: "b" bottom: "s" top: "y1"
                top: "y2" }""",
    "parameter": inputs(a=(2, 3)) + """
        layer { name: "p" type: "Parameter" top: "p" parameter_param { shape { dim: 2 dim: 3 } } }
        layer { name: "e" type: "Eltwise" bottom: "a" bottom: "p" top: "y" }""",
    "dummy_data_constant": inputs(a=(2, 3)) + """
        layer { name: "k" type: "DummyData" top: "k" dummy_data_param {
                shape { dim: 2 dim: 3 } data_filler { type: "constant" value: 2.5 } } }
        layer { name: "e" type: "Eltwise" bottom: "a" bottom: "k" top: "y"
                eltwise_param { operation: PROD } }""",
    "pooling_mask": inputs(a=(2, 3, 7, 7)) + """
        layer { name: "p" type: "Pooling" bottom: "a" top: "y" top: "mask"
                pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }""",
    "pooling_global": inputs(a=(2, 3, 5, 6)) + """
        layer { name: "p" type: "Pooling" bottom: "a" top: "y1"
                pooling_param { pool: MAX global_pooling: true } }
        layer { name: "q" type: "Pooling" bottom: "a" top: "y2"
                pooling_param { pool: AVE global_pooling: true } }""",
    "pooling_stochastic_test": inputs(a=(2, 3, 7, 8)) + """
        layer { name: "abs" type: "AbsVal" bottom: "a" top: "b" }
        layer { name: "p" type: "Pooling" bottom: "b" top: "y"
                pooling_param { pool: STOCHASTIC kernel_size: 3 stride: 2 } }""",
}


@pytest.mark.parametrize("case", sorted(MULTI))
def test_multi_blob_round_trip(tmp_path, case):
    roundtrip(tmp_path, MULTI[case])


def test_index_inputs_are_drawn_as_valid_indices(tmp_path):
    report = roundtrip(tmp_path, MULTI["batch_reindex"])
    assert [n for n, _ in report.inputs] == ["a", "i"]


CEIL, FLOOR = "CEIL", "FLOOR"
#: (H, W, kernel, stride, pad, round mode, Caffe's output, ops of MAX, ops of AVE)
POOLS = {
    "112_k3_s2_p1": (112, 112, 3, 2, 1, CEIL, (57, 57), {"MaxPool"}, {"Pad", "AveragePool"}),
    "clipped_last_window": (3, 3, 2, 2, 1, CEIL, (2, 2), {"MaxPool"}, {"AveragePool"}),
    "ave_with_padding": (4, 4, 3, 2, 1, CEIL, (3, 3), {"MaxPool"}, {"Pad", "AveragePool"}),
    "ceil_without_padding": (8, 10, 3, 2, 0, CEIL, (4, 5), {"MaxPool"}, {"AveragePool"}),
    "floor_round_mode": (6, 7, 2, 2, 1, FLOOR, (4, 4), {"MaxPool"}, {"AveragePool"}),
    "asymmetric": (9, 8, (3, 2), (2, 1), (1, 0), CEIL, (5, 7), {"MaxPool"}, {"AveragePool"}),
    "asymmetric_past_both_edges": (4, 7, (3, 2), 2, (1, 0), CEIL, (3, 4), {"MaxPool"},
                                   {"Pad", "AveragePool"}),
    "pad_close_to_kernel": (5, 5, 4, 1, 3, CEIL, (8, 8), {"MaxPool"}, {"AveragePool"}),
    "windows_past_the_image": (4, 5, 1, (2, 3), 0, CEIL, (3, 3), {"Pad", "MaxPool"},
                               {"Pad", "Conv", "Div"}),
    "plain": (8, 8, 2, 2, 0, CEIL, (4, 4), {"MaxPool"}, {"AveragePool"}),
}


def pool_text(method, H, W, kernel, stride, pad, mode):
    def pair(name, v):
        return (f"{name}_h: {v[0]} {name}_w: {v[1]}" if isinstance(v, tuple)
                else f"{name}: {v}")
    kernel_text = (f"kernel_h: {kernel[0]} kernel_w: {kernel[1]}" if isinstance(kernel, tuple)
                   else f"kernel_size: {kernel}")
    return inputs(data=(2, 3, H, W)) + f"""
        layer {{ name: "p" type: "Pooling" bottom: "data" top: "y"
                pooling_param {{ pool: {method} {kernel_text} {pair("stride", stride)}
                                 {pair("pad", pad)} round_mode: {mode} }} }}"""


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("case", sorted(POOLS))
def test_pooling_rounding_against_onnxruntime(tmp_path, method, case):
    H, W, kernel, stride, pad, mode, out, max_ops, ave_ops = POOLS[case]
    report = roundtrip(tmp_path, pool_text(method, H, W, kernel, stride, pad, mode))
    assert report.outputs == [("y", (2, 3) + out)]  # Caffe's size, and onnxruntime's too
    assert set(ops(tmp_path / "m.onnx")) == (max_ops if method == "MAX" else ave_ops)


def test_ave_pooling_divisor_counts_padding_as_caffe(tmp_path):
    """4x4 ones, kernel 3, stride 2, pad 1: Caffe's windows hold 4, 6, 2 image cells and
    divide by 9, 9, 6 (the last window is cut at H + pad)."""
    net = build(pool_text("AVE", 4, 4, 3, 2, 1, CEIL))
    export(net, str(tmp_path / "m.onnx"), check=False)
    y = run_onnx(tmp_path / "m.onnx", data=np.ones((2, 3, 4, 4)))["y"]
    expected = np.array([[4 / 9, 6 / 9, 2 / 6], [6 / 9, 1, 3 / 6], [2 / 6, 3 / 6, 1 / 4]])
    np.testing.assert_allclose(y[1, 2], expected, rtol=1e-6)
    np.testing.assert_allclose(net.forward(data=np.ones((2, 3, 4, 4)))["y"][1, 2], expected,
                               rtol=1e-6)


def test_max_pooling_of_windows_past_the_image_gives_caffes_minus_flt_max(tmp_path):
    net = build(pool_text("MAX", 4, 5, 1, (2, 3), 0, CEIL))
    export(net, str(tmp_path / "m.onnx"), check=False)
    x = np.random.default_rng(1).standard_normal((2, 3, 4, 5))
    y = run_onnx(tmp_path / "m.onnx", data=x)["y"]
    assert y[0, 0, 2, 0] == -np.finfo(np.float32).max and y[0, 0, 0, 0] == np.float32(x[0, 0, 0, 0])
    np.testing.assert_array_equal(y, net.forward(data=x)["y"])


def test_argmax_ties_go_to_the_larger_index_as_in_caffe(tmp_path):
    text = inputs(data=(2, 6)) + """
        layer { name: "a" type: "ArgMax" bottom: "data" top: "y"
                argmax_param { top_k: 2 out_max_val: true } }"""
    net = build(text)
    export(net, str(tmp_path / "m.onnx"), check=False)
    x = np.array([[1, 3, 3, 0, 3, 2], [5, 5, 1, 1, 0, 0]], np.float32)
    y = run_onnx(tmp_path / "m.onnx", data=x)["y"]
    np.testing.assert_array_equal(y, net.forward(data=x)["y"])
    np.testing.assert_array_equal(y[:, 0], [[4, 2], [1, 0]])


def test_bnll_does_not_overflow(tmp_path):
    net = build(inputs(data=(1, 6)) + 'layer { name: "b" type: "BNLL" bottom: "data" top: "y" }')
    export(net, str(tmp_path / "m.onnx"), check=False)
    x = np.array([[-100, -20, -1, 0, 20, 100]], np.float32)
    y = run_onnx(tmp_path / "m.onnx", data=x)["y"]
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y, net.forward(data=x)["y"], rtol=1e-6, atol=1e-30)


CONV_BN = inputs(data=(2, 3, 8, 8)) + """
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
            convolution_param { num_output: 4 kernel_size: 3 pad: 1 bias_term: false } }
    layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
    layer { name: "scale" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
    layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
    layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
            inner_product_param { num_output: 5 } }
    layer { name: "ipbn" type: "BatchNorm" bottom: "ip" top: "ip" }
"""


def test_batchnorm_and_scale_fold_into_the_convolution(tmp_path):
    report = roundtrip(tmp_path, CONV_BN)
    assert ops(tmp_path / "m.onnx") == ["Conv", "Relu", "Flatten", "Gemm"]
    assert report.outputs == [("ip", (2, 5))]


def test_no_fold_where_the_convolution_output_is_read_twice(tmp_path):
    text = inputs(data=(2, 3, 6, 6)) + """
        layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
                convolution_param { num_output: 4 kernel_size: 3 } }
        layer { name: "scale" type: "Scale" bottom: "conv" top: "s" }
        layer { name: "sum" type: "Eltwise" bottom: "conv" bottom: "s" top: "y" }"""
    roundtrip(tmp_path, text)
    assert ops(tmp_path / "m.onnx") == ["Conv", "Mul", "Add"]


def test_graph_keeps_caffe_blob_names(tmp_path):
    text = inputs(data=(2, 3, 6, 6)) + """
        layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
                convolution_param { num_output: 4 kernel_size: 3 } }
        layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
        layer { name: "fc" type: "InnerProduct" bottom: "conv1" top: "fc"
                inner_product_param { num_output: 3 } }
        layer { name: "drop" type: "Dropout" bottom: "fc" top: "fc" }
        layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
        layer { name: "feat" type: "TanH" bottom: "conv1" top: "feat" }"""
    roundtrip(tmp_path, text)
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    assert [i.name for i in graph.input] == ["data"]
    assert [o.name for o in graph.output] == ["feat", "prob"]  # Caffe's order: alphabetical
    names = {v for n in graph.node for v in n.output}
    assert {"conv1", "fc", "prob", "feat"} <= names


def test_an_output_written_in_place_keeps_its_name(tmp_path):
    text = inputs(data=(2, 3)) + """
        layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
                inner_product_param { num_output: 4 } }
        layer { name: "relu" type: "ReLU" bottom: "ip" top: "ip" }
        layer { name: "drop" type: "Dropout" bottom: "ip" top: "ip" }"""
    report = roundtrip(tmp_path, text)
    assert report.outputs == [("ip", (2, 4))]
    assert [o.name for o in onnx.load(str(tmp_path / "m.onnx")).graph.output] == ["ip"]


def test_an_input_overwritten_in_place_cannot_be_an_output_too(tmp_path):
    text = inputs(data=(2, 3)) + """
        layer { name: "relu" type: "ReLU" bottom: "data" top: "data" }
        layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
                inner_product_param { num_output: 4 } }"""
    assert roundtrip(tmp_path, text).outputs == [("ip", (2, 4))]  # 'data' not asked for
    with pytest.raises(ProtonetError, match=r"output 'data' is also a graph input, which "
                                            r"layer 'relu' overwrites in place"):
        export(build(text), str(tmp_path / "both.onnx"), outputs=["data", "ip"])
    assert not (tmp_path / "both.onnx").exists()
    alone = inputs(data=(2, 3)) + 'layer { name: "relu" type: "ReLU" bottom: "data" top: "data" }'
    with pytest.raises(ProtonetError, match="give that layer a top of its own"):
        export(build(alone), str(tmp_path / "alone.onnx"))
    dropout = inputs(data=(2, 3)) + """
        layer { name: "drop" type: "Dropout" bottom: "data" top: "data" }
        layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
                inner_product_param { num_output: 4 } }"""
    assert roundtrip(tmp_path, dropout, outputs=["data", "ip"]).outputs == [
        ("data", (2, 3)), ("ip", (2, 4))]  # passed on unchanged: one value, one name


TRAIN_TEST = """
    layer { name: "data" type: "DummyData" top: "data" top: "label"
            dummy_data_param { shape { dim: 2 dim: 3 dim: 5 dim: 5 } shape { dim: 2 }
                               data_filler { type: "gaussian" } data_filler { type: "uniform" } } }
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
            convolution_param { num_output: 4 kernel_size: 3 } }
    layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
            inner_product_param { num_output: 3 } }
    layer { name: "accuracy" type: "Accuracy" bottom: "ip" bottom: "label" top: "accuracy"
            include { phase: TEST } }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def test_training_layers_are_dropped_and_data_layers_become_inputs(tmp_path):
    net = build(TRAIN_TEST)
    report = export(net, str(tmp_path / "m.onnx"))
    assert report.ok and report.rows
    assert [n for n, _ in report.inputs] == ["data"]
    assert report.outputs == [("ip", (2, 3))]
    text = "\n".join(report.notes)
    assert "dropped training-only layer 'accuracy' (Accuracy)" in text
    assert "dropped training-only layer 'loss' (SoftmaxWithLoss)" in text
    assert "'label'" in text


def test_unexportable_layers_are_named_with_the_reason_and_nothing_is_written(tmp_path):
    text = inputs(x=(3, 2, 4), cont=(3, 2), data=(2, 3, 4, 5)) + """
        layer { name: "lstm" type: "LSTM" bottom: "x" bottom: "cont" top: "h"
                recurrent_param { num_output: 5 } }
        layer { name: "after" type: "ReLU" bottom: "h" top: "h" }
        layer { name: "pool" type: "Pooling" bottom: "data" top: "p" top: "mask"
                pooling_param { pool: MAX kernel_size: 1 stride_h: 2 stride_w: 3 } }"""
    path = tmp_path / "m.onnx"
    with pytest.raises(ProtonetError) as err:
        export(build(text), str(path))
    message = str(err.value)
    assert "layer 'lstm' (LSTM): Caffe's recurrent layers" in message
    assert "layer 'pool' (Pooling): its last window lies wholly past the image" in message
    assert "'after'" not in message  # it only reads what failed
    assert "\n" not in message and not path.exists()


def test_a_type_without_exporter_is_named(tmp_path, monkeypatch):
    monkeypatch.delitem(EXPORTERS, "TanH")
    with pytest.raises(ProtonetError, match=r"layer 'y' \(TanH\): no ONNX exporter"):
        export(build(X + 'layer { name: "y" type: "TanH" bottom: "data" top: "y" }'),
               str(tmp_path / "m.onnx"))
    assert not (tmp_path / "m.onnx").exists()


def test_train_phase_is_refused(tmp_path):
    net = build(X + 'layer { name: "y" type: "ReLU" bottom: "data" top: "y" }', protonet.TRAIN)
    with pytest.raises(ProtonetError, match="TEST-phase"):
        export(net, str(tmp_path / "m.onnx"))


DYNAMIC = inputs(data=(2, 3, 8, 8), small=(2, 3, 5, 5)) + """
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
            convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
    layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
            pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
    layer { name: "crop" type: "Crop" bottom: "pool" bottom: "small" top: "crop"
            crop_param { axis: 0 } }
    layer { name: "slice" type: "Slice" bottom: "crop" top: "s1" top: "s2"
            slice_param { axis: 1 slice_point: 1 } }
    layer { name: "cat" type: "Concat" bottom: "s2" bottom: "s1" top: "cat" }
    layer { name: "reshape" type: "Reshape" bottom: "cat" top: "r"
            reshape_param { shape { dim: 0 dim: -1 } } }
    layer { name: "ip" type: "InnerProduct" bottom: "r" top: "ip"
            inner_product_param { num_output: 6 } }
    layer { name: "flat" type: "Flatten" bottom: "conv" top: "flat" }
    layer { name: "arg" type: "ArgMax" bottom: "ip" top: "arg" argmax_param { top_k: 2 } }
"""


def test_dynamic_batch_runs_at_other_batch_sizes(tmp_path):
    report = roundtrip(tmp_path, DYNAMIC, dynamic_batch=True)
    assert {r["batch"] for r in report.rows} == {2, 1}  # the check tries a second size
    model = onnx.load(str(tmp_path / "m.onnx"))
    assert [i.type.tensor_type.shape.dim[0].dim_param for i in model.graph.input] == ["N", "N"]
    net = build(DYNAMIC)
    rng = np.random.default_rng(3)
    feeds = {"data": rng.standard_normal((5, 3, 8, 8)), "small": rng.standard_normal((5, 3, 5, 5))}
    got = run_onnx(tmp_path / "m.onnx", **feeds)
    want = net.forward(**feeds)
    assert got["arg"].shape == (5, 1, 2) and got["flat"].shape == (5, 256)
    np.testing.assert_array_equal(got["arg"], want["arg"])
    np.testing.assert_allclose(got["flat"], want["flat"], rtol=1e-5, atol=1e-5)


def test_dynamic_batch_refuses_a_reshape_that_fixes_the_batch(tmp_path):
    text = X + """layer { name: "r" type: "Reshape" bottom: "data" top: "y"
                          reshape_param { shape { dim: 2 dim: -1 } } }"""
    with pytest.raises(ProtonetError, match=r"layer 'r' \(Reshape\): .*fixes the batch size"):
        export(build(text), str(tmp_path / "m.onnx"), dynamic_batch=True)


def test_dynamic_batch_refuses_a_net_whose_weights_fix_the_batch(tmp_path):
    net = build(inputs(data=(3, 4)) + """layer { name: "ip" type: "InnerProduct" bottom: "data"
        top: "y" inner_product_param { axis: 0 num_output: 5 } }""")
    with pytest.raises(ProtonetError, match=r"--dynamic-batch: the net does not run at batch "
                                            r"1: layer 'ip' \(InnerProduct\)"):
        export(net, str(tmp_path / "m.onnx"), dynamic_batch=True)
    assert not (tmp_path / "m.onnx").exists() and net.blobs["data"].shape == (3, 4)
    assert export(net, str(tmp_path / "m.onnx")).ok  # a fixed batch is fine


@pytest.mark.parametrize("opset", [13, 17])
def test_older_opsets(tmp_path, opset):
    text = inputs(data=(2, 6, 4, 4)) + """
        layer { name: "s" type: "Slice" bottom: "data" top: "a" top: "b" }
        layer { name: "m" type: "MVN" bottom: "a" top: "m" }
        layer { name: "r" type: "Reduction" bottom: "b" top: "r"
                reduction_param { operation: SUMSQ axis: 1 } }
        layer { name: "bn" type: "BatchNorm" bottom: "b" top: "bn"
                batch_norm_param { use_global_stats: false } }"""
    report = roundtrip(tmp_path, text, opset=opset)
    assert report.opset == opset
    assert onnx.load(str(tmp_path / "m.onnx")).opset_import[0].version == opset


def test_default_opset_is_the_newest_onnxruntime_runs(tmp_path, monkeypatch):
    net = build(X + 'layer { name: "y" type: "ReLU" bottom: "data" top: "y" }')
    report = export(net, str(tmp_path / "m.onnx"))
    assert report.opset == runtime_opset(onnx.defs.onnx_opset_version()) >= 17
    with pytest.raises(ProtonetError, match="--opset 12 is out of range"):
        export(net, str(tmp_path / "m.onnx"), opset=12)
    # without onnxruntime: opset 17 and no check
    monkeypatch.setattr("protonet.export.check.runtime_opset", lambda newest: None)
    monkeypatch.setattr("protonet.export.check.have_runtime", lambda: False)
    report = export(net, str(tmp_path / "m.onnx"))
    assert report.opset == 17 and report.rows is None


def wrong_relu(L):
    L.node("Identity", [L.inputs[0]], [L.out(0)])


def test_to_onnx_raises_when_the_check_fails_and_keeps_the_file(tmp_path, monkeypatch):
    net = build(X + 'layer { name: "y" type: "ReLU" bottom: "data" top: "y" }')
    monkeypatch.setitem(EXPORTERS, "ReLU", wrong_relu)
    path = tmp_path / "m.onnx"
    with pytest.raises(ProtonetError, match="differs from protonet: output 'y'"):
        net.to_onnx(str(path))
    assert path.exists()


# -- the command line -------------------------------------------------------------------------
CLI_LAYERS = """
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip"
        inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
"""
CLI_NET = ('name: "tiny"\n' + inputs(data=(2, 3, 9, 9)) + CLI_LAYERS
           + 'layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }\n')


@pytest.fixture
def cli_files(tmp_path):
    net_path = tmp_path / "deploy.prototxt"
    net_path.write_text(CLI_NET)
    weights = tmp_path / "w.caffemodel"
    build(CLI_NET).save(str(weights))
    return str(net_path), str(weights), str(tmp_path / "out.onnx")


def test_cli_export_checks_and_exits_0(cli_files, capsys):
    net, weights, out = cli_files
    assert main(["export", net, weights, out]) == 0
    text = capsys.readouterr().out
    assert f"wrote {out}: opset" in text and "inputs: data 2x3x9x9; outputs: prob 2x3" in text
    assert "check against onnxruntime" in text
    assert "every output within 0.0001 of its scale (1 compared)" in text
    assert os.path.exists(out)
    result = run_onnx(out, data=np.ones((2, 3, 9, 9)))
    ref = protonet.Net(net, protonet.TEST, weights=weights).forward(data=np.ones((2, 3, 9, 9)))
    np.testing.assert_allclose(result["prob"], ref["prob"], rtol=1e-5)


def test_cli_exits_3_when_an_output_is_over_tolerance(cli_files, capsys, monkeypatch):
    net, weights, out = cli_files
    monkeypatch.setitem(EXPORTERS, "Softmax", wrong_relu)
    assert main(["export", net, weights, out, "--check"]) == 3
    text = capsys.readouterr().out
    assert "FAIL" in text and "1 of 1 compared outputs differ" in text and os.path.exists(out)


def test_cli_options(cli_files, capsys):
    net, weights, out = cli_files
    assert main(["export", net, weights, out, "--no-check", "--opset", "17",
                 "--input-shape", "data=1,3,9,9"]) == 0
    text = capsys.readouterr().out
    assert "opset 17" in text and "data 1x3x9x9" in text and "check" not in text
    assert main(["export", net, weights, out, "--dynamic-batch"]) == 0
    text = capsys.readouterr().out
    assert "(batch: any)" in text and "(batch 1)" in text


def test_cli_says_what_to_install(cli_files, capsys, monkeypatch):
    net, weights, out = cli_files
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert main(["export", net, weights, out, "--check"]) == 1
    assert "the check needs onnxruntime: pip install" in capsys.readouterr().err
    assert main(["export", net, weights, out]) == 0  # without it, no check by default
    assert "check against" not in capsys.readouterr().out
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert main(["export", net, weights, out]) == 1
    assert "ONNX export needs the onnx package: pip install 'protonet[onnx]'" in \
        capsys.readouterr().err


def test_cli_bad_input_is_one_line(cli_files, capsys):
    net, weights, out = cli_files
    assert main(["export", net, weights + ".missing", out]) == 1
    err = capsys.readouterr().err
    assert err.startswith("protonet: error: ") and "no such file" in err
    assert "Traceback" not in err and err.count("\n") == 1 and not os.path.exists(out)
    assert main(["export", net, weights, out, "--opset", "3"]) == 1
    assert "--opset 3 is out of range" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["export", net, weights, out, "--input-shape", "data=one"])
    assert e.value.code == 2


def test_cli_unexportable_layer_writes_nothing(tmp_path, cli_files, capsys):
    _, weights, out = cli_files
    net = tmp_path / "lstm.prototxt"
    net.write_text(inputs(x=(3, 2, 4), cont=(3, 2)) + """
        layer { name: "lstm" type: "LSTM" bottom: "x" bottom: "cont" top: "h"
                recurrent_param { num_output: 5 } }""")
    assert main(["export", str(net), weights, out]) == 1
    err = capsys.readouterr().err
    assert "protonet: error: cannot export to ONNX: layer 'lstm' (LSTM)" in err
    assert not os.path.exists(out)


def test_cli_python_layer_is_named_before_anything_runs(tmp_path, cli_files, capsys):
    _, weights, out = cli_files
    net = tmp_path / "py.prototxt"
    net.write_text(X + """layer { name: "py" type: "Python" bottom: "data" top: "y"
                                  python_param { module: "no_such_module" layer: "L" } }""")
    assert main(["export", str(net), weights, out]) == 1
    err = capsys.readouterr().err
    assert "layer 'py' (Python): a Python layer runs the module 'no_such_module'" in err


def test_cli_train_test_net_with_data_layer_and_input_shape(tmp_path, cli_files, capsys):
    _, weights, out = cli_files
    net = tmp_path / "train_val.prototxt"
    net.write_text("""name: "tiny"
        layer { name: "data" type: "Data" top: "data" top: "label"
                data_param { source: "no_such_lmdb" backend: LMDB batch_size: 2 }
                transform_param { scale: 0.00390625 } }""" + CLI_LAYERS + """
        layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
        """)
    assert main(["export", str(net), weights, out, "--input-shape", "data=2,3,9,9"]) == 0
    captured = capsys.readouterr()
    assert "inputs: data 2x3x9x9; outputs: ip 2x3" in captured.out
    assert "dropped training-only layer 'loss' (SoftmaxWithLoss)" in captured.err
    assert "transform_param" in captured.err and "blob 'label'" in captured.err


def test_cli_python_data_layer_becomes_an_input(tmp_path, cli_files, capsys):
    _, weights, out = cli_files
    net = tmp_path / "py_data.prototxt"
    net.write_text("""
        layer { name: "data" type: "Python" top: "data"
                python_param { module: "no_such_module" layer: "DataLayer" } }
        layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
                convolution_param { num_output: 4 kernel_size: 3 } }""")
    assert main(["export", str(net), weights, out, "--input-shape", "data=1,3,5,5"]) == 0
    text = capsys.readouterr().out
    assert "inputs: data 1x3x5x5; outputs: conv 1x4x3x3" in text and "(1 compared)" in text


def test_dynamic_batch_outputs_declare_their_inferred_shapes(tmp_path):
    """A graph output's shape is N x the rest with --dynamic-batch (not rank only)."""
    import onnx
    import protonet
    from protonet.io import parse_net
    net = protonet.Net(parse_net(
        'input: "data" input_shape { dim: 2 dim: 3 dim: 8 dim: 8 }\n'
        'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
        'convolution_param { num_output: 4 kernel_size: 3 '
        'weight_filler { type: "gaussian" std: 0.1 } } }\n'
        'layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" '
        'pooling_param { pool: MAX kernel_size: 2 stride: 2 } }'), protonet.TEST)
    path = tmp_path / "m.onnx"
    net.to_onnx(str(path), dynamic_batch=True)
    (out,) = onnx.load(str(path)).graph.output
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["N", 4, 3, 3]
