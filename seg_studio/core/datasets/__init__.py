"""Readers that turn public clinical data sets into the image/label folders training consumes.

Each module knows one set's quirks (HC18's ellipse outlines and CSV pixel sizes, Sunnybrook's cine
DICOM slices and text contours) and writes ordinary NIfTI pairs with their physical spacing, plus
a fixed ``split.json`` that holds whole patients back, so ``seg-studio train`` needs no special case.
"""
