"""Backward rules: what each method does to the gradient at each op.

=============  =====================  ==========================  ===============================
method         ReLU backward          smooth rectifier f          source
=============  =====================  ==========================  ===============================
``gradient``   g * [x > 0]            g * f'(x)                   Simonyan et al. 2014 (saliency)
``deconvnet``  relu(g)                relu(g)                     Zeiler & Fergus 2014
``guided``     g * [x > 0] * [g > 0]  relu(g) * max(f'(x), 0)     Springenberg et al. 2015
=============  =====================  ==========================  ===============================

(``g``: the upstream gradient; ``x``: the activation's input.) The smooth
rectifiers are SiLU, GELU in both forms, hard-swish, Mish and softplus
(:data:`tf_cnnvis.activation_functions.FUNCTIONS`, which also gives each
``f'``); their rules sit on the op that outputs the function and send the
gradient straight to ``x``. Gates (hard-sigmoid, like sigmoid and softmax)
pass their derivative in every method. A ``tf.custom_gradient`` function
that is none of these is differentiated through its forward ops (its own
gradient is Python bound to the graph it was traced in). Grouped
convolutions go backward without the grouped ``Conv2DBackpropInput`` that
TensorFlow's CPU kernels lack without oneDNN.

Max-pool backward (routing to the recorded switch) and the transposed
convolutions are the same in all three. The rules are written for a backward
pass vectorized over a chunk of channels: everything taken from the forward
pass (where ``x > 0``, which input won each pooling window, a convolution's
flipped kernel) is built once per graph, outside the vectorized loop, and
only broadcast against the gradient. TensorFlow's own ``ReluGrad`` and
``MaxPoolGrad`` would copy their forward inputs once per channel and rescan
every window; the rectifier and max-pool rules give TensorFlow's results bit
for bit. A stride-1 ``Conv2D`` goes backward as a forward convolution with the
flipped kernel (faster on CPUs than ``Conv2DBackpropInput``, equal up to
rounding); other convolutions keep TensorFlow's op. Rebuilt graphs give
gradients with respect to the input only; weights get none.
The rules are attached to each node of the ``GraphDef`` before it is
imported (the ``_gradient_op_type`` attribute that ``gradient_override_map``
also sets), so they reach every op of the graph, ops inside Keras models
included. :mod:`tf_cnnvis.backward` applies the same rules to a batch of
items directly.
"""

from __future__ import annotations

import functools

import tensorflow as tf

from tf_cnnvis.activation_functions import FUNCTIONS, custom_gradient_nodes, find_activations
from tf_cnnvis.graph import input_op_name
from tf_cnnvis.layers import negative_branch_relus
from tf_cnnvis.options import check_method

_SELU_SCALE = 1.0507009873554805
_SELU_ALPHA = 1.6732632423543772


def _positive(grad):
    return tf.cast(grad > 0, grad.dtype)


def _where(mask, grad):
    """``grad`` where ``mask`` (computed from the forward pass), else 0."""
    return tf.where(mask, grad, tf.zeros([], grad.dtype))


# What a rule takes from the forward pass (a ReLU's "y > 0", a max-pool's
# switches) does not depend on the item being reconstructed. Built once per
# graph, on first use and outside any loop, it is shared by every layer's
# target and stays outside a vectorized loop, which then only converts the
# few ops that carry the gradient.
_PARTS_COLLECTION = "tf_cnnvis_forward_parts"  # the graph keeps its own parts


def output_positive(op):
    return op.outputs[0] > 0


def forward_part(op, part, key=None):
    """``part(op)``, built once per graph that keeps parts (see :func:`prepare_forward_parts`).

    ``key`` names a second kind of part of one op (default: the op's name).
    """
    key = op.name if key is None else key
    kept = op.graph.get_collection(_PARTS_COLLECTION)
    if not kept:
        return part(op)
    if key not in kept[0]:
        # control_dependencies(None) also leaves any loop or branch being built
        with tf.control_dependencies(None), tf.name_scope("tf_cnnvis_forward"):
            kept[0][key] = part(op)
    return kept[0][key]


def prepare_forward_parts(graph: tf.Graph):
    """Keep the forward parts of ``graph``'s ops from now on (call once per graph)."""
    graph.add_to_collection(_PARTS_COLLECTION, {})


