"""Batch parts on threads: the split, the BLAS hold, and layers giving the same numbers."""
import functools
import threading

import numpy as np
import pytest

from protonet import parallel
from protonet.layers import common
from protonet.testing import check_gradients, make_layer, setup_layer

needs_blas_control = pytest.mark.skipif(parallel._blas() is None,
                                        reason="numpy's BLAS thread count cannot be set")


@pytest.fixture
def threads(monkeypatch):
    """Force splitting of even tiny work over ``n`` threads; restore afterwards."""
    def use(n):
        monkeypatch.setattr(parallel, "MIN_ITEMS", 0)
        monkeypatch.setattr(common, "SPLIT_MIN_MACS", 0)  # inner products too
        parallel.set_num_threads(n)
    yield use
    parallel.set_num_threads(None)


def test_chunks_cover_the_range_evenly():
    for n, parts in ((10, 3), (2, 5), (7, 1), (100, 2)):
        slices = parallel.chunks(n, parts)
        covered = np.concatenate([np.arange(n)[s] for s in slices])
        assert covered.tolist() == list(range(n))
        sizes = [s.stop - s.start for s in slices]
        assert len(slices) == min(n, parts) and max(sizes) - min(sizes) <= 1


def test_tiles_cut_a_slice_into_cache_sized_runs(monkeypatch):
    monkeypatch.setattr(parallel, "TILE_BYTES", 1000)
    assert parallel.tile_items(300) == 3 and parallel.tile_items(5000) == 1
    for s, item_bytes in ((slice(2, 12), 300), (slice(0, 4), 5000), (slice(5, 6), 1)):
        tiles = parallel.tiles(s, item_bytes)
        covered = np.concatenate([np.arange(20)[t] for t in tiles])
        assert covered.tolist() == list(range(s.start, s.stop))
        assert all(0 < t.stop - t.start <= parallel.tile_items(item_bytes) for t in tiles)


@pytest.mark.parametrize("a_shape, b_shape", [
    ((20, 300), (300, 25)),        # 500 elements: numpy's matmul would keep the GIL
    ((3, 4, 50), (3, 50, 6)),      # a small stack, matrix by matrix
    ((30, 40), (40, 20)),          # large enough for plain matmul
    ((2, 20, 10), (2, 10, 30)),
    ((2, 3, 60), (4, 1, 60, 5)),   # broadcast stacks, as the per-image convolution passes
    ((50, 7), (3, 7, 2)),          # a matrix against a stack, as the slab fold passes
])
def test_matmul_gives_numpys_product(a_shape, b_shape):
    rng = np.random.default_rng(0)
    a = rng.standard_normal(a_shape[:-2] + a_shape[:-3:-1]).astype(np.float32)
    b = rng.standard_normal(b_shape).astype(np.float32)
    a = np.swapaxes(a, -1, -2)  # a transposed view, as the weight gradients pass
    expected = np.matmul(a, b)
    product = parallel.matmul(a, b)
    assert product.shape == expected.shape and product.dtype == np.float32
    np.testing.assert_allclose(product, expected, rtol=1e-5, atol=1e-4)
    # into a given array, also a strided view of a larger one
    out = np.full(expected.shape[:-1] + (2 * expected.shape[-1],), np.nan, np.float32)
    assert parallel.matmul(a, b, out=out[..., ::2]).base is out
    np.testing.assert_allclose(out[..., ::2], expected, rtol=1e-5, atol=1e-4)
    assert np.isnan(out[..., 1::2]).all()


def test_thread_count_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("PROTONET_NUM_THREADS", "3")
    parallel.set_num_threads(None)
    try:
        assert parallel.num_threads() == 3
        monkeypatch.delenv("PROTONET_NUM_THREADS")
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        parallel.set_num_threads(None)
        assert parallel.num_threads() == 1
        assert parallel.split(100, 10**9) == [slice(0, 100)]
    finally:
        parallel.set_num_threads(None)


def test_small_work_stays_on_the_calling_thread(threads):
    threads(2)
    parallel.MIN_ITEMS = 1000
    assert parallel.split(8, 999) == [slice(0, 8)]
    assert parallel.split(1, 10**6) == [slice(0, 1)]


