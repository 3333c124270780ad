"""``"hed-texture"``: a fast, deterministic, documented CPU descriptor of H&E patches.

Each patch (resized to 256 px when it has another size) gives the 35 features of
:data:`FEATURE_NAMES`, in this order:

Stain statistics (colour deconvolution, Ruifrok & Johnston, ``skimage.color.rgb2hed``;
concentrations in skimage's optical-density units, all pixels):

- ``h_mean, h_std, e_mean, e_std, d_mean, d_std``: mean / std of haematoxylin, eosin, DAB;
- ``h_p90, e_p90``: 90th percentiles of haematoxylin and eosin;
- ``tissue_fraction``: fraction of pixels whose grey level (``rgb2gray``, 0..255) is below
  :data:`TISSUE_GREY` (i.e. not white glass).

Texture of the grey image (``round(255 * rgb2gray)``):

- ``lbp_0 .. lbp_9``: normalised histogram of rotation-invariant *uniform* local binary
  patterns (8 neighbours, radius 1): bins 0..8 count uniform patterns by their number of
  brighter-or-equal neighbours (8 = flat area), bin 9 all non-uniform patterns;
- ``glcm_<prop>_d<1|3>``: grey-level co-occurrence matrix of the grey image quantised to 32 levels
  (``grey // 8``), symmetric and normalised, at distances 1 and 3 px, averaged over the angles
  0, 45, 90 and 135 degrees, for the properties contrast, dissimilarity, homogeneity, energy,
  correlation and ASM (``skimage.feature.graycoprops``).

Nuclei from the haematoxylin channel (pixels with ``H > ``:data:`H_NUCLEUS`, 8-connected
components of at least :data:`MIN_NUCLEUS_PX` px are nuclei):

- ``nuclear_fraction``: fraction of pixels in nuclei;
- ``nuclei_per_10k_px``: number of nuclei per 10 000 px (at 20x, 0.5 um/px, 10 000 px = 2500 um^2);
- ``nucleus_area_mean, nucleus_area_std``: nucleus area in px (0 when there is none).
"""

from __future__ import annotations

import numpy as np

from histokd_core.errors import EncoderError
from histokd_core.features.base import PatchEncoder, check_batch

VERSION = 1
INPUT_SIZE = 256
#: Grey level (0..255) below which a pixel counts as tissue.
TISSUE_GREY = 220
#: Haematoxylin concentration (rgb2hed units) above which a pixel belongs to a nucleus; a light
#: nuclear purple such as RGB (150, 100, 170) gives 0.050, (120, 80, 160) 0.077, pink eosin < 0.02.
H_NUCLEUS = 0.06
#: Smallest nucleus in px (at the 256 px input).
MIN_NUCLEUS_PX = 8
GLCM_LEVELS = 32
GLCM_DISTANCES = (1, 3)
GLCM_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
GLCM_PROPS = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM")
LBP_POINTS = 8
LBP_RADIUS = 1

FEATURE_NAMES: tuple[str, ...] = (
    ("h_mean", "h_std", "e_mean", "e_std", "d_mean", "d_std", "h_p90", "e_p90", "tissue_fraction")
    + tuple(f"lbp_{i}" for i in range(LBP_POINTS + 2))
    + tuple(f"glcm_{p}_d{d}" for d in GLCM_DISTANCES for p in GLCM_PROPS)
    + ("nuclear_fraction", "nuclei_per_10k_px", "nucleus_area_mean", "nucleus_area_std")
)


def grey_u8(patch: np.ndarray) -> np.ndarray:
    """``(h, w)`` uint8 luminance ``round(255 * rgb2gray(patch))``."""
    from skimage.color import rgb2gray

    return np.rint(rgb2gray(patch) * 255.0).astype(np.uint8)


def describe_patch(patch: np.ndarray) -> np.ndarray:
    """The :data:`FEATURE_NAMES` vector ``(35,)`` float32 of one ``(h, w, 3)`` uint8 patch."""
    from skimage.color import rgb2hed
    from skimage.feature import graycomatrix, graycoprops, local_binary_pattern
    from skimage.measure import label
    from skimage.morphology import remove_small_objects

    hed = rgb2hed(patch)
    h, e, d = hed[..., 0], hed[..., 1], hed[..., 2]
    grey = grey_u8(patch)
    n_px = grey.size
    stains = [h.mean(), h.std(), e.mean(), e.std(), d.mean(), d.std(), np.percentile(h, 90), np.percentile(e, 90)]
    tissue = [np.count_nonzero(grey < TISSUE_GREY) / n_px]

    lbp = local_binary_pattern(grey, LBP_POINTS, LBP_RADIUS, method="uniform")
    lbp_hist = np.bincount(lbp.astype(np.int64).ravel(), minlength=LBP_POINTS + 2)[: LBP_POINTS + 2] / n_px

    glcm = graycomatrix(
        grey // (256 // GLCM_LEVELS), GLCM_DISTANCES, GLCM_ANGLES, levels=GLCM_LEVELS, symmetric=True, normed=True
    )
    texture = [graycoprops(glcm, p)[i].mean() for i in range(len(GLCM_DISTANCES)) for p in GLCM_PROPS]

    nuclei = remove_small_objects(h > H_NUCLEUS, max_size=MIN_NUCLEUS_PX - 1, connectivity=2)
    labels = label(nuclei, connectivity=2)
    areas = np.bincount(labels.ravel())[1:]
    nuclear = [
        np.count_nonzero(nuclei) / n_px,
        len(areas) * 1e4 / n_px,
        areas.mean() if len(areas) else 0.0,
        areas.std() if len(areas) else 0.0,
    ]
    return np.asarray(stains + tissue + list(lbp_hist) + texture + nuclear, dtype=np.float32)


class HEDTextureEncoder(PatchEncoder):
    """Encoder wrapper of :func:`describe_patch` (CPU, deterministic, no weights)."""

    def __init__(self) -> None:
        self.id = f"hed-texture-v{VERSION}"
        self.dim = len(FEATURE_NAMES)
        self.input_size = INPUT_SIZE
        self.weights_hash = ""
        self.device = "cpu"
        self.feature_names = FEATURE_NAMES

    def encode(self, batch: np.ndarray) -> np.ndarray:
        from skimage.transform import resize

        batch = check_batch(batch)
        out = np.empty((len(batch), self.dim), dtype=np.float32)
        for i, patch in enumerate(batch):
            if patch.shape[:2] != (INPUT_SIZE, INPUT_SIZE):
                patch = np.rint(
                    resize(patch, (INPUT_SIZE, INPUT_SIZE, 3), anti_aliasing=True, preserve_range=True)
                ).astype(np.uint8)
            out[i] = describe_patch(patch)
        return out


def make_encoder(argument: str = "", device: str = "auto") -> HEDTextureEncoder:
    """The ``"hed-texture"`` encoder (always on CPU; ``argument`` must be empty)."""
    if argument:
        raise EncoderError(f"encoder 'hed-texture' takes no argument, got {argument!r}")
    return HEDTextureEncoder()