# Each rule: (op, upstream grad) -> grad w.r.t. the op's first input.
def _deconvnet_rectifier(op, grad):
    return tf.nn.relu(grad)


def _deconvnet_leaky(op, grad):
    return tf.nn.leaky_relu(grad, alpha=op.get_attr("alpha"))


def _gradient_relu(op, grad):
    # TensorFlow's ReluGrad, g * [y > 0], with the mask shared by every item.
    return _where(forward_part(op, output_positive), grad)


def _guided_relu(op, grad):
    return _where(forward_part(op, output_positive), tf.nn.relu(grad))


# The slope of each rectifier where it lets the gradient through, taken from
# the forward pass; "gradient" multiplies by it, "guided" also drops g < 0.
def _relu6_slope(op):
    x = op.inputs[0]
    return tf.cast((x > 0) & (x < 6), x.dtype)


def _leaky_slope(op):
    x = op.inputs[0]
    return tf.where(x > 0, tf.ones_like(x), tf.fill(tf.shape(x), tf.cast(op.get_attr("alpha"), x.dtype)))


def _elu_slope(op):
    x, y = op.inputs[0], op.outputs[0]
    return tf.where(x > 0, tf.ones_like(y), y + 1)


def _selu_slope(op):
    x, y = op.inputs[0], op.outputs[0]
    return tf.where(x > 0, tf.fill(tf.shape(y), tf.cast(_SELU_SCALE, y.dtype)), y + _SELU_SCALE * _SELU_ALPHA)


def _gradient_rule(slope):
    return lambda op, grad: grad * slope(op)


def _guided_rule(slope):
    return lambda op, grad: grad * _positive(grad) * slope(op)


def _guided_negative_branch(op, grad):
    # PReLU = relu(x) - alpha * relu(-x). Upstream of relu(-x) the gradient
    # is -alpha * g, so "g > 0" reads "grad < 0" here (alpha >= 0).
    return _where(forward_part(op, output_positive), tf.minimum(grad, 0))


def _lrn_identity(op, grad):
    return grad


# Activation functions of several ops (SiLU, GELU, hard-swish, ...; see
# tf_cnnvis.activation_functions). The rule sits on the op that outputs the
# activation and sends the gradient straight to the activation's input x,
# which is input number INPUT_ATTR of that op; the ops inside the function
# get none. For upstream gradient g and derivative f'(x):
#   gradient   g * f'(x)
#   deconvnet  relu(g)
#   guided     relu(g) * max(f'(x), 0)
# For ReLU (f' = [x > 0]) these are the three rules above. Gates
# (hard-sigmoid) are no rectifiers: every method passes g * f'(x), as it
# does at a Sigmoid.
INPUT_ATTR = "_tf_cnnvis_input"


def activation_input(op):
    """The activation's input x of an op that carries an activation rule."""
    try:
        return op.inputs[op.get_attr(INPUT_ATTR)]
    except ValueError:  # a one-op function (Softplus) without the attribute
        return op.inputs[0]


def activation_input_index(op) -> int:
    """Which input of an op that carries an activation rule is the activation's x."""
    try:
        return op.get_attr(INPUT_ATTR)
    except ValueError:
        return 0


def _slope_of(function):
    return lambda op: function.slope(activation_input(op))


def _positive_slope_of(function):
    return lambda op: tf.nn.relu(function.slope(activation_input(op)))


def _activation_rules(function) -> dict:
    """The three methods' rules for one activation function (each returns the gradient at x)."""
    def derivative(op, grad):
        return grad * forward_part(op, _slope_of(function), key=(op.name, "slope"))

    def guided(op, grad):
        return tf.nn.relu(grad) * forward_part(op, _positive_slope_of(function), key=(op.name, "positive slope"))

    if function.gate:
        return {"gradient": derivative, "deconvnet": derivative, "guided": derivative}
    return {"gradient": derivative, "deconvnet": _deconvnet_rectifier, "guided": guided}


