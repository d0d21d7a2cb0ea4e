"""What to maximize: one objective per batch item, built once per graph.

=============  ===================================  =========================
kind           value of batch item b                layer
=============  ===================================  =========================
``unit``       ``act[b, k_b]``                      class/logits ``(N, K)``
``channel``    mean over positions of               conv / ReLU / pool
               ``act[b, ..., k_b]``                 ``(N, H, W, C)``
``amplify``    mean of ``f(act[b])`` with           any layer (``classes=None``)
               ``f'(a) = |a| + clip(a, -5, 5)``
=============  ===================================  =========================

``amplify`` is cnn-vis's layer amplification: a superlinear function of
the activations already present, so what the layer sees in an image grows.
Because each item's value depends only on its own input, one backward pass
of the summed values gives every item's gradient.
"""

from __future__ import annotations

import dataclasses
import logging

import tensorflow as tf

from tf_cnnvis.errors import OptionError
from tf_cnnvis.rebuild import RebuiltGraph

logger = logging.getLogger("tf_cnnvis")

KINDS = ("unit", "channel", "amplify")
AMPLIFY_CLIP = 5.0


@dataclasses.dataclass(frozen=True)
class ObjectiveOps:
    """Graph handles: feed ``index`` (one target per item), fetch ``values`` and ``gradient``."""

    index: tf.Tensor
    values: tf.Tensor
    gradient: tf.Tensor
    layer_tensor: str


def kind_for(rank: int | None, classes) -> str:
    """The objective a layer of this rank gets for ``classes`` (None: amplification)."""
    if classes is None:
        return "amplify"
    if rank == 2:
        return "unit"
    if rank is not None and rank >= 3:
        return "channel"
    raise OptionError(f"a layer of rank {rank} has no units or channels to maximize; pick a "
                      "class layer (N, K) or a convolutional layer (N, H, W, C), or pass classes=None")


def objective_tensor(rebuilt: RebuiltGraph, layer_tensor: str) -> str:
    """The tensor actually maximized: a softmax's logits rather than its probabilities.

    A probability saturates near 1 and is raised as well by lowering the
    other classes; the logit measures the class evidence itself.
    """
    tensor = rebuilt.tensor(layer_tensor)
    if tensor.op.type == "Softmax":
        logger.info("maximizing the logits %s that feed the softmax %s", tensor.op.inputs[0].name,
                    layer_tensor)
        return tensor.op.inputs[0].name
    return layer_tensor


def amplification(act):
    """``f(a)`` with ``f'(a) = |a| + clip(a, -5, 5)``: ``a|a|/2`` plus a clipped square."""
    magnitude = tf.abs(act)
    inner = tf.where(magnitude <= AMPLIFY_CLIP, 0.5 * act * act,
                     AMPLIFY_CLIP * magnitude - 0.5 * AMPLIFY_CLIP ** 2)
    return 0.5 * act * magnitude + inner


def build(rebuilt: RebuiltGraph, input_name: str, layer_tensor: str, kind: str) -> ObjectiveOps:
    """The objective ops of ``kind`` for ``layer_tensor``; built once per graph and reused."""
    if kind not in KINDS:
        raise OptionError(f"objective kind {kind!r} is not one of {', '.join(map(repr, KINDS))}")
    target = objective_tensor(rebuilt, layer_tensor)
    return rebuilt.cached(("deepdream", kind, input_name, target),
                          lambda: _build(rebuilt, input_name, target, kind))


def _build(rebuilt: RebuiltGraph, input_name: str, target: str, kind: str) -> ObjectiveOps:
    with tf.name_scope("tf_cnnvis_deepdream"):
        act = rebuilt.tensor(target)
        image = rebuilt.tensor(input_name)
        index = tf.compat.v1.placeholder(tf.int32, [None], name="target_index")
        rank = act.shape.rank
        if kind == "amplify":
            values = tf.reduce_mean(amplification(act), axis=list(range(1, rank)))
        else:
            mask = tf.one_hot(index, tf.shape(act)[-1], dtype=act.dtype)  # (B, C)
            if kind == "unit":
                values = tf.reduce_sum(act * mask, axis=1)
            else:
                means = tf.reduce_mean(act, axis=list(range(1, rank - 1)))  # (B, C)
                values = tf.reduce_sum(means * mask, axis=1)
        gradient = tf.gradients(tf.reduce_sum(values), image)[0]
    if gradient is None:
        raise OptionError(f"layer {target!r} does not depend on input {input_name!r}")
    return ObjectiveOps(index=index, values=values, gradient=gradient, layer_tensor=target)
