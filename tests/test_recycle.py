"""Blobs sharing buffers in TEST passes (protonet.recycle) is invisible: after any pass,
every blob reads as in a net whose blobs each have memory of their own (``fuse=False``),
in any order, held arrays see every later pass, partial passes and backward see what
Caffe would, and nets it cannot vouch for do not recycle."""
import numpy as np
import pytest

import protonet
from protonet import recycle
from protonet.io import parse_net
from test_fuse import bn, conv, make, relu, scale, split  # noqa: F401 (split: a fixture)

#: branches joined by a Concat (routed), a residual Eltwise over a Split, pooling, an
#: InnerProduct after a Reshape, a Softmax output, in-place chains and a Slice
GRAPH = ('name: "recycled" force_backward: true\n'
         'layer { name: "data" type: "Input" top: "data" '
         'input_param { shape { dim: 2 dim: 3 dim: 10 dim: 10 } } }\n'
         + conv("stem", "data", 8) + bn("bns", "stem") + scale("ss", "stem") + relu("rs", "stem")
         + conv("a", "stem", 4, kernel=1, pad=0) + relu("ra", "a")
         + conv("b", "stem", 4) + relu("rb", "b")
         + 'layer { name: "join" type: "Concat" bottom: "a" bottom: "b" top: "join" }\n'
         + conv("c", "join", 8) + bn("bnc", "c", top="cn") + scale("sc", "cn")
         + 'layer { name: "res" type: "Eltwise" bottom: "cn" bottom: "stem" top: "res" }\n'
         + relu("rr", "res")
         + 'layer { name: "pool" type: "Pooling" bottom: "res" top: "pool" '
           'pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
         + 'layer { name: "halves" type: "Slice" bottom: "pool" top: "p1" top: "p2" '
           'slice_param { axis: 1 } }\n'
         + 'layer { name: "sum" type: "Eltwise" bottom: "p1" bottom: "p2" top: "sum" '
           'eltwise_param { operation: MAX } }\n'
         + 'layer { name: "flat" type: "Reshape" bottom: "sum" top: "flat" '
           'reshape_param { shape { dim: 0 dim: -1 } } }\n'
         + 'layer { name: "ip" type: "InnerProduct" bottom: "flat" top: "ip" '
           'inner_product_param { num_output: 6 weight_filler { type: "gaussian" std: 0.1 } '
           'bias_filler { type: "gaussian" std: 0.5 } } }\n'
         + 'layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }\n')


def x_of(batch=2, k=0):
    return np.random.default_rng(10 + k).standard_normal((batch, 3, 10, 10)).astype(np.float32)


def pair(text=GRAPH):
    return make(text=text), make(fuse=False, text=text)


def assert_same(recycled, plain, names=None, what="data"):
    for name in names or list(plain.blobs):
        x, y = getattr(recycled.blobs[name], what), getattr(plain.blobs[name], what)
        assert x.shape == y.shape, name
        assert np.abs(x - y).max() <= 1e-5 * max(float(np.abs(y).max()), 1e-30), name


def shared(net) -> bool:
    """Whether some buffer of the net's plan holds more than one unpinned group."""
    groups = [g for g in net._recycler.groups if g.buffer is not None]
    return len({g.buffer for g in groups}) < len(groups)


def test_the_plan_shares_buffers_and_keeps_inputs_outputs_and_deferred_blobs_apart():
    net, _ = pair()
    rec = net._recycler
    assert rec is not None and shared(net)
    managed = {b.name for g in rec.groups for b in g.blobs}
    assert {"data", "prob"}.isdisjoint(managed)  # input, output
    assert "a" not in managed and "b" not in managed  # routed into the Concat: deferred
    assert "c" not in managed  # only its folded BatchNorm reads it: deferred
    assert {"stem", "join", "res", "pool", "p1", "flat"} <= managed
    # a Split's and a Reshape's tops are their bottom's memory, in its group
    assert {b.name for b in rec.by_blob[id(net.blobs["sum"])].blobs} == {"sum", "flat"}
    # no two groups of a buffer are alive at once
    for g in rec.groups:
        for h in rec.groups:
            if g is not h and g.buffer == h.buffer and g.first <= h.first:
                assert g.last < h.first, (g.blobs[0].name, h.blobs[0].name)
    total = sum(g.nbytes for g in rec.groups)
    assert sum(b.nbytes for b in rec.buffers) < total


