"""Writing nets in Python: pycaffe's ``NetSpec``, ``layers`` (``L``) and ``params`` (``P``).

    from protonet import layers as L, params as P, NetSpec

    n = NetSpec()
    n.data, n.label = L.DummyData(shape=[dict(dim=[64, 1, 28, 28]), dict(dim=[64])], ntop=2)
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20,
                            weight_filler=dict(type="xavier"))
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.ip1 = L.InnerProduct(n.pool1, num_output=500, weight_filler=dict(type="xavier"))
    n.relu1 = L.ReLU(n.ip1, in_place=True)
    n.loss = L.SoftmaxWithLoss(n.ip1, n.label)
    print(n.to_proto())       # prototxt text that protonet and Caffe both load

``L.<Type>(*bottoms, **kwargs)`` makes one layer of that Caffe type. Keyword arguments
go into the layer's ``<type>_param`` message when it has that field (``kernel_size`` ->
``convolution_param.kernel_size``), otherwise into the ``LayerParameter`` itself
(``loss_weight``, ``include``, ``param``, ``name``...), and a keyword ending in ``param``
names a message outright (``transform_param=dict(scale=1/255)``). Dicts become messages,
lists become repeated fields (a scalar given for a repeated field is a one-item list).
``ntop=k`` gives k tops (0: the layer itself is returned); ``in_place=True`` writes the
tops over the bottoms. ``P.<Type>.<ENUM>`` is an enum value of ``<Type>Parameter``.

Layer and blob names come from the ``NetSpec`` attribute names; layers reached only
through others get ``<Type><k>`` names, as pycaffe does.
"""
from __future__ import annotations

from collections import Counter, OrderedDict

from .proto import caffe_pb2

__all__ = ["NetSpec", "Top", "Function", "Layers", "Parameters", "layers", "params",
           "to_proto", "assign_proto", "param_name_dict"]


def param_name_dict() -> dict[str, str]:
    """Layer type -> the stem of its ``*_param`` field (``"InnerProduct"`` ->
    ``"inner_product"``), from the ``XxxParameter`` message type of each field."""
    out = {}
    for field in caffe_pb2.LayerParameter.DESCRIPTOR.fields:
        if field.name.endswith("_param") and field.message_type is not None:
            type_name = field.message_type.name
            if type_name.endswith("Parameter"):
                out[type_name[:-len("Parameter")]] = field.name[:-len("_param")]
    return out


def to_proto(*tops: "Top") -> caffe_pb2.NetParameter:
    """A NetParameter with every layer needed to compute ``tops``, names generated."""
    layers: "OrderedDict[Function, caffe_pb2.LayerParameter]" = OrderedDict()
    autonames: Counter = Counter()
    for top in tops:
        top.fn._to_proto(layers, {}, autonames)
    net = caffe_pb2.NetParameter()
    net.layer.extend(layers.values())
    return net


def assign_proto(proto, name: str, val) -> None:
    """Set field ``name`` of message ``proto`` from a Python value: dicts fill messages,
    lists fill repeated fields (a non-list for a repeated field is a one-item list)."""
    field = getattr(proto, name)
    is_repeated = hasattr(field, "extend")
    if is_repeated and not isinstance(val, (list, tuple)):
        val = [val]
    if isinstance(val, (list, tuple)):
        if val and isinstance(val[0], dict):
            for item in val:
                message = field.add()
                for k, v in item.items():
                    assign_proto(message, k, v)
        else:
            field.extend(val)
    elif isinstance(val, dict):
        for k, v in val.items():
            assign_proto(field, k, v)
    else:
        setattr(proto, name, val)


class Top:
    """One output blob of a layer (the ``n``-th top of ``fn``)."""

    def __init__(self, fn: "Function", n: int):
        self.fn = fn
        self.n = n

    def to_proto(self) -> caffe_pb2.NetParameter:
        """A NetParameter with every layer needed to compute this top."""
        return to_proto(self)

    def _to_proto(self, layers, names, autonames):
        return self.fn._to_proto(layers, names, autonames)

    def __repr__(self) -> str:
        return f"<Top {self.n} of {self.fn.type_name}>"


