"""The compiled loops behind :mod:`protonet.kernels.jit_conv` (the definitions, the checks
and the callers are there). This module imports numba and llvmlite at once: reach it
through jit_conv, which imports it only when numba is there.

The micro-kernel (:func:`_tile`) is LLVM IR with vector types, built through numba's
``intrinsic`` (numba has no vector types of its own); the loops that call it are numba.
Everything is defined at module level so numba's disk cache keeps the compiled loops
(kernels made in a closure would be compiled anew by every process).
"""
from __future__ import annotations

import numba
import numpy as np
from llvmlite import binding, ir
from numba.core import cgutils, types
from numba.extending import intrinsic


def _host() -> tuple[int, int]:
    """``(V, registers)``: floats per vector and vector registers of the CPU numba compiles
    for (AVX-512: 16 and 32; else 8 and 16, as with AVX2). Read from the features numba
    compiles with, which also key its disk cache: code cached for other features (and so
    another ``V``) is never loaded here."""
    from numba.core import config
    if config.CPU_FEATURES is not None:  # NUMBA_CPU_FEATURES
        avx512 = "+avx512f" in config.CPU_FEATURES.split(",")
    else:
        avx512 = binding.get_host_cpu_features().get("avx512f", False)
    return (16, 32) if avx512 else (8, 16)


V, REGISTERS = _host()
#: rows of the result a tile keeps in registers, by vectors per row: the accumulators take
#: three quarters of the vector registers
ROWS = {32: {4: 6, 2: 12, 1: 24}, 16: {4: 3, 2: 6, 1: 12}}[REGISTERS]
TALLEST = max(ROWS.values())  # the offsets a tile reads, one per row

# prm, the tile's scalar arguments (an int64 array, so the calls stay short)
A0, T1, ATS1, T2, ATS2, B0, BTS1, BTS2, C0, CRS, ACC = range(11)


def _tile(R: int, NV: int):
    """The micro-kernel: an intrinsic ``tile(a, offs, b, c, prm)`` computing, for ``r < R``
    and ``j < NV`` (``prm`` holding the named scalars above)::

        c[c0 + r*crs + V*j : ... + V] (+)= sum over t1 < T1, t2 < T2 of
            a[offs[r] + a0 + t1*ats1 + t2*ats2] * b[b0 + t1*bts1 + t2*bts2 + V*j : ... + V]

    (``+=`` if ``acc``, else ``=``): ``R*NV`` vector sums kept in registers, each step
    loading ``NV`` vectors of ``b`` and broadcasting one value of ``a`` per row. Indices
    are in elements of the flat float32 arrays; nothing is checked (the callers bound
    them)."""
    f32, i32, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
    vec = ir.VectorType(f32, V)
    splat = ir.Constant(ir.VectorType(i32, V), [0] * V)

    @intrinsic
    def tile(typingctx, a, offs, b, c, prm):
        def codegen(context, builder, signature, args):
            ap, op, bp, cp, pp = (context.make_array(t)(context, builder, v).data
                                  for t, v in zip(signature.args, args))

            def const(v):
                return ir.Constant(i64, v)

            def scalar(k):
                return builder.load(builder.gep(pp, [const(k)]))

            def vector_at(base, index):
                return builder.bitcast(builder.gep(base, [index]), vec.as_pointer())
            a0, crs = scalar(A0), scalar(CRS)
            rows = [builder.add(a0, builder.load(builder.gep(op, [const(r)])))
                    for r in range(R)]
            c0 = scalar(C0)
            out = [[vector_at(cp, builder.add(builder.add(c0, builder.mul(const(r), crs)),
                                              const(V * j))) for j in range(NV)]
                   for r in range(R)]
            sums = [[cgutils.alloca_once_value(builder, ir.Constant(vec, None))
                     for _ in range(NV)] for _ in range(R)]
            with builder.if_then(builder.icmp_signed("!=", scalar(ACC), const(0))):
                for r in range(R):
                    for j in range(NV):
                        builder.store(builder.load(out[r][j], align=4), sums[r][j])
            ats1, ats2, bts1, bts2 = (scalar(k) for k in (ATS1, ATS2, BTS1, BTS2))
            with cgutils.for_range(builder, scalar(T1)) as outer:
                a1 = builder.mul(outer.index, ats1)
                b1 = builder.add(scalar(B0), builder.mul(outer.index, bts1))
                with cgutils.for_range(builder, scalar(T2)) as inner:
                    a2 = builder.add(a1, builder.mul(inner.index, ats2))
                    b2 = builder.add(b1, builder.mul(inner.index, bts2))
                    right = [builder.load(vector_at(bp, builder.add(b2, const(V * j))), align=4)
                             for j in range(NV)]
                    for r in range(R):
                        value = builder.load(builder.gep(ap, [builder.add(rows[r], a2)]))
                        left = builder.shuffle_vector(
                            builder.insert_element(ir.Constant(vec, None), value,
                                                   ir.Constant(i32, 0)),
                            ir.Constant(vec, None), splat)
                        for j in range(NV):  # contract: one fused multiply-add
                            product = builder.fmul(left, right[j], flags=("contract",))
                            builder.store(builder.fadd(builder.load(sums[r][j]), product,
                                                       flags=("contract",)), sums[r][j])
            for r in range(R):
                for j in range(NV):
                    builder.store(builder.load(sums[r][j]), out[r][j], align=4)
            return context.get_dummy_value()
        return types.void(a, offs, b, c, prm), codegen
    return tile


