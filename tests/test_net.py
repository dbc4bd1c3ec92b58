"""The network graph as Caffe's Net builds it."""
import numpy as np
import pytest

import protonet
from protonet import ProtonetError
from protonet.graph import insert_splits
from protonet.io import parse_net

HEAD = """name: "t"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 4 dim: 6 } shape { dim: 4 } } }
"""


def net_from(text, phase=protonet.TRAIN, **kw):
    return protonet.Net(parse_net(HEAD + text), phase, seed=3, **kw)


def ip(name, bottom, top, n=5, extra=""):
    return (f'layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{top}" '
            f'{extra} inner_product_param {{ num_output: {n} '
            f'weight_filler {{ type: "gaussian" std: 0.1 }} }} }}\n')


LOSS = ('layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" '
        'top: "loss" }\n')


# -- NetState filtering -------------------------------------------------------------------------
RULES = """
layer { name: "train_only" type: "ReLU" bottom: "data" top: "a" include { phase: TRAIN } }
layer { name: "test_only" type: "ReLU" bottom: "data" top: "b" include { phase: TEST } }
layer { name: "not_test" type: "ReLU" bottom: "data" top: "c" exclude { phase: TEST } }
layer { name: "level2" type: "ReLU" bottom: "data" top: "d" include { min_level: 2 } }
layer { name: "upto1" type: "ReLU" bottom: "data" top: "e" include { max_level: 1 } }
layer { name: "stage_x" type: "ReLU" bottom: "data" top: "f" include { stage: "x" } }
layer { name: "stages_xy" type: "ReLU" bottom: "data" top: "g" include { stage: "x" stage: "y" } }
layer { name: "not_x" type: "ReLU" bottom: "data" top: "h" include { not_stage: "x" } }
layer { name: "either" type: "ReLU" bottom: "data" top: "i"
        include { phase: TEST } include { stage: "y" } }
"""


@pytest.mark.parametrize("phase, level, stages, expected", [
    (protonet.TRAIN, 0, [], ["train_only", "not_test", "upto1", "not_x"]),
    (protonet.TEST, 0, [], ["test_only", "upto1", "not_x", "either"]),
    (protonet.TRAIN, 2, ["x"], ["train_only", "not_test", "level2", "stage_x"]),
    (protonet.TRAIN, 1, ["x", "y"], ["train_only", "not_test", "upto1", "stage_x", "stages_xy",
                                     "either"]),
])
def test_net_state_rules(phase, level, stages, expected):
    net = protonet.Net(parse_net(HEAD + RULES), phase, level=level, stages=stages)
    kept = [n for n, l in zip(net.layer_names, net.layers) if l.type == "ReLU"]
    assert kept == expected


def test_include_and_exclude_together_is_an_error():
    with pytest.raises(ProtonetError, match="either include or exclude"):
        net_from('layer { name: "r" type: "ReLU" bottom: "data" top: "r" '
                 'include { phase: TRAIN } exclude { phase: TEST } }')


# -- splits, in-place, producers -------------------------------------------------------------------
def test_splits_get_caffes_names_and_sum_gradients():
    net = net_from(ip("fc", "data", "fc", 3) + ip("a", "fc", "a", 2) + ip("b", "fc", "b", 2))
    assert "fc_fc_0_split" in net.layer_names
    assert net.top_names["fc_fc_0_split"] == ["fc_fc_0_split_0", "fc_fc_0_split_1"]
    assert net.bottom_names["a"] == ["fc_fc_0_split_0"]
    assert net.bottom_names["b"] == ["fc_fc_0_split_1"]


def test_a_weighted_top_that_is_also_read_is_split_with_the_weight_on_split_0():
    param = parse_net(HEAD + ip("fc", "data", "fc", 3, 'loss_weight: 2') + ip("a", "fc", "a"))
    split = insert_splits(param)
    names = [l.name for l in split.layer]
    assert names == ["data", "fc", "fc_fc_0_split", "a"]
    assert list(split.layer[2].loss_weight) == [2, 0]
    assert not len(split.layer[1].loss_weight)
    assert list(split.layer[3].bottom) == ["fc_fc_0_split_1"]


def test_in_place_layers_share_the_blob():
    net = net_from(ip("fc", "data", "fc") +
                   'layer { name: "relu" type: "ReLU" bottom: "fc" top: "fc" }\n')
    assert net.top_vecs[2][0] is net.bottom_vecs[2][0] is net.blobs["fc"]


def test_second_producer_is_an_error():
    with pytest.raises(ProtonetError, match="top blob 'fc' is produced by more than one layer"):
        net_from(ip("fc", "data", "fc") + ip("fc2", "data", "fc"))


def test_unknown_bottom_is_an_error():
    with pytest.raises(ProtonetError, match="layer 'fc'.*unknown bottom blob 'nope'"):
        net_from(ip("fc", "nope", "fc"))