@pytest.mark.parametrize("order", [0, 1, 2])
def test_every_blob_reads_as_the_plain_net_in_any_order(order, split):
    net, plain = pair()
    for k in range(2):  # the second pass runs the plan on buffers the first one filled
        net.forward(data=x_of(k=k))
        plain.forward(data=x_of(k=k))
    names = list(plain.blobs)
    np.random.default_rng(order).shuffle(names)
    assert any(net.blobs[n].is_deferred for n in names)  # some buffers were taken over
    assert_same(net, plain, names)


def test_a_branch_read_when_its_concat_top_was_taken_over(split):
    # reading a branch stops routing its Concat and copies it out of the Concat's top, which
    # is recomputed first; the Concat then copies its bottoms, read on the calling thread
    net, plain = pair()
    for n in (net, plain):
        n.forward(data=x_of())
    assert net.blobs["join"].is_deferred
    assert_same(net, plain, ["a", "join", "b"])
    for n in (net, plain):
        n.forward(data=x_of(k=1))
    assert_same(net, plain)


def test_a_read_blob_keeps_its_memory_and_sees_every_later_pass():
    net, plain = pair()
    net.forward(data=x_of())
    held = {n: net.blobs[n].data for n in ("stem", "join", "pool")}
    for k in range(1, 4):
        net.forward(data=x_of(k=k))
        plain.forward(data=x_of(k=k))
        for n, a in held.items():
            assert a is net.blobs[n].data
            np.testing.assert_allclose(a, plain.blobs[n].data, rtol=1e-5, atol=1e-6)
    assert shared(net)  # the others still share
    assert_same(net, plain)


#: a folded head reading the input, its top deferred (only its BatchNorm reads it)
HEAD_ON_INPUT = ('name: "head"\nlayer { name: "data" type: "Input" top: "data" '
                 'input_param { shape { dim: 2 dim: 3 dim: 10 dim: 10 } } }\n'
                 + conv("h", "data", 8) + bn("bnh", "h", top="hn") + scale("sh", "hn")
                 + conv("k", "hn", 4) + relu("rk", "k") + conv("out", "k", 2))


def test_writing_the_input_keeps_a_copy_instead_of_computing_deferred_blobs(monkeypatch):
    from protonet import fuse
    calls = []
    compute = fuse.Chain.compute_deferred
    monkeypatch.setattr(fuse.Chain, "compute_deferred",
                        lambda self: calls.append(self) or compute(self))
    net, plain = pair(HEAD_ON_INPUT)
    assert [h.name for h in net._recycler._heads] == ["h"]
    for n in (net, plain):
        n.forward(data=x_of())
    net.blobs["data"].data[...] = x_of(k=1)  # pycaffe's way to the next batch
    assert calls == [] and net.blobs["h"].is_deferred
    assert_same(net, plain, ["h", "hn", "k"])  # computed from the input the pass read
    assert len(calls) == 1
    for n in (net, plain):
        n.blobs["data"].data[...] = x_of(k=2)
        n.forward()
    assert_same(net, plain)


