"""napari-histokd: the napari plugin (readers, writers, sample data, widgets) over histokd_core."""

__version__ = "0.1.0"
