"""convfocus: find and grade out-of-focus regions in whole-slide pathology images.

Implements ConvFocus (Kohlberger et al., J Pathol Inform 2019): a shallow
Inception-v3 stem trained on semi-synthetic defocus grades every 139 px window
(about 35 µm at 40x) of a slide on a 30-class scale.
"""

__version__ = "0.1.0"

MODEL_MPP = 0.25
"""Pixel size (µm/px) at which the classes are defined (40x)."""

NUM_CLASSES = 30
