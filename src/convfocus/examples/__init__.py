"""Small, self-generating examples for the evaluation commands.

Everything here is for demonstration: :mod:`convfocus.examples.detector` is a toy
texture score, not a cancer detector, and the data made by
:mod:`convfocus.examples.detector_data` and :mod:`convfocus.examples.benchmarks`
are generated at run time from ``skimage.data.immunohistochemistry()`` (a 512 x 512
IHC field) so that the commands run end to end without downloads.
"""
