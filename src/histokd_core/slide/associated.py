"""Associated images (label, macro, thumbnail) and the de-identification rule for showing them.

A slide label usually carries the patient's name, case number or barcode. With
de-identification on, the label is never decoded for display: :func:`read_for_display` refuses
it before touching the file. A site can lock the setting on for every user with the environment
variable ``HISTOKD_DEIDENTIFY=1`` (then the GUI cannot switch it off).

Note: some scanners' macro images photograph the whole glass slide, label included (Aperio's
macro leaves the label out, as in the CMU test slide). Sites with such scanners should not
show macro images to people who must not see identifiers.
"""

from __future__ import annotations

import os

import numpy as np

from histokd_core.errors import SlideError

#: Environment variable that locks de-identification on ("1", "true", "yes" or "on").
DEIDENTIFY_ENV = "HISTOKD_DEIDENTIFY"
#: Associated images withheld when de-identification is on.
IDENTIFYING = ("label",)


def deidentify_locked() -> bool:
    """True when the site locked de-identification on through ``HISTOKD_DEIDENTIFY``."""
    return os.environ.get(DEIDENTIFY_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def displayable(names: list[str], deidentify: bool) -> list[str]:
    """The associated image names that may be shown (``label`` removed when de-identifying)."""
    hidden = IDENTIFYING if (deidentify or deidentify_locked()) else ()
    return [n for n in names if n not in hidden]


def read_for_display(slide, name: str, deidentify: bool) -> np.ndarray:
    """The associated image ``name`` of ``slide`` as ``(h, w, 3)`` uint8, for showing to people.

    Raises :class:`SlideError` without reading anything when de-identification (the argument,
    or the site lock) withholds it.
    """
    if name not in displayable([name], deidentify):
        raise SlideError(
            f"{slide.path}: the {name} image is not shown because de-identification is on "
            f"(it may carry patient identifiers)"
            + (f"; the site locked it with {DEIDENTIFY_ENV}" if deidentify_locked() else "")
        )
    return slide.associated_image(name)
