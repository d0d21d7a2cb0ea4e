"""The batched backward pass against the per-item parallel-for pass, for the tests of both."""

from tf_cnnvis import compute
from tf_cnnvis import rebuild as rebuild_module
from tf_cnnvis.feeds import resolve_feed


def batched_and_per_item(model, x, method, choose, monkeypatch):
    """Reconstructions of channels 1 and 2, whole maps and strongest units, of the layers
    ``choose(graph, model)`` picks, by the batched pass and by the per-item parallel-for pass.

    Returns ``(batched, per_item, unbatched)``: dicts by ``(layer name, target)``, and the layers
    the batched pass left to parallel-for on the first run.
    """
    real = rebuild_module.batched_gradient
    unbatched = []

    def watched(top, *args):
        result = real(top, *args)
        if result is None:
            unbatched.append(top.name)
        return result

    def results():
        rebuilt = rebuild_module.rebuild(model, method)
        feed = resolve_feed(model, rebuilt.graph, x, None)
        layers = choose(rebuilt.graph, model)
        values = compute.activations(rebuilt, feed, layers)
        out = {(layer.name, target): compute.reconstruct(rebuilt, feed, layer, target=target, channels=[1, 2],
                                                         layer_values=values[layer.tensor], crop=False)
               for layer in layers for target in ("map", "unit")}
        rebuild_module.clear_cache()
        return out

    monkeypatch.setattr(rebuild_module, "batched_gradient", watched)
    batched = results()
    monkeypatch.setattr(rebuild_module, "batched_gradient", lambda *args: None)
    return batched, results(), unbatched
