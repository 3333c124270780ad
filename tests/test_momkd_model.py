"""The MoMKD model: stages, gradient decoupling, WSI-only inference, memory, learning."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from histokd_core.bag import Bag, DataInfo
from histokd_core.errors import ConfigError, DataError, HistoKDError
from histokd_core.methods.baselines.snn import SNN
from histokd_core.methods.momkd import TASKS, Config, MoMKDModel, stages
from histokd_core.methods.registry import get_method
from histokd_core.train.swap import model_swap_diagnostic

FEAT, GENES = 16, 12
SMALL = dict(
    n_components=4, wsi_dim=32, shared_dim=16, omics_dim=32, cls_hidden=16, wsi_dropout=0.1,
    init_samples=2000,
)
INFO = DataInfo(task="classification", feat_dim=FEAT, n_genes=GENES)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny models here are slower with competing threads
    yield
    torch.set_num_threads(threads)


def planted_bags(n_bags: int, seed: int, n: int = 40) -> list[Bag]:
    """Positive slides carry a region of 10 neighbouring patches shifted along feature 0; the first
    4 genes are shifted with the label."""
    gen = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(torch.arange(8), torch.arange(5), indexing="ij"), -1)
    grid = grid.reshape(-1, 2) * 256
    bags = []
    for i in range(n_bags):
        y = i % 2
        feats = torch.randn(n, FEAT, generator=gen)
        if y:
            feats[:10, 0] += 2.0
        omics = torch.randn(GENES, generator=gen)
        omics[:4] += 1.5 * (2 * y - 1)
        bags.append(Bag(f"case{seed}_{i}", feats, grid.clone(), omics=omics, label=y))
    return bags


def train(
    model: MoMKDModel, bags: list[Bag], epochs: int, lr: float = 1e-3, seed: int = 0
) -> list[dict]:
    torch.manual_seed(seed)
    model.prepare(bags, seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    history = []
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(bags)).tolist()
        for start in range(0, len(bags), 4):
            out = model.loss([bags[j] for j in order[start : start + 4]])
            opt.zero_grad()
            out["loss"].backward()
            opt.step()
        history.append(model.epoch_end())
    model.eval()
    return history


def auc(model, bags: list[Bag]) -> float:
    with torch.no_grad():
        probs = [float(torch.softmax(model.predict(b).logits, -1)[1]) for b in bags]
    return roc_auc_score([b.label for b in bags], probs)


def make(mode: str | None = None, **kw) -> MoMKDModel:
    torch.manual_seed(0)
    return MoMKDModel(INFO, Config(**{**SMALL, **kw}), mode)


def test_registry_and_stages():
    module = get_method("momkd")
    assert module.TASKS == TASKS == ("classification",)
    names = [s.name for s in stages(Config())]
    assert names == [
        "student", "student_fixed_memory", "student_gradient_memory", "abmil", "transmil",
        "omics_only",
    ]
    names = [s.name for s in stages(Config(memory_update="gradient", baselines=()))]
    assert names == ["student", "student_fixed_memory", "student_ema_memory"]
    assert [s.name for s in stages(Config(fixed_memory=True, baselines=()))] == ["student"]
    names = [s.name for s in stages(Config(fixed_memory_ablation=False, baselines=("abmil",)))]
    assert names == ["student", "student_gradient_memory", "abmil"]
    by_name = {s.name: s for s in stages(Config(**SMALL))}
    assert by_name["student"].build(INFO, {}).memory_mode == "ema"
    assert by_name["student_fixed_memory"].build(INFO, {}).memory_mode == "fixed"
    assert by_name["student_gradient_memory"].build(INFO, {}).memory_mode == "gradient"
    assert isinstance(by_name["omics_only"].build(INFO, {}), SNN)
    assert by_name["abmil"].build(INFO, {}).predict(planted_bags(1, 0)[0]).logits.shape == (2,)
    assert by_name["transmil"].build(INFO, {}).predict(planted_bags(1, 0)[0]).logits.shape == (2,)


def test_config_and_data_errors_are_clear():
    with pytest.raises(ConfigError, match="memory_update"):
        Config(memory_update="momentum")
    with pytest.raises(ConfigError, match="baselines"):
        Config(baselines=("clam",))
    with pytest.raises(ConfigError, match="ema_sources"):
        Config(ema_sources=("rna",))
    with pytest.raises(ConfigError, match="ema_sources"):
        Config(ema_sources=())
    with pytest.raises(DataError, match="omics"):
        MoMKDModel(dataclasses.replace(INFO, n_genes=0), Config())
    with pytest.raises(DataError, match="binary"):
        MoMKDModel(dataclasses.replace(INFO, n_classes=3), Config())
    model = make()
    bag = planted_bags(1, 0)[0]
    with pytest.raises(DataError, match="label"):
        model.loss([dataclasses.replace(bag, label=-1)])
    with pytest.raises(DataError, match="no omics"):
        model.loss([dataclasses.replace(bag, omics=None)])
    with pytest.raises(DataError, match="expected 12"):
        model.loss([dataclasses.replace(bag, omics=torch.zeros(5))])


def _grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        n: p.grad
        for n, p in module.named_parameters()
        if p.grad is not None and p.grad.abs().sum() > 0
    }


@pytest.mark.parametrize("mode", ["gradient", "ema"])
def test_gradient_decoupling(mode):
    model = make(mode)
    bags = planted_bags(4, 0)
    model.prepare(bags)
    model.train()
    terms = model.loss(bags)
    assert set(terms) >= {"loss", "ce", "align_wsi", "align_omics", "mse", "mem"}

    def grads_of(term: str) -> tuple[dict, dict, dict]:
        model.zero_grad(set_to_none=True)
        model.terms(bags)[term].backward()
        mem = model.memory.components.grad if mode == "gradient" else None
        mem_grads = {} if mem is None or mem.abs().sum() == 0 else {"memory": mem}
        return _grads(model.wsi), _grads(model.omics), mem_grads

    # the classifier's loss reaches the WSI branch but never the memory or the omics branch
    wsi, omics, mem = grads_of("ce")
    assert "classifier.4.weight" in wsi and "encoder.gat1.lin_l.weight" in wsi
    assert omics == {} and mem == {}
    # omics terms never reach the WSI branch (and vice versa)
    for term in ("align_omics", "mse"):
        wsi, omics, _ = grads_of(term)
        assert wsi == {} and omics
    for term in ("align_wsi", "mem"):
        wsi, omics, _ = grads_of(term)
        assert omics == {} and wsi
    # the memory learns by gradient only in the public-code mode (alignment and memory losses)
    _, _, mem = grads_of("align_omics")
    assert bool(mem) == (mode == "gradient")


def test_memory_guided_attention_and_memory_maps():
    """Omics-free inference, shapes and the checkpoint round trip are checked for every model in
    tests/test_model_contract.py; here: MoMKD's attention formula and memory explanations."""
    model = make().eval()
    bag = planted_bags(2, 0)[1]
    no_omics = dataclasses.replace(bag, omics=None)
    with torch.no_grad():
        pred = model.predict(no_omics)
    # memory-guided attention: softmax of (max cos to C+ - max cos to C-) / tau
    with torch.no_grad():
        _, z = model.wsi.encode(bag)
        mem = model.memory.normalized()
        score = (z @ mem[1].T).max(1).values - (z @ mem[0].T).max(1).values
        torch.testing.assert_close(pred.attention, torch.softmax(score / 0.2, 0))
    assert pred.attention.sum().item() == pytest.approx(1.0, abs=1e-5)
    exp = model.explain(no_omics)
    k = model.memory.n_components
    assert exp.memory.shape == (2 * k, 40)
    assert exp.memory_names[:2] == ["C+0", "C+1"] and exp.memory_names[k] == "C-0"
    assert all(len(exp.top_patches[name]) == 3 for name in exp.memory_names)
    row = exp.memory[k + 1]
    assert set(exp.top_patches["C-1"].tolist()) == set(np.argsort(-row)[:3].tolist())
    assert 0.0 <= exp.probability <= 1.0 and exp.risk_group in ("positive", "negative")
    assert np.all(np.abs(exp.memory) <= 1.0 + 1e-5)  # cosine activations