def _heights(NV: int) -> tuple[int, ...]:
    """Tile heights for ``NV`` vectors a row: the tallest, then halvings down to 1 (for the
    last rows of a range), padded to five with 1."""
    heights = [ROWS[NV]]
    while heights[-1] > 1:
        heights.append(max(1, heights[-1] // 2))
    return tuple(heights + [1] * (5 - len(heights)))


H1, H2, H4 = _heights(1), _heights(2), _heights(4)
T1a, T1b, T1c, T1d, T1e = (_tile(r, 1) for r in H1)
T2a, T2b, T2c, T2d, T2e = (_tile(r, 2) for r in H2)
T4a, T4b, T4c, T4d, T4e = (_tile(r, 4) for r in H4)

_jit = numba.njit(nogil=True, cache=True, boundscheck=False, error_model="numpy")
_inline = numba.njit(nogil=True, cache=True, boundscheck=False, error_model="numpy",
                     inline="always")


@_inline
def _vectors(O):
    """Vectors per tile row for ``O`` outputs (a multiple of V)."""
    return 4 if O % (4 * V) == 0 else (2 if O % (2 * V) == 0 else 1)


@_inline
def _height(nv, left):
    """The tallest tile for ``nv`` vectors a row with at most ``left`` rows."""
    heights = H4 if nv == 4 else (H2 if nv == 2 else H1)
    for r in heights:
        if r <= left:
            return r
    return 1


@_inline
def _call(nv, r, a, offs, b, c, prm):
    # numba cannot pick a kernel out of a tuple of them (nor type such a tuple as a
    # global): one branch each
    if nv == 4:
        if r == H4[0]:
            T4a(a, offs, b, c, prm)
        elif r == H4[1]:
            T4b(a, offs, b, c, prm)
        elif r == H4[2]:
            T4c(a, offs, b, c, prm)
        elif r == H4[3]:
            T4d(a, offs, b, c, prm)
        else:
            T4e(a, offs, b, c, prm)
    elif nv == 2:
        if r == H2[0]:
            T2a(a, offs, b, c, prm)
        elif r == H2[1]:
            T2b(a, offs, b, c, prm)
        elif r == H2[2]:
            T2c(a, offs, b, c, prm)
        elif r == H2[3]:
            T2d(a, offs, b, c, prm)
        else:
            T2e(a, offs, b, c, prm)
    else:
        if r == H1[0]:
            T1a(a, offs, b, c, prm)
        elif r == H1[1]:
            T1b(a, offs, b, c, prm)
        elif r == H1[2]:
            T1c(a, offs, b, c, prm)
        elif r == H1[3]:
            T1d(a, offs, b, c, prm)
        else:
            T1e(a, offs, b, c, prm)


@_jit
def rows(frame, w, out, p0, p1, kh, sh, sw, dh, Ho, Wo, panel):
    """``out[q - p0, :]`` for the flat output positions ``p0 <= q < p1`` of ``frame``'s
    images (``q = (i*Ho + y)*Wo + x``) = the windows at ``(i, y, x)`` @ the weights ``w
    (O/q, kh*kw*C, q)`` (in chunks of ``q`` columns), summed ``panel`` kernel rows at a
    time."""
    _, Hp, Wp, C = frame.shape
    chunks, K, q = w.shape
    O, span = chunks * q, K // kh  # kw*C contiguous values per kernel row
    nv = q // V
    a, b, c = frame.ravel(), w.ravel(), out.ravel()
    offs = np.empty(TALLEST, np.int64)
    prm = np.zeros(11, np.int64)
    prm[ATS1], prm[T2], prm[ATS2] = dh * Wp * C, span, 1
    prm[BTS1], prm[BTS2], prm[CRS] = span * q, q, O
    P, HW = p1 - p0, Ho * Wo
    for ch in range(chunks):
        for ky in range(0, kh, panel):
            prm[T1], prm[B0], prm[ACC] = min(panel, kh - ky), (ch * K + ky * span) * q, ky > 0
            p = 0
            while p < P:
                r = _height(nv, P - p)
                for k in range(r):
                    i, yx = (p0 + p + k) // HW, (p0 + p + k) % HW
                    y, x = yx // Wo, yx % Wo
                    offs[k] = ((i * Hp + y * sh + ky * dh) * Wp + x * sw) * C
                prm[C0] = p * O + ch * q
                _call(nv, r, a, offs, b, c, prm)
                p += r


@_jit
def weights(frame, dy, dw, kh, kw, sh, sw, dh, dwl):
    """``dw[(ky*kw + kx)*C + ch, o] +=`` the sum over images and output positions of
    ``frame[i, y*sh + ky*dh, x*sw + kx*dwl, ch] * dy[i, y, x, o]``."""
    n, Hp, Wp, C = frame.shape
    _, Ho, Wo, O = dy.shape
    K = kh * kw * C
    nv = _vectors(O)
    s0, s1, s2 = dy.strides[0] // 4, dy.strides[1] // 4, dy.strides[2] // 4
    a, c = frame.ravel(), dw.ravel()
    offs = np.empty(TALLEST, np.int64)
    prm = np.zeros(11, np.int64)
    prm[T1], prm[ATS1], prm[T2], prm[ATS2] = Ho, sh * Wp * C, Wo, sw * C
    prm[BTS1], prm[BTS2], prm[CRS], prm[ACC] = s1, s2, O, 1
    for i in range(n):
        prm[A0] = i * Hp * Wp * C
        for oc in range(0, O, nv * V):
            prm[B0] = i * s0 + oc
            k = 0
            while k < K:
                r = _height(nv, K - k)
                for m in range(r):
                    ch, tap = (k + m) % C, (k + m) // C
                    offs[m] = ((tap // kw) * dh * Wp + (tap % kw) * dwl) * C + ch
                prm[C0] = k * O + oc
                _call(nv, r, a, offs, dy, c, prm)
                k += r
