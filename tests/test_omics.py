"""Omics: expression tables, gene sets (real SurvPath/MCAT files), pathway tokens, HVG,
tumour/TME split and fold-safe standardisation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from histokd_core.errors import DataError
from histokd_core.omics import (
    DEFAULT_TME_SETS,
    DEFAULT_TUMOR_SETS,
    Standardizer,
    pathway_tokens,
    read_expression,
    read_gene_sets,
    select_hvg,
    split_tumor_tme,
    write_gmt,
)


@pytest.mark.parametrize(
    "name, n_sets, n_genes",
    [("combine_signatures.csv", 331, 4999), ("hallmarks_signatures.csv", 50, 4241),
     ("xena_signatures.csv", 281, 1577), ("signatures.csv", 6, None)],
)
def test_real_gene_set_files(shared_data, name, n_sets, n_genes):
    sets = read_gene_sets(shared_data / "pathways" / name)
    assert len(sets) == n_sets
    genes = {g for members in sets.values() for g in members}
    if n_genes is not None:
        assert len(genes) == n_genes
    assert all(g and g == g.strip() for g in genes)


def test_real_families_and_hallmarks(shared_data):
    families = read_gene_sets(shared_data / "pathways" / "signatures.csv")
    assert {k: len(v) for k, v in families.items()} == {
        "Tumor Suppressor Genes": 82, "Oncogenes": 328, "Protein Kinases": 513,
        "Cell Differentiation Markers": 443, "Transcription Factors": 1536,
        "Cytokines and Growth Factors": 452,
    }
    combine = read_gene_sets(shared_data / "pathways" / "combine_signatures.csv")
    hallmarks = read_gene_sets(shared_data / "pathways" / "hallmarks_signatures.csv")
    assert sum(k.startswith("HALLMARK_") for k in combine) == 50
    assert set(combine["HALLMARK_E2F_TARGETS"]) == set(hallmarks["HALLMARK_E2F_TARGETS"])
    assert set(DEFAULT_TUMOR_SETS) | set(DEFAULT_TME_SETS) <= set(hallmarks)
    sizes = [len(v) for v in combine.values()]
    assert min(sizes) == 1 and max(sizes) == 199


def test_gmt_round_trip_and_errors(tmp_path):
    sets = {"P1": ["A", "B", "C"], "P2": ["C", "D"]}
    path = write_gmt(tmp_path / "s.gmt", sets)
    assert read_gene_sets(path) == sets
    with pytest.raises(Exception, match="already exists"):
        write_gmt(path, sets)
    (tmp_path / "bad.gmt").write_text("P1\tdesc\tA\nP2 A B\n")
    with pytest.raises(DataError, match=r"bad.gmt: line 2 is not GMT"):
        read_gene_sets(tmp_path / "bad.gmt")
    (tmp_path / "dup.gmt").write_text("P1\td\tA\nP1\td\tB\n")
    with pytest.raises(DataError, match="defined twice"):
        read_gene_sets(tmp_path / "dup.gmt")
    with pytest.raises(DataError, match="does not exist"):
        read_gene_sets(tmp_path / "none.gmt")


def test_wide_csv_padding_and_duplicates(tmp_path):
    (tmp_path / "w.csv").write_text("P1,P2\nA,C\nB,\nA,\n")
    assert read_gene_sets(tmp_path / "w.csv") == {"P1": ["A", "B"], "P2": ["C"]}
    (tmp_path / "d.csv").write_text("P1,P1\nA,B\n")
    with pytest.raises(DataError, match="appear twice"):
        read_gene_sets(tmp_path / "d.csv")


def test_read_expression_real_hnsc(shared_data):
    expr = read_expression(shared_data / "cohorts" / "tcga_hnsc_all_clean.csv")
    assert expr.shape == (416, 1557)
    assert expr.index.name == "case_id" and expr.dtypes.unique().tolist() == [np.float32]
    assert "AAK1" in expr.columns and not any(c.endswith("_rnaseq") for c in expr.columns)
    cnv = read_expression(shared_data / "cohorts" / "tcga_hnsc_all_clean.csv", suffix="_cnv")
    assert cnv.shape == (416, 477)


def test_read_expression_formats_and_errors(tmp_path):
    df = pd.DataFrame({"case_id": ["a", "b", "b"], "G1": [1.0, 2.0, 2.0], "G2": [3.0, 4.0, 4.0]})
    df.to_csv(tmp_path / "e.tsv", sep="\t", index=False)
    expr = read_expression(tmp_path / "e.tsv")
    assert expr.index.tolist() == ["a", "b"] and expr.columns.tolist() == ["G1", "G2"]
    # SurvPath rna_clean.csv style: unnamed first column holds the case ids
    rna_clean = df.drop_duplicates("case_id").set_index("case_id").rename_axis(None)
    rna_clean.to_csv(tmp_path / "rna_clean.csv")
    assert read_expression(tmp_path / "rna_clean.csv").index.tolist() == ["a", "b"]
    rna_clean.rename_axis("case_id").reset_index().to_parquet(tmp_path / "e.parquet")
    parquet = read_expression(tmp_path / "e.parquet")
    assert parquet.index.tolist() == ["a", "b"]
    np.testing.assert_array_equal(parquet.to_numpy(), expr.to_numpy())
    df.loc[2, "G1"] = 9.0
    with pytest.raises(DataError, match="case.*b.*different values"):
        read_expression(df)
    df.loc[2, "G1"] = np.nan
    with pytest.raises(DataError, match="missing values in gene column.*G1"):
        read_expression(df)
    with pytest.raises(DataError, match="no gene columns"):
        read_expression(pd.DataFrame({"case_id": ["a"], "G1": [1.0]}), suffix="_rnaseq")


def test_pathway_tokens_hand_example():
    genes = ["G0", "G1", "G2", "G3", "G4"]
    sets = {"P1": ["G3", "G1", "X"], "P2": ["G4"], "P3": ["Y", "Z", "G0", "W"], "P4": ["Q"]}
    tok = pathway_tokens(sets, genes, min_coverage=0.5)
    assert tok.names == ["P1", "P2"] and tok.indices == [[1, 3], [4]]
    assert tok.dropped == {"P3": 0.25, "P4": 0.0}
    assert tok.unmatched_genes == ["Q", "W", "X", "Y", "Z"]
    assert tok.unused_genes == ["G0", "G2"]
    assert "2 of 4 pathways kept" in tok.report()
    tok = pathway_tokens(sets, genes, min_genes=2)
    assert tok.names == ["P1"]
    with pytest.raises(DataError, match="no pathway"):
        pathway_tokens({"P": ["A_rnaseq"]}, ["A"])


def test_pathway_tokens_real_combine_on_hnsc(shared_data):
    expr = read_expression(shared_data / "cohorts" / "tcga_hnsc_all_clean.csv")
    sets = read_gene_sets(shared_data / "pathways" / "combine_signatures.csv")
    tok = pathway_tokens(sets, expr.columns)
    # SurvPath: a pathway's inputs are sorted(set(genes) & set(table columns))
    expected = {n: sorted(set(g) & set(expr.columns)) for n, g in sets.items()}
    kept = {n: g for n, g in expected.items() if g}
    assert tok.names == list(kept)
    for name, ix in zip(tok.names, tok.indices):
        assert sorted(expr.columns[ix]) == kept[name]
    assert len(tok) + len(tok.dropped) == 331


def test_select_hvg_hand_example():
    train = pd.DataFrame({"a": [0.0, 0, 0, 1], "b": [0.0, 10, 0, 10],
                         "c": [0.0, 1, 2, 3], "d": [5.0, 5, 5, 5]})
    assert select_hvg(train, fraction=0.5) == ["b", "c"]
    assert select_hvg(train, fraction=0.01) == ["b"]
    with pytest.raises(DataError, match="fraction"):
        select_hvg(train, fraction=0)


def test_split_tumor_tme_user_lists_and_defaults(shared_data):
    genes = ["A", "B", "C", "D"]
    assert split_tumor_tme(genes, ["A", "C", "Z"], ["B", "C"]) == ([0], [1])
    assert split_tumor_tme(genes, ["A", "C"], ["B", "C"], exclusive=False) == ([0, 2], [1, 2])
    with pytest.raises(DataError, match="0 tumour"):
        split_tumor_tme(genes, ["Z"], ["A"])
    hallmarks = read_gene_sets(shared_data / "pathways" / "hallmarks_signatures.csv")
    tumor, tme = split_tumor_tme(["MKI67", "E2F1", "CD8A", "GZMB", "ACTB"], gene_sets=hallmarks)
    assert tumor == [0, 1] and tme == [2, 3]
    with pytest.raises(DataError, match="Hallmark"):
        split_tumor_tme(genes, gene_sets={"P": ["A"]})


def test_standardizer_hand_values_and_constant_gene():
    train = pd.DataFrame({"g": [1.0, 3.0], "c": [2.0, 2.0]}, index=["a", "b"])
    z = Standardizer().fit(train).transform(pd.DataFrame({"g": [5.0], "c": [4.0]}, index=["x"]))
    assert z.loc["x", "g"] == pytest.approx(3.0) and z.loc["x", "c"] == pytest.approx(2.0)
    z = Standardizer(log1p=True).fit(train).transform(train)
    np.testing.assert_allclose(z["g"], [-1, 1], atol=1e-6)
    with pytest.raises(DataError, match="lacks fitted gene"):
        Standardizer().fit(train).transform(train[["g"]])


def test_standardizer_uses_training_statistics_only():
    rng = np.random.default_rng(0)
    expr = pd.DataFrame(rng.normal(size=(30, 4)), columns=list("abcd"))
    train, test = expr.iloc[:20], expr.iloc[20:].copy()
    test.loc[:, "a"] += 1000.0  # a leak would shift the training z-scores
    fitted = Standardizer().fit(train)
    np.testing.assert_allclose(fitted.mean_, train.mean().to_numpy())
    leaky = Standardizer().fit(pd.concat([train, test]))
    assert abs(leaky.transform(train)["a"].mean()) > 0.5
    np.testing.assert_allclose(fitted.transform(train).mean().to_numpy(), 0, atol=1e-6)
    assert fitted.transform(test)["a"].min() > 100