def test_attention_temperature_is_learnable_and_clamped():
    model = make()
    assert model.wsi.tau.item() == pytest.approx(0.2)
    with torch.no_grad():
        model.wsi.log_tau.fill_(10.0)
    assert model.wsi.tau.item() == pytest.approx(2.0)
    with torch.no_grad():
        model.wsi.log_tau.fill_(-10.0)
    assert model.wsi.tau.item() == pytest.approx(0.01)
    fixed = make(learnable_tau=False)
    assert "wsi.log_tau" not in dict(fixed.named_parameters())


def test_memory_updates_per_mode_and_only_in_training():
    bags = planted_bags(4, 0)
    for mode, should_move in (("ema", True), ("fixed", False)):
        model = make(mode)
        model.prepare(bags)
        before = model.memory.components.clone()
        model.eval()
        with torch.no_grad():
            model.loss(bags)
        torch.testing.assert_close(model.memory.components, before)
        model.train()
        model.loss(bags)
        moved = not torch.allclose(model.memory.components, before)
        assert moved == should_move


def test_ema_memory_takes_the_omics_projection_when_asked():
    """With ema_sources = ("wsi", "omics") the update depends on the omics; with ("wsi",) not."""
    bags = planted_bags(4, 0)
    moved = {}
    for sources in (("wsi", "omics"), ("wsi",)):
        for shift in (0.0, 3.0):
            torch.manual_seed(0)
            model = MoMKDModel(INFO, Config(**SMALL, ema_sources=sources), "ema")
            model.prepare(bags)
            shifted = [dataclasses.replace(b, omics=b.omics + shift) for b in bags]
            model.eval()  # no dropout: the two runs differ only by the omics
            model.training = True  # ... but apply the training-mode memory update
            model.terms(shifted)
            moved[sources, shift] = model.memory.components.clone()
    assert not torch.allclose(moved[("wsi", "omics"), 0.0], moved[("wsi", "omics"), 3.0])
    torch.testing.assert_close(moved[("wsi",), 0.0], moved[("wsi",), 3.0])


