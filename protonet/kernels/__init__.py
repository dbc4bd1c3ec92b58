"""Array algorithms, apart from the layers that pick them.

Each module holds pure functions on numpy arrays, with their shapes in the docstrings, and
beside the fast ones a plain reference that reads like the textbook (the tests compare the
two). A layer class reads as Caffe's semantics -- parameters, shapes, phases -- and calls
a kernel; the kernels keep their scratch in a dict the layer owns (:mod:`.scratch`).

* :mod:`.im2col`, :mod:`.im2col_nd` -- output sizes, im2col/col2im (2-D and N-D),
  channels-last windows, phase planes;
* :mod:`.conv` -- convolution forward: 1x1 as a plain GEMM, depthwise as per-tap
  multiply-adds, Caffe's columns, channels-last tiles; :mod:`.conv_backward` -- its
  gradients;
* :mod:`.pool` -- MAX (with or without the choices), AVE and STOCHASTIC pooling and their
  backward;
* :mod:`.affine` -- per-channel affine maps (BatchNorm with global statistics, Scale,
  Bias) and the epilogue a convolution or inner product writes through;
* :mod:`.jit`, :mod:`.jit_pool` -- compiled loops (numba, optional) for the depthwise
  convolution, the convolutions' epilogue and pooling, which numpy can only do pass by
  pass; :mod:`.jit_conv` -- a channels-last convolution as an implicit GEMM (a
  register-tiled kernel reading the padded frame in place: no columns), forward, backward
  data and weight gradient. The numpy kernels above stay the fallback and are tested
  beside them.
"""
