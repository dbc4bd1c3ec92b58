"""caffe.coord_map: coordinate maps between NetSpec tops and the Crop offsets FCN needs."""
import os

import numpy as np
import pytest

import protonet
from protonet import ProtonetError
from protonet.coord_map import (AxisMismatchException, compose, coord_map_from_to, crop,
                                inverse, tops_from_net)
from protonet.io.prototxt import read_net
from protonet.net_spec import layers as L, params as P


def conv_pool_deconv(ks=3, stride=1, pad=0, pool=2, dstride=2, dpad=0, **conv):
    n = protonet.NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 1, 100, 100]))
    n.conv = L.Convolution(n.data, num_output=4, kernel_size=ks, stride=stride, pad=pad, **conv)
    n.pool = L.Pooling(n.conv, pool=P.Pooling.MAX, kernel_size=pool, stride=pool)
    n.deconv = L.Deconvolution(n.pool, num_output=4, kernel_size=2 * dstride, stride=dstride,
                               pad=dpad)
    return n


def test_conv_pool_deconv_by_hand():
    # data -> conv (k3): x - 1; -> pool (k2 s2): (x - 1/2) / 2; -> deconv (k4 s2): 2x + 3/2.
    # Composed, deconv = data: the map from deconv back to data is the identity
    n = conv_pool_deconv()
    ax, a, b = coord_map_from_to(n.deconv, n.data)
    assert (ax, float(a[0]), float(b[0])) == (1, 1.0, 0.0)
    # pool k4 s4: (x - 3/2) / 4; deconv k8 s4: 4x + 7/2 -> deconv = data + 1, data = deconv - 1
    n = conv_pool_deconv(pool=4, dstride=4)
    ax, a, b = coord_map_from_to(n.deconv, n.data)
    assert (ax, float(a[0]), float(b[0])) == (1, 1.0, -1.0)


@pytest.mark.parametrize("pad, shift", [(0, 0.0), (1, -1.0), (3, -3.0)])
def test_padding_shifts_the_map_by_the_pad(pad, shift):
    n = conv_pool_deconv(pad=pad)
    _, a, b = coord_map_from_to(n.deconv, n.data)
    assert float(a[0]) == 1 and float(b[0]) == shift


def test_dilation_widens_the_kernel():
    # k3 dilated by 2 spans 5 pixels: the conv shifts by 2, not 1, and data = deconv + 1
    n = conv_pool_deconv(dilation=2)
    _, _, b = coord_map_from_to(n.deconv, n.data)
    assert float(b[0]) == 1.0


def test_pass_through_layers_and_1x1_convolutions_are_identities():
    n = conv_pool_deconv()
    n.relu = L.ReLU(n.deconv)
    n.drop = L.Dropout(n.relu)
    n.conv1x1 = L.Convolution(n.drop, num_output=2, kernel_size=1)
    base = coord_map_from_to(n.deconv, n.data)
    for top in (n.relu, n.drop, n.conv1x1):
        assert coord_map_from_to(top, n.data) == base


def test_per_axis_windows_map_each_axis():
    n = protonet.NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 3, 40, 40, 40]))
    n.conv = L.Convolution(n.data, num_output=2, kernel_size=[3, 3, 3], pad=[0, 1, 2])
    n.pool = L.Pooling(n.conv, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.deconv = L.Deconvolution(n.pool, num_output=2, kernel_size=4, stride=2)
    ax, a, b = coord_map_from_to(n.deconv, n.data)
    assert ax == 1 and np.all(a == 1)
    np.testing.assert_array_equal(b, [0, -1, -2])
    # the legacy _h/_w fields give the two axes of a 2-D window (pycaffe refuses them)
    n = protonet.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 30, 30]))
    n.conv = L.Convolution(n.data, num_output=1, kernel_h=3, kernel_w=5)
    _, a, b = coord_map_from_to(n.conv, n.data)
    np.testing.assert_array_equal(b, [1, 2])   # data = conv + (k - 1) / 2


def test_crop_of_a_crop_adds_the_offset():
    n = conv_pool_deconv(dpad=0, pad=5)
    _, a, b = coord_map_from_to(n.deconv, n.data)
    n.crop = L.Crop(n.deconv, n.data, axis=2, offset=3)
    ax, a2, b2 = coord_map_from_to(n.crop, n.data)
    assert ax == 1 and a2 == a and float(b2[0]) == float(b[0]) + 3


def test_crop_helper_makes_the_crop_layer():
    n = conv_pool_deconv(pad=7)
    n.score = crop(n.deconv, n.data)
    assert n.score.fn.type_name == "Crop"
    assert n.score.fn.params["crop_param"] == {"axis": 2, "offset": [7]}
    assert list(n.score.fn.inputs) == [n.deconv, n.data]


def test_unconnected_tops_raise_runtime_error():
    n = conv_pool_deconv()
    n.ip = L.InnerProduct(n.deconv, num_output=10)
    with pytest.raises(RuntimeError, match="no chain of spatial layers") as err:
        coord_map_from_to(n.ip, n.data)
    assert isinstance(err.value, ProtonetError)


@pytest.mark.parametrize("kw, message", [
    (dict(pool=3, dstride=2), "scales differ"),    # 3x down, 2x up
    (dict(dpad=10), "negative offset"),            # output smaller than the input
    (dict(ks=2), "fractional"),                    # an even kernel: shift of 1/2
])
def test_impossible_crops_raise_assertion_error(kw, message):
    n = conv_pool_deconv(**kw)
    with pytest.raises(AssertionError, match=message):
        crop(n.deconv, n.data)


def test_compose_and_inverse():
    m = (1, np.array([2.0]), np.array([3.0]))
    ax, a, b = compose(m, inverse(m))
    assert ax == 1 and a == 1 and b == 0
    assert compose((None, 1, 0), m) == m
    with pytest.raises(AxisMismatchException):
        compose((1, 1, 0), (2, 1, 0))


def test_fcn_crop_offsets_match_the_published_prototxts(corpus):
    """Every Crop in the FCN reference nets: axis and offset as coord_map computes them
    (FCN-32s 19, FCN-8s 5/9/31, FCN-AlexNet 18, ...)."""
    root = os.path.join(corpus, "shelhamer")
    checked = 0
    for folder, _, files in os.walk(root):
        for name in files:
            if not name.endswith(".prototxt") or "solver" in name:
                continue
            net = read_net(os.path.join(folder, name), lenient=True)
            tops = tops_from_net(net)
            for lp in net.layer:
                if lp.type != "Crop":
                    continue
                made = crop(tops[lp.bottom[0]], tops[lp.bottom[1]]).fn.params["crop_param"]
                assert made == {"axis": lp.crop_param.axis,
                                "offset": list(lp.crop_param.offset)}, (name, lp.name)
                checked += 1
    if not checked:
        pytest.skip("no FCN nets in the corpus")
    assert checked >= 10