def test_unknown_type_lists_known_types():
    with pytest.raises(ProtonetError) as err:
        net_from('layer { name: "w" type: "Warp" bottom: "data" top: "w" }')
    assert "unknown layer type 'Warp'" in str(err.value)
    assert "Convolution" in str(err.value) and "SoftmaxWithLoss" in str(err.value)


def test_shape_mismatch_names_layer_bottoms_and_shapes():
    with pytest.raises(ProtonetError) as err:
        net_from('layer { name: "cat" type: "Concat" bottom: "data" bottom: "label" top: "c" }')
    message = str(err.value)
    assert "layer 'cat'" in message and "[4, 6]" in message and "[4]" in message


# -- loss weights, outputs, backward ------------------------------------------------------------------
def test_outputs_are_unconsumed_tops_in_alphabetical_order():
    net = net_from(ip("fc", "data", "fc") + LOSS +
                   'layer { name: "acc" type: "Accuracy" bottom: "fc" bottom: "label" '
                   'top: "accuracy" }\n')
    assert net.outputs == ["accuracy", "loss"]
    assert net.blob_loss_weights["loss"] == 1 and net.blob_loss_weights["accuracy"] == 0


def test_backward_needs_follow_caffe():
    net = net_from(
        ip("frozen", "data", "frozen", 5, 'param { lr_mult: 0 } param { lr_mult: 0 }') +
        ip("fc", "frozen", "fc") + LOSS +
        ip("side", "data", "side") +  # never reaches a loss
        'layer { name: "acc" type: "Accuracy" bottom: "fc" bottom: "label" top: "acc" }\n')
    need = dict(zip(net.layer_names, net.layer_need_backward))
    assert need == {"data": False, "data_data_0_split": False, "label_data_1_split": False,
                    "frozen": False, "fc": True, "fc_fc_0_split": True,
                    "loss": True, "side": False, "acc": False}
    i = net.layer_names.index("fc")
    assert net.bottom_need_backward[i] == [False]  # nothing below fc learns
    i = net.layer_names.index("loss")
    assert net.bottom_need_backward[i] == [True, False]  # labels get no gradient (data is frozen)


def test_propagate_down_and_force_backward():
    net = net_from(ip("fc", "data", "fc", 5, 'propagate_down: false') + LOSS)
    assert net.bottom_need_backward[1] == [False]
    param = parse_net(HEAD + ip("fc", "data", "fc") + LOSS)
    param.force_backward = True
    net = protonet.Net(param, protonet.TRAIN)
    assert net.bottom_need_backward[1] == [True]
    net.forward()
    net.backward()
    assert np.any(net.blobs["data"].diff != 0)


def test_propagate_down_count_must_match_bottoms():
    with pytest.raises(ProtonetError, match="propagate_down"):
        net_from(ip("fc", "data", "fc", 5, 'propagate_down: false propagate_down: true'))


def test_loss_weight_count_must_match_tops():
    with pytest.raises(ProtonetError, match="loss_weight"):
        net_from(ip("fc", "data", "fc", 5, 'loss_weight: 1 loss_weight: 2'))


def test_forward_returns_weighted_loss_and_backward_fills_param_diffs():
    net = net_from(ip("fc", "data", "fc") +
                   LOSS.replace('top: "loss" }', 'top: "loss" loss_weight: 3 }'))
    net.blobs["data"].data[...] = np.random.default_rng(0).standard_normal((4, 6))
    net.blobs["label"].data[...] = [0, 1, 2, 3]
    loss = net.forward_from_to()
    assert loss == pytest.approx(3 * float(net.blobs["loss"].data))
    net.clear_param_diffs()
    net.backward_from_to()
    w = net.params["fc"][0]
    assert np.abs(w.diff).sum() > 0
    # loss weight 3 scales the gradient: compare with weight 1
    ref = net_from(ip("fc", "data", "fc") + LOSS)
    ref.params["fc"][0].data[...] = w.data
    ref.params["fc"][1].data[...] = net.params["fc"][1].data
    ref.blobs["data"].data[...] = net.blobs["data"].data
    ref.blobs["label"].data[...] = [0, 1, 2, 3]
    ref.forward_from_to()
    ref.clear_param_diffs()
    ref.backward_from_to()
    np.testing.assert_allclose(w.diff, 3 * ref.params["fc"][0].diff, rtol=1e-5, atol=1e-7)


# -- weight sharing ------------------------------------------------------------------------------
def test_shared_params_share_data_and_accumulate_diffs():
    net = net_from(ip("a", "data", "a", 6, 'param { name: "w" } param { name: "b" }') +
                   ip("fc", "a", "fc", 6, 'param { name: "w" } param { name: "b" }') + LOSS)
    wa, wb = net.params["a"][0], net.params["fc"][0]
    assert np.shares_memory(wa.data, wb.data) and np.shares_memory(wa.diff, wb.diff)
    assert len(net.learnable_params) == 2