class Function:
    """A layer: its type, its bottoms (``Top`` objects) and its parameters."""

    def __init__(self, type_name: str, inputs, params: dict):
        self.type_name = type_name
        for index, inp in enumerate(inputs):
            if not isinstance(inp, Top):
                raise TypeError(f"{type_name} input {index} is not a Top "
                                f"(type is {type(inp)})")
        self.inputs = inputs
        self.params = dict(params)
        self.ntop = self.params.pop("ntop", 1)
        self.in_place = self.params.pop("in_place", False)
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    def _get_name(self, names, autonames) -> str:
        if self not in names and self.ntop > 0:
            names[self] = self._get_top_name(self.tops[0], names, autonames)
        elif self not in names:
            autonames[self.type_name] += 1
            names[self] = self.type_name + str(autonames[self.type_name])
        return names[self]

    def _get_top_name(self, top: Top, names, autonames) -> str:
        if top not in names:
            autonames[top.fn.type_name] += 1
            names[top] = top.fn.type_name + str(autonames[top.fn.type_name])
        return names[top]

    def _to_proto(self, layers, names, autonames) -> None:
        if self in layers:
            return
        bottom_names = []
        for inp in self.inputs:
            inp._to_proto(layers, names, autonames)
            bottom_names.append(layers[inp.fn].top[inp.n])
        layer = caffe_pb2.LayerParameter()
        layer.type = self.type_name
        layer.bottom.extend(bottom_names)
        if self.in_place:
            layer.top.extend(layer.bottom)
        else:
            for top in self.tops:
                layer.top.append(self._get_top_name(top, names, autonames))
        layer.name = self._get_name(names, autonames)
        for k, v in self.params.items():
            if k.endswith("param"):  # a *_param message (or the ``param`` ParamSpec list)
                assign_proto(layer, k, v)
                continue
            stem = _param_names.get(self.type_name)
            message = getattr(layer, stem + "_param") if stem else None
            if message is not None and k in message.DESCRIPTOR.fields_by_name:
                assign_proto(message, k, v)
            else:
                assign_proto(layer, k, v)
        layers[self] = layer


class NetSpec:
    """Named tops, assigned as attributes (``n.conv1 = L.Convolution(...)``); ``to_proto``
    makes a NetParameter of every layer they need, named after the attributes."""

    def __init__(self):
        super().__setattr__("tops", OrderedDict())

    def __setattr__(self, name: str, value) -> None:
        self.tops[name] = value

    def __getattr__(self, name: str):
        try:
            return self.tops[name]
        except KeyError:
            raise _NoTop(name) from None

    def __setitem__(self, key: str, value) -> None:
        self.__setattr__(key, value)

    def __getitem__(self, item: str):
        return self.__getattr__(item)

    def __delitem__(self, name: str) -> None:
        del self.tops[name]

    def __contains__(self, name: str) -> bool:
        return name in self.tops

    def keys(self) -> list[str]:
        return list(self.tops)

    def vals(self) -> list:
        return list(self.tops.values())

    def to_proto(self) -> caffe_pb2.NetParameter:
        names = {v: k for k, v in self.tops.items()}
        autonames: Counter = Counter()
        layers: OrderedDict = OrderedDict()
        for top in self.tops.values():
            top._to_proto(layers, names, autonames)
        net = caffe_pb2.NetParameter()
        net.layer.extend(layers.values())
        return net


class _NoTop(AttributeError, KeyError):
    """A missing NetSpec name: an AttributeError (so ``hasattr`` works) and a KeyError
    (what pycaffe raises)."""

    def __str__(self) -> str:
        return f"NetSpec has no top named {self.args[0]!r}"


class Layers:
    """``L.<Type>(*bottoms, **params)`` -> the layer's top (or tops, or the layer for
    ``ntop=0``)."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        def layer_fn(*args, **kwargs):
            fn = Function(name, args, kwargs)
            if fn.ntop == 0:
                return fn
            if fn.ntop == 1:
                return fn.tops[0]
            return fn.tops
        layer_fn.__name__ = name
        return layer_fn


class Parameters:
    """``P.<Type>.<NAME>``: the enum value ``NAME`` of ``<Type>Parameter``
    (``P.Pooling.MAX``)."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        message = getattr(caffe_pb2, name + "Parameter")

        class Param:
            def __getattr__(self, param_name: str):
                return getattr(message, param_name)
        return Param()


_param_names = param_name_dict()
layers = Layers()
params = Parameters()
