"""Visualize during training: a Keras callback in the style of ``keras.callbacks.TensorBoard``.

Every ``every_n_epochs`` epochs the callback runs the chosen visualizations
on a fixed batch of images and writes them to TensorBoard with
``step=epoch``, so the Images tab gets a slider over training next to the
loss curves. Give it the ``log_dir`` of Keras's own TensorBoard callback:
Keras writes the runs ``train`` and ``validation`` there, this callback the
run ``visualization`` beside them (one writer per folder, so neither
interferes with the other's event files).

Repeated calls are cheap: the model is traced and frozen once, later
epochs only copy the current weights into the graph imported the first time
(see :mod:`tf_cnnvis.load` and :mod:`tf_cnnvis.rebuild`).
"""

from __future__ import annotations

import logging
import os
import time

import keras
import numpy as np

from tf_cnnvis.attribution import attribution_visualization
from tf_cnnvis.errors import FeedError, OptionError
from tf_cnnvis.options import (ATTRIBUTION_METHODS, DEFAULT_MEMORY_BUDGET_MB, METHODS, check_channels,
                               check_integer, check_layer_selection, check_memory_budget, check_target)
from tf_cnnvis.visualize import activation_visualization, deconv_visualization
from tf_cnnvis.write import SummaryWriter

logger = logging.getLogger("tf_cnnvis")

# Attribution maps by their method names; "deconvnet" and "guided" stay the reconstructions.
ATTRIBUTIONS = tuple(name for name in ATTRIBUTION_METHODS if name not in METHODS)
VISUALIZATIONS = ("activations",) + METHODS + ATTRIBUTIONS


class VisualizationCallback(keras.callbacks.Callback):
    """Write feature maps and reconstructions of fixed images every few epochs.

    Args:
        images: the images to visualize, as an array or as the
            ``value_feed_dict`` of the entry functions. Keep it small (a few
            images): every visualization runs on all of them.
        log_dir: TensorBoard log folder, typically the one given to
            ``keras.callbacks.TensorBoard``; pictures go to the run
            ``log_dir/<run_name>``. None writes no TensorBoard events.
        layers: which layers, as for the entry functions (``'r'``, names...).
        visualizations: any of ``'activations'``, ``'deconvnet'``,
            ``'guided'`` and ``'gradient'`` (reconstructions), and the
            attribution maps ``'gradcam'``, ``'gradcam++'``, ``'layercam'``,
            ``'scorecam'``, ``'guided_gradcam'``, ``'saliency'``,
            ``'gradient_x_input'``, ``'integrated_gradients'``,
            ``'occlusion'`` (one string or several).
        every_n_epochs: visualize at epochs 0, n, 2n... (as Keras's
            ``histogram_freq``) and always after the last epoch.
        path_outdir: also write PNG folders, one ``epoch_NNNN`` folder per
            visualized epoch. None (default) writes only to TensorBoard.
        target, channels, memory_budget_mb, input_tensor: passed to
            :func:`tf_cnnvis.deconv_visualization` / ``activation_visualization``.
        run_name: the TensorBoard run the pictures appear under.
        classes, labels, attribution_layer: the attribution maps' classes
            (default each image's top class), class names and CAM layer, as
            ``classes``, ``labels`` and ``layer`` of
            :func:`tf_cnnvis.attribution_visualization`.

    After training, ``results`` maps each visualized epoch to the list of
    :class:`~tf_cnnvis.VisualizationResult` written for it.
    """

    def __init__(self, images, log_dir="logs", layers="r", visualizations=("activations", "deconvnet"),
                 every_n_epochs=1, path_outdir=None, target="map", channels=None,
                 memory_budget_mb=DEFAULT_MEMORY_BUDGET_MB, input_tensor=None,
                 run_name="visualization", classes=None, labels=None, attribution_layer=None):
        super().__init__()
        chosen = [visualizations] if isinstance(visualizations, str) else list(visualizations)
        unknown = [name for name in chosen if name not in VISUALIZATIONS]
        if unknown or not chosen:
            raise OptionError(f"visualizations={visualizations!r}: each must be one of "
                              f"{', '.join(map(repr, VISUALIZATIONS))}")
        check_integer("every_n_epochs", every_n_epochs, 1)
        if any(np.size(value) == 0 for value in (images.values() if isinstance(images, dict) else [images])):
            raise FeedError("images holds no image; give a batch of at least one image")
        check_target(target)
        check_layer_selection(layers)
        check_channels(channels)
        check_memory_budget(memory_budget_mb)
        if log_dir is None and path_outdir is None:
            raise OptionError("log_dir and path_outdir are both None: nothing would be written; "
                              "give a TensorBoard log folder or an output folder")
        if not run_name or os.path.basename(run_name) != run_name or run_name in (".", ".."):
            raise OptionError(f"run_name={run_name!r} must be a plain folder name such as 'visualization'")
        self.images = images
        self.log_dir = log_dir
        self.layers = layers
        self.visualizations = tuple(chosen)
        self.every_n_epochs = every_n_epochs
        self.path_outdir = path_outdir
        self.target = target
        self.channels = channels
        self.memory_budget_mb = memory_budget_mb
        self.input_tensor = input_tensor
        self.run_name = run_name
        self.classes, self.labels, self.attribution_layer = classes, labels, attribution_layer
        self.results: dict[int, list] = {}
        self._epochs = None

    @property
    def run_dir(self) -> str | None:
        """The folder the event file is written to (``log_dir/run_name``)."""
        return None if self.log_dir is None else os.path.join(self.log_dir, self.run_name)

    def on_train_begin(self, logs=None):
        self._epochs = self.params.get("epochs") if self.params else None

    def on_train_end(self, logs=None):
        if self.run_dir is not None:  # like Keras's TensorBoard callback: files closed after fit
            SummaryWriter.close_logdir(self.run_dir)

    def on_epoch_end(self, epoch, logs=None):
        last = self._epochs is not None and epoch == self._epochs - 1
        if epoch % self.every_n_epochs == 0 or last:
            self.visualize(epoch)

    def visualize(self, step: int) -> list:
        """Run every chosen visualization on the current weights at ``step``."""
        began = time.perf_counter()
        outdir = None if self.path_outdir is None else os.path.join(self.path_outdir, f"epoch_{step:04d}")
        common = dict(input_tensor=self.input_tensor, layers=self.layers, path_logdir=self.run_dir,
                      path_outdir=outdir, step=step)
        results = []
        if "activations" in self.visualizations:
            results.append(activation_visualization(self.model, self.images, **common))
        methods = [name for name in self.visualizations if name in METHODS]
        if methods:
            results.append(deconv_visualization(
                self.model, self.images, method=methods, target=self.target, channels=self.channels,
                memory_budget_mb=self.memory_budget_mb, **common))
        attributions = [name for name in self.visualizations if name in ATTRIBUTIONS]
        if attributions:
            results.append(attribution_visualization(
                self.model, self.images, self.classes, attributions, self.attribution_layer, self.input_tensor,
                self.run_dir, outdir, labels=self.labels, step=step, memory_budget_mb=self.memory_budget_mb))
        self.results[step] = results
        logger.info("visualized epoch %d (%s) in %.2f s", step, ", ".join(self.visualizations),
                    time.perf_counter() - began)
        return results