class Switches:
    """A max-pool's winners, laid out so that a select spreads the gradient.

    For windows that tile the input (``ksize == strides``, NHWC) the winners
    are found by TensorFlow's own ``MaxPoolGrad`` on a gradient of ones (so
    ties go where TensorFlow sends them) and reshaped to
    ``(N, rows, window height, columns, window width, C)``. The windows
    cover more than the input for SAME padding (TensorFlow pads half the
    excess before the input and the rest after it) and may fall short of it
    for VALID (the rest gets no gradient).
    """

    def __init__(self, op, positive: bool = False):
        x, y = op.inputs[0], op.outputs[0]
        ksize, padding = op.get_attr("ksize"), op.get_attr("padding")
        winners = tf.raw_ops.MaxPoolGrad(orig_input=x, orig_output=y, grad=tf.ones_like(y), ksize=ksize,
                                         strides=op.get_attr("strides"), padding=padding) > 0
        if positive:  # only winners that are > 0: a ReLU below passes their gradient
            winners &= x > 0
        window_h, window_w = ksize[1:3]
        if x.shape[1:3].is_fully_defined() and y.shape[1:].is_fully_defined():
            (height, width), (rows, columns, channels) = x.shape[1:3].as_list(), y.shape[1:].as_list()
        else:  # scalars of one Unpack each: every shape below costs one Pack
            _, height, width, _ = tf.unstack(tf.shape(x), num=4)
            _, rows, columns, channels = tf.unstack(tf.shape(y), num=4)
        covered_h, covered_w = rows * window_h, columns * window_w
        if padding == b"SAME":
            top, left = (covered_h - height) // 2, (covered_w - width) // 2
            winners = _pad_hw(winners, (top, covered_h - height - top), (left, covered_w - width - left))
            self.finish = functools.partial(_slice_hw, begin=(top, left), size=(height, width))
        else:
            winners = _slice_hw(winners, (0, 0), (covered_h, covered_w))
            self.finish = functools.partial(_pad_hw, rows=(0, height - covered_h), columns=(0, width - covered_w))
        self.cells = tf.stack([-1, rows, 1, columns, 1, channels])
        self.winners = tf.reshape(winners, tf.stack([-1, rows, window_h, columns, window_w, channels]))
        self.covered = tf.stack([-1, covered_h, covered_w, channels])

    @staticmethod
    def applies(op) -> bool:
        ksize, strides = op.get_attr("ksize"), op.get_attr("strides")
        return (list(ksize) == list(strides) and ksize[0] == 1 and ksize[3] == 1
                and op.get_attr("data_format") == b"NHWC" and op.get_attr("padding") in (b"SAME", b"VALID"))

    def spread(self, grad):
        """Each window's gradient at its winner, zero elsewhere: the input's gradient."""
        cells = _where(self.winners, tf.reshape(grad, self.cells))
        return self.finish(tf.reshape(cells, self.covered))


def _pool_switches(op):
    return Switches(op) if Switches.applies(op) else None


def _positive_switches(op):
    return Switches(op, positive=True)


def pool_over_relu(method: str, pool, grad):
    """The gradient at the input of ``Relu`` below the max-pool ``pool`` (which ``Switches`` applies to).

    One select instead of two passes over the unpooled gradient: the ReLU
    rule is applied to the pooled gradient where it does not depend on the
    forward pass (``relu(g)`` commutes with spreading zeros) and the
    forward-pass mask ``y > 0`` is folded into the switches. Equal to the
    max-pool rule followed by the ReLU rule, bit for bit.
    """
    if method != "gradient":
        grad = tf.nn.relu(grad)
    if method == "deconvnet":
        return forward_part(pool, _pool_switches).spread(grad)
    return forward_part(pool, _positive_switches, key=(pool.name, "positive")).spread(grad)


def _switch_unpool(op, grad):
    """Max-pool backward: each window's gradient goes to the input that won it.

    Where the windows tile the input this is one broadcast select per item
    (see ``Switches``) instead of a rescan of every window; overlapping
    windows keep TensorFlow's ``MaxPoolGrad``.
    """
    switches = forward_part(op, _pool_switches)
    if switches is not None:
        return switches.spread(grad)
    return tf.raw_ops.MaxPoolGrad(orig_input=op.inputs[0], orig_output=op.outputs[0], grad=grad,
                                  ksize=op.get_attr("ksize"), strides=op.get_attr("strides"),
                                  padding=op.get_attr("padding"), data_format=op.get_attr("data_format"))


def _is_zero(*values) -> bool:
    return all(isinstance(v, int) and v == 0 for v in values)


def _pad_hw(tensor, rows, columns):
    """Pad height (``rows``: before, after) and width of an NHWC tensor with zeros (False)."""
    if _is_zero(*rows, *columns):
        return tensor
    return tf.pad(tensor, [[0, 0], list(rows), list(columns), [0, 0]])


