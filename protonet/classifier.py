"""pycaffe's ``caffe.Classifier``: a Net that classifies images, with pycaffe's preprocessing.

    net = caffe.Classifier("deploy.prototxt", "weights.caffemodel",
                           image_dims=(256, 256), mean=mean_bgr, raw_scale=255,
                           channel_swap=(2, 1, 0))
    scores = net.predict([caffe.io.load_image("cat.jpg")])   # (1, classes), 10-crop average
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .errors import ProtonetError
from .io.pycaffe_io import Transformer, oversample, resize_image
from .layers import TEST
from .net import Net


def input_transformer(net: Net, mean=None, input_scale=None, raw_scale=None,
                      channel_swap=None) -> Transformer:
    """A :class:`~protonet.io.Transformer` for the net's first input: H x W x K images to
    K x H x W, then each of the given steps (pycaffe's Classifier and Detector setup)."""
    in_ = net.inputs[0]
    transformer = Transformer({in_: net.blobs[in_].data.shape})
    transformer.set_transpose(in_, (2, 0, 1))
    if mean is not None:
        transformer.set_mean(in_, mean)
    if input_scale is not None:
        transformer.set_input_scale(in_, input_scale)
    if raw_scale is not None:
        transformer.set_raw_scale(in_, raw_scale)
    if channel_swap is not None:
        transformer.set_channel_swap(in_, channel_swap)
    return transformer


class Classifier(Net):
    """A TEST-phase :class:`~protonet.net.Net` with a :class:`~protonet.io.Transformer` for
    its first input.

    Images (H x W x K, values in [0, 1] as :func:`~protonet.io.load_image` gives them) are
    resized to ``image_dims`` (default: the input's H x W), cropped to the input size --
    ten crops (corners, centre and their mirrors) averaged when ``oversample`` -- then
    transposed to K x H x W, channel-swapped, raw-scaled, mean-subtracted and
    input-scaled, as the arguments ask.
    """

    def __init__(self, model_file: str, pretrained_file: str | None,
                 image_dims: Sequence[int] | None = None, mean: np.ndarray | None = None,
                 input_scale: float | None = None, raw_scale: float | None = None,
                 channel_swap: Sequence[int] | None = None, **net_kwargs):
        super().__init__(model_file, TEST, weights=pretrained_file, **net_kwargs)
        if not self.inputs:
            raise ProtonetError(f"{model_file}: a Classifier needs a net with an input "
                                "(an Input layer or input: fields)")
        in_ = self.inputs[0]
        self.transformer = input_transformer(self, mean, input_scale, raw_scale, channel_swap)
        self.crop_dims = np.array(self.blobs[in_].data.shape[2:])
        if image_dims is None or not len(image_dims):
            image_dims = self.crop_dims
        self.image_dims = image_dims

    def predict(self, inputs: Sequence[np.ndarray], oversample: bool = True) -> np.ndarray:
        """Class scores (the net's first output) for each H x W x K image: an
        (N, classes) array, each row the mean over the ten crops when ``oversample``."""
        if not len(inputs):
            raise ProtonetError("predict: no images given")
        input_ = np.zeros((len(inputs), self.image_dims[0], self.image_dims[1],
                           inputs[0].shape[2]), dtype=np.float32)
        for ix, in_ in enumerate(inputs):
            input_[ix] = resize_image(in_, self.image_dims)
        if oversample:
            input_ = _oversample(input_, self.crop_dims)
        else:
            center = np.array(self.image_dims) / 2.0
            crop = np.concatenate([center - self.crop_dims / 2.0,
                                   center + self.crop_dims / 2.0]).astype(int)
            input_ = input_[:, crop[0]:crop[2], crop[1]:crop[3], :]
        in_name = self.inputs[0]
        caffe_in = np.zeros(np.array(input_.shape)[[0, 3, 1, 2]], dtype=np.float32)
        for ix, in_ in enumerate(input_):
            caffe_in[ix] = self.transformer.preprocess(in_name, in_)
        out = self.forward_all(**{in_name: caffe_in})
        predictions = out[self.outputs[0]]
        if oversample:
            predictions = predictions.reshape((len(predictions) // 10, 10, -1)).mean(1)
        return predictions


_oversample = oversample  # predict's keyword argument shadows the function's name