@needs_blas_control
def test_parts_run_concurrently_and_errors_reach_the_caller(threads):
    threads(2)
    get_blas, _ = parallel._blas()
    before = get_blas()
    seen = {}

    def work(k, s):
        seen[k] = (s, threading.current_thread().name, get_blas())
    parallel.run(work, parallel.split(10, 100))
    assert sorted(seen) == [0, 1]
    assert seen[0][0] == slice(0, 5) and seen[1][0] == slice(5, 10)
    assert seen[1][1].startswith("protonet") and seen[0][1] != seen[1][1]
    assert seen[0][2] == 1  # BLAS held at one thread while parts run
    assert get_blas() == before

    def fail(k, s):
        if k == 1:
            raise ValueError("part 1 failed")
    with pytest.raises(ValueError, match="part 1 failed"):
        parallel.run(fail, parallel.split(10, 100))
    assert get_blas() == before
    # the workers still serve after an error, and after an interrupted wait
    parallel.run(work, parallel.split(10, 100))
    assert seen[1][1].startswith("protonet")
    wait = parallel._Worker.wait

    def interrupted(self):
        wait(self)
        raise KeyboardInterrupt
    parallel._Worker.wait = interrupted
    try:
        with pytest.raises(KeyboardInterrupt):
            parallel.run(work, parallel.split(10, 100))
    finally:
        parallel._Worker.wait = wait
    seen.clear()
    parallel.run(work, parallel.split(10, 100))
    assert sorted(seen) == [0, 1] and seen[1][1].startswith("protonet")


@needs_blas_control
def test_runs_from_several_threads_and_nested_runs_finish(threads):
    """A run() while another holds the workers (another thread's, or one inside a part)
    runs its parts on its own thread."""
    threads(2)
    outs = [np.zeros((4, 40)) for _ in range(3)]

    def outer(out, k, s):
        def inner(j, r):
            out[s, r] += k + 1
        parallel.run(inner, parallel.chunks(40, 2))
    callers = [threading.Thread(target=parallel.run, args=(
        functools.partial(outer, out), parallel.chunks(4, 2))) for out in outs]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    for out in outs:
        np.testing.assert_array_equal(out, np.repeat([[1.0], [1.0], [2.0], [2.0]], 40, axis=1))


@needs_blas_control
def test_blas_hold_nests_and_restores(threads):
    threads(2)
    get_blas, set_blas = parallel._blas()
    set_blas(2)
    try:
        with parallel.blas_held():
            assert get_blas() == 1
            with parallel.blas_held():
                assert get_blas() == 1
            assert get_blas() == 1
        assert get_blas() == 2
    finally:
        set_blas(2)


def _run(params, type_, x, dy_seed=1):
    layer = make_layer(f'type: "{type_}" {params}', dtype=np.float32)
    bottom, top = setup_layer(layer, [x])
    layer.forward(bottom, top)
    top[0].diff[...] = np.random.default_rng(dy_seed).standard_normal(top[0].shape)
    layer.backward(top, [True], bottom)
    return [top[0].data.copy(), bottom[0].diff.copy()] + [b.diff.copy() for b in layer.blobs]


LAYERS = [
    ("Convolution", "convolution_param { num_output: 4 kernel_size: 3 pad: 1 "
                    "weight_filler { type: 'gaussian' } bias_filler { type: 'gaussian' } }",
     (5, 3, 6, 6)),
    ("Convolution", "convolution_param { num_output: 6 kernel_size: 3 stride: 2 group: 2 "
                    "weight_filler { type: 'gaussian' } }", (4, 4, 7, 7)),
    ("Convolution", "convolution_param { num_output: 4 kernel_size: 1 "
                    "weight_filler { type: 'gaussian' } }", (3, 3, 4, 4)),
    ("Convolution", "convolution_param { num_output: 5 kernel_size: 3 pad: 1 "
                    "weight_filler { type: 'gaussian' } }", (3, 16, 5, 5)),  # channels-last
    ("Convolution", "convolution_param { num_output: 5 kernel_size: 3 stride: 2 "
                    "weight_filler { type: 'gaussian' } }", (3, 16, 7, 7)),  # ... folding slabs
    ("Pooling", "pooling_param { pool: MAX kernel_size: 3 stride: 2 }", (5, 3, 7, 7)),
    ("Pooling", "pooling_param { pool: MAX kernel_size: 2 stride: 2 pad: 1 }", (3, 2, 5, 5)),
    ("Pooling", "pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }", (4, 3, 6, 6)),
    ("Pooling", "pooling_param { pool: MAX global_pooling: true }", (3, 4, 3, 3)),
    ("InnerProduct", "inner_product_param { num_output: 7 weight_filler { type: 'gaussian' } "
                     "bias_filler { type: 'gaussian' } }", (5, 3, 2, 2)),
    ("InnerProduct", "inner_product_param { num_output: 5 transpose: true "
                     "weight_filler { type: 'gaussian' } }", (4, 6)),
    ("Pooling", "pooling_param { pool: MAX kernel_size: 2 stride: 2 }", (4, 3, 6, 7)),  # disjoint
    ("ReLU", "", (5, 3, 4, 4)),
    ("ReLU", "relu_param { negative_slope: 0.1 }", (5, 3, 4, 4)),
    ("LRN", "lrn_param { local_size: 5 alpha: 0.1 beta: 0.75 }", (5, 7, 4, 4)),
    ("LRN", "lrn_param { local_size: 3 alpha: 0.1 beta: 0.6 norm_region: WITHIN_CHANNEL }",
     (4, 3, 5, 6)),
]


