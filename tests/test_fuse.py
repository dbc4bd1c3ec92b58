"""Folding BatchNorm / Scale / Bias into the convolution or inner product before them
(protonet.fuse) is invisible: every blob equals the unfused net's within 1e-5 of its
scale, parameter changes take effect, backward gives the same gradients, and
fuse=False runs the layers one by one as before."""
import numpy as np
import pytest

import protonet
from protonet.cli import main as cli_main
from protonet.io import parse_net


def conv(name, bottom, num, kernel=3, pad=1, group=1, bias=True, top=None):
    return (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" '
            f'top: "{top or name}" convolution_param {{ num_output: {num} '
            f'kernel_size: {kernel} pad: {pad} group: {group} bias_term: {str(bias).lower()} '
            'weight_filler { type: "gaussian" std: 0.2 } '
            'bias_filler { type: "gaussian" std: 0.5 } } }\n')


def bn(name, bottom, top=None):
    return (f'layer {{ name: "{name}" type: "BatchNorm" bottom: "{bottom}" '
            f'top: "{top or bottom}" }}\n')


def scale(name, bottom, bias=True, top=None):
    return (f'layer {{ name: "{name}" type: "Scale" bottom: "{bottom}" top: "{top or bottom}" '
            f'scale_param {{ bias_term: {str(bias).lower()} '
            'filler { type: "uniform" min: 0.5 max: 1.5 } '
            'bias_filler { type: "gaussian" std: 0.5 } } }\n')


def relu(name, blob):
    return f'layer {{ name: "{name}" type: "ReLU" bottom: "{blob}" top: "{blob}" }}\n'


#: every kind of chain: conv with and without bias, in place and not, 1x1, channels-last
#: (16+ channels), depthwise, grouped, Scale without BN, Bias, InnerProduct
NET = ('name: "fold" force_backward: true\n'
       'layer { name: "data" type: "Input" top: "data" '
       'input_param { shape { dim: 2 dim: 3 dim: 12 dim: 12 } } }\n'
       + conv("c1", "data", 16) + bn("bn1", "c1") + scale("s1", "c1") + relu("r1", "c1")
       + conv("c2", "c1", 16, bias=False) + bn("bn2", "c2", top="c2n")
       + scale("s2", "c2n") + relu("r2", "c2n")
       + conv("c3", "c2n", 16, kernel=1, pad=0) + bn("bn3", "c3") + scale("s3", "c3", False)
       + conv("c4", "c3", 16, group=16, bias=False) + bn("bn4", "c4") + scale("s4", "c4")
       + conv("c5", "c4", 8, group=2) + scale("s5", "c5", top="c5s")
       + 'layer { name: "b5" type: "Bias" bottom: "c5s" top: "c5s" }\n'
       + 'layer { name: "ip" type: "InnerProduct" bottom: "c5s" top: "ip" '
         'inner_product_param { num_output: 10 weight_filler { type: "gaussian" std: 0.1 } '
         'bias_filler { type: "gaussian" std: 0.5 } } }\n'
       + bn("bn6", "ip") + scale("s6", "ip"))


def make(fuse=None, text=NET, seed=0):
    net = protonet.Net(parse_net(text), protonet.TEST, seed=seed, fuse=fuse)
    rng = np.random.default_rng(1)
    for layer in net.layers:  # statistics that BatchNorm's fillers do not give
        if layer.type == "BatchNorm":
            c = layer.blobs[0].count
            layer.blobs[0].data[...] = rng.normal(0, 1, c) * 3
            layer.blobs[1].data[...] = rng.uniform(0.5, 2.0, c) * 3
            layer.blobs[2].data[...] = 3
    return net


def inputs():
    return {"data": np.random.default_rng(2).standard_normal((2, 3, 12, 12)).astype(np.float32)}


def assert_blobs_close(a, b, what="data", rtol=1e-5):
    assert list(a.blobs) == list(b.blobs)
    for name in a.blobs:
        x, y = getattr(a.blobs[name], what), getattr(b.blobs[name], what)
        scale = max(float(np.abs(y).max()), 1e-30)
        assert np.abs(x - y).max() <= rtol * scale, name


