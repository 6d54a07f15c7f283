"""seg_studio: segment 2D/3D medical images with the U-Net family, in napari or from the CLI."""

__version__ = "0.1.0"
