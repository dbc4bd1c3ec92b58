"""Net-definition transforms that run before layers exist (Caffe's FilterNet and InsertSplits)."""
from __future__ import annotations

from collections import defaultdict

from .errors import ProtonetError
from .proto import caffe_pb2


def state_meets_rule(state, rule) -> bool:
    """Whether a NetState satisfies one NetStateRule (phase, level range, stages)."""
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(s not in stages for s in rule.stage):
        return False
    if any(s in stages for s in rule.not_stage):
        return False
    return True


def filter_net(net, state):
    """A copy of ``net`` keeping only the layers whose include/exclude rules admit ``state``."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    out.ClearField("layer")
    for layer in net.layer:
        if len(layer.include) and len(layer.exclude):
            raise ProtonetError(
                f"layer '{layer.name}': give either include or exclude rules, not both")
        if len(layer.include):
            keep = any(state_meets_rule(state, rule) for rule in layer.include)
        else:
            keep = not any(state_meets_rule(state, rule) for rule in layer.exclude)
        if keep:
            out.layer.add().CopyFrom(layer)
    return out


def split_layer_name(layer: str, blob: str, index: int) -> str:
    return f"{blob}_{layer}_{index}_split"


def split_blob_name(layer: str, blob: str, index: int, k: int) -> str:
    return f"{blob}_{layer}_{index}_split_{k}"


def insert_splits(net):
    """A copy of ``net`` where every top read more than once feeds a Split layer.

    A top counts one read per consuming bottom, plus one if it carries an
    explicit non-zero ``loss_weight`` (then the first split output carries
    that weight instead). Names follow Caffe: ``<blob>_<layer>_<i>_split`` and
    ``..._split_<k>``.
    """
    last_producer: dict[str, tuple[int, int]] = {}
    source_of: dict[tuple[int, int], tuple[int, int]] = {}
    reads: dict[tuple[int, int], int] = defaultdict(int)
    loss_weight: dict[tuple[int, int], float] = {}
    for i, layer in enumerate(net.layer):
        for j, blob in enumerate(layer.bottom):
            if blob not in last_producer:
                raise ProtonetError(
                    f"layer '{layer.name}': unknown bottom blob '{blob}' (bottom {j}); "
                    "no earlier layer produces it")
            source_of[(i, j)] = last_producer[blob]
            reads[last_producer[blob]] += 1
        for j, blob in enumerate(layer.top):
            last_producer[blob] = (i, j)
        for j in range(min(len(layer.loss_weight), len(layer.top))):
            top = last_producer[layer.top[j]]
            loss_weight[top] = layer.loss_weight[j]
            if loss_weight[top]:
                reads[top] += 1

    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    out.ClearField("layer")
    next_split: dict[tuple[int, int], int] = defaultdict(int)
    for i, original in enumerate(net.layer):
        layer = out.layer.add()
        layer.CopyFrom(original)
        for j, blob in enumerate(layer.bottom):
            src = source_of[(i, j)]
            if reads[src] > 1:
                producer = net.layer[src[0]].name
                layer.bottom[j] = split_blob_name(producer, blob, src[1], next_split[src])
                next_split[src] += 1
        for j, blob in enumerate(layer.top):
            n = reads[(i, j)]
            if n <= 1:
                continue
            split = out.layer.add(name=split_layer_name(layer.name, blob, j), type="Split")
            split.bottom.append(blob)
            split.top.extend(split_blob_name(layer.name, blob, j, k) for k in range(n))
            weight = loss_weight.get((i, j), 0.0)
            if weight:
                split.loss_weight.extend([weight] + [0.0] * (n - 1))
                layer.ClearField("loss_weight")
                next_split[(i, j)] += 1
    return out