def test_chains_found_and_every_blob_matches_the_unfused_net():
    fused, plain = make(), make(fuse=False)
    assert fused.fuse and not plain.fuse and plain._chains == []
    chains = [(fused.layer_names[c.head], [fused.layer_names[m] for m in c.members])
              for c in fused._chains]
    assert chains == [("c1", ["bn1", "s1", "r1"]), ("c2", ["bn2", "s2", "r2"]), ("c3", ["bn3", "s3"]),
                      ("c4", ["bn4", "s4"]), ("c5", ["s5", "b5"]), ("ip", ["bn6", "s6"])]
    fused.forward(**inputs())
    plain.forward(**inputs())
    assert_blobs_close(fused, plain)
    # blobs a member writes out of place keep their own values: c2 (before bn2), c5
    conv2 = plain.layers[plain.layer_names.index("c2")]
    assert np.abs(fused.blobs["c2"].data).max() > 0
    assert conv2.bias_term is False


def test_identity_coefficients_cost_no_pass():
    # c2 has no bias and bn2 writes a new blob: c2 itself is the plain product, with no
    # scale or shift for the kernels to apply; a Scale without bias after a bias-free
    # convolution leaves no shift either
    text = NET + conv("c7", "c5s", 4, bias=False, top="c7") + scale("s7", "c7", bias=False)
    fused, plain = make(text=text), make(fuse=False, text=text)
    outputs = {fused.layer_names[c.head]: c.epilogue().outputs for c in fused._chains}
    (_, s, c), (_, s2, c2) = outputs["c2"]
    assert s is None and c is None and s2 is not None and c2 is not None
    ((_, s, c),) = outputs["c7"]
    assert s is not None and c is None
    ((_, s, c),) = outputs["c1"]
    assert s is not None and c is not None
    fused.forward(**inputs())
    plain.forward(**inputs())
    assert_blobs_close(fused, plain)


def test_a_change_through_net_params_takes_effect_on_the_next_forward():
    fused, plain = make(), make(fuse=False)
    fused.forward(**inputs())
    for net in (fused, plain):
        net.params["bn1"][0].data[...] += 0.5        # BatchNorm's mean sum
        net.params["bn1"][2].data[...] = 2.0         # and its scale factor
        net.params["s4"][0].data[...] *= -1.5        # a Scale's factor
        net.params["c3"][0].data[...] *= 0.5         # a convolution's weights
        net.params["c3"][1].data[...] += 1.0         # and bias
        net.params["bn6"][1].data[...] *= 2          # variance after the inner product
    fused.forward(**inputs())
    plain.forward(**inputs())
    assert_blobs_close(fused, plain)
    fused.params["bn2"][2].data[...] = 0  # factor 0: Caffe's statistics are 0
    plain.params["bn2"][2].data[...] = 0
    fused.forward(**inputs())
    plain.forward(**inputs())
    assert_blobs_close(fused, plain)


def test_backward_through_folded_chains_gives_the_unfused_gradients():
    fused, plain = make(), make(fuse=False)
    top = np.random.default_rng(3).standard_normal((2, 10)).astype(np.float32)
    for net in (fused, plain):
        net.forward(**inputs())
        net.clear_param_diffs()
        net.backward(ip=top)
    assert_blobs_close(fused, plain, "diff", rtol=1e-4)
    for name in plain.params:
        for a, b in zip(fused.params[name], plain.params[name]):
            assert np.abs(a.diff - b.diff).max() <= 1e-4 * max(np.abs(b.diff).max(), 1e-30), name
    assert np.abs(fused.params["s1"][0].diff).max() > 0  # the Scale's own gradient


def test_a_pass_that_starts_or_ends_inside_a_chain_runs_it_layer_by_layer():
    fused, plain = make(), make(fuse=False)
    for net in (fused, plain):
        net.blobs["data"].data[...] = inputs()["data"]
        net.forward(end="c1")  # the raw convolution, as Caffe leaves it
    np.testing.assert_array_equal(fused.blobs["c1"].data, plain.blobs["c1"].data)
    for net in (fused, plain):
        net.forward(start="bn1")
    assert_blobs_close(fused, plain)


def assert_close(x, y, rtol=1e-5):
    assert x.shape == y.shape
    assert np.abs(x - y).max() <= rtol * max(float(np.abs(y).max()), 1e-30)


def deferred_names(net):
    return sorted(net.layer_names[c.head] for c in net._chains if c.deferred is not None)


