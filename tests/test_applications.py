"""One model of every keras.applications family through every entry function.

Each family's smallest model is built with ``weights=None`` (the hub's
weights cannot be downloaded here) at the smallest input it accepts, frozen
once per module, and sent through ``list_layers``, activations, the three
reconstruction methods for whole maps and single units, DeepDream on a
convolution's channels and on the output's classes, and top activations.
This backs the README's "Supported architectures" table.
"""

import collections
import dataclasses

import numpy as np
import pytest

import tf_cnnvis
from tf_cnnvis.errors import ReceptiveFieldError
from tf_cnnvis.load import load_model
from tf_cnnvis.rebuild import rebuild
from tf_cnnvis.receptive_field import receptive_field

from numerics import assert_reordered_close

pytestmark = pytest.mark.slow

METHODS = ["gradient", "deconvnet", "guided"]

# family: (model, smallest input, preprocessing module, what 'r' finds: op type -> layers), the README's table
FAMILIES = {
    "ConvNeXt": ("ConvNeXtTiny", 32, "convnext", {"GELU": 18}),
    "DenseNet": ("DenseNet121", 32, "densenet", {"Relu": 121}),
    "EfficientNet": ("EfficientNetB0", 32, "efficientnet", {"SiLU": 49}),
    "EfficientNetV2": ("EfficientNetV2B0", 32, "efficientnet_v2", {"SiLU": 55}),
    "InceptionResNetV2": ("InceptionResNetV2", 75, "inception_resnet_v2", {"Relu": 243}),
    "InceptionV3": ("InceptionV3", 75, "inception_v3", {"Relu": 94}),
    "MobileNet": ("MobileNet", 32, "mobilenet", {"Relu6": 27}),
    "MobileNetV2": ("MobileNetV2", 32, "mobilenet_v2", {"Relu6": 35}),
    "MobileNetV3": ("MobileNetV3Small", 32, "mobilenet_v3", {"HardSwish": 19, "Relu": 14, "HardSigmoid": 9}),
    "NASNet": ("NASNetMobile", 32, "nasnet", {"Relu": 192}),
    "ResNet": ("ResNet50", 32, "resnet", {"Relu": 49}),
    "ResNetV2": ("ResNet50V2", 32, "resnet_v2", {"Relu": 49}),
    "VGG": ("VGG16", 32, "vgg16", {"Relu": 15}),
    "Xception": ("Xception", 71, "xception", {"Relu": 35}),
}


@dataclasses.dataclass
class App:
    family: str
    model: object
    frozen: object
    image: np.ndarray
    rows: list
    relus: list
    layers: list  # a middle and the last rectifier
    conv: str  # a middle convolution
    output: str  # the output layer (class probabilities)
    channels: dict  # per layer, its two most active channels on the image


def _live_weights(model, rng):
    """Random kernels at He-normal scale (fan-in per output channel), so that signals neither vanish
    nor explode through the net.

    Keras's Glorot default counts all of a depthwise kernel's channels as its
    fan-in, so the depthwise layers of a random MobileNet or EfficientNet
    shrink every signal to 1e-14 and below, where no gradient ascent moves a
    logit; trained weights keep signals at the scale this gives.
    """
    import keras

    def he_normal(weight, fan_in):
        weight.assign(rng.normal(0, np.sqrt(2.0 / fan_in), tuple(weight.shape)).astype(np.float32))

    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            he_normal(layer.kernel, np.prod(layer.kernel.shape[:2]))
        elif isinstance(layer, keras.layers.SeparableConv2D):
            he_normal(layer.depthwise_kernel, np.prod(layer.depthwise_kernel.shape[:2]))
            he_normal(layer.pointwise_kernel, layer.pointwise_kernel.shape[2])
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            he_normal(layer.kernel, np.prod(layer.kernel.shape[:-1]))


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


# Where a rectifier stops passing gradients (Relu6 at 6, a hard-sigmoid gate at 1).
_SATURATES = {"Relu6": 6.0, "HardSigmoid": 1.0}


def _active_channels(value, ceiling=np.inf):
    """The two channels whose strongest unit is highest without saturating (its gradient is not 0)."""
    strongest = value.reshape(-1, value.shape[-1]).max(axis=0)
    eligible = np.flatnonzero((strongest > 0) & (strongest < ceiling))
    assert eligible.size >= 2, "fewer than two channels are active on the test image"
    return sorted(eligible[np.argsort(strongest[eligible])[-2:]].tolist())


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_entry_function_on_the_family(family):
    """One test per family, so that ``pytest -n`` spreads the families over its processes and
    builds each model once; each check's message names what failed."""
    app = build(family)
    check_list_layers_finds_the_rectifiers_and_no_function_calls(app)
    check_activations_are_the_keras_models_own(app)
    check_reconstructions_of_every_method_and_target(app)
    check_deepdream_raises_a_convolutions_channels_and_the_output_classes(app)
    check_top_activations_keep_each_channels_strongest_images(app)


