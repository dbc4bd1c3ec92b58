"""The benchmark networks, as prototxt text with DummyData inputs (shared by both runners)."""

LENET = """name: "LeNet"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: %(batch)d dim: 1 dim: 28 dim: 28 } shape { dim: %(batch)d }
    data_filler { type: "constant" value: 0.5 } data_filler { type: "constant" value: 3 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 20 kernel_size: 5 stride: 1
    weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 50 kernel_size: 5 stride: 1
    weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool2" top: "ip1"
  param { lr_mult: 1 } param { lr_mult: 2 }
  inner_product_param { num_output: 500
    weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  param { lr_mult: 1 } param { lr_mult: 2 }
  inner_product_param { num_output: 10
    weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""


def _conv(name, bottom, num, kernel, pad=0, stride=1, group=1, std=0.01):
    extra = (f" pad: {pad}" if pad else "") + (f" stride: {stride}" if stride > 1 else "") + \
        (f" group: {group}" if group > 1 else "")
    return (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}"\n'
            f'  param {{ lr_mult: 1 }} param {{ lr_mult: 2 }}\n'
            f'  convolution_param {{ num_output: {num} kernel_size: {kernel}{extra}\n'
            f'    weight_filler {{ type: "gaussian" std: {std} }} '
            f'bias_filler {{ type: "constant" }} }} }}\n')


def _ip(name, bottom, num, std=0.01):
    return (f'layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{name}"\n'
            f'  param {{ lr_mult: 1 }} param {{ lr_mult: 2 }}\n'
            f'  inner_product_param {{ num_output: {num}\n'
            f'    weight_filler {{ type: "gaussian" std: {std} }} '
            f'bias_filler {{ type: "constant" }} }} }}\n')


def _pool(name, bottom, pool, kernel=3, stride=2):
    return (f'layer {{ name: "{name}" type: "Pooling" bottom: "{bottom}" top: "{name}"\n'
            f'  pooling_param {{ pool: {pool} kernel_size: {kernel} stride: {stride} }} }}\n')


def _relu(name, blob):
    return f'layer {{ name: "{name}" type: "ReLU" bottom: "{blob}" top: "{blob}" }}\n'


def _lrn(name, bottom):
    return (f'layer {{ name: "{name}" type: "LRN" bottom: "{bottom}" top: "{name}"\n'
            f'  lrn_param {{ local_size: 5 alpha: 0.0001 beta: 0.75 }} }}\n')


# Caffe's examples/cifar10/cifar10_quick_train_test.prototxt (TRAIN phase), DummyData input
CIFAR10_QUICK = ('name: "CIFAR10_quick"\n'
                 'layer { name: "data" type: "DummyData" top: "data" top: "label"\n'
                 '  dummy_data_param { shape { dim: %(batch)d dim: 3 dim: 32 dim: 32 } '
                 'shape { dim: %(batch)d }\n'
                 '    data_filler { type: "constant" value: 0.5 } '
                 'data_filler { type: "constant" value: 3 } } }\n'
                 + _conv("conv1", "data", 32, 5, pad=2, std=0.0001)
                 + _pool("pool1", "conv1", "MAX") + _relu("relu1", "pool1")
                 + _conv("conv2", "pool1", 32, 5, pad=2) + _relu("relu2", "conv2")
                 + _pool("pool2", "conv2", "AVE")
                 + _conv("conv3", "pool2", 64, 5, pad=2) + _relu("relu3", "conv3")
                 + _pool("pool3", "conv3", "AVE")
                 + _ip("ip1", "pool3", 64, std=0.1) + _ip("ip2", "ip1", 10, std=0.1)
                 + 'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" '
                   'top: "loss" }\n')

# BVLC's models/bvlc_reference_caffenet/deploy.prototxt, DummyData input in place of Input
CAFFENET = ('name: "CaffeNet"\n'
            'layer { name: "data" type: "DummyData" top: "data"\n'
            '  dummy_data_param { shape { dim: %(batch)d dim: 3 dim: 227 dim: 227 }\n'
            '    data_filler { type: "constant" value: 0.5 } } }\n'
            + _conv("conv1", "data", 96, 11, stride=4) + _relu("relu1", "conv1")
            + _pool("pool1", "conv1", "MAX") + _lrn("norm1", "pool1")
            + _conv("conv2", "norm1", 256, 5, pad=2, group=2) + _relu("relu2", "conv2")
            + _pool("pool2", "conv2", "MAX") + _lrn("norm2", "pool2")
            + _conv("conv3", "norm2", 384, 3, pad=1) + _relu("relu3", "conv3")
            + _conv("conv4", "conv3", 384, 3, pad=1, group=2) + _relu("relu4", "conv4")
            + _conv("conv5", "conv4", 256, 3, pad=1, group=2) + _relu("relu5", "conv5")
            + _pool("pool5", "conv5", "MAX")
            + _ip("fc6", "pool5", 4096, std=0.005) + _relu("relu6", "fc6")
            + 'layer { name: "drop6" type: "Dropout" bottom: "fc6" top: "fc6"\n'
              '  dropout_param { dropout_ratio: 0.5 } }\n'
            + _ip("fc7", "fc6", 4096, std=0.005) + _relu("relu7", "fc7")
            + 'layer { name: "drop7" type: "Dropout" bottom: "fc7" top: "fc7"\n'
              '  dropout_param { dropout_ratio: 0.5 } }\n'
            + _ip("fc8", "fc7", 1000) + 'layer { name: "prob" type: "Softmax" bottom: "fc8" '
                                        'top: "prob" }\n')

#: name -> (prototxt template, default batch, forward-only?)
NETS = {"lenet": (LENET, 64, False), "cifar10_quick": (CIFAR10_QUICK, 100, False),
        "caffenet": (CAFFENET, 10, True)}


#: each net's input image shape (C, H, W)
IMAGE_SHAPES = {"lenet": (1, 28, 28), "cifar10_quick": (3, 32, 32), "caffenet": (3, 227, 227)}
#: what the timed steps see: uniform [0, 1) values (pixel-like, as in training) or every
#: value 0.5 (the DummyData fill; feature maps then come out flat, max pools all tie)
INPUTS = ("random", "constant")


def input_batch(name: str, batch: int, kind: str = "random"):
    """The timed steps' input for net ``name`` (float32 ``(batch, C, H, W)``); both runners
    feed the same values."""
    import numpy as np
    shape = (batch,) + IMAGE_SHAPES[name]
    if kind == "constant":
        return np.full(shape, 0.5, np.float32)
    return np.random.default_rng(0).random(shape, np.float32)


def flops(name: str, batch: int) -> int:
    """FLOPs of one timed step: 2 per multiply-accumulate, forward+backward ~ 3x forward.

    The MACC comes from protonet's summary tool on the net built without weights.
    """
    import protonet
    from protonet.io import parse_net
    from protonet.tools.summary import summarize
    template, _, forward_only = NETS[name]
    net = protonet.Net(parse_net(template % {"batch": batch}),
                       protonet.TEST if forward_only else protonet.TRAIN, init_weights=False)
    return 2 * summarize(net)["totals"]["macc"] * (1 if forward_only else 3)
