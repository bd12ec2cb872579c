"""Pictures for people (numpy, PIL and matplotlib; never Streamlit): maps over images, colour
bars, segment overlays and framed patches, evaluation curves and sanity-check sheets."""
from .evaluation_curves import evaluation_curves_png
from .render import (
                     DIVERGING,
                     GHOST_FLOOR,
                     QUALITATIVE,
                     SEQUENTIAL,
                     cells,
                     colorize,
                     colour_bar,
                     diverging,
                     framed_patch,
                     grid,
                     measured_time,
                     outlined,
                     overlay,
                     segment_overlay,
                     segment_palette,
)
from .sanity_pictures import maps_sheet, sanity_curves_png, step_label, step_pictures

__all__ = ["DIVERGING", "GHOST_FLOOR", "QUALITATIVE", "SEQUENTIAL", "cells", "colorize", "colour_bar", "diverging",
           "evaluation_curves_png", "framed_patch", "grid", "maps_sheet", "measured_time", "outlined", "overlay",
           "sanity_curves_png", "segment_overlay", "segment_palette", "step_label", "step_pictures"]
