"""Click to correct: interactive U-Nets that take the user's clicks as extra input channels.

``guidance``: the channels and how clicks are drawn (physical units); ``clicks``: the click record, the
clicks file and the simulated user's next click; ``refine``: one click -> corrected labels on a crop.
"""

from __future__ import annotations

from .clicks import Click, ClickError, check_click, next_click, read_clicks, write_clicks
from .guidance import GuidanceSpec, guidance_maps, render_clicks
from .refine import (
    Refined,
    RefineOptions,
    Session,
    apply_clicks,
    guidance_spec,
    refine,
    refine_step,
    start_session,
    warm_up,
    window_sizes,
)

__all__ = [
    "Click",
    "ClickError",
    "GuidanceSpec",
    "RefineOptions",
    "Refined",
    "Session",
    "apply_clicks",
    "check_click",
    "guidance_maps",
    "guidance_spec",
    "next_click",
    "read_clicks",
    "refine",
    "refine_step",
    "render_clicks",
    "start_session",
    "warm_up",
    "window_sizes",
    "write_clicks",
]
