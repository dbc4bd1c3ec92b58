"""The SSD fork's training loss, ``MultiBoxLoss`` (weiliu89/caffe, branch ``ssd``,
``multibox_loss_layer.cpp``). The kernels are in :mod:`protonet.multibox`.

Bottoms: ``mbox_loc (N, P * L * 4)`` (``L`` = 1 with ``share_location``, else
``num_classes``), ``mbox_conf (N, P * num_classes)``, ``mbox_priorbox (1, 2, P * 4)``
(corners, then variances, as PriorBox gives them) and ``label (1, 1, num_gt, 8)`` rows
``[item_id, group_label, instance_id, xmin, ymin, xmax, ymax, difficult]`` (as AnnotatedData
gives them). Top: the loss ``()``.

Per image the ground-truth boxes are matched to the priors (``use_prior_for_matching``,
the default) or to the decoded predictions (BIPARTITE, then with PER_PREDICTION every
prior whose best overlap reaches ``overlap_threshold``). The localisation loss (SmoothL1
or L2, times ``loc_weight``) compares each matched prediction with its box encoded
against the prior (``code_type``, ``encode_variance_in_target``; ``bp_inside`` leaves out
coordinates of priors outside the image). The confidence loss (softmax or logistic) covers
the matched priors (their box's class) and the negatives (background):

- ``mining_type: MAX_NEGATIVE`` (the default): per image, the ``int(neg_pos_ratio *
  positives)`` unmatched priors with the highest background loss among those
  overlapping every box by less than ``neg_overlap``. An image without boxes adds no
  negatives, as in the fork.
- ``HARD_EXAMPLE``: the ``sample_size`` priors with the highest confidence + localisation
  loss (optionally after NMS over them, ``nms_param``/``use_prior_for_nms``); matched
  priors not selected stop counting as matches.
- ``NONE``: every prior (background unless matched).

Both parts are divided by the normalizer of ``loss_param.normalization`` (VALID: the
number of matches; FULL: ``N * P``; BATCH_SIZE: ``N``; NONE: 1; at least 1). As in the
fork, a part is included only where ``propagate_down`` (default ``true true false false``)
is true for its bottom.

Differences from the fork, all outside the SSD nets' settings: protonet's gradient is the
true one with ``encode_variance_in_target`` (the fork leaves out the division by the
variance in backward); LOGISTIC without mining uses a 0/1 target per class (the fork's
target buffer is filled with ``background_label_id`` and indexed per prior rather than per
prior and class there); negatives of equal loss are taken lower prior first (the fork's
``std::sort`` leaves that order open). The loss of the predictions is computed in the
net's precision, the box geometry in float32 as the fork does.
"""
from __future__ import annotations

import numpy as np

from .. import detection, multibox as mb
from .base import Layer, register
from .loss import VALID, normalization_mode