def test_held_before_the_first_pass():
    net, plain = pair()
    held = net.blobs["res"].data
    net.forward(data=x_of())
    plain.forward(data=x_of())
    np.testing.assert_allclose(held, plain.blobs["res"].data, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("first", [None, "ra", "res"])
def test_before_any_pass_blobs_hold_zeros(first):
    net, plain = pair()
    if first is not None:  # a partial pass first: what it does not write stays zero
        for n in (net, plain):
            n.forward(data=x_of(), end=first)
    assert_same(net, plain, ["stem", "join", "res", "pool", "sum", "ip"])
    assert not net.blobs["pool"].data.any()


@pytest.mark.parametrize("start,end", [(None, "stem"), (None, "ra"), ("c", None),
                                       ("bnc", "pool"), ("join", "join"), ("rr", "ip"),
                                       ("a", "b")])
def test_partial_passes_see_what_the_last_passes_left(start, end, split):
    net, plain = pair()
    for k, (s, e) in enumerate([(None, None), (start, end), (None, None), (start, end)]):
        for n in (net, plain):
            n.blobs["data"].data[...] = x_of(k=k)
            n.forward(start=s, end=e)
        if k == 1:
            assert_same(net, plain)
    assert_same(net, plain)


def test_backward_reads_recomputed_data():
    net, plain = pair()
    for n in (net, plain):
        n.forward(data=x_of())
        n.blobs["prob"].diff[...] = np.random.default_rng(3).standard_normal((2, 6))
        n.backward()
    assert_same(net, plain, what="diff")
    for name in plain.params:
        for a, b in zip(net.params[name], plain.params[name]):
            np.testing.assert_allclose(a.diff, b.diff, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("batch", [1, 3])
def test_a_new_input_shape_gets_a_new_plan(batch):
    net, plain = pair()
    net.forward(data=x_of())
    plain.forward(data=x_of())
    buffers = [b.nbytes for b in net._recycler.buffers]
    for k in range(2):
        net.forward(data=x_of(batch, k))
        plain.forward(data=x_of(batch, k))
    assert sorted(b.nbytes for b in net._recycler.buffers) != sorted(buffers)
    assert shared(net)
    assert_same(net, plain)


def test_the_plan_is_made_once_per_set_of_shapes(monkeypatch):
    net, _ = pair()
    plans = []
    original = recycle.Recycler._plan
    monkeypatch.setattr(recycle.Recycler, "_plan", lambda self: plans.append(1) or original(self))
    for batch in (2, 2, 3, 3, 2, 2):
        net.forward(data=x_of(batch))
        assert shared(net) and not net._recycler._stale()  # planned for this very pass
    assert len(plans) == 2


def test_a_deep_net_recomputes_without_recursion():
    layers = "".join(conv(f"c{k}", "data" if k == 0 else f"c{k - 1}", 4, kernel=1, pad=0)
                     + relu(f"r{k}", f"c{k}") for k in range(300))
    text = ('name: "deep"\nlayer { name: "data" type: "Input" top: "data" '
            'input_param { shape { dim: 1 dim: 4 dim: 3 dim: 3 } } }\n' + layers)
    net, plain = make(text=text), make(fuse=False, text=text)
    x = np.random.default_rng(0).standard_normal((1, 4, 3, 3)).astype(np.float32)
    net.forward(data=x)
    plain.forward(data=x)
    assert len(net._recycler.buffers) <= 3
    assert_same(net, plain, ["c298", "c0", "c150"])


def test_a_parameter_read_after_a_pass_first_computes_what_it_would_change():
    net, plain = pair()
    net.forward(data=x_of())
    plain.forward(data=x_of())
    net.params["stem"][0].data[...] *= 2  # the read computes the deferred blobs first
    assert not any(g.pending for g in net._recycler.groups)
    assert_same(net, plain, ["stem", "join", "res", "pool"])


def test_inputs_replaced_after_a_pass_leave_what_it_computed():
    net, plain = pair()
    net.forward(data=x_of())
    plain.forward(data=x_of())
    net.blobs["data"].data[...] = x_of(k=5)  # the first read keeps a copy of the inputs
    assert_same(net, plain, ["join", "res", "pool", "stem"])
    net.forward()
    plain.forward(data=x_of(k=5))
    assert_same(net, plain)


def test_settle_deferred_and_share_with_give_every_blob_its_own_memory():
    net, plain = pair()
    net.forward(data=x_of())
    plain.forward(data=x_of())
    net.settle_deferred()
    assert not shared(net) and not net._recycler.active
    assert not any(net.blobs[n].is_deferred for n in ("stem", "join", "res"))
    net.params["stem"][0].data[...] *= 2  # computed before the change
    assert_same(net, plain, ["stem", "join", "res", "pool"])
    other, _ = pair()
    other.share_with(plain)
    assert not shared(other)
    other.forward(data=x_of())
    assert_same(other, plain)


@pytest.mark.parametrize("how", ["train", "no_fuse", "unknown_type", "data_later"])
def test_what_does_not_recycle(how):
    text = GRAPH
    if how == "unknown_type":
        text += 'layer { name: "top1" type: "ArgMax" bottom: "pool" top: "top1" }\n'
    if how == "data_later":
        text += 'layer { name: "late" type: "Input" top: "late" ' \
                'input_param { shape { dim: 1 } } }\n'
    param = parse_net(text)
    net = protonet.Net(param, protonet.TRAIN if how == "train" else protonet.TEST,
                       fuse=False if how == "no_fuse" else None)
    assert net._recycler is None


def test_timing_layer_by_layer_still_matches():
    from protonet.tools.timing import time_net
    net, plain = pair()
    net.blobs["data"].data[...] = x_of()
    plain.forward(data=x_of())
    time_net(net, iterations=2, warmup=1)
    assert_same(net, plain)


#: each recyclable type that computes its tops (not a view of its bottom), as a layer
#: reading blob "x" (2, 4, 5, 5) and, if it takes two, "y" (its shape here if not the same)
LAYERS = {
    "Convolution": 'convolution_param { num_output: 3 kernel_size: 3 pad: 1 '
                   'weight_filler { type: "gaussian" std: 0.3 } }',
    "Deconvolution": 'convolution_param { num_output: 3 kernel_size: 2 stride: 2 '
                     'weight_filler { type: "gaussian" std: 0.3 } }',
    "Pooling": "pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }",
    "InnerProduct": 'inner_product_param { num_output: 3 weight_filler { type: "xavier" } }',
    "LRN": "lrn_param { local_size: 3 }",
    "Softmax": "", "Concat": "", "Slice": "slice_param { axis: 1 }", "Eltwise": "",
    "Dropout": "", "BatchNorm": "", "Scale": "", "Bias": "", "ReLU": "", "PReLU": "",
    "ELU": "", "Sigmoid": "", "TanH": "", "AbsVal": "", "BNLL": "",
    "Power": "power_param { power: 2 scale: 0.5 shift: 1 }", "Exp": "", "Log": "",
    "Crop": "crop_param { axis: 2 offset: 1 }",
    "Permute": "permute_param { order: 0 order: 2 order: 3 order: 1 }",
    "Normalize": 'norm_param { across_spatial: false scale_filler { type: "constant" '
                 'value: 2 } }',
    "PriorBox": "prior_box_param { min_size: 4 aspect_ratio: 2 variance: 0.1 }",
}
TWO_BOTTOMS = {"Concat": None, "Eltwise": None, "Crop": (2, 4, 3, 3), "PriorBox": (2, 3, 20, 20)}


def test_the_types_recycled_are_the_types_tested():
    assert set(LAYERS) | recycle.ALIASING | {"Input", "Flatten", "DetectionOutput"} == \
        set(recycle.RECYCLABLE)


def assert_whole_top_written(text, inputs, tops):
    """Run the net; fill ``tops`` with NaN; run it again: the same values."""
    net = protonet.Net(parse_net(text), protonet.TEST, seed=0, fuse=False)
    for name, value in inputs.items():
        net.blobs[name].data[...] = value
    net.forward()
    expected = [net.blobs[n].data.copy() for n in tops]
    for n in tops:
        net.blobs[n].data[...] = np.nan
    net.forward()
    for n, e in zip(tops, expected):
        np.testing.assert_array_equal(net.blobs[n].data, e)


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_each_recyclable_type_writes_its_whole_top(kind):
    # a shared buffer holds another blob's values: the layer must overwrite all of it
    x, y = (2, 4, 5, 5), TWO_BOTTOMS.get(kind) or (2, 4, 5, 5)
    bottoms = 'bottom: "x" bottom: "y"' if kind in TWO_BOTTOMS else 'bottom: "x"'
    tops = ["t1", "t2"] if kind == "Slice" else ["t1"]
    dims = ["".join(f"dim: {d} " for d in shape) for shape in (x, y)]
    text = ('name: "one"\nlayer { name: "in" type: "Input" top: "x" top: "y" input_param { '
            f'shape {{ {dims[0]}}} shape {{ {dims[1]}}} }} }}\n'
            f'layer {{ name: "l" type: "{kind}" {bottoms} '
            + "".join(f'top: "{t}" ' for t in tops) + f"{LAYERS[kind]} }}\n")
    rng = np.random.default_rng(0)
    assert_whole_top_written(text, {"x": rng.uniform(0.1, 2, x), "y": rng.uniform(0.1, 2, y)},
                             tops)


def test_detection_output_writes_its_whole_top():
    P, C = 25, 3  # priors, classes
    rng = np.random.default_rng(0)
    corner = rng.uniform(0, 0.6, (P, 2))
    priors = np.stack([np.concatenate([corner, corner + 0.3], 1).reshape(-1),
                       np.full(P * 4, 0.1)])[None]
    text = ('name: "det"\nlayer { name: "in" type: "Input" top: "loc" top: "conf" top: "prior" '
            f'input_param {{ shape {{ dim: 2 dim: {P * 4} }} shape {{ dim: 2 dim: {P * C} }} '
            f'shape {{ dim: 1 dim: 2 dim: {P * 4} }} }} }}\n'
            'layer { name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf" '
            'bottom: "prior" top: "t1" detection_output_param { num_classes: 3 '
            'share_location: true background_label_id: 0 nms_param { nms_threshold: 0.45 '
            'top_k: 10 } code_type: CENTER_SIZE keep_top_k: 5 confidence_threshold: 0.01 } }\n')
    assert_whole_top_written(text, {"loc": rng.normal(0, 0.1, (2, P * 4)),
                                    "conf": rng.uniform(0, 1, (2, P * C)), "prior": priors},
                             ["t1"])


def test_a_pass_that_fails_part_way_leaves_every_blob_readable():
    """A layer raising in the middle of a pass: the blobs that pass wrote are computed
    again when read (here by a later partial pass)."""
    recycled, plain = pair()
    x, x2 = x_of(), x_of(k=1)
    recycled.forward(data=x)
    plain.forward(data=x2)
    layer = recycled.layers[list(recycled.layer_names).index("pool")]
    forward = layer.forward

    def fail_once(*args, **kwargs):
        layer.forward = forward
        raise RuntimeError("failed part-way")
    layer.forward = fail_once
    with pytest.raises(RuntimeError, match="part-way"):
        recycled.forward(data=x2)
    # 'join' lies in the buffer 'res' took over before the failure: a pass from 'c' on
    # reads it as that pass computed it, not what its buffer holds now
    recycled.forward(start="c")
    assert_same(recycled, plain)


#: convolutions of three strategies in a row (channels-last frames kept for backward, a 1x1
#: GEMM, Caffe's columns), sized differently, so one shared scratch dict holds them all
SCRATCH = ('name: "scratch" force_backward: true\n'
           'layer { name: "data" type: "Input" top: "data" '
           'input_param { shape { dim: 2 dim: 16 dim: 9 dim: 9 } } }\n'
           + conv("w1", "data", 32) + relu("r1", "w1")
           + conv("w2", "w1", 16) + conv("p", "w2", 8, kernel=1, pad=0)
           + conv("c", "p", 5, kernel=3, pad=2))


def test_the_convolutions_of_a_test_net_share_one_scratch_dict():
    net, plain = pair(SCRATCH)
    convs = [net.layer_dict[n] for n in ("w1", "w2", "p", "c")]
    assert all(layer._buf is convs[0]._buf for layer in convs)
    assert convs[0].strategy == "channels_last" and convs[3].strategy == "columns"
    own = [plain.layer_dict[n]._buf for n in ("w1", "w2", "p", "c")]
    assert len({id(b) for b in own}) == 4  # fuse=False: each its own
    train = protonet.Net(parse_net(SCRATCH), protonet.TRAIN, seed=0)
    assert len({id(train.layer_dict[n]._buf) for n in ("w1", "w2", "p", "c")}) == 4


@pytest.mark.parametrize("batch", [1, 2])
def test_layers_sharing_scratch_give_the_plain_nets_data_and_diffs(batch):
    net, plain = pair(SCRATCH)
    x = np.random.default_rng(3).standard_normal((batch, 16, 9, 9)).astype(np.float32)
    for _ in range(2):  # the second pass: the buffers hold the other layers' last use
        for n in (net, plain):
            n.forward(data=x)
        assert_same(net, plain)
        dy = np.random.default_rng(4).standard_normal(plain.blobs["c"].shape)
        for n in (net, plain):
            n.backward(c=dy.astype(np.float32))
        assert_same(net, plain, what="diff")
        for layer in ("w1", "w2", "p", "c"):
            for a, b in zip(net.layer_dict[layer].blobs, plain.layer_dict[layer].blobs):
                np.testing.assert_allclose(a.diff, b.diff, rtol=1e-4, atol=1e-5)
