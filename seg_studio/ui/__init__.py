"""The thin napari/Qt layer over ``seg_studio.core``. Heavy imports happen inside functions."""