def test_a_head_top_that_only_its_chain_reads_is_computed_when_read():
    # c2 and c5 write a blob that only the next layer (bn2, s5, folded) reads: the pass
    # writes c2n and c5s only, and c2, c5 are the head's own forward once read
    fused, plain = make(), make(fuse=False)
    assert deferred_names(fused) == ["c2", "c5"]
    fused.forward(**inputs())
    plain.forward(**inputs())
    assert fused.blobs["c2"].is_deferred and fused.blobs["c5"].is_deferred
    assert_close(fused.blobs["c2"].data, plain.blobs["c2"].data)
    assert not fused.blobs["c2"].is_deferred
    assert_blobs_close(fused, plain)
    # a second pass with another input: read again, the new values
    x = inputs()["data"][::-1].copy()
    fused.forward(data=x)
    plain.forward(data=x)
    assert_blobs_close(fused, plain)


@pytest.mark.parametrize("change", ["weights", "bias", "bottom", "bottom_root", "reshape"])
def test_a_deferred_blob_keeps_what_the_pass_computed(change):
    # Caffe's c5 holds what the pass computed from its bottom and parameters; changing
    # those (through the blobs) before reading c5 computes it first
    text = NET.replace('bottom: "c4" top: "c5"', 'bottom: "c4b" top: "c5"').replace(
        'layer { name: "c5"',
        'layer { name: "fork" type: "Split" bottom: "c4" top: "c4b" top: "c4c" }\n'
        'layer { name: "c5"', 1)
    text += 'layer { name: "other" type: "ReLU" bottom: "c4c" top: "other" }\n'
    fused, plain = make(text=text), make(fuse=False, text=text)
    assert "c5" in deferred_names(fused)
    fused.forward(**inputs())
    plain.forward(**inputs())
    expected = plain.blobs["c5"].data.copy()
    if change == "weights":
        fused.params["c5"][0].data[...] *= 2
    elif change == "bias":
        fused.params["c5"][1].data[...] += 1
    elif change == "bottom":
        fused.blobs["c4b"].data[...] = 0
    elif change == "bottom_root":  # the blob the Split's top shares its memory with
        fused.blobs["c4"].data[...] = 0
    else:
        fused.blobs["c5"].reshape((1, 8, 12, 12))
        expected = np.zeros((1, 8, 12, 12), np.float32)  # a reshaped blob starts anew
    assert_close(fused.blobs["c5"].data, expected)


def test_what_is_not_deferred():
    # a head top that another layer reads too (c2 here), or that its chain overwrites in
    # place (c1, c3, c4), or any with fuse=False
    read_twice = NET + 'layer { name: "peek" type: "ReLU" bottom: "c2" top: "peek" }\n'
    assert deferred_names(make(text=read_twice)) == ["c5"]
    assert deferred_names(make(fuse=False)) == []


def test_backward_and_settle_compute_the_deferred_blobs():
    fused, plain = make(), make(fuse=False)
    fused.forward(**inputs())
    plain.forward(**inputs())
    fused.settle_deferred()
    assert not fused.blobs["c2"].is_deferred and not fused.blobs["c5"].is_deferred
    assert fused.blobs["c2"]._data is not None
    assert_close(fused.blobs["c2"].data, plain.blobs["c2"].data)
    fused.forward(**inputs())
    fused.backward(ip=np.ones((2, 10), np.float32))
    assert not fused.blobs["c5"].is_deferred
    fused.forward(**inputs())  # what backward read is deferred again: only users pin it
    assert fused.blobs["c5"].is_deferred
    assert_close(fused.blobs["c5"].data, plain.blobs["c5"].data)


def test_passes_that_skip_a_deferred_head_leave_its_blob_alone():
    fused, plain = make(), make(fuse=False)
    for net in (fused, plain):
        net.forward(**inputs())
        net.forward(start="c3")  # after c2's chain: c2 still the first pass's
        net.forward(end="c1")    # before it
    assert_blobs_close(fused, plain)
    for net in (fused, plain):  # a pass that ends inside c2's chain writes c2 unfused
        net.forward(data=inputs()["data"] * 2, end="bn2")
    assert not fused.blobs["c2"].is_deferred
    assert_close(fused.blobs["c2"].data, plain.blobs["c2"].data)