def test_prepare_initialises_memory_from_patch_projections():
    model = make()
    bags = planted_bags(6, 0)
    model.prepare(bags)
    mem = model.memory.normalized()
    _, z = model.wsi.eval().encode(bags[1])
    # every component is close to some projection of its class (k-means centres of the data)
    assert ((z @ mem[1].T).max(dim=0).values > 0.5).all()
    assert model.training  # restored
    with pytest.raises(DataError, match="label 1"):
        make().prepare([b for b in bags if b.label == 0])


@pytest.mark.parametrize("mode", ["ema", "gradient"])
def test_learns_planted_signal_and_memory_stays_active(mode):
    model = make(mode)
    history = train(model, planted_bags(40, 1), epochs=6)
    test_auc = auc(model, planted_bags(30, 2))
    assert test_auc > 0.85, test_auc
    assert history[-1]["memory_active_ratio"] > 0.5, history[-1]
    diag = model.memory_diagnostics(planted_bags(30, 2))
    assert diag["memory_active_ratio"] > 0.5 and diag["memory_perplexity"] > 1.5
    # the attention concentrates on the planted region of positive slides
    bag = planted_bags(2, 5)[1]
    with torch.no_grad():
        attention = model.predict(bag).attention
    assert attention[:10].sum() > 10 / 40


def test_distillation_targets_shapes_and_no_side_effects():
    bags = planted_bags(4, 0)
    model = make("ema")
    model.prepare(bags)
    model.eval()
    before = model.memory.components.clone()
    targets = model.distillation_targets(bags[1])
    k, d = SMALL["n_components"], SMALL["shared_dim"]
    assert targets["memory_update"].shape == (2, k, d)
    assert targets["omics_alignment"].shape == targets["slide_alignment"].shape == (2 * k,)
    assert targets["patch_memory_scores"].shape == (bags[1].feats.shape[0],)
    torch.testing.assert_close(model.memory.components, before)
    again = model.distillation_targets(bags[1])
    for name, value in targets.items():
        torch.testing.assert_close(again[name], value)
    # only the case's own class (label 1 = C+, row 1) moves in the EMA update
    assert targets["memory_update"][0].abs().max() == 0
    with pytest.raises(DataError, match="no omics"):
        model.distillation_targets(dataclasses.replace(bags[1], omics=None))


def test_ema_memory_update_target_by_hand():
    """With the omics as the only EMA source, the update moves the component nearest to the omics
    projection to normalize(m c + (1 - m) z), nothing else."""
    bags = planted_bags(4, 0)
    torch.manual_seed(0)
    model = MoMKDModel(INFO, Config(**SMALL, ema_sources=("omics",), ema_momentum=0.9), "ema")
    model.prepare(bags)
    model.eval()
    bag = bags[2]  # label 0: memory C- (row 0)
    with torch.no_grad():
        z = model.omics(bag.omics[None])["z"][0]
    mem = torch.nn.functional.normalize(model.memory.components[0], dim=-1)
    k = int((mem @ z).argmax())
    expected = torch.zeros_like(model.memory.components)
    expected[0, k] = torch.nn.functional.normalize(0.9 * mem[k] + 0.1 * z, dim=-1) - mem[k]
    torch.testing.assert_close(model.distillation_targets(bag)["memory_update"], expected)
    torch.testing.assert_close(model.distillation_targets(bag)["omics_alignment"][4:], mem @ z)


