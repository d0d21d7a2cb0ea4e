"""The ops an attribution adds to a rebuilt graph: class scores, CAMs, input gradients.

Each is built once per graph (``RebuiltGraph.cached``) with the class
indices as a placeholder, so every chunk of every call runs the same ops.
The class score is the logit: where the model ends in a softmax, its input
(a probability saturates near 1 and rises as well when other classes
fall; the logit measures the evidence for the class itself).
"""

from __future__ import annotations

import dataclasses
import logging

import tensorflow as tf

from tf_cnnvis.errors import LayerNotFoundError, OptionError
from tf_cnnvis.layers import LayerInfo, layer_table, select_layers
from tf_cnnvis.load import FrozenModel
from tf_cnnvis.rebuild import RebuiltGraph

logger = logging.getLogger("tf_cnnvis")

# Ops that pass their input through unchanged on the way to a model's output.
_PASS_THROUGH = frozenset({"Identity", "IdentityN", "StopGradient", "Snapshot"})
TOP_CLASS = -1  # a class index fed for "the image's own top class"


@dataclasses.dataclass(frozen=True)
class ScoreOps:
    """Feed ``index`` (a class per batch item, or TOP_CLASS); fetch ``chosen``, ``score``, ``logits``."""

    index: tf.Tensor
    chosen: tf.Tensor
    score: tf.Tensor
    logits: tf.Tensor


def _through_identities(tensor):
    while tensor.op.type in _PASS_THROUGH and tensor.op.inputs:
        tensor = tensor.op.inputs[tensor.value_index if tensor.op.type == "IdentityN" else 0]
    return tensor


def upstream(tensor) -> set[str]:
    """Names of the ops ``tensor`` is computed from (its own included)."""
    names, stack = set(), [tensor.op]
    while stack:
        op = stack.pop()
        if op.name not in names:
            names.add(op.name)
            stack.extend(t.op for t in op.inputs)
    return names


def class_scores(rebuilt: RebuiltGraph, model: FrozenModel, input_name: str, output=None) -> LayerInfo:
    """The class-score tensor ``(N, classes)``: ``output`` or the model's only 2-D output; a softmax's logits."""
    graph = rebuilt.graph
    if output is not None:
        if not isinstance(output, str) or not output:
            raise OptionError(f"output={output!r} must name the layer of class scores (N, classes): a "
                              "Keras layer name, an op name or a tensor name")
        tensor = graph.get_tensor_by_name(select_layers(graph, model, [output])[0].tensor)
    else:
        tensor = rebuilt.cached(("attribution output", input_name), lambda: _only_output(rebuilt, model, input_name))
    source = _through_identities(tensor)
    if source.op.type == "Softmax":
        logger.info("class scores: the logits %s that feed the softmax %s", source.op.inputs[0].name, tensor.name)
        tensor = source.op.inputs[0]
    if tensor.shape.rank != 2:
        raise OptionError(f"the class scores {tensor.name!r} have shape {tensor.shape}; attribution needs "
                          "a layer of shape (N, classes): pass output= naming one")
    if tensor.op.name not in rebuilt.dependent_ops(input_name):
        raise OptionError(f"the class scores {tensor.name!r} do not depend on input {input_name!r}")
    shape = tuple(tensor.shape.as_list())
    return LayerInfo(name=tensor.op.name, kind="output", op_type=tensor.op.type, shape=shape,
                     channels=shape[-1], tensor=tensor.name)


def _only_output(rebuilt: RebuiltGraph, model: FrozenModel, input_name: str):
    """The model's only 2-D float output that depends on the input (refused when there are several or none)."""
    graph = rebuilt.graph
    own = {node.name for node in model.graph_def.node}
    dependent = rebuilt.dependent_ops(input_name)
    read = {t.op.name for op in graph.get_operations() if op.name in own for t in op.inputs}
    ends = [op.outputs[0] for op in graph.get_operations()
            if op.name in own and op.name in dependent and op.name not in read and op.outputs
            and op.outputs[0].dtype.is_floating]
    candidates = [t for t in ends if t.shape.rank == 2]
    if len(candidates) != 1:
        found = ", ".join(f"{t.name} {tuple(t.shape.as_list()) if t.shape.rank else '?'}" for t in ends)
        raise OptionError(f"cannot tell which output holds the class scores (outputs: {found or 'none'}); "
                          "pass output= naming a layer of shape (N, classes)")
    return candidates[0]


def _spatial(shape: tuple) -> bool:
    """Rank 4 with more than one position (open sizes count: they are decided by the image)."""
    return len(shape) == 4 and not (shape[1] is not None and shape[2] is not None and shape[1] * shape[2] == 1)


def cam_layer(rebuilt: RebuiltGraph, model: FrozenModel, input_name: str, scores: LayerInfo,
              layer=None) -> LayerInfo:
    """The layer whose channels a CAM weighs: ``layer``, or the last one with spatial extent feeding the scores.

    Candidates are the Keras layers (nested models' too, named
    ``outer/inner``) and the convolution, rectifier and pooling ops.
    """
    graph = rebuilt.graph
    feeding = rebuilt.cached(("attribution upstream", scores.tensor),
                             lambda: upstream(graph.get_tensor_by_name(scores.tensor)))
    dependent = rebuilt.dependent_ops(input_name)
    if layer is not None:
        if not isinstance(layer, str) or not layer:
            raise OptionError(f"layer={layer!r} must name one layer (see tf_cnnvis.list_layers), or None for "
                              "the last layer with spatial extent")
        info = select_layers(graph, model, [layer])[0]
        tensor = graph.get_tensor_by_name(info.tensor)
        shape = tuple(tensor.shape.as_list()) if tensor.shape.rank is not None else ()
        if not _spatial(shape):
            raise OptionError(f"layer {layer!r} has output shape {shape}: a CAM weighs the channels of a "
                              "layer with spatial extent (N, H, W, C) with H x W > 1; pick an earlier layer")
        if tensor.op.name not in feeding or tensor.op.name not in dependent:
            raise OptionError(f"layer {layer!r} does not feed the class scores {scores.tensor!r} from input "
                              f"{input_name!r}; pick a layer between them")
        return info
    return rebuilt.cached(("attribution cam layer", input_name, scores.tensor),
                          lambda: _last_spatial_layer(rebuilt, model, feeding, dependent, scores))


