"""pycaffe's ``caffe.Detector``: R-CNN style detection by classifying image windows.

    det = caffe.Detector("deploy.prototxt", "weights.caffemodel", mean=mean_bgr,
                         raw_scale=255, channel_swap=(2, 1, 0), context_pad=16)
    found = det.detect_windows([("cat.jpg", [(0, 0, 100, 120), (30, 40, 90, 200)])])
    # [{"filename": "cat.jpg", "window": (0, 0, 100, 120), "prediction": scores}, ...]

Each window ``(ymin, xmin, ymax, xmax)`` is cut from its image, warped to the net's
input size and classified; all windows go through the net in batches of its batch size.
With ``context_pad`` the crop is widened so that a border of ``context_pad`` pixels of
the warped input is context around the window, as R-CNN extracts features; where that
border leaves the image it is filled with the mean.

Selective-search proposals (pycaffe's ``detect_selective_search``) need the external
``selective_search_ijcv_with_python`` package and MATLAB; the method imports it and says
so when it is missing.
"""
from __future__ import annotations

import os
from typing import Iterable, Sequence

import numpy as np

from .errors import ProtonetError
from .classifier import input_transformer
from .io.pycaffe_io import load_image, resize_image
from .layers import TEST
from .net import Net


class Detector(Net):
    """A TEST-phase :class:`~protonet.net.Net` classifying windows of images.

    ``mean``, ``input_scale``, ``raw_scale``, ``channel_swap``: the preprocessing of the
    net's first input (see :class:`~protonet.io.Transformer`); ``context_pad``: pixels of
    context around each window in the warped input (R-CNN's 16), or None.
    """

    def __init__(self, model_file: str, pretrained_file: str | None,
                 mean: np.ndarray | None = None, input_scale: float | None = None,
                 raw_scale: float | None = None, channel_swap: Sequence[int] | None = None,
                 context_pad: int | None = None, **net_kwargs):
        super().__init__(model_file, TEST, weights=pretrained_file, **net_kwargs)
        if not self.inputs:
            raise ProtonetError(f"{model_file}: a Detector needs a net with an input "
                                "(an Input layer or input: fields)")
        self.transformer = input_transformer(self, mean, input_scale, raw_scale, channel_swap)
        self.configure_crop(context_pad)

    # -- detection ----------------------------------------------------------------------------
    def detect_windows(self, images_windows: Iterable) -> list[dict]:
        """Classify every window of every image.

        ``images_windows``: ``(image filename, windows)`` pairs, each window
        ``(ymin, xmin, ymax, xmax)`` in pixels. Returns one dict per window, in order:
        ``{"filename", "window", "prediction"}`` with the net's first output for it.
        """
        images_windows = [(name, list(windows)) for name, windows in images_windows]
        crops = []
        for filename, windows in images_windows:
            image = load_image(filename).astype(np.float32)
            crops.extend(self.crop(image, window) for window in windows)
        if not crops:
            return []
        in_ = self.inputs[0]
        batch = np.zeros((len(crops), crops[0].shape[2]) + self.blobs[in_].data.shape[2:],
                         np.float32)
        for i, crop in enumerate(crops):
            batch[i] = self.transformer.preprocess(in_, crop)
        predictions = self.forward_all(**{in_: batch})[self.outputs[0]]
        found, i = [], 0
        for filename, windows in images_windows:
            for window in windows:
                found.append({"window": window, "prediction": predictions[i],
                              "filename": filename})
                i += 1
        return found

    def detect_selective_search(self, image_fnames: Sequence[str]) -> list[dict]:
        """:meth:`detect_windows` over Selective Search proposals (needs the external
        ``selective_search_ijcv_with_python`` package, which runs MATLAB)."""
        try:
            import selective_search_ijcv_with_python as selective_search
        except ImportError:
            raise ProtonetError(
                "detect_selective_search needs the selective_search_ijcv_with_python package "
                "(and MATLAB) on PYTHONPATH; or compute windows another way and call "
                "detect_windows([(image, windows), ...])") from None
        image_fnames = [os.path.abspath(f) for f in image_fnames]
        windows = selective_search.get_windows(image_fnames, cmd="selective_search_rcnn")
        return self.detect_windows(zip(image_fnames, windows))

    # -- cropping -----------------------------------------------------------------------------
    def crop(self, im: np.ndarray, window) -> np.ndarray:
        """The ``H x W x K`` crop of ``im`` for ``window`` ``(ymin, xmin, ymax, xmax)``:
        ``im[ymin:ymax, xmin:xmax]``; with ``context_pad``, a ``crop_dims`` image whose
        border of ``context_pad`` pixels (after warping) shows the window's surroundings."""
        ymin, xmin, ymax, xmax = (int(round(v)) for v in window)
        if not self.context_pad:
            return im[ymin:ymax, xmin:xmax]
        size = int(self.crop_dims[0])  # a square input, as R-CNN's
        # widen the box (inclusive pixel bounds) so the window fills the input less the pad
        scale = size / (size - 2.0 * self.context_pad)
        half_h, half_w = (ymax - ymin + 1) / 2.0, (xmax - xmin + 1) / 2.0
        center = np.array([ymin + half_h, xmin + half_w] * 2)
        box = np.round(center + scale * np.array([-half_h, -half_w, half_h, half_w]))
        scale_h = size / (box[2] - box[0] + 1)
        scale_w = size / (box[3] - box[1] + 1)
        # where the widened box leaves the image, the warped crop starts this far in
        pad_y = int(round(max(0.0, -box[0]) * scale_h))
        pad_x = int(round(max(0.0, -box[1]) * scale_w))
        im_h, im_w = im.shape[:2]
        box = np.clip(box, 0, [im_h, im_w, im_h, im_w])
        clip_h, clip_w = box[2] - box[0] + 1, box[3] - box[1] + 1
        if clip_h <= 0 or clip_w <= 0:
            raise ProtonetError(f"window {tuple(window)} lies outside the {im_h}x{im_w} image")
        crop_h = min(int(round(clip_h * scale_h)), size - pad_y)
        crop_w = min(int(round(clip_w * scale_w)), size - pad_x)
        top, left, bottom, right = (int(v) for v in box)
        context = resize_image(im[top:bottom, left:right], (crop_h, crop_w))
        out = np.ones(tuple(self.crop_dims), np.float32) * self.crop_mean
        out[pad_y:pad_y + crop_h, pad_x:pad_x + crop_w] = context
        return out

    def configure_crop(self, context_pad: int | None) -> None:
        """Set ``crop_dims`` (the input's H x W x K) and ``context_pad``; with context,
        ``crop_mean`` is the mean in image layout (H x W x K, unswapped, unscaled) that
        fills the border outside the image (zeros without a mean)."""
        in_ = self.inputs[0]
        transformer = self.transformer
        to_image = np.argsort(transformer.transpose[in_])  # K x H x W -> H x W x K
        self.crop_dims = np.array(self.blobs[in_].data.shape[1:])[to_image]
        self.context_pad = context_pad
        if not context_pad:
            return
        mean = transformer.mean.get(in_)
        if mean is None:
            self.crop_mean = np.zeros(tuple(self.crop_dims), np.float32)
            return
        crop_mean = np.array(mean, np.float32)
        if crop_mean.ndim == 1:   # per-channel mean values
            crop_mean = crop_mean[:, None, None]
        crop_mean = crop_mean.transpose(to_image)
        swap = transformer.channel_swap.get(in_)
        if swap is not None:
            crop_mean = crop_mean[:, :, np.argsort(swap)]
        raw_scale = transformer.raw_scale.get(in_)
        if raw_scale is not None:
            crop_mean = crop_mean / raw_scale
        self.crop_mean = crop_mean