@needs_blas_control
@pytest.mark.parametrize("slope", [0.0, 0.25])
def test_split_relu_in_place(slope, threads):
    threads(3)
    layer = make_layer(f'type: "ReLU" relu_param {{ negative_slope: {slope} }}')
    x = np.random.default_rng(0).standard_normal((5, 7, 3)).astype(np.float32)
    bottom, _ = setup_layer(layer, [x.copy()])
    layer.reshape(bottom, bottom)
    layer.forward(bottom, bottom)
    np.testing.assert_array_equal(bottom[0].data, np.where(x > 0, x, np.float32(slope) * x))
    dy = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    bottom[0].diff[...] = dy
    layer.backward(bottom, [True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, np.where(x > 0, dy, np.float32(slope) * dy))


@needs_blas_control
@pytest.mark.parametrize("type_, params, shape", LAYERS)
@pytest.mark.parametrize("n", [2, 3])
def test_split_layers_give_the_serial_numbers(type_, params, shape, n, threads, monkeypatch):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    threads(1)
    serial = _run(params, type_, x)
    threads(n)
    monkeypatch.setattr(parallel, "TILE_BYTES", 1)  # and one image per pooling tile
    split = _run(params, type_, x)
    for a, b in zip(serial, split):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


@needs_blas_control
@pytest.mark.parametrize("type_, params, shape",
                         [LAYERS[1], LAYERS[3], LAYERS[4], LAYERS[5], LAYERS[9]])
def test_split_layers_pass_the_gradient_check(type_, params, shape, threads):
    threads(2)
    layer = make_layer(f'type: "{type_}" {params}', dtype=np.float64)
    x = np.random.default_rng(2).standard_normal(shape)
    check_gradients(layer, [x], max_checks=40)


@needs_blas_control
def test_unsplit_work_gets_blas_threads_back_inside_a_net_pass(threads):
    threads(2)
    get_blas, set_blas = parallel._blas()
    set_blas(2)
    seen = []
    try:
        with parallel.blas_held():
            parallel.run(lambda k, s: seen.append(get_blas()), [slice(0, 1)])
            assert get_blas() == 1
        parallel.run(lambda k, s: seen.append(get_blas()), [slice(0, 1)])
    finally:
        set_blas(2)
    assert seen == [2, 2]


@needs_blas_control
def test_net_pass_gives_blas_threads_only_to_layers_that_run_gemms(threads, monkeypatch):
    """Convolution splits its batch (BLAS at one thread inside); TanH runs no GEMMs and
    stays at one thread; a layer that leaves GEMMs to BLAS (``runs_gemms``, as
    Deconvolution, RNN/LSTM and Python layers do) gets BLAS's threads back."""
    from protonet.io import parse_net
    from protonet.layers.neuron import SigmoidLayer, TanHLayer
    from protonet.net import Net
    threads(2)
    get_blas, set_blas = parallel._blas()
    seen = {}

    def spy(cls, name):
        forward = cls.forward

        def wrapped(self, bottom, top):
            seen[name] = get_blas()
            forward(self, bottom, top)
        monkeypatch.setattr(cls, "forward", wrapped)
    spy(TanHLayer, "tanh")
    spy(SigmoidLayer, "sigmoid")
    monkeypatch.setattr(SigmoidLayer, "runs_gemms", True)
    net = Net(parse_net("""
        layer { name: "x" type: "DummyData" top: "x"
          dummy_data_param { shape { dim: 4 dim: 2 dim: 5 dim: 5 } } }
        layer { name: "conv" type: "Convolution" bottom: "x" top: "c"
          convolution_param { num_output: 3 kernel_size: 3 } }
        layer { name: "tanh" type: "TanH" bottom: "c" top: "c" }
        layer { name: "sigmoid" type: "Sigmoid" bottom: "c" top: "s" }"""), 1)
    conv = net.layer_dict["conv"]
    conv_forward = conv.forward

    def conv_spy(bottom, top):
        seen["conv"] = get_blas()
        conv_forward(bottom, top)
    conv.forward = conv_spy
    set_blas(2)
    try:
        net.forward_from_to()
        assert seen == {"conv": 1, "tanh": 1, "sigmoid": 2}
        assert get_blas() == 1  # the convolution was split: BLAS stays parked
    finally:
        set_blas(2)


@needs_blas_control
def test_a_pass_that_split_leaves_blas_parked_until_a_pass_that_does_not(threads):
    """Raising BLAS's thread count wakes its spinning workers, so after a pass whose work
    was split BLAS stays at one thread; the next unsplit pass, restore_blas_threads() and
    set_num_threads() give the count back."""
    threads(2)
    get_blas, set_blas = parallel._blas()
    set_blas(2)
    two = parallel.chunks(2, 2)
    seen = []
    try:
        with parallel.blas_held():
            parallel.run(lambda k, s: None, two)
        assert get_blas() == 1
        with parallel.blas_held():  # the parked count is what a released layer gets
            parallel.run(lambda k, s: seen.append(get_blas()), [slice(0, 1)])
        assert seen == [2] and get_blas() == 2
        with parallel.blas_held():
            parallel.run(lambda k, s: None, two)
        parallel.restore_blas_threads()
        assert get_blas() == 2
        with parallel.blas_held():
            parallel.run(lambda k, s: None, two)
        threads(2)
        assert get_blas() == 2
    finally:
        set_blas(2)



@needs_blas_control
def test_work_too_small_to_split_leaves_blas_alone(threads, monkeypatch):
    threads(2)
    monkeypatch.setattr(parallel, "MIN_ITEMS", 1000)
    get_blas, set_blas = parallel._blas()
    small = parallel.split(8, 10)  # a batch, but too little work for two parts
    assert len(small) == 1 and small.small
    single = parallel.split(1, 10_000)  # one image: BLAS's threads do it
    assert len(single) == 1 and not single.small
    set_blas(2)
    got = []
    try:
        with parallel.blas_held():
            parallel.run(lambda k, s: got.append(get_blas()), small)
            parallel.run(lambda k, s: got.append(get_blas()), single)
    finally:
        set_blas(2)
    assert got == [1, 2]


def test_each_part_gets_enough_work(threads):
    threads(8)
    parallel.MIN_ITEMS = 1000
    if parallel._blas() is None:
        pytest.skip("numpy's BLAS thread count cannot be set")
    assert len(parallel.split(64, 2500)) == 2    # 2500 elements: two parts of >= 1000
    assert len(parallel.split(64, 10**6)) == 8   # capped by the threads
    assert len(parallel.split(3, 10**6)) == 3    # and by the batch


@needs_blas_control
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_split_concat_copies_every_bottom_and_its_gradient(axis, threads):
    rng = np.random.default_rng(4)
    shapes = [(5, 2, 3, 4), (5, 2, 3, 4)]
    shapes[1] = tuple(d + 2 if i == axis else d for i, d in enumerate(shapes[1]))
    xs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    threads(3)
    layer = make_layer(f'type: "Concat" concat_param {{ axis: {axis} }}', dtype=np.float32)
    bottom, top = setup_layer(layer, [x.copy() for x in xs])
    layer.forward(bottom, top)
    np.testing.assert_array_equal(top[0].data, np.concatenate(xs, axis=axis))
    dy = rng.standard_normal(top[0].shape).astype(np.float32)
    top[0].diff[...] = dy
    layer.backward(top, [True, True], bottom)
    cut = shapes[0][axis]
    np.testing.assert_array_equal(bottom[0].diff, np.take(dy, range(cut), axis=axis))
    np.testing.assert_array_equal(bottom[1].diff,
                                  np.take(dy, range(cut, dy.shape[axis]), axis=axis))
    assert len(layer._parts(top)) == (1 if axis == 0 else 3)


@needs_blas_control
@pytest.mark.parametrize("in_place", [False, True])
def test_split_eltwise_sum_adds_every_image(in_place, threads):
    threads(3)
    rng = np.random.default_rng(2)
    a, b = (rng.standard_normal((5, 4, 3, 2)).astype(np.float32) for _ in range(2))
    layer = make_layer('type: "Eltwise"', dtype=np.float32)
    bottom, top = setup_layer(layer, [a.copy(), b])
    if in_place:  # top is bottom 0, as ResNet's prototxts often write it
        top = bottom[:1]
        layer.reshape(bottom, top)
    layer.forward(bottom, top)
    np.testing.assert_array_equal(top[0].data, a + b)


def test_a_small_inner_product_stays_on_the_calling_thread(threads, monkeypatch):
    threads(2)
    monkeypatch.setattr(common, "SPLIT_MIN_MACS", 1 << 22)
    small = make_layer("type: 'InnerProduct' inner_product_param { num_output: 10 }")
    setup_layer(small, [np.zeros((64, 500))])
    parts = small._parts(10)
    assert len(parts) == 1 and parts.small  # BLAS is not woken for it either
    large = make_layer("type: 'InnerProduct' inner_product_param { num_output: 500 }")
    setup_layer(large, [np.zeros((64, 800))])
    assert len(large._parts(500)) == 2