def test_fuse_false_and_train_phase_run_layer_by_layer():
    plain = make(fuse=False)
    plain.forward(**inputs())
    by_hand = make(fuse=False)
    by_hand.blobs["data"].data[...] = inputs()["data"]
    for layer, bottom, top in zip(by_hand.layers, by_hand.bottom_vecs, by_hand.top_vecs):
        layer.reshape(bottom, top)
        layer.forward(bottom, top)
    for name in plain.blobs:
        np.testing.assert_array_equal(plain.blobs[name].data, by_hand.blobs[name].data)
    train = protonet.Net(parse_net(NET), protonet.TRAIN, seed=0)
    assert not train.fuse and train._chains == []
    # asked for in TRAIN, only the chains without batch statistics fold
    train = protonet.Net(parse_net(NET), protonet.TRAIN, seed=0, fuse=True)
    assert [train.layer_names[c.head] for c in train._chains] == ["c5"]


def test_what_does_not_fold():
    text = ('name: "n" layer { name: "data" type: "Input" top: "data" '
            'input_param { shape { dim: 1 dim: 3 dim: 6 dim: 6 } } }\n'
            + conv("c1", "data", 4) + relu("r1", "c1") + bn("bn1", "c1")  # not right after
            + conv("c2", "c1", 4) + bn("bn2", "c2")
            + 'layer { name: "bn2b" type: "BatchNorm" bottom: "c2" top: "c2" '
              'batch_norm_param { use_global_stats: false } }\n'  # batch statistics
            + conv("c4", "c2", 4) + 'layer { name: "r4" type: "ReLU" bottom: "c4" top: "c4" '
              'relu_param { negative_slope: 0.1 } }\n'  # leaky
            + conv("c5", "c4", 4) + 'layer { name: "r5" type: "ReLU" bottom: "c5" top: "r5" }\n'
            + conv("c3", "r5", 4)  # a loss weight on the last layer (no Split takes it over)
            + 'layer { name: "s3" type: "Scale" bottom: "c3" top: "c3" loss_weight: 1 }\n')
    net = protonet.Net(parse_net(text), protonet.TEST, seed=0)
    assert [(net.layer_names[c.head], [net.layer_names[m] for m in c.members])
            for c in net._chains] == [("c1", ["r1"]), ("c2", ["bn2"])]


def test_split_consumers_stop_a_chain():
    # c1 feeds bn1 (out of place) and the eltwise: a Split sits between them
    text = ('name: "n" layer { name: "data" type: "Input" top: "data" '
            'input_param { shape { dim: 1 dim: 3 dim: 6 dim: 6 } } }\n'
            + conv("c1", "data", 4) + bn("bn1", "c1", top="b1") + scale("s1", "b1")
            + 'layer { name: "sum" type: "Eltwise" bottom: "c1" bottom: "b1" top: "sum" }\n')
    fused = protonet.Net(parse_net(text), protonet.TEST, seed=0)
    plain = protonet.Net(parse_net(text), protonet.TEST, seed=0, fuse=False)
    assert fused._chains == []
    x = np.random.default_rng(0).standard_normal((1, 3, 6, 6)).astype(np.float32)
    np.testing.assert_array_equal(fused.forward(data=x)["sum"], plain.forward(data=x)["sum"])


@pytest.mark.parametrize("batch", [1, 3])
def test_resnet_style_block_with_bn_after_a_channels_last_conv(batch):
    text = ('name: "n" layer { name: "data" type: "Input" top: "data" '
            f'input_param {{ shape {{ dim: {batch} dim: 32 dim: 9 dim: 9 }} }} }}\n'
            + conv("a", "data", 32, bias=False) + bn("bna", "a") + scale("sa", "a")
            + relu("ra", "a") + conv("b", "a", 32, kernel=1, pad=0, bias=False)
            + bn("bnb", "b") + scale("sb", "b")
            + 'layer { name: "sum" type: "Eltwise" bottom: "data" bottom: "b" top: "sum" }\n')
    fused = make(text=text)
    plain = make(fuse=False, text=text)
    x = np.random.default_rng(0).standard_normal((batch, 32, 9, 9)).astype(np.float32)
    fused.forward(data=x)
    plain.forward(data=x)
    assert len(fused._chains) == 2
    assert_blobs_close(fused, plain)