def _last_spatial_layer(rebuilt: RebuiltGraph, model: FrozenModel, feeding, dependent, scores) -> LayerInfo:
    graph = rebuilt.graph
    named = {}
    for name, tensor_name in model.keras_layers.items():  # the innermost name of a nested model's output
        if tensor_name not in named or name.count("/") > named[tensor_name].count("/"):
            named[tensor_name] = name
    for info in layer_table(graph, model):
        named.setdefault(info.tensor, info.name)
    order = {op.name: index for index, op in enumerate(graph.get_operations())}
    best = None
    for tensor_name, name in named.items():
        try:
            tensor = graph.get_tensor_by_name(tensor_name)
        except (KeyError, ValueError):
            continue
        op = tensor.op
        if (op.name in feeding and op.name in dependent and tensor.dtype.is_floating and tensor.shape.rank == 4
                and _spatial(tuple(tensor.shape.as_list()))
                and (best is None or order[op.name] > order[best[1].op.name])):
            best = (name, tensor)
    if best is None:
        raise LayerNotFoundError(f"no layer with spatial extent (N, H, W, C) feeds the class scores "
                                 f"{scores.tensor!r}; CAM methods need one: pass layer=")
    name, tensor = best
    shape = tuple(tensor.shape.as_list())
    logger.info("CAM layer: %s %s", name, shape)
    return LayerInfo(name=name, kind="cam", op_type=tensor.op.type, shape=shape, channels=shape[-1],
                     tensor=tensor.name)


def score_ops(rebuilt: RebuiltGraph, scores: LayerInfo) -> ScoreOps:
    """Each batch item's class score ``logits[b, k_b]``; ``k_b = TOP_CLASS`` takes the item's top class."""
    def build():
        with tf.name_scope("tf_cnnvis_attribution"):
            logits = rebuilt.tensor(scores.tensor)
            index = tf.compat.v1.placeholder(tf.int32, [None], name="class_index")
            top = tf.argmax(logits, axis=1, output_type=tf.int32)
            chosen = tf.where(index >= 0, index, top)
            score = tf.gather(logits, chosen, axis=1, batch_dims=1)
        return ScoreOps(index=index, chosen=chosen, score=score, logits=logits)

    return rebuilt.cached(("attribution score", scores.tensor), build)


def input_gradient(rebuilt: RebuiltGraph, scores: LayerInfo, input_name: str):
    """(ScoreOps, d score_b / d input_b for every item b): one backward pass under the graph's rules."""
    ops = score_ops(rebuilt, scores)

    def build():
        with tf.name_scope("tf_cnnvis_attribution"):
            gradient = tf.gradients(tf.reduce_sum(ops.score), rebuilt.tensor(input_name))[0]
        if gradient is None:
            raise OptionError(f"the class scores {scores.tensor!r} do not depend on input {input_name!r}")
        return gradient

    return ops, rebuilt.cached(("attribution input gradient", scores.tensor, input_name), build)


def gradient_cams(rebuilt: RebuiltGraph, scores: LayerInfo, layer: LayerInfo) -> tuple[ScoreOps, dict]:
    """(ScoreOps, {method: CAM at the layer's resolution (B, h, w)}) for gradcam, gradcam++ and layercam.

    With ``A`` the layer's maps and ``g`` the gradient of the class score:
    Grad-CAM weighs each channel by its mean gradient; Grad-CAM++ by
    ``sum_ij alpha_ij relu(g_ij)``, ``alpha = g^2 / (2 g^2 + sum_ab A_ab g^3)``
    (0 where the denominator is 0), which is the exponential-score form
    with the common factor ``exp(score)`` left out; LayerCAM weighs each
    position by ``relu(g)``. All three end in a ReLU.
    """
    ops = score_ops(rebuilt, scores)

    def build():
        with tf.name_scope("tf_cnnvis_attribution_cam"):
            maps = rebuilt.tensor(layer.tensor)
            gradient = tf.gradients(tf.reduce_sum(ops.score), maps)[0]
            if gradient is None:
                raise OptionError(f"layer {layer.name!r} does not feed the class scores {scores.tensor!r}")
            weights = tf.reduce_mean(gradient, axis=[1, 2], keepdims=True)
            squared = tf.square(gradient)
            denominator = 2.0 * squared + tf.reduce_sum(maps, axis=[1, 2], keepdims=True) * squared * gradient
            alpha = tf.math.divide_no_nan(squared, denominator)
            plus_weights = tf.reduce_sum(alpha * tf.nn.relu(gradient), axis=[1, 2], keepdims=True)
            return {"gradcam": tf.nn.relu(tf.reduce_sum(weights * maps, axis=3)),
                    "gradcam++": tf.nn.relu(tf.reduce_sum(plus_weights * maps, axis=3)),
                    "layercam": tf.nn.relu(tf.reduce_sum(tf.nn.relu(gradient) * maps, axis=3))}

    return ops, rebuilt.cached(("attribution cams", scores.tensor, layer.tensor), build)