@register("MultiBoxLoss")
class MultiBoxLossLayer(Layer):
    """See the module docstring."""

    exact_num_bottom = 4
    exact_num_top = 1
    is_loss = True

    def layer_setup(self, bottom, top):
        p = self.param.multibox_loss_param
        if not p.HasField("num_classes"):
            raise self.error("multibox_loss_param.num_classes must be given (background "
                             "included)")
        self.num_classes = int(p.num_classes)
        if self.num_classes < 1:
            raise self.error("multibox_loss_param.num_classes must be at least 1")
        self.share_location = bool(p.share_location)
        self.loc_classes = 1 if self.share_location else self.num_classes
        self.background = int(p.background_label_id)
        self.mining = int(p.mining_type)
        if p.HasField("do_neg_mining") and bool(p.do_neg_mining) != (self.mining != mb.MINE_NONE):
            raise self.error(
                f"multibox_loss_param.do_neg_mining ({str(p.do_neg_mining).lower()}) "
                f"contradicts mining_type ({p.MiningType.Name(self.mining)}); do_neg_mining is "
                "deprecated, give mining_type alone")
        if self.mining != mb.MINE_NONE and not self.share_location:
            raise self.error("multibox_loss_param.mining_type "
                             f"{p.MiningType.Name(self.mining)} needs share_location: true "
                             "(the fork mines negatives only for shared locations); set "
                             "mining_type: NONE or share_location: true")
        if self.mining == mb.HARD_EXAMPLE and p.sample_size <= 0:
            raise self.error("multibox_loss_param.sample_size must be positive for "
                             "mining_type HARD_EXAMPLE")
        self.conf_type = int(p.conf_loss_type)
        self.loc_type = int(p.loc_loss_type)
        if self.conf_type == mb.SOFTMAX and not 0 <= self.background < self.num_classes:
            raise self.error(f"multibox_loss_param.background_label_id {self.background} must "
                             f"be below num_classes {self.num_classes} for a SOFTMAX "
                             "confidence loss")
        if p.map_object_to_agnostic and self.num_classes != 2:
            raise self.error("multibox_loss_param.map_object_to_agnostic needs num_classes: 2 "
                             f"(background and object), got {self.num_classes}")
        self.code_type = int(p.code_type)
        self.normalization = normalization_mode(self, VALID)
        pd = list(self.param.propagate_down)
        self.include = (pd[0] if pd else True, pd[1] if len(pd) > 1 else True)
        self.p = p

    def reshape(self, bottom, top):
        loc, conf, prior, label = bottom
        if loc.num_axes < 2 or conf.num_axes < 2 or loc.shape[0] != conf.shape[0]:
            raise self.shape_error("mbox_loc and mbox_conf must be (N, ...) with the same N",
                                   bottom)
        if prior.num_axes < 3 or prior.shape[1] != 2 or prior.shape[2] % 4:
            raise self.shape_error("the priors (bottom 2) must be (1, 2, num_priors * 4), as "
                                   "PriorBox gives them", bottom)
        if label.count % 8:
            raise self.shape_error("the label (bottom 3) must hold rows of 8 values (1, 1, "
                                   "num_gt, 8), as AnnotatedData gives them", bottom)
        self.num = loc.shape[0]
        self.num_priors = prior.shape[2] // 4
        want_loc = self.num_priors * self.loc_classes * 4
        if loc.count_range(1) != want_loc:
            raise self.shape_error(
                f"mbox_loc has {loc.count_range(1)} values per image; {self.num_priors} priors "
                f"x {self.loc_classes} location class(es) x 4 = {want_loc}", bottom)
        want_conf = self.num_priors * self.num_classes
        if conf.count_range(1) != want_conf:
            raise self.shape_error(
                f"mbox_conf has {conf.count_range(1)} values per image; {self.num_priors} "
                f"priors x {self.num_classes} classes = {want_conf}", bottom)
        top[0].reshape(())

    # -- forward ------------------------------------------------------------------------------
    def _ground_truth(self, label):
        gts = mb.ground_truth(label.data, bool(self.p.use_difficult_gt))
        for item, (_, labels) in gts.items():
            if np.any(labels == self.background):
                raise self.error(f"image {item} of the batch has a box of class "
                                 f"{self.background}, the background_label_id; object classes "
                                 "must differ from the background")
            if not self.p.map_object_to_agnostic and \
                    np.any((labels < 0) | (labels >= self.num_classes)):
                bad = labels[(labels < 0) | (labels >= self.num_classes)][0]
                raise self.error(f"image {item} of the batch has a box of class {bad}, not "
                                 f"below num_classes {self.num_classes}")
        return gts

    def _match(self, gts, priors, variances, loc):
        """Per image a ``(keys, indices (K, P), overlaps (K, P))`` triple: ``keys`` the
        location classes matched (-1 alone with share_location; none for an image
        without boxes)."""
        p = self.p
        args = (int(p.match_type), float(p.overlap_threshold),
                bool(p.ignore_cross_boundary_bbox))
        keys_all = [-1] if self.share_location else \
            [c for c in range(self.num_classes) if c != self.background]
        out = []
        for i in range(self.num):
            if i not in gts:
                out.append(([], np.zeros((0, self.num_priors), np.int64),
                            np.zeros((0, self.num_priors), np.float32)))
                continue
            boxes, labels = gts[i]
            rows, ovs = [], []
            if p.use_prior_for_matching:
                idx, ov = mb.match_boxes(boxes, priors, *args)
                for key in keys_all:
                    if key == -1:
                        rows.append(idx)
                    else:
                        mine = idx > -1
                        mine[mine] = labels[idx[mine]] == key
                        rows.append(np.where(mine, idx, -1))   # ignored (-2) priors read -1 here
                    ovs.append(ov)
            else:
                for key in keys_all:
                    pred = detection.decode_boxes(priors, variances, loc[i, :, max(key, 0)],
                                                  self.code_type,
                                                  bool(p.encode_variance_in_target))
                    if key == -1:
                        idx, ov = mb.match_boxes(boxes, pred, *args)
                    else:
                        sub = np.flatnonzero(labels == key)
                        idx, ov = mb.match_boxes(boxes[sub], pred, *args)
                        idx = np.where(idx > -1, sub[np.maximum(idx, 0)] if len(sub) else -1, idx)
                    rows.append(idx)
                    ovs.append(ov)
            out.append((keys_all, np.array(rows, np.int64), np.array(ovs, np.float32)))
        return out

    def _positives(self, matches, gts):
        """The matches in the fork's order (image, key, prior): arrays ``img, cls, prior,
        gt_box (M, 4) float32, gt_label``."""
        img, cls, prior, boxes, labels = [], [], [], [], []
        for i, (keys, idx, _) in enumerate(matches):
            for k, key in enumerate(keys):
                js = np.flatnonzero(idx[k] > -1)
                img.append(np.full(len(js), i))
                cls.append(np.full(len(js), max(key, 0)))
                prior.append(js)
                boxes.append(gts[i][0][idx[k, js]])
                labels.append(gts[i][1][idx[k, js]])
        if not img:
            z = np.zeros(0, np.int64)
            return z, z, z, np.zeros((0, 4), np.float32), z
        return (np.concatenate(img).astype(np.int64), np.concatenate(cls).astype(np.int64),
                np.concatenate(prior).astype(np.int64), np.concatenate(boxes),
                np.concatenate(labels))

    def _encode(self, pos, priors, variances, loc):
        """``(pred (M, 4), target (M, 4), scale (M, 4))``: what the loc loss compares, and
        d(pred)/d(loc)."""
        p = self.p
        img, cls, prior, boxes, _ = pos
        target = mb.encode_boxes(priors[prior], variances[prior], boxes, self.code_type,
                                 bool(p.encode_variance_in_target)).astype(self.dtype)
        pred = loc[img, prior, cls].astype(self.dtype)
        scale = np.ones_like(pred)
        if p.bp_inside:
            match = priors[prior] if p.use_prior_for_matching else detection.decode_boxes(
                priors[prior], variances[prior], pred, self.code_type,
                bool(p.encode_variance_in_target))
            inside = mb.inside_mask(np.asarray(match, np.float32))
            pred = np.where(inside, pred, target)
            scale = inside.astype(self.dtype)
        if p.encode_variance_in_target:
            v = variances[prior].astype(self.dtype)
            pred, target, scale = pred / v, target / v, scale / v
        return pred, target, scale

    def forward(self, bottom, top):
        p = self.p
        loc_b, conf_b, prior_b, label_b = bottom
        n, P, C = self.num, self.num_priors, self.num_classes
        loc = loc_b.data.reshape(n, P, self.loc_classes, 4)
        conf = conf_b.data.reshape(n, P, C)
        priors = prior_b.data[0, 0].reshape(P, 4).astype(np.float32)
        variances = prior_b.data[0, 1].reshape(P, 4).astype(np.float32)
        gts = self._ground_truth(label_b)
        matches = self._match(gts, priors, variances, loc)
        negatives = [np.zeros(0, np.int64)] * n
        if self.mining != mb.MINE_NONE:
            matches, negatives = self._mine(matches, gts, priors, variances, loc, conf)
        pos = self._positives(matches, gts)
        num_matches = len(pos[0])
        self.norm = mb.normalizer(self.normalization, n, P, num_matches)
        # localisation
        self.pos = pos
        loc_loss = 0.0
        if num_matches:
            pred, target, self.loc_scale = self._encode(pos, priors, variances, loc)
            self.loc_d = pred - target
            loc_loss = float(mb.loc_losses(self.loc_d, self.loc_type).sum())
        # confidence
        rows_img, rows_prior, rows_label = self._conf_rows(pos, negatives, gts, matches)
        self.conf_rows = (rows_img, rows_prior, rows_label)
        scores = conf[rows_img, rows_prior]
        self.conf_scores = scores
        conf_loss = float(mb.conf_losses(scores, rows_label, self.conf_type).sum()) \
            if len(rows_img) else 0.0
        loss = 0.0
        if self.include[0]:
            loss += float(p.loc_weight) * loc_loss / self.norm
        if self.include[1]:
            loss += conf_loss / self.norm
        top[0].data[...] = loss
        self.num_matches, self.negatives = num_matches, negatives

    def _conf_rows(self, pos, negatives, gts, matches):
        """The (image, prior, label) rows of the confidence loss, in the fork's order."""
        img, _, prior, _, labels = pos
        if self.p.map_object_to_agnostic:
            labels = np.full(len(labels), self.background + 1, np.int64)
        n, P = self.num, self.num_priors
        if self.mining == mb.MINE_NONE:
            target = np.full((n, P), self.background, np.int64)
            target[img, prior] = labels           # later keys overwrite, as in the fork
            return (np.repeat(np.arange(n), P), np.tile(np.arange(P), n), target.reshape(-1))
        rows_img, rows_prior, rows_label = [], [], []
        for i in range(n):
            mine = img == i
            neg = negatives[i]
            rows_img += [np.full(int(mine.sum()) + len(neg), i)]
            rows_prior += [prior[mine], neg]
            rows_label += [labels[mine], np.full(len(neg), self.background)]
        return (np.concatenate(rows_img).astype(np.int64),
                np.concatenate(rows_prior).astype(np.int64),
                np.concatenate(rows_label).astype(np.int64))

    def _mine(self, matches, gts, priors, variances, loc, conf):
        """MineHardExamples: per image the negatives, and (HARD_EXAMPLE) thinned matches."""
        p = self.p
        out, negatives = [], []
        has_nms = p.HasField("nms_param")
        nms_threshold = float(p.nms_param.nms_threshold) if has_nms else 0.0
        top_k = int(p.nms_param.top_k) if has_nms else -1
        for i, (keys, idx, ov) in enumerate(matches):
            if not keys:
                out.append((keys, idx, ov))
                negatives.append(np.zeros(0, np.int64))
                continue
            k = 0                                   # mining needs share_location: one key
            label = np.full(self.num_priors, self.background, np.int64)
            hit = idx[k] > -1
            label[hit] = self.background + 1 if p.map_object_to_agnostic else \
                gts[i][1][idx[k, hit]]
            losses = mb.conf_losses(conf[i], label, self.conf_type)
            boxes = None
            if has_nms and nms_threshold > 0:
                boxes = priors if p.use_prior_for_nms else detection.decode_boxes(
                    priors, variances, loc[i, :, 0], self.code_type,
                    bool(p.encode_variance_in_target))
            if self.mining == mb.MAX_NEGATIVE:
                negatives.append(mb.mine_max_negative(losses, idx[k], ov[k],
                                                      float(p.neg_pos_ratio),
                                                      float(p.neg_overlap), boxes,
                                                      nms_threshold, top_k))
                out.append((keys, idx, ov))
                continue
            js = np.flatnonzero(hit)
            if len(js):
                one = (np.full(len(js), i), np.zeros(len(js), np.int64), js,
                       gts[i][0][idx[k, js]], None)
                pred, target, _ = self._encode(one, priors, variances, loc)
                losses = losses.copy()
                losses[js] += mb.loc_losses(pred - target, self.loc_type)
            new_idx, neg = mb.mine_hard_examples(losses, idx[k], int(p.sample_size), boxes,
                                                 nms_threshold, top_k)
            out.append((keys, new_idx[None], ov))
            negatives.append(neg)
        return out, negatives

    # -- backward -----------------------------------------------------------------------------
    def backward(self, top, propagate_down, bottom):
        if len(propagate_down) > 2 and propagate_down[2]:
            raise self.error("cannot backpropagate to the prior boxes (bottom 2); give "
                             "propagate_down: true true false false, as the fork's nets do")
        if len(propagate_down) > 3 and propagate_down[3]:
            raise self.error("cannot backpropagate to the labels (bottom 3); give "
                             "propagate_down: true true false false, as the fork's nets do")
        weight = float(top[0].diff.flat[0]) / self.norm
        n, P = self.num, self.num_priors
        if propagate_down[0]:
            diff = bottom[0].diff.reshape(n, P, self.loc_classes, 4)
            diff[...] = 0
            if self.num_matches:
                img, cls, prior = self.pos[0], self.pos[1], self.pos[2]
                g = mb.loc_grad(self.loc_d, self.loc_type) * self.loc_scale
                diff[img, prior, cls] = g * (float(self.p.loc_weight) * weight)
        if propagate_down[1]:
            diff = bottom[1].diff.reshape(n, P, self.num_classes)
            diff[...] = 0
            rows_img, rows_prior, rows_label = self.conf_rows
            if len(rows_img):
                s = self.conf_scores
                if self.conf_type == mb.SOFTMAX:
                    g = np.exp(mb.log_softmax(s))
                    g[np.arange(len(g)), rows_label] -= 1
                else:
                    target = np.arange(self.num_classes) == rows_label[:, None]
                    g = 0.5 * (1.0 + np.tanh(0.5 * s)) - target
                diff[rows_img, rows_prior] = g * weight

    def allow_force_backward(self, bottom_index):
        return bottom_index in (0, 1)