def test_cli_no_fuse_flag(tmp_path, capsys):
    path = tmp_path / "net.prototxt"
    path.write_text(NET)
    assert cli_main(["time", str(path), "--phase", "TEST", "--iterations", "1"]) == 0
    assert cli_main(["time", str(path), "--phase", "TEST", "--iterations", "1",
                     "--no-fuse"]) == 0
    out = capsys.readouterr().out
    assert out.count("Average Forward pass") == 2


#: three branches whose chains end in a Concat: 1x1, 3x3 with BatchNorm (channels-last at
#: batch 2), depthwise; a convolution after it reads the joined blob
JOINED = ('name: "branches" force_backward: true\n'
          'layer { name: "data" type: "Input" top: "data" '
            'input_param { shape { dim: 2 dim: 3 dim: 9 dim: 8 } } }\n'
          + conv("stem", "data", 16) + relu("rs", "stem")
          + conv("a", "stem", 5, kernel=1, pad=0) + relu("ra", "a")
          + conv("b", "stem", 6) + bn("bnb", "b") + scale("sb", "b") + relu("rb", "b")
          + conv("d", "stem", 16, group=16) + relu("rd", "d")
          + 'layer { name: "join" type: "Concat" bottom: "a" bottom: "b" bottom: "d" '
            'top: "join" }\n')
BRANCHES = JOINED + conv("after", "join", 4)


def branch_inputs(batch=2):
    return {"data": np.random.default_rng(4).standard_normal((batch, 3, 9, 8)).astype(np.float32)}


@pytest.fixture(params=[False, True], ids=["whole", "split"])
def split(request, monkeypatch):
    """Work kept whole, or two threads each writing its images' part of a top."""
    from protonet import parallel
    if request.param:
        monkeypatch.setattr(parallel, "MIN_ITEMS", 1)
        parallel.set_num_threads(2)
    yield request.param
    if request.param:
        parallel.set_num_threads(None)


@pytest.mark.parametrize("batch", [1, 2])
def test_chains_write_straight_into_the_concat_that_joins_them(batch, split):
    fused, plain = make(text=BRANCHES), make(fuse=False, text=BRANCHES)
    assert {fused.layer_names[j]: [fused.layer_names[c.head] for c in chains]
            for j, chains in fused._routes.items()} == {"join": ["a", "b", "d"]}
    fused.forward(**branch_inputs(batch))
    plain.forward(**branch_inputs(batch))
    assert all(fused.blobs[n].is_deferred for n in ("a", "b", "d"))
    assert_blobs_close(fused, plain)
    assert not any(fused.blobs[n].is_deferred for n in ("a", "b", "d"))
    top = np.random.default_rng(5).standard_normal((batch, 4, 9, 8)).astype(np.float32)
    for net in (fused, plain):
        net.clear_param_diffs()
        net.backward(after=top)
    assert_blobs_close(fused, plain, "diff", rtol=1e-4)


def test_a_routed_blob_keeps_its_values_when_the_concat_top_changes():
    fused, plain = make(text=BRANCHES), make(fuse=False, text=BRANCHES)
    fused.forward(**branch_inputs())
    plain.forward(**branch_inputs())
    fused.blobs["join"].data[...] = 0  # copies a, b and d out first
    for name in ("a", "b", "d"):
        assert_close(fused.blobs[name].data, plain.blobs[name].data)


def test_partial_passes_through_routed_chains():
    fused, plain = make(text=BRANCHES), make(fuse=False, text=BRANCHES)
    for net in (fused, plain):
        net.forward(**branch_inputs())
        net.forward(data=branch_inputs()["data"] * 2, end="rb")  # a and b anew, the join not
    assert_blobs_close(fused, plain)
    for net in (fused, plain):
        net.forward(start="d")  # d anew, then the join of the new a, b and d
    assert_blobs_close(fused, plain)
    for net in (fused, plain):
        net.forward(start="join")
    assert_blobs_close(fused, plain)


def test_what_is_not_routed():
    peek = BRANCHES + 'layer { name: "peek" type: "ReLU" bottom: "a" top: "peek" }\n'
    assert make(text=peek)._routes == {}
    in_place = JOINED + relu("rj", "join") + conv("after", "join", 4)
    assert make(text=in_place)._routes == {}
    assert make(fuse=False, text=BRANCHES)._routes == {}


