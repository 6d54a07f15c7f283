"""The Qt-free core: I/O, models, checkpoints, inference, training and metrics.

Nothing under ``seg_studio.core`` may import Qt, napari or magicgui (a test enforces it), so the CLI,
the tests and batch jobs run without a GUI stack.
"""
