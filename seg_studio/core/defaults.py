"""Defaults the GUI and the CLI share, in one torch-free module (the CLI's parser and the panel read
them at start-up). A setting with a default here has no other default.
"""

from __future__ import annotations

#: Overlap of the sliding windows of a prediction, as a fraction of the patch. The shipped models'
#: validation Dice (their cards) was measured at 0.5, so predicting at 0.5 reproduces it. Measured on
#: this machine (load 11, 1 thread): on the 4 held-back ISBI 2012 slices 0.25 and 0.5 both place 3x3
#: windows (Dice 0.8278 vs 0.8280, same time); on 3 MSD hippocampus crops one window (Dice 0.8928 both).
OVERLAP = 0.5

#: Total time budget of a fine-tune (seconds), evaluation and saving included, by spatial dims: what
#: a 2-core CPU needs for about 160 steps of the app's width-8 untrained U-Net on 2D X-rays
#: (``benchmarks/training.py --only jsrt``), and twice that for 3D, where a step costs more.
FINETUNE_BUDGET_2D_S = 50.0
FINETUNE_BUDGET_3D_S = 100.0


def finetune_budget_s(spatial_dims: int) -> float:
    """The default fine-tune budget for a ``spatial_dims``-D model."""
    return FINETUNE_BUDGET_3D_S if spatial_dims == 3 else FINETUNE_BUDGET_2D_S


#: The model arguments of a model trained from scratch in a fine-tune's budget: the app's untrained
#: variants (``select_variant(..., features=N)`` overrides it) and the fresh start that replaces a parent that does
#: not fit its corrections. Width 8 learns more than 16 in 50 s on a CPU (JSRT from scratch, two X-rays:
#: lungs 0.947 at width 8 against 0.912 at width 16; benchmarks/training.py).
FRESH_ARCH_ARGS: dict[str, int] = {"features": 8}