def build(family: str) -> App:
    """The family's model with live random weights, frozen, its layers and the channels to show."""
    import keras

    name, size, module, _ = FAMILIES[family]
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3))
    rng = np.random.default_rng(0)
    _live_weights(model, rng)
    preprocess = getattr(keras.applications, module).preprocess_input
    image = np.asarray(preprocess(rng.uniform(0, 255, (1, size, size, 3)).astype(np.float32)), np.float32)
    frozen = load_model(model)
    rows = tf_cnnvis.list_layers(frozen)
    relus = [row for row in rows if row.kind == "relu"]
    convs = [row for row in rows if row.kind == "conv"]
    layers = [relus[len(relus) // 2].name, relus[-1].name]
    values = tf_cnnvis.activation_visualization(frozen, image, layers=layers + [convs[len(convs) // 2].name],
                                                path_outdir=None, path_logdir=None).arrays
    op_types = {row.name: row.op_type for row in rows}
    channels = {layer: _active_channels(value, _SATURATES.get(op_types.get(layer), np.inf))
                for layer, value in values.items()}
    return App(family, model, frozen, image, rows, relus, layers, convs[len(convs) // 2].name,
               model.layers[-1].name, channels)


def assert_finite_not_constant(array, what):
    assert np.all(np.isfinite(array)), f"{what} is not finite"
    assert np.ptp(array) > 0, f"{what} is constant"


def check_list_layers_finds_the_rectifiers_and_no_function_calls(app):
    expected = FAMILIES[app.family][3]
    assert collections.Counter(row.op_type for row in app.relus) == expected, "rectifiers found by 'r'"
    assert not any(node.op.endswith("PartitionedCall") for node in app.frozen.graph_def.node)
    assert len({row.name for row in app.rows}) == len(app.rows)


def check_activations_are_the_keras_models_own(app):
    import keras

    result = tf_cnnvis.activation_visualization(app.frozen, app.image, layers=app.layers + [app.output],
                                                path_outdir=None, path_logdir=None)
    for name, value in result.arrays.items():
        assert_finite_not_constant(value, name)
    expected = keras.Model(app.model.inputs, app.model.get_layer(app.output).output)(app.image, training=False)
    assert_reordered_close(result.arrays[app.output], np.asarray(expected))


def check_reconstructions_of_every_method_and_target(app):
    """Three methods for whole maps and single units, of a middle and the last rectifier."""
    for target in ("map", "unit"):
        for layer in app.layers:
            result = tf_cnnvis.deconv_visualization(app.frozen, app.image, layers=[layer], method=METHODS,
                                                    target=target, channels=app.channels[layer],
                                                    path_outdir=None, path_logdir=None)
            arrays = result.arrays[layer]
            for method in METHODS:
                assert arrays[method].shape[:2] == (1, 2)
                for index in range(2):
                    assert_finite_not_constant(arrays[method][0, index], f"{layer} {method} {target} {index}")
            if target == "unit":
                _assert_zero_outside_the_fields(app, result.layers[0], layer, arrays)


def _assert_zero_outside_the_fields(app, info, layer, arrays):
    """Where receptive_field handles the net: each unit's reconstruction is zero outside its field."""
    if len(info.shape) != 4:  # a dense unit sees every pixel
        return
    try:
        field = receptive_field(rebuild(app.frozen, "gradient").graph, app.frozen.inputs[0], info.tensor,
                                app.image.shape[1:3])
    except ReceptiveFieldError:
        return
    if field is None:  # a layer after global pooling: every pixel is in every field
        return
    values = tf_cnnvis.activation_visualization(app.frozen, app.image, layers=[layer], path_outdir=None,
                                                path_logdir=None).arrays[layer][0]
    for index, channel in enumerate(app.channels[layer]):
        y, x = np.unravel_index(np.argmax(values[..., channel]), values.shape[:2])
        top, left, bottom, right = field.box(y, x, clip_to=app.image.shape[1:3])
        for method in METHODS:
            outside = arrays[method][0, index].copy()
            outside[top:bottom, left:right] = 0
            assert not np.any(outside), f"{layer} {method}: nonzero outside the field of unit {(y, x)}"


def check_deepdream_raises_a_convolutions_channels_and_the_output_classes(app):
    options = dict(iterations=4, octaves=1, jitter=0, l2=0.0, normalize="std", step_size=0.002,
                   path_outdir=None, path_logdir=None)
    for layer, classes in ((app.conv, app.channels[app.conv]), (app.output, [0, 1])):
        result = tf_cnnvis.deepdream_visualization(app.frozen, app.image, layer=layer, classes=classes, **options)
        arrays = result.arrays[layer]
        assert_finite_not_constant(arrays["images"], f"{layer} images")
        assert np.all(arrays["objective_final"] > arrays["objective_start"]), (
            f"{layer}: {arrays['objective_start']} -> {arrays['objective_final']}")


def check_top_activations_keep_each_channels_strongest_images(app):
    from tf_cnnvis import top_activations

    rng = np.random.default_rng(1)
    images = np.concatenate([app.image, app.image + rng.normal(0, 0.5 * app.image.std(), (3,) + app.image.shape[1:])
                             .astype(np.float32)])
    layer = app.layers[0]
    result = top_activations(app.frozen, images, [layer], k=2, channels=app.channels[layer], path_outdir=None)
    tops = result[layer]
    values = tf_cnnvis.activation_visualization(app.frozen, images, layers=[layer], path_outdir=None,
                                                path_logdir=None).arrays[layer]
    for row, channel in enumerate(app.channels[layer]):
        strongest = values[..., channel].reshape(len(images), -1).max(axis=1)
        # The two highest scores, each that of the image it names (ties may name either image).
        np.testing.assert_allclose(np.sort(tops.scores[row]), np.sort(strongest)[-2:], rtol=1e-4)
        np.testing.assert_allclose(tops.scores[row], strongest[tops.image_index[row]], rtol=1e-4)
    for row in range(2):
        assert_finite_not_constant(tops.reconstructions[row], f"{layer} top reconstructions, row {row}")
