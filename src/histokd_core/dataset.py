"""Cohort data for training: per-fold bags with fold-safe omics normalisation and survival bins.

:class:`CohortData` joins a :class:`~histokd_core.cohort.Cohort`, a feature store, an optional
expression table and gene sets. Every slide's features are read once and cached as float32
tensors; :meth:`CohortData.fold` returns the fold's train/val/test :class:`Bag` s with omics
standardised by training-fold statistics only, discrete-time bins from the quartiles of the
uncensored *training* times (SurvPath), and the fold's :class:`DataInfo`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from histokd_core.bag import Bag, DataInfo
from histokd_core.cohort import Cohort, Folds, load_cohort, make_folds
from histokd_core.errors import DataError
from histokd_core.features.slide_features import SlideFeatures, slide_id_of
from histokd_core.features.store import open_features, store_identity
from histokd_core.omics.gene_sets import read_gene_sets
from histokd_core.omics.hvg import select_hvg
from histokd_core.omics.normalize import Standardizer
from histokd_core.omics.pathways import PathwayTokens, pathway_tokens
from histokd_core.omics.subspaces import split_tumor_tme
from histokd_core.omics.tables import align_cases, read_expression
from histokd_core.survival.bins import assign_bins, survival_bin_edges

log = logging.getLogger(__name__)

FeaturesSource = str | os.PathLike | Mapping[str, SlideFeatures]


@dataclass
class _CaseFeatures:
    feats: torch.Tensor
    coords: torch.Tensor
    slide_index: torch.Tensor
    patch_size: int
    feats_10x: torch.Tensor | None
    coords_10x: torch.Tensor | None
    slide_index_10x: torch.Tensor | None


@dataclass
class FoldData:
    """One cross-validation fold, ready for training.

    Attributes
    ----------
    fold : fold index.
    train, val, test : one :class:`Bag` per case.
    info : the :class:`DataInfo` models are built from (gene subset, pathways, bin edges ...).
    standardizer : the omics normaliser fitted on ``train`` (``None`` without omics).
    pathway_report : :meth:`PathwayTokens.report` of this fold's pathway tokens ("" if none).
    """

    fold: int
    train: list[Bag]
    val: list[Bag]
    test: list[Bag]
    info: DataInfo
    standardizer: Standardizer | None = None
    pathway_report: str = ""


class CohortData:
    """A cohort with its features, omics and folds.

    Parameters
    ----------
    cohort : a :class:`Cohort` or a cohort table path (read with :func:`load_cohort`, ``task``).
    features_path : feature store root / folder of ``.h5``/``.pt`` bags, or a mapping
        slide id -> :class:`SlideFeatures` (in-memory features, e.g. from
        :func:`~histokd_core.synthetic.cohort.make_feature_cohort`).
    omics : expression table (path or DataFrame indexed by ``case_id``), or ``None``.
    gene_sets : gene sets (path or dict), used for pathway tokens and the default tumour/TME split.
    folds : :class:`Folds`, a folds CSV (or CLAM/SurvPath ``splits_<k>.csv`` folder, listing
        case ids or slide ids), or ``None`` for :func:`make_folds` with ``n_folds``, ``seed``.
    task, label_column, one_slide_per_case, survival_columns : used when ``cohort`` is a path
        (see :func:`load_cohort`).
    n_bins : discrete-time survival bins (quartiles by default).
    min_genes, min_coverage : pathway token filter (:func:`pathway_tokens`).
    hvg_fraction : keep the top fraction of highly variable training genes (e.g. 0.3), or ``None``.
    tumor_genes, tme_genes : user tumour/TME gene lists; by default they derive from the Hallmark
        sets in ``gene_sets`` when present (else DataInfo's tumour/TME lists stay empty).
    log1p : log-transform the expression before standardising (raw counts/TPM).
    use_10x : attach 10x features when every slide of a case has them.

    Raises
    ------
    DataError
        Cases without features (listing the slides) or without expression, folds that do not
        match the cohort, gene symbols that match no pathway.
    """

    def __init__(
        self,
        cohort: Cohort | str | os.PathLike,
        features_path: FeaturesSource,
        omics: str | os.PathLike | pd.DataFrame | None = None,
        gene_sets: str | os.PathLike | Mapping[str, Sequence[str]] | None = None,
        folds: Folds | str | os.PathLike | None = None,
        task: str = "survival",
        label_column: str | None = None,
        one_slide_per_case: bool = False,
        survival_columns: tuple[str, str] | None = None,
        n_folds: int = 5,
        seed: int = 0,
        n_bins: int = 4,
        min_genes: int = 1,
        min_coverage: float = 0.0,
        hvg_fraction: float | None = None,
        tumor_genes: Sequence[str] | None = None,
        tme_genes: Sequence[str] | None = None,
        log1p: bool = False,
        use_10x: bool = True,
    ) -> None:
        if not isinstance(cohort, Cohort):
            cohort = load_cohort(cohort, task, label_column, one_slide_per_case, survival_columns)
        self.cohort = cohort
        self.task = self.cohort.task
        self.features_path = features_path
        self.n_bins = n_bins
        self.min_genes, self.min_coverage = min_genes, min_coverage
        self.hvg_fraction = hvg_fraction
        self.tumor_genes, self.tme_genes = tumor_genes, tme_genes
        self.log1p = log1p
        self.use_10x = use_10x
        self._cache: dict[str, _CaseFeatures] = {}
        self.feat_dim: int | None = None
        #: what was left out or assumed while reading, one message each (logged as warnings;
        #: a run's ``metrics.json`` lists them under ``data_warnings``).
        self.warnings: list[str] = []

        if isinstance(folds, Folds):
            self.folds = folds
        elif folds is not None:
            self.folds = Folds.load_csv(folds)
        else:
            self.folds = make_folds(self.cohort, n_folds=n_folds, seed=seed)
        folds_name = str(folds) if isinstance(folds, (str, os.PathLike)) else "folds"
        self.folds = self.folds.by_case(self.cohort, where=folds_name)
        self.folds.check(self.cohort, where=folds_name)

        self.expression: pd.DataFrame | None = None
        if omics is not None:
            expr = read_expression(omics, warn=self._warn)
            where = "expression table" if isinstance(omics, pd.DataFrame) else str(omics)
            self.expression = align_cases(expr, self.cohort.case_ids, where=where)
        if gene_sets is None:
            self.gene_sets: dict[str, list[str]] | None = None
        elif isinstance(gene_sets, Mapping):
            self.gene_sets = {str(k): list(v) for k, v in gene_sets.items()}
        else:
            self.gene_sets = read_gene_sets(gene_sets)

        self._slides: dict[str, SlideFeatures] = {}
        in_memory = isinstance(features_path, Mapping)
        self._source = "in-memory features" if in_memory else str(Path(features_path))
        self._check_features()

    def _warn(self, message: str) -> None:
        log.warning("%s", message)
        self.warnings.append(message)

    # -- features ---------------------------------------------------------------------------
    def _open(self, slide_id: str) -> SlideFeatures:
        if isinstance(self.features_path, Mapping):
            for key in (slide_id, slide_id_of(slide_id)):
                if key in self.features_path:
                    return self.features_path[key]
            raise DataError(f"no features for slide {slide_id!r} in the in-memory feature mapping")
        return open_features(self.features_path, slide_id)

    def _check_features(self) -> None:
        missing = []
        for slide_id in self.cohort.table["slide_id"]:
            try:
                self._slides[slide_id] = self._open(slide_id)
            except DataError as exc:
                missing.append((slide_id, str(exc)))
        if missing:
            case_of = self.cohort.table.set_index("slide_id")["case_id"]
            cases = sorted({case_of[s] for s, _ in missing})
            raise DataError(
                f"{len(missing)} slide(s) of {len(cases)} case(s) have no features in "
                f"{self._source}: "
                f"{', '.join(s for s, _ in missing[:5])}{' ...' if len(missing) > 5 else ''} "
                f"(first error: {missing[0][1]})"
            )
        for sf in self._slides.values():
            if sf.attrs.get("degraded"):
                left = {m: len(v) for m, v in (sf.attrs.get("bad_tiles") or {}).items()}
                self._warn(f"{sf.source}: slide {sf.slide_id} is degraded: implausible decoded "
                           f"tiles were left out at extraction "
                           f"({', '.join(f'{n} at {m}' for m, n in left.items()) or 'see its attrs'})")
        encoders = {str(sf.attrs.get("encoder_id", "")) for sf in self._slides.values()}
        if len(encoders) > 1:
            raise DataError(
                f"{self._source}: slides were encoded with different encoders {sorted(encoders)}")
        self.encoder_id = encoders.pop()
        self._check_provenance()
        slides = self._slides.values()
        self.has_10x = self.use_10x and all("10x" in sf.magnifications for sf in slides)
        by_dim: dict[int, list[SlideFeatures]] = {}
        for sf in slides:
            if sf.attrs.get("feat_dim"):
                by_dim.setdefault(int(sf.attrs["feat_dim"]), []).append(sf)
        if len(by_dim) > 1:
            usual = max(by_dim, key=lambda d: len(by_dim[d]))
            odd = [sf for d, group in by_dim.items() if d != usual for sf in group]
            listed = "; ".join(f"{sf.source} (slide {sf.slide_id}, d = {sf.attrs['feat_dim']})"
                               for sf in odd[:5])
            raise DataError(
                f"{self._source}: {len(odd)} slide(s) have features of another dimension than the "
                f"{len(by_dim[usual])} others (d = {usual}): {listed}"
                f"{' ...' if len(odd) > 5 else ''}; every slide must be encoded with the same "
                "encoder: re-extract them or remove them from the cohort")
        dims = set(by_dim)
        # without a recorded dimension, read one case now; the others are checked as they load
        if dims:
            self.feat_dim = dims.pop()
        else:
            self.feat_dim = int(self.case_features(self.cohort.case_ids[0]).feats.shape[1])

    def _check_provenance(self) -> None:
        """Slides must share one stain normalisation and preprocessing version (their features
        are otherwise shifted against each other); sets ``stain``, ``stain_reference`` and
        ``preprocessing`` for :class:`DataInfo`."""
        groups: dict[tuple, list[str]] = {}
        for slide_id, sf in self._slides.items():
            have = store_identity(sf.attrs)
            groups.setdefault((have["stain"], have["preprocessing"]), []).append(slide_id)
        if len(groups) > 1:
            listing = "; ".join(
                f"stain {st}, preprocessing {pp}: {', '.join(ids[:3])}{' ...' if len(ids) > 3 else ''}"
                for (st, pp), ids in groups.items())
            raise DataError(
                f"{self._source}: slides were extracted with different stain normalisations or "
                f"preprocessing versions ({listing}); extract them again with one setting "
                "(histokd extract --overwrite)")
        (self.stain, self.preprocessing), = groups
        self.stain_reference = dict(next(iter(self._slides.values())).attrs.get("stain_reference") or {})

    def case_features(self, case_id: str) -> _CaseFeatures:
        """Concatenated features of a case's slides (read once, then cached)."""
        if case_id in self._cache:
            return self._cache[case_id]
        slides = self.cohort.slides_of(case_id)
        if not slides:
            raise DataError(f"case {case_id!r} is not in the cohort")
        primary = [self._slides[s] for s in slides]
        mag = "20x" if all("20x" in sf.magnifications for sf in primary) else None

        def gather(m: str | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            feats, coords, index = [], [], []
            for i, sf in enumerate(primary):
                f, c = sf.feats(m), sf.coords(m)
                if f.ndim != 2 or (self.feat_dim is not None and f.shape[1] != self.feat_dim):
                    raise DataError(
                        f"{sf.source}: slide {sf.slide_id} has features of shape {f.shape}; "
                        f"expected (n_patches, {self.feat_dim or 'd'}) like the other slides"
                    )
                if len(f) == 0:
                    raise DataError(
                        f"{sf.source}: slide {sf.slide_id} has no patches at "
                        f"{m or 'its magnification'}")
                feats.append(np.asarray(f, dtype=np.float32))
                coords.append(np.asarray(c, dtype=np.int64))
                index.append(np.full(len(f), i, dtype=np.int64))
            return tuple(torch.from_numpy(np.concatenate(a)) for a in (feats, coords, index))

        feats, coords, index = gather(mag)
        size = primary[0].patch_size_level0(mag)
        sizes = {sf.patch_size_level0(mag) for sf in primary}
        if len(sizes) > 1:
            self._warn(f"case {case_id}: slides have different patch sizes "
                       f"{sorted(sizes, key=str)}; the bag uses {size}")
        if size is None:
            self._warn(f"{primary[0].source}: patch size unknown; assuming 256 level-0 px")
            size = 256
        f10 = c10 = i10 = None
        if self.has_10x:
            f10, c10, i10 = gather("10x")
        self._cache[case_id] = _CaseFeatures(feats, coords, index, int(size), f10, c10, i10)
        return self._cache[case_id]

    # -- folds ------------------------------------------------------------------------------
    @property
    def n_folds(self) -> int:
        return self.folds.n_folds

    def _omics_layout(
        self, train_expr: pd.DataFrame
    ) -> tuple[list[str], PathwayTokens | None, list[int], list[int]]:
        genes = list(train_expr.columns)
        if self.hvg_fraction is not None:
            genes = select_hvg(train_expr, self.hvg_fraction)
        tokens = None
        if self.gene_sets is not None:
            tokens = pathway_tokens(self.gene_sets, genes, self.min_genes, self.min_coverage)
        tumor: list[int] = []
        tme: list[int] = []
        if self.tumor_genes is not None or self.tme_genes is not None:
            tumor, tme = split_tumor_tme(genes, self.tumor_genes, self.tme_genes, self.gene_sets)
        elif self.gene_sets is not None:
            try:
                tumor, tme = split_tumor_tme(genes, gene_sets=self.gene_sets)
            except DataError as exc:
                log.info("no default tumour/TME split: %s", exc)
        return genes, tokens, tumor, tme

    def fold(self, i: int) -> FoldData:
        """Bags and :class:`DataInfo` of fold ``i`` (omics normalised on its training cases)."""
        train_ids, val_ids, test_ids = self.folds.split(i)
        if not train_ids:
            raise DataError(f"fold {i} has no training cases")
        cases = self.cohort.cases
        info = DataInfo(task=self.task, feat_dim=self.feat_dim,
                        has_10x=self.has_10x, encoder_id=self.encoder_id, stain=self.stain,
                        stain_reference=self.stain_reference, preprocessing=self.preprocessing)

        edges: list[float] = []
        if self.task == "survival":
            tr = cases.loc[train_ids]
            edges = survival_bin_edges(tr["survival_months"].to_numpy(),
                                       tr["event"].to_numpy(), self.n_bins)
            info.n_classes = self.n_bins
            info.bin_edges = edges
        else:
            info.n_classes = len(self.cohort.class_names)

        omics: pd.DataFrame | None = None
        standardizer = None
        report = ""
        if self.expression is not None:
            genes, tokens, tumor, tme = self._omics_layout(self.expression.loc[train_ids])
            standardizer = Standardizer(log1p=self.log1p).fit(self.expression.loc[train_ids, genes])
            omics = standardizer.transform(self.expression[genes])
            info.n_genes, info.gene_names = len(genes), genes
            info.tumor_genes, info.tme_genes = tumor, tme
            if tokens is not None:
                info.pathways, info.pathway_names = tokens.indices, tokens.names
                report = tokens.report()

        def bag(case_id: str) -> Bag:
            cf = self.case_features(case_id)
            row = cases.loc[case_id]
            b = Bag(case_id=case_id, feats=cf.feats, coords=cf.coords, slide_index=cf.slide_index,
                    patch_size=cf.patch_size, feats_10x=cf.feats_10x, coords_10x=cf.coords_10x,
                    slide_index_10x=cf.slide_index_10x)
            if omics is not None:
                b.omics = torch.from_numpy(omics.loc[case_id].to_numpy(dtype=np.float32))
            if self.task == "survival":
                b.time, b.event = float(row["survival_months"]), int(row["event"])
                b.bin = int(assign_bins([b.time], edges)[0])
            else:
                b.label = int(row["label"])
            return b

        return FoldData(
            fold=i,
            train=[bag(c) for c in train_ids],
            val=[bag(c) for c in val_ids],
            test=[bag(c) for c in test_ids],
            info=info,
            standardizer=standardizer,
            pathway_report=report,
        )

    def all_bags(self) -> tuple[list[Bag], DataInfo]:
        """Every case as a bag (for inference); omics normalised with fold 0's training
        statistics."""
        data = self.fold(0)
        return data.train + data.val + data.test, data.info

    def __repr__(self) -> str:
        genes = 0 if self.expression is None else self.expression.shape[1]
        return (f"CohortData({len(self.cohort)} cases, {len(self.cohort.table)} slides, "
                f"task={self.task}, d={self.feat_dim}, genes={genes}, "
                f"folds={self.n_folds})")


def slide_bag(
    features: str | os.PathLike, slide_id: str | None = None, with_10x: bool = False
) -> tuple[Bag, SlideFeatures]:
    """A :class:`Bag` (no outcome, no omics) of one slide's features, for inference.

    ``features`` is one slide's store/bag file (``.zarr``, ``.h5``, ``.pt``) or a store root /
    folder, in which case ``slide_id`` names the slide. Returns the bag and its features.
    """
    features = Path(features)
    if features.is_file() or features.suffix == ".zarr":
        root, slide_id = features.parent, slide_id or slide_id_of(features.name)
    elif slide_id is None:
        raise DataError(f"{features}: a folder or store; pass --slide-id to choose the slide")
    else:
        root = features
    sf = open_features(root, slide_id)
    mag = "20x" if "20x" in sf.magnifications else None
    feats = np.asarray(sf.feats(mag), dtype=np.float32)
    if feats.shape[0] == 0:
        raise DataError(f"{features}: slide {slide_id} has no patches")
    bag = Bag(
        case_id=slide_id,
        feats=torch.from_numpy(feats),
        coords=torch.from_numpy(np.asarray(sf.coords(mag), dtype=np.int64)),
        slide_index=torch.zeros(feats.shape[0], dtype=torch.int64),
        patch_size=int(sf.patch_size_level0(mag) or 256),
    )
    if with_10x and "10x" in sf.magnifications:
        bag.feats_10x = torch.from_numpy(np.asarray(sf.feats("10x"), dtype=np.float32))
        bag.coords_10x = torch.from_numpy(np.asarray(sf.coords("10x"), dtype=np.int64))
        bag.slide_index_10x = torch.zeros(bag.feats_10x.shape[0], dtype=torch.int64)
    return bag, sf
