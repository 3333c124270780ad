"""histokd_core: multimodal knowledge distillation for whole-slide images, without Qt or napari.

Subpackages hold one concept each: ``slide`` (lazy WSI access, tissue, patch grid), ``features``
(patch encoders and the feature store), ``omics``, ``cohort``, ``survival``, ``train``, ``methods``
(one subpackage per method), ``explain`` (patch maps aligned to the slide), ``export``.
"""

__version__ = "0.1.0"