def test_gradient_memory_update_is_minus_the_training_gradient_on_the_memory():
    """Computed independently: backward of the full training loss (eval mode, no dropout); the
    classifier and reconstruction terms never reach the memory, so the gradients agree."""
    bags = planted_bags(4, 0)
    model = make("gradient")
    model.prepare(bags)
    model.eval()
    bag = bags[1]
    target = model.distillation_targets(bag)["memory_update"]
    model.zero_grad()
    model.loss([bag])["loss"].backward()
    torch.testing.assert_close(target, -model.memory.components.grad)
    assert target.abs().max() > 0
    fixed = make("fixed")
    fixed.prepare(bags)
    assert fixed.eval().distillation_targets(bag)["memory_update"].abs().max() == 0


def test_distillation_targets_follow_the_right_modality():
    bags = planted_bags(4, 0)
    model = make("gradient")
    model.prepare(bags)
    model.eval()
    a, b = bags[0], bags[2]
    base = model.distillation_targets(a)
    other_omics = model.distillation_targets(dataclasses.replace(a, omics=b.omics))
    other_slide = model.distillation_targets(dataclasses.replace(a, feats=b.feats))
    torch.testing.assert_close(other_omics["slide_alignment"], base["slide_alignment"])
    torch.testing.assert_close(other_omics["patch_memory_scores"], base["patch_memory_scores"])
    assert not torch.allclose(other_omics["omics_alignment"], base["omics_alignment"])
    torch.testing.assert_close(other_slide["omics_alignment"], base["omics_alignment"])
    assert not torch.allclose(other_slide["slide_alignment"], base["slide_alignment"])
    # the memory update takes both
    assert not torch.allclose(other_omics["memory_update"], base["memory_update"])
    assert not torch.allclose(other_slide["memory_update"], base["memory_update"])


def test_swap_diagnostic_by_definition():
    """Additive targets ``a(slide) + b(omics)`` over all ordered pairs: the expression share is
    ``sum |b_j - b_i|^2 / (sum |a_j - a_i|^2 + sum |b_j - b_i|^2)``, computed here by hand."""
    bags = planted_bags(6, 1)

    class Additive:
        def eval(self):
            return self

        def distillation_targets(self, bag):
            return {"omics": bag.omics[:3].clone(), "slide": bag.feats[:, 0].clone(),
                    "sum": 2.0 * bag.omics[:2] + bag.feats.mean(0)[:2]}

    shares = model_swap_diagnostic(Additive(), bags, n_shifts=5)  # every ordered pair once
    assert shares["omics"].expression == 1.0 and shares["slide"].expression == 0.0
    a = torch.stack([b.feats.mean(0)[:2] for b in bags]).double()
    o = torch.stack([2.0 * b.omics[:2] for b in bags]).double()
    e = sum(float(((o[j] - o[i]) ** 2).sum()) for i in range(6) for j in range(6) if i != j)
    s = sum(float(((a[j] - a[i]) ** 2).sum()) for i in range(6) for j in range(6) if i != j)
    assert shares["sum"].expression == pytest.approx(e / (e + s), rel=1e-6)
    f = a + o
    t = sum(float(((f[j] - f[i]) ** 2).sum()) for i in range(6) for j in range(6) if i != j)
    assert shares["sum"].expression_vs_total == pytest.approx(e / t, rel=1e-6)
    assert shares["sum"].slide_vs_total == pytest.approx(s / t, rel=1e-6)
    assert shares["sum"].n_pairs == 30


def test_swap_diagnostic_of_momkd_targets():
    """On a MoMKD model the alignments follow their own modality only; a fixed memory never
    moves (no share); the EMA memory's update takes both, also with the label held fixed."""
    bags = planted_bags(6, 2)
    fixed = make("fixed")
    fixed.prepare(bags)
    shares = model_swap_diagnostic(fixed, bags, n_shifts=2)
    assert shares["omics_alignment"].expression == 1.0
    assert shares["slide_alignment"].expression == 0.0
    assert shares["patch_memory_scores"].expression == 0.0
    assert np.isnan(shares["memory_update"].expression)
    ema = make("ema")
    ema.prepare(bags)
    within = model_swap_diagnostic(ema, bags, n_shifts=2, within_class=True)
    assert 0.0 < within["memory_update"].expression < 1.0
    assert within["memory_update"].n_pairs == 12  # 3 cases per class, 2 partners each
    with pytest.raises(HistoKDError, match="at least 2"):
        model_swap_diagnostic(ema, bags[:3], within_class=True)  # one case of class 1