def _slice_hw(tensor, begin, size):
    """``tensor[:, begin:begin + size]`` over height and width of an NHWC tensor."""
    if _is_zero(*begin) and tensor.shape[1:3].as_list() == list(size):
        return tensor
    return tf.slice(tensor, tf.stack([0, *begin, 0]), tf.stack([-1, *size, -1]))


def flipped_kernel(op):
    """A Conv2D's kernel turned around: ``(kh, kw, out, in)``, each window reversed."""
    return tf.transpose(tf.reverse(op.inputs[1], [0, 1]), [0, 1, 3, 2])


def transposed_padding(op, grouped: bool = False):
    """Padding that makes a stride-1 convolution's input gradient a plain convolution, or None.

    The gradient of a stride-1 convolution with respect to its input is the
    convolution of the upstream gradient with the flipped kernel, padded by
    ``k - 1 - p`` where the forward pass padded by ``p``. TensorFlow's CPU
    kernels run it as a forward convolution up to 2.7x faster than its
    ``Conv2DBackpropInput`` (and 1.3-2.6x faster than a depthwise
    convolution's ``DepthwiseConv2dNativeBackpropInput``). Strided and dilated
    convolutions and other layouts keep TensorFlow's op (None), and so do
    grouped ones unless ``grouped`` (the caller handles the groups).
    """
    kernel, x = op.inputs[1].shape, op.inputs[0].shape
    if (op.get_attr("data_format") != b"NHWC" or list(op.get_attr("strides")) != [1, 1, 1, 1]
            or list(op.get_attr("dilations")) != [1, 1, 1, 1] or not kernel[:2].is_fully_defined()
            or not grouped and (x[-1] is None or kernel[2] is None or x[-1] != kernel[2])):
        return None
    padding = op.get_attr("padding")
    pads = []
    for axis, size in enumerate(kernel[:2]):
        if padding == b"SAME":
            before = (size - 1) // 2
            after = size - 1 - before
        elif padding == b"VALID":
            before = after = 0
        else:  # EXPLICIT: (before, after) per dimension of NHWC
            before, after = op.get_attr("explicit_paddings")[2 + 2 * axis:4 + 2 * axis]
        if before > size - 1 or after > size - 1:
            return None
        pads.append([size - 1 - before, size - 1 - after])
    return [[0, 0], *pads, [0, 0]]


