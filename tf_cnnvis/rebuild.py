"""Rebuild: import a frozen graph with the backward rules of a method.

The rules (:mod:`tf_cnnvis.rules`) are attached to the ``GraphDef``'s nodes
before import, so each (model, method) pair is imported once and cached.

Repeated calls from a training loop freeze the same architecture with new
weights. The weights (floating-point constants) are therefore imported as
variables: the cache is keyed on the graph *without* their values, and a
call with new weights only assigns them (one ``session.run``) instead of
importing a new graph, building new targets and warming up a new session.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import threading
import uuid

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2

from tf_cnnvis.backward import batched_gradient, channelwise_head, seeds_below_head
from tf_cnnvis.errors import OptionError
from tf_cnnvis.graph import IdentityMemo, depends_on_inputs, tensor_name, upstream_ops
from tf_cnnvis.load import FrozenModel
from tf_cnnvis.options import METHODS, check_method
from tf_cnnvis.rules import prepare_forward_parts, rule_kinds, with_gradient_rules

__all__ = ["METHODS", "TARGET_KINDS", "RebuiltGraph", "check_method", "clear_cache", "rebuild"]

logger = logging.getLogger("tf_cnnvis")

TARGET_KINDS = ("map", "unit", "batched_units")


# Constants of these types are weights: imported as variables, so that new
# values can be assigned to an imported graph (integer constants are shapes,
# axes and sizes, which belong to the structure).
_WEIGHT_TYPES = frozenset({types_pb2.DT_FLOAT, types_pb2.DT_HALF, types_pb2.DT_BFLOAT16,
                           types_pb2.DT_DOUBLE})
_VARIABLE_SUFFIX = "/tf_cnnvis_weight"


def _is_weight(node) -> bool:
    return node.op == "Const" and "dtype" in node.attr and node.attr["dtype"].type in _WEIGHT_TYPES


def structure_key(graph_def) -> str:
    """A digest of the graph with the values of its weights left out.

    Two freezes of one architecture with different weights share it.
    Remembered for the last ``graph_def`` (that very object), so the
    repeated calls of a training loop with one model digest it once.
    """
    return _last_structure_key(graph_def)


def _structure_digest(graph_def) -> str:
    digest = hashlib.sha1()
    digest.update(graph_def.versions.SerializeToString(deterministic=True))
    digest.update(graph_def.library.SerializeToString(deterministic=True))
    for node in graph_def.node:
        if _is_weight(node):
            shape = node.attr["value"].tensor.tensor_shape.SerializeToString(deterministic=True)
            digest.update(b"W" + node.name.encode() + bytes([node.attr["dtype"].type]) + shape)
        else:
            digest.update(b"N" + node.SerializeToString(deterministic=True))
    return digest.hexdigest()


_last_structure_key = IdentityMemo(_structure_digest)


def weight_values(graph_def) -> dict[str, np.ndarray]:
    """The value of every weight constant of ``graph_def``, by node name."""
    return {node.name: tf.make_ndarray(node.attr["value"].tensor)
            for node in graph_def.node if _is_weight(node)}


def _weights_as_variables(graph_def, shared_prefix: str):
    """A copy of ``graph_def`` where each weight ``w`` is ``ReadVariableOp(VarHandleOp)``.

    The read keeps the constant's name, so every consumer, tensor name and
    static shape is unchanged; the values are assigned after import.
    """
    copy = tf.compat.v1.GraphDef()
    copy.versions.CopyFrom(graph_def.versions)
    copy.library.CopyFrom(graph_def.library)
    names = {node.name for node in graph_def.node}
    for node in graph_def.node:
        if not _is_weight(node):
            copy.node.add().CopyFrom(node)
            continue
        handle_name = node.name + _VARIABLE_SUFFIX
        if handle_name in names:
            raise OptionError(f"the graph already has an op named {handle_name!r}, which tf_cnnvis "
                              "needs for the weight it reads; rename that op")
        handle = copy.node.add(name=handle_name, op="VarHandleOp")
        handle.attr["dtype"].type = node.attr["dtype"].type
        handle.attr["shape"].shape.CopyFrom(node.attr["value"].tensor.tensor_shape)
        handle.attr["shared_name"].s = f"{shared_prefix}/{node.name}".encode()
        read = copy.node.add(name=node.name, op="ReadVariableOp", input=[handle_name])
        read.attr["dtype"].type = node.attr["dtype"].type
    return copy


def _session_config():
    """Session options: Grappler's graph rewrites only where a GPU can use them.

    On a CPU they cost every new set of fetches its own optimization (about
    0.05-0.1 s each, two per layer of a call) and gained nothing measurable:
    a first call on the 5-block net at 224 px took 8.3 s instead of 9.1 s
    without them, and VGG16 reconstructions, DeepDream and activations ran
    in the same time either way. On a GPU their layout optimizer (NHWC to
    NCHW for cuDNN) matters, so they stay there.
    """
    config = tf.compat.v1.ConfigProto()
    if not tf.config.list_physical_devices("GPU"):
        config.graph_options.rewrite_options.disable_meta_optimizer = True
    return config


def _seeds(act, index, kind: str):
    """The upstream gradient at the layer of each item of ``index``: ``(B, *act.shape[1:])``.

    ``kind='map'``: index ``[B]``, ones on channel ``index[b]``;
    ``kind='unit'``: index ``[B, rank - 1]``, a one at that position. Built
    from one-hots (every op here also has a parallel-for converter).
    """
    rank = act.shape.rank
    dims = tf.unstack(tf.shape(act)[1:], num=rank - 1)
    if kind == "map":
        hot = tf.one_hot(index, dims[-1], dtype=act.dtype)
        return tf.reshape(hot, [-1] + [1] * (rank - 2) + [dims[-1]]) * tf.ones_like(act)
    seeds = tf.ones(tf.shape(index)[:1], act.dtype)
    for axis in range(rank - 1):
        hot = tf.one_hot(index[:, axis], dims[axis], dtype=act.dtype)
        seeds = seeds[..., None] * tf.reshape(hot, [-1] + [1] * axis + [dims[axis]])
    return seeds


def _assign_ops(group) -> dict:
    """The assignment ops a ``tf.group`` runs, by the name of the placeholder each assigns from."""
    found, stack = {}, list(group.control_inputs)
    while stack:
        op = stack.pop()
        if op.type == "AssignVariableOp":
            found[op.inputs[1].op.name] = op
        else:
            stack.extend(op.control_inputs)
    return found


class RebuiltGraph:
    """A model imported once for one method, with its session and targets.

    Targets (the objective whose input-gradient is a reconstruction) are
    added per layer on first use and then reused for every call and chunk.
    The weights live in variables; :meth:`load_weights` swaps in those of
    another freeze of the same architecture. ``session_config``: the
    session's ``ConfigProto`` (default: see ``_session_config``).
    """

    def __init__(self, model: FrozenModel, method: str, session_config=None):
        self.model = model
        self.method = method
        self.graph = tf.Graph()
        rules = with_gradient_rules(model.graph_def, method)
        with self.graph.as_default():
            tf.import_graph_def(_weights_as_variables(rules, f"tf_cnnvis_{uuid.uuid4().hex}"), name="")
        config = _session_config() if session_config is None else session_config
        self.session = tf.compat.v1.Session(graph=self.graph, config=config)
        self._built: dict[tuple, object] = {}
        self._lock = threading.RLock()
        self._assign_weights(weight_values(model.graph_def))

    def load_weights(self, model: FrozenModel):
        """Use the weights of ``model``, a freeze of the same architecture."""
        with self._lock:
            if model is self.model:
                return
            self._assign_weights(weight_values(model.graph_def))
            self.model = model

    def load_changed_weights(self, model: FrozenModel, changed: dict[str, np.ndarray]):
        """Use ``model``, which differs from the model loaded now only in the weights ``changed``.

        ``changed`` maps weight constant names to ``model``'s values; only
        those are assigned (a sanity check's randomized copies change one
        layer at a time), each by its own op of the assignment built at
        import: nothing is added to the graph. Get the graph with
        :func:`rebuild` of the model it holds first, so that the rest is
        known to be loaded.
        """
        with self._lock:
            if model is self.model:
                return
            placeholders, assign = self.cached(("assign weights",),
                                               lambda: self._build_assign(weight_values(self.model.graph_def)))
            each = self.cached(("assign each weight",), lambda: _assign_ops(assign))
            for name in sorted(changed):
                self.session.run(each[placeholders[name].op.name], {placeholders[name]: changed[name]})
            self.model = model

    def _assign_weights(self, values: dict[str, np.ndarray]):
        if not values:
            return
        placeholders, assign = self.cached(("assign weights",), lambda: self._build_assign(values))
        self.session.run(assign, {placeholders[name]: value for name, value in values.items()})

    def _build_assign(self, values):
        placeholders, ops = {}, []
        with tf.name_scope("tf_cnnvis_assign"):
            for name, value in values.items():
                handle = self.tensor(tensor_name(name + _VARIABLE_SUFFIX))
                placeholders[name] = tf.compat.v1.placeholder(handle.op.get_attr("dtype"), value.shape)
                ops.append(tf.raw_ops.AssignVariableOp(resource=handle, value=placeholders[name]))
        return placeholders, tf.group(*ops)

    def tensor(self, name: str):
        return self.graph.get_tensor_by_name(name)

    def target(self, layer_tensor: str, input_tensor: str, kind: str):
        """(index placeholder, input-gradients) for a chunk of reconstructions.

        ``kind='map'``: one image is fed; index is ``[B]`` channel numbers and
        item b is the gradient of ``sum_yx act[0, y, x, c_b]``.
        ``kind='unit'``: one image is fed; index is ``[B, 3]`` rows
        ``(y, x, c)`` (``[B, 1]`` for a dense layer), item b the gradient of
        that single unit.
        For both, the forward pass runs once and the backward pass takes
        the B items as one batch (:mod:`tf_cnnvis.backward`; parallel-for
        where an op on the way has no batched rule), which is cheaper than
        repeating the image B times.
        ``kind='batched_units'``: B different images (crops) are fed with
        index ``[B, 3]``; the objective ``sum_b act[b, y_b, x_b, c_b]`` gives
        each item its own gradient in one backward pass.
        """
        if kind not in TARGET_KINDS:
            raise OptionError(f"target kind {kind!r} is not one of {', '.join(TARGET_KINDS)}")
        return self.cached(("target", layer_tensor, input_tensor, kind),
                           lambda: self._build_target(layer_tensor, input_tensor, kind))

    def invariant_tensors(self, fetch, index, input_tensor: str) -> list[str]:
        """The tensors ``fetch`` reads that depend on the image but not on ``index``.

        The forward pass and everything the rules take from it (rectifier
        masks, max-pool switches, the all-ones pass above a layer's
        convolution) are the same for every chunk of one image's items.
        Computed once per image and fed to each chunk's run, they are not
        recomputed per chunk. These are the inputs of the ops that vary with
        ``index`` that do not vary themselves (values and masks; shapes and
        tensors that cannot be fed are left to the graph: feeding is only a
        shortcut).
        """
        def build():
            graph = self.graph
            inside = upstream_ops([fetch.op])
            # Over the whole graph as it is now (dependent_ops knows only the model's ops).
            image = depends_on_inputs(graph, [input_tensor])
            varying = depends_on_inputs(graph, [index.name])
            frontier = {tensor.name for op in graph.get_operations() if op.name in varying and op.name in inside
                        for tensor in op.inputs
                        if tensor.op.name in image and tensor.op.name not in varying
                        and (tensor.dtype.is_floating or tensor.dtype == tf.bool)  # not shapes
                        and tensor.name != input_tensor and graph.is_feedable(tensor)}
            return sorted(frontier)

        return self.cached(("invariant tensors", fetch.name, index.name, input_tensor), build)

    def dependent_ops(self, input_tensor: str) -> set[str]:
        """Names of the model's ops that depend on ``input_tensor`` (computed once per input).

        Ops added later (backward passes) are not in it; it answers for the
        model's own ops.
        """
        return self.cached(("dependent ops", input_tensor),
                           lambda: depends_on_inputs(self.graph, [input_tensor]))

    def cached(self, key, build):
        """Ops built once per graph by ``build()`` and reused afterwards."""
        with self._lock:
            if key not in self._built:
                with self.graph.as_default():
                    self._built[key] = build()
            return self._built[key]

    def _build_target(self, layer_tensor: str, input_tensor: str, kind: str):
        self.cached(("forward parts",), lambda: prepare_forward_parts(self.graph))
        act = self.tensor(layer_tensor)
        image = self.tensor(input_tensor)
        rank = act.shape.rank

        def gradient(objective, **options):
            result = tf.gradients(objective, image, **options)[0]
            if result is None:
                raise OptionError(f"layer {layer_tensor!r} does not depend on input {input_tensor!r}")
            return result

        with tf.name_scope("tf_cnnvis_target"):
            if kind == "batched_units":
                index = tf.compat.v1.placeholder(tf.int32, [None, rank - 1], name="unit")
                rows = tf.range(tf.shape(index)[0])[:, None]
                return index, gradient(tf.reduce_sum(tf.gather_nd(act, tf.concat([rows, index], axis=1))))
            if kind == "map":
                index = tf.compat.v1.placeholder(tf.int32, [None], name="channel")
                conv = channelwise_head(act.op, self.dependent_ops(input_tensor))
                if conv is not None:
                    return index, self._map_through_head(act, conv, image, index, gradient)
            else:
                index = tf.compat.v1.placeholder(tf.int32, [None, rank - 1], name="unit")
            if act.op.name not in self.dependent_ops(input_tensor):
                raise OptionError(f"layer {layer_tensor!r} does not depend on input {input_tensor!r}")
            batched = self.batched_gradient(act, _seeds(act, index, kind), image)
            if batched is not None:
                return index, batched
            # Some op on the way has no batched rule: vectorize per item instead.
            return index, tf.vectorized_map(lambda item: gradient(act, grad_ys=_seeds(act, item[None], kind))[0],
                                            index)

    def batched_gradient(self, top, seeds, image):
        """:func:`tf_cnnvis.backward.batched_gradient` with this graph's method (None: not batchable)."""
        kinds = self.cached(("rule kinds",), lambda: rule_kinds(self.model.graph_def))
        return batched_gradient(top, seeds, image, self.method, self.dependent_ops(image.name), kinds)

    def _map_through_head(self, act, conv, image, index, gradient):
        """Whole-map reconstructions that start below the convolution ``conv``.

        All channels' seeds reach ``conv``'s output in one backward pass of
        an all-ones seed and cross ``conv`` as one depthwise convolution
        (:func:`tf_cnnvis.backward.seeds_below_head`); only the rest of the
        network runs per item.
        """
        if act is conv.outputs[0]:
            head = tf.ones_like(act)
        else:
            head = tf.gradients(act, conv.outputs[0], grad_ys=tf.ones_like(act))[0]
        seeds = seeds_below_head(head, conv, index)  # (B, M, H', W', C_in)
        below = conv.inputs[0]
        if below is image:
            return seeds[:, 0]
        # M is 1 (one image) wherever the batched pass applies: it has no
        # space-to-batch rule.
        batched = self.batched_gradient(below, seeds[:, 0], image)
        if batched is not None:
            return batched
        return tf.vectorized_map(lambda seed: gradient(below, grad_ys=seed)[0], seeds)

    def close(self):
        self.session.close()


_CACHE: collections.OrderedDict[tuple[str, str], RebuiltGraph] = collections.OrderedDict()
_CACHE_SIZE = 3
_cache_lock = threading.Lock()


def rebuild(model: FrozenModel, method: str = "gradient") -> RebuiltGraph:
    """The cached RebuiltGraph of (model, method); imports it on first use.

    A graph imported for the same architecture is reused with ``model``'s
    weights assigned, so the result always reflects the weights given.
    """
    key = (structure_key(model.graph_def), check_method(method))
    with _cache_lock:
        cached = _CACHE.get(key)
        if cached is not None:
            _CACHE.move_to_end(key)
    if cached is not None:
        cached.load_weights(model)
        return cached
    rebuilt = RebuiltGraph(model, method)
    with _cache_lock:
        _CACHE[key] = rebuilt
        while len(_CACHE) > _CACHE_SIZE:
            _, evicted = _CACHE.popitem(last=False)
            evicted.close()
    return rebuilt


def clear_cache():
    """Close every cached session (frees the memory of imported models)."""
    with _cache_lock:
        while _CACHE:
            _CACHE.popitem()[1].close()