def test_sharing_with_a_different_shape_is_an_error():
    with pytest.raises(ProtonetError, match="cannot share param 'w'"):
        net_from(ip("a", "data", "a", 6, 'param { name: "w" }') +
                 ip("fc", "a", "fc", 5, 'param { name: "w" }'))


def test_sharing_with_mismatched_lr_mult_is_an_error():
    with pytest.raises(ProtonetError, match="mismatched lr_mult"):
        net_from(ip("a", "data", "a", 6, 'param { name: "w" lr_mult: 1 }') +
                 ip("fc", "a", "fc", 6, 'param { name: "w" lr_mult: 2 }'))


# -- pycaffe surface -------------------------------------------------------------------------------
def test_pycaffe_style_access(corpus):
    net = protonet.Net(str(corpus / "BVLC/caffe/examples/mnist/lenet.prototxt"), protonet.TEST,
                       seed=1)
    assert list(net.blobs) == ["data", "conv1", "pool1", "conv2", "pool2", "ip1", "ip2", "prob"]
    assert [(k, [b.shape for b in v]) for k, v in net.params.items()] == [
        ("conv1", [(20, 1, 5, 5), (20,)]), ("conv2", [(50, 20, 5, 5), (50,)]),
        ("ip1", [(500, 800), (500,)]), ("ip2", [(10, 500), (10,)])]
    assert net.inputs == ["data"] and net.outputs == ["prob"]
    out = net.forward(data=np.random.default_rng(0).random((64, 1, 28, 28)))
    np.testing.assert_allclose(out["prob"].sum(axis=1), 1, rtol=1e-5)
    assert net.blobs["prob"].data.dtype == np.float32


def test_seed_makes_initialisation_reproducible(corpus):
    path = str(corpus / "BVLC/caffe/examples/mnist/lenet.prototxt")
    a = protonet.Net(path, protonet.TEST, seed=7)
    b = protonet.Net(path, protonet.TEST, seed=7)
    c = protonet.Net(path, protonet.TEST, seed=8)
    np.testing.assert_array_equal(a.params["conv1"][0].data, b.params["conv1"][0].data)
    assert not np.array_equal(a.params["conv1"][0].data, c.params["conv1"][0].data)


def test_float64_nets():
    net = net_from(ip("fc", "data", "fc") + LOSS, dtype=np.float64)
    net.forward_backward()
    assert net.blobs["fc"].data.dtype == np.float64 and net.params["fc"][0].diff.dtype == np.float64


SCRATCH_NET = """
layer { name: "data" type: "DummyData" top: "x" top: "label"
  dummy_data_param { shape { dim: %d dim: %d dim: 6 dim: 6 } shape { dim: %d }
    data_filler { type: "gaussian" } data_filler { type: "constant" value: 1 } } }
layer { name: "conv" type: "Convolution" bottom: "x" top: "c"
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" } } }
layer { name: "ip" type: "InnerProduct" bottom: "c" top: "y"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "y" bottom: "label" top: "loss" }
"""


@pytest.mark.parametrize("test_batch", [2, 3])
@pytest.mark.parametrize("channels", [3, 16])  # NCHW columns; channels-last padded frames
def test_nets_sharing_scratch_keep_their_own_columns(test_batch, channels):
    """A test net run between a train net's forward and backward may overwrite the shared
    column buffers; the train net notices and recomputes them."""
    def nets():
        train = protonet.Net(parse_net(SCRATCH_NET % (2, channels, 2)), protonet.TRAIN, seed=3)
        test = protonet.Net(parse_net(SCRATCH_NET % (test_batch, channels, test_batch)),
                            protonet.TEST, seed=4)
        test.share_with(train)
        return train, test

    alone, other = nets()
    alone.forward_from_to()
    alone.backward_from_to()
    train, test = nets()
    test.share_scratch_with(train)
    conv = train.layer_dict["conv"]
    assert conv._channels_last == (channels == 16)
    assert test.layer_dict["conv"]._buf is conv._buf
    assert test.layer_dict["ip"] is not train.layer_dict["ip"]
    train.forward_from_to()
    test.forward_from_to()  # writes its own columns into the shared buffers
    train.backward_from_to()
    np.testing.assert_allclose(conv.blobs[0].diff, alone.layer_dict["conv"].blobs[0].diff,
                               rtol=1e-6)


def test_a_blob_first_used_by_two_threads_at_once_gets_one_array():
    # a layer's parts on two threads (Concat's backward) may be the first to touch a
    # blob's diff or data: both must write into the same array
    import threading
    from protonet.blob import Blob

    def first_use(what):
        blob, got = Blob((64, 64, 64)), [None, None]
        start = threading.Barrier(2)

        def use(k):
            start.wait()
            got[k] = getattr(blob, what)
        threads = [threading.Thread(target=use, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return got[0] is got[1] is getattr(blob, what)
    for what in ("data", "diff"):
        assert all(first_use(what) for _ in range(200)), what