def test_timing_layer_by_layer_computes_nothing_deferred(monkeypatch):
    # protonet time runs each pass as one call per layer or chain: those partial passes
    # must not compute the blobs the last pass deferred (it writes them anew)
    from protonet import fuse
    from protonet.tools.timing import time_net
    net = make(text=NET.replace("force_backward: true", ""))
    calls = []
    monkeypatch.setattr(fuse.Chain, "compute_deferred", lambda self: calls.append(self))
    time_net(net, iterations=3, warmup=1)
    assert calls == [] and net.blobs["c2"].is_deferred


@pytest.mark.parametrize("text,name", [(NET, "c2"), (BRANCHES, "a"), (BRANCHES, "join")],
                         ids=["head_top", "branch", "concat_top"])
@pytest.mark.parametrize("when", ["before", "after"])
def test_an_array_held_across_passes_sees_every_pass(text, name, when):
    # pycaffe's habit: take blob.data once, then run pass after pass; a deferred blob
    # that has been read is written by every pass from then on
    fused, plain = make(text=text), make(fuse=False, text=text)
    x = (inputs() if text is NET else branch_inputs())["data"]
    if when == "after":
        fused.forward(data=x)
    held = fused.blobs[name].data
    for k in range(3):
        fused.forward(data=x * (k + 2))
        plain.forward(data=x * (k + 2))
        assert_close(held, plain.blobs[name].data)
    assert_blobs_close(fused, plain)


def test_chains_reshape_only_when_a_shape_changed(monkeypatch):
    from protonet.layers.normalization import BatchNormLayer
    calls = []
    original = BatchNormLayer.reshape
    monkeypatch.setattr(BatchNormLayer, "reshape",
                        lambda self, bottom, top: (calls.append(self.name),
                                                   original(self, bottom, top))[1])
    fused, plain = make(), make(fuse=False)
    x = inputs()["data"]

    def run(batch):
        for net in (fused, plain):
            net.blobs["data"].reshape(batch, 3, 12, 12)
            net.blobs["data"].data[...] = np.resize(x, (batch, 3, 12, 12))
            net.forward()
        assert_blobs_close(fused, plain)
    run(2)
    calls.clear()
    run(2)
    assert calls == ["bn1", "bn2", "bn3", "bn4", "bn6"]  # the unfused net's only
    run(3)  # a new input shape reshapes the chains
    assert fused.blobs["c2n"].shape[0] == 3
    for batch in (1, 3):  # Net.reshape at another shape, then back without it
        fused.blobs["data"].reshape(batch, 3, 12, 12)
        fused.reshape()
        run(3)
    fused.forward(start="bn2")  # a partial pass runs a chain's layers one by one
    run(3)
    calls.clear()
    fused.forward()
    assert calls == []
    fused.layer_dict["s1"].blobs[0].reshape(16, 1)  # a parameter of another shape
    with pytest.raises(protonet.ProtonetError, match="s1"):
        fused.forward()
    assert calls == ["bn1"]  # its chain was reshaped, up to the layer that refused


@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("layer, blob, says", [
    ("bn", 0, r"learnable blob 0 has shape \[5"), ("conv", 0, r"learnable blob 0 has shape \[5"),
    ("scale", 1, r"the bias of shape \[5\]")])  # Scale checks its own
def test_a_parameter_reshaped_from_outside_is_named_not_a_numpy_traceback(fuse, layer, blob,
                                                                           says):
    from protonet.errors import ProtonetError
    net = protonet.Net(parse_net('''
        input: "data" input_shape { dim: 2 dim: 3 dim: 8 dim: 8 }
        layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
                convolution_param { num_output: 4 kernel_size: 3 } }
        layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
        layer { name: "scale" type: "Scale" bottom: "conv" top: "conv"
                scale_param { bias_term: true } }
        layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }'''),
        protonet.TEST, fuse=fuse)
    net.forward()
    param = net.params[layer][blob]
    shape = param.shape
    param.reshape((5,) + shape[1:])
    with pytest.raises(ProtonetError, match=rf"layer '{layer}'.*{says}"):
        net.forward()
    param.reshape(shape)  # put back, it runs again
    net.forward()
