"""Weight-space interpolation of a fine-tuned model with the model it started from (WiSE-FT, Wortsman et al. 2022).

A fine-tune on new data (breast carcinoma) tends to lose some of what the starting model knew (colon); the
weights part-way between the two often keep most of both. Both models must share their architecture and, for
the BatchNorm statistics to stay meaningful, the fine-tune should have kept them frozen.
"""

from __future__ import annotations

import torch

from .resunetpp import ResUNetPlusPlus, build_model


def interpolate_weights(start: ResUNetPlusPlus, tuned: ResUNetPlusPlus, alpha: float) -> ResUNetPlusPlus:
    """A model with weights ``(1 - alpha) * start + alpha * tuned`` (alpha 0: ``start``, 1: ``tuned``)."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if start.config != tuned.config:
        raise ValueError(
            f"cannot interpolate models of different architectures: {start.config.widths} and {tuned.config.widths}"
        )
    a, b = start.state_dict(), tuned.state_dict()
    mixed = {}
    for name, value in b.items():
        if value.is_floating_point():
            mixed[name] = torch.lerp(a[name].float(), value.float(), alpha).to(value.dtype)
        else:
            mixed[name] = value.clone()  # counters (BatchNorm's num_batches_tracked)
    model = build_model(tuned.config)
    model.load_state_dict(mixed)
    return model.eval()