def _same_or(padding, kernel_size):
    """``"SAME"`` where a stride-1 convolution's SAME padding is ``padding`` (odd kernels), else ``padding``."""
    same = [[0, 0]] + [[(k - 1) // 2, k - 1 - (k - 1) // 2] for k in kernel_size] + [[0, 0]]
    return "SAME" if padding == same else padding


def depthwise_input_gradient(op, grad, kernel, items=None):
    """Backward of a depthwise convolution with depthwise kernel ``kernel`` ``(kh, kw, C, m)``.

    ``op`` is a ``DepthwiseConv2dNative`` (``kernel`` its filter) or a Keras
    grouped ``Conv2D`` with one input channel per group (``kernel`` its
    filter reshaped). Stride 1 and one output per channel: a forward
    depthwise convolution with the flipped kernel (see
    :func:`transposed_padding`); otherwise TensorFlow's op.
    """
    padding = transposed_padding(op, grouped=True)
    if padding is not None and kernel.shape[3] == 1:
        flipped = forward_part(op, lambda op: tf.reverse(kernel, [0, 1]), key=(op.name, "flipped depthwise"))
        return tf.nn.depthwise_conv2d(grad, flipped, [1, 1, 1, 1], _same_or(padding, kernel.shape[:2]))
    return tf.raw_ops.DepthwiseConv2dNativeBackpropInput(
        input_sizes=sizes_of_batch(op.inputs[0], grad, items), filter=kernel, out_backprop=grad,
        strides=op.get_attr("strides"), padding=op.get_attr("padding"),
        explicit_paddings=op.get_attr("explicit_paddings"), data_format=op.get_attr("data_format"),
        dilations=op.get_attr("dilations"))


def item_shape(tensor):
    """``tensor``'s shape without its batch axis (built once per graph that keeps forward parts)."""
    return forward_part(tensor.op, lambda op: tf.shape(tensor)[1:], key=(tensor.name, "item shape"))


def sizes_of_batch(tensor, grad, items=None):
    """``tensor``'s shape with the batch size of ``grad`` (a batch of items per image).

    ``items``: that batch size as a one-element vector, when the caller has it.
    """
    return tf.concat([tf.shape(grad)[:1] if items is None else items, item_shape(tensor)], 0)


def conv_groups(op) -> int:
    """How many groups a Conv2D's input channels form (Keras ``Conv2D(groups=...)``); 1 if unknown."""
    channels, kernel_in = op.inputs[0].shape[-1], op.inputs[1].shape[2]
    if op.get_attr("data_format") != b"NHWC" or channels is None or kernel_in is None:
        return 1
    return channels // kernel_in


def _grouped_conv_input_gradient(op, grad, groups: int):
    """Backward of a grouped Conv2D: one depthwise op where each group reads one channel, else per group.

    TensorFlow's CPU kernels have no ``Conv2DBackpropInput`` for groups
    without oneDNN. A kernel ``(kh, kw, 1, G * m)`` (ConvNeXt's 7x7 depthwise
    convolutions as Keras builds them) is the depthwise kernel ``(kh, kw, G,
    m)`` with the same output channel order.
    """
    kernel = op.inputs[1]
    attrs = {"strides": op.get_attr("strides"), "padding": op.get_attr("padding"),
             "explicit_paddings": op.get_attr("explicit_paddings"), "data_format": op.get_attr("data_format")}
    kh, kw, kernel_in, out = kernel.shape.as_list()
    if kernel_in == 1 and list(op.get_attr("dilations")) == [1, 1, 1, 1]:
        depthwise = forward_part(op, lambda op: tf.reshape(kernel, [kh, kw, groups, out // groups]),
                                 key=(op.name, "depthwise kernel"))
        return depthwise_input_gradient(op, grad, depthwise)
    sizes = tf.concat([sizes_of_batch(op.inputs[0], grad)[:3], [kernel_in]], 0)
    per_group = out // groups
    parts = [tf.raw_ops.Conv2DBackpropInput(
        input_sizes=sizes, filter=kernel[..., g * per_group:(g + 1) * per_group],
        out_backprop=grad[..., g * per_group:(g + 1) * per_group], dilations=op.get_attr("dilations"), **attrs)
        for g in range(groups)]
    return tf.concat(parts, axis=3)


def _conv_input_gradient(op, grad):
    """Conv2D backward to the image. Rebuilt graphs give weights no gradient."""
    groups = conv_groups(op)
    if groups > 1 and op.inputs[1].shape.is_fully_defined():
        return _grouped_conv_input_gradient(op, grad, groups), None
    padding = transposed_padding(op)
    if padding is None:
        data = tf.raw_ops.Conv2DBackpropInput(
            input_sizes=sizes_of_batch(op.inputs[0], grad), filter=op.inputs[1], out_backprop=grad,
            strides=op.get_attr("strides"), padding=op.get_attr("padding"),
            explicit_paddings=op.get_attr("explicit_paddings"), data_format=op.get_attr("data_format"),
            dilations=op.get_attr("dilations"))
    else:
        data = tf.nn.conv2d(grad, forward_part(op, flipped_kernel), 1, _same_or(padding, op.inputs[1].shape[:2]))
    return data, None


RULES = {
    "deconvnet": {"Relu": _deconvnet_rectifier, "Relu6": _deconvnet_rectifier,
                  "Elu": _deconvnet_rectifier, "Selu": _deconvnet_rectifier,
                  "LeakyRelu": _deconvnet_leaky, "LRN": _lrn_identity,
                  "PReLUNegative": _deconvnet_rectifier, "MaxPool": _switch_unpool,
                  "Conv2D": _conv_input_gradient},
    "guided": {"Relu": _guided_relu, "Relu6": _guided_rule(_relu6_slope), "Elu": _guided_rule(_elu_slope),
               "Selu": _guided_rule(_selu_slope), "LeakyRelu": _guided_rule(_leaky_slope), "LRN": _lrn_identity,
               "PReLUNegative": _guided_negative_branch, "MaxPool": _switch_unpool,
               "Conv2D": _conv_input_gradient},
    "gradient": {"Relu": _gradient_relu, "Relu6": _gradient_rule(_relu6_slope), "Elu": _gradient_rule(_elu_slope),
                 "Selu": _gradient_rule(_selu_slope), "LeakyRelu": _gradient_rule(_leaky_slope),
                 "PReLUNegative": _gradient_relu, "MaxPool": _switch_unpool, "Conv2D": _conv_input_gradient},
}


for _function in FUNCTIONS.values():
    for _method, _rule in _activation_rules(_function).items():
        RULES[_method][_function.name] = _rule


def _registered_name(method: str, op_type: str) -> str:
    return f"TfCnnvis_{method}_{op_type}"


def _to_activation_input(rule):
    """``rule`` as a gradient function: its result goes to the activation's input, nothing elsewhere."""
    def gradient(op, *grads):
        result = [None] * len(op.inputs)
        result[activation_input_index(op)] = rule(op, grads[0])
        return result
    return gradient


for _method, _rules in RULES.items():
    for _op_type, _rule in _rules.items():
        try:
            tf.RegisterGradient(_registered_name(_method, _op_type))(
                _to_activation_input(_rule) if _op_type in FUNCTIONS else _rule)
        except KeyError:  # already registered by an earlier import of this module
            pass


_FORWARD_SUFFIX = "/tf_cnnvis_forward"


def rule_kinds(graph_def) -> dict[str, str]:
    """Node name -> the rule it gets where that is not its op type: an activation function
    (``"SiLU"``...) or ``"PReLUNegative"``."""
    kinds = {name: "PReLUNegative" for name in negative_branch_relus(graph_def)}
    kinds.update((name, activation.function) for name, activation in find_activations(graph_def).items())
    return kinds


def with_gradient_rules(graph_def, method: str):
    """A copy of ``graph_def`` whose rectifiers, activations, max-pools and convolutions carry the method's rules.

    ``tf.custom_gradient`` functions lose their gradient (Python bound to
    the graph they were traced in, which an imported copy cannot call):
    their forward ops are differentiated as they are, unless they compute
    a known activation function, which gets the method's rule. An
    activation whose output op does not read x directly (GELU's last op
    reads ``0.5 * x``) gets an ``IdentityN(output, x)`` under the output's
    name, as ``tf.custom_gradient`` builds it, to carry the rule; the
    forward values and every tensor name stay as they were.
    """
    rules = RULES[check_method(method)]
    copy = tf.compat.v1.GraphDef()
    copy.versions.CopyFrom(graph_def.versions)
    copy.library.CopyFrom(graph_def.library)
    custom = custom_gradient_nodes(graph_def)
    activations = find_activations(graph_def)
    kinds = rule_kinds(graph_def)
    names = {node.name for node in graph_def.node}
    for original in graph_def.node:
        node = copy.node.add()
        node.CopyFrom(original)
        if node.name in custom:
            del node.attr["_gradient_op_type"]  # IdentityN's own gradient: on to its first input
        activation = activations.get(node.name)
        if activation is not None:
            index = _input_index(node, activation.input)
            if index is None:  # the wrapper goes right after it: the graph's order stays the model's
                node = _wrap(copy, node, activation.input, names)
                index = 1
            node.attr[INPUT_ATTR].i = index
        op_type = kinds.get(node.name, node.op)
        if op_type in rules:
            node.attr["_gradient_op_type"].s = _registered_name(method, op_type).encode()
    return copy


def _wrap(graph_def, node, x: str, names):
    """Rename ``node`` and add ``IdentityN(node, x)`` under its name to ``graph_def``; return the IdentityN."""
    forward = node.name + _FORWARD_SUFFIX
    while forward in names:
        forward += "_"
    wrapper = graph_def.node.add(name=node.name, op="IdentityN", input=[forward, x])
    node.name = forward
    dtype = node.attr["T"].list.type[0] if node.op == "IdentityN" else node.attr["T"].type
    wrapper.attr["T"].list.type.extend([dtype, dtype])
    return wrapper


def _input_index(node, tensor: str):
    """The position of ``tensor`` (a NodeDef input) among ``node``'s inputs, or None."""
    def port(name):
        return name.partition(":")[2] or "0"

    for index, name in enumerate(node.input):
        if input_op_name(name) == input_op_name(tensor) and port(name) == port(tensor) \
                and not name.startswith("^"):
            return index
    return None
