"""Net2WiderNet (Chen et al. 2016): a ResUNet++ twice as wide that computes the same function as a trained one.

Every hidden channel j of the trained network becomes channels 2j and 2j+1 of the wide one (interleaved, so
concatenations keep the rule), and weights reading a widened input are halved: the wide network starts from the
narrow one's predictions and accuracy, then uses its extra capacity as fine-tuning breaks the symmetry of the
copies (a little noise is added for that; exact copies would get identical gradients forever).
"""

from __future__ import annotations

import dataclasses

import torch

from .resunetpp import ModelConfig, ResUNetPlusPlus


def doubled_config(model: ResUNetPlusPlus) -> ModelConfig:
    """The model's config with every hidden width (stem, stages, bridge) doubled."""
    config = model.config
    return dataclasses.replace(config, widths=tuple(2 * w for w in config.widths), bridge=2 * config.bridge)


def widen_twice(model: ResUNetPlusPlus, *, noise: float = 0.0, seed: int = 0) -> ResUNetPlusPlus:
    """A network with every hidden width doubled that computes what ``model`` computes (in eval mode).

    ``noise`` adds Gaussian noise of ``noise`` times each weight tensor's standard deviation to the widened
    weights, to let the copies of a channel drift apart in training (0 keeps the function exact).
    """
    wide = ResUNetPlusPlus(doubled_config(model))
    narrow_state = model.state_dict()
    generator = torch.Generator().manual_seed(seed)
    new_state = {}
    for name, target in wide.state_dict().items():
        source = narrow_state[name].detach().to(torch.float32)
        if target.ndim == 0:  # BatchNorm's num_batches_tracked
            new_state[name] = narrow_state[name].clone()
            continue
        value = source
        for dim in range(min(2, target.ndim)):
            if target.shape[dim] == source.shape[dim]:
                continue  # RGB input or class output: not widened
            if target.shape[dim] != 2 * source.shape[dim]:
                raise ValueError(f"{name}: cannot widen {tuple(source.shape)} to {tuple(target.shape)}")
            value = value.repeat_interleave(2, dim=dim)
            if dim == 1:  # two copies of each input channel now feed this weight: halve it
                value = value / 2
        if noise and target.ndim >= 2:
            value = value + noise * source.std() * torch.randn(value.shape, generator=generator)
        new_state[name] = value.to(target.dtype)
    wide.load_state_dict(new_state)
    return wide.eval()
