"""Fitting a recipe to a card: how much memory its training step needs and whether that fits.

    model_catalog + architectures (model shapes from config.json values)
    -> setup + precision (the recipe as the estimator sees it, on a given card)
    -> estimate + activations (bytes by component) -> verdict (fits / tight / does not fit)
    -> suggest (the cheapest change that fits); cpu (whether a run may train on the CPU)
    allocator (PyTorch's CUDA caching allocator, replayed over a traced allocation sequence)
    hardware (the only NVML caller) + gpu_catalog (Gpu as data, cards by name)

Owns: every memory number and every decision that depends on the card.
May import: the standard library, ``recipecli.units``, ``recipecli.errors`` and ``recipecli.read``
(typed recipes in, never YAML); pynvml inside hardware.probe only, huggingface_hub inside
model_catalog.download_config only. Never torch: a fit-check for a card you do not own is arithmetic.
"""
