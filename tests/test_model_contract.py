"""The contract every registered model keeps, checked over every method, task and stage.

For each stage of each method in :mod:`histokd_core.methods.registry` (baselines included), built
as the cross-validation runner builds it (teacher first, then the students that need it):

- training: ``loss`` on a mini-batch is a finite 0-d tensor that reaches the trainable parameters;
- inference without omics: a slide-only model predicts and explains a bag whose ``omics`` it may
  not even read; a model that needs omics refuses a bag without them with a clear DataError;
- shapes: a risk (0-d) or hazard logits ``(n_bins,)`` for survival, class logits ``(C,)`` for
  classification, attention ``(n,)`` summing to 1, every per-patch map aligned with the bag;
- checkpoints: the saved weights leave out frozen teachers, and the model rebuilt from the
  checkpoint alone (through the registry, with no teacher) predicts exactly the same.

Method-specific behaviour (losses against hand-computed values, learning a planted signal) stays
in each method's own test module.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from histokd_core.bag import Bag, DataInfo
from histokd_core.errors import DataError
from histokd_core.methods import registry
from histokd_core.train.checkpoint import frozen_prefixes, load_model, model_state, save_checkpoint

FEAT, GENES, SIDE, PATCH = 16, 40, 6, 256

#: Small settings per method so that every stage builds and runs in well under a second.
SMALL = {
    "amkd": {"dim": 32, "heads": 2, "dim_head": 16, "pathway_hidden": 16, "dropout": 0.1,
             "max_train_patches": None},
    "momkd": {"n_components": 2, "wsi_dim": 32, "shared_dim": 16, "omics_dim": 32, "cls_hidden": 16,
              "init_samples": 200, "kmeans_iters": 3},
    "subspace": {"dim": 16, "heads": 2, "dim_head": 8, "n_points": 4, "offset_kernel": 3,
                 "offset_stride": 1, "warmup_epochs": 0, "linear_students": True},
    "baselines": {},
}

CASES = [(method, task) for method in registry.available_methods()
         for task in registry.method_tasks(method)]


def data_info(task: str) -> DataInfo:
    return DataInfo(
        task=task, feat_dim=FEAT, n_genes=GENES, gene_names=[f"G{i}" for i in range(GENES)],
        pathways=[list(range(5 * i, 5 * i + 5)) for i in range(8)],
        pathway_names=[f"P{i}" for i in range(8)],
        tumor_genes=list(range(20)), tme_genes=list(range(20, GENES)),
        n_classes=2 if task == "classification" else 4,
        bin_edges=[0.0, 5.0, 10.0, 20.0, 60.0] if task == "survival" else [], has_10x=True,
        encoder_id="contract-test",
    )


def make_bags(n: int, seed: int = 0) -> list[Bag]:
    """Bags on a ``SIDE x SIDE`` patch lattice with 10x features on the half-resolution lattice,
    omics, survival times (events and censoring), labels of both classes and time bins."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.stack(torch.meshgrid(torch.arange(SIDE), torch.arange(SIDE), indexing="xy"), -1)
    coords = xy.reshape(-1, 2) * PATCH + 1000
    xy10 = torch.unique(xy.reshape(-1, 2) // 2, dim=0)
    bags = []
    for i in range(n):
        label = i % 2
        feats = torch.randn(len(coords), FEAT, generator=g)
        feats[:, 0] += label
        time = float(torch.rand(1, generator=g)) * 50 + 1
        bags.append(Bag(
            f"case{i}", feats, coords.clone(), slide_index=torch.zeros(len(coords), dtype=torch.int64),
            patch_size=PATCH, feats_10x=torch.randn(len(xy10), FEAT, generator=g),
            coords_10x=xy10 * 2 * PATCH + 1000, slide_index_10x=torch.zeros(len(xy10), dtype=torch.int64),
            omics=torch.randn(GENES, generator=g), time=time, event=int(i % 3 != 2), label=label,
            bin=min(int(time // 15), 3),
        ))
    return bags


class NoOmicsBag(Bag):
    """A bag that fails the test whenever ``omics`` is read."""

    def __getattribute__(self, name):
        if name == "omics":
            raise AssertionError("a slide-only model read bag.omics")
        return super().__getattribute__(name)


def no_omics(bag: Bag) -> NoOmicsBag:
    fields = {k: v for k, v in bag.__dict__.items() if k != "omics"}
    return NoOmicsBag(**fields)


def build_stages(method: str, task: str) -> tuple[list[tuple], dict[str, list[str]]]:
    """Build every stage in order like ``run_cv`` (prepared on the training bags, one loss and
    backward pass in training mode, then frozen and handed to later stages). Returns
    ``[(stage, frozen model)]`` and, per stage, the problems its loss showed (empty when none)."""
    info, bags = data_info(task), make_bags(8)
    trained, out, problems = {}, [], {}
    for stage in registry.method_stages(method, SMALL[method]):
        torch.manual_seed(0)
        model = stage.build(info, dict(trained))
        model.prepare(bags, seed=0)
        model.train()
        for prefix in frozen_prefixes(model):  # as the trainer does: a frozen teacher stays in eval
            model.get_submodule(prefix[:-1]).eval()
        model.set_epoch(0)
        loss = model.loss(bags[:4])["loss"]
        problems[stage.name] = []
        if loss.dim() != 0 or not torch.isfinite(loss):
            problems[stage.name].append(f"loss {loss}")
        elif loss.requires_grad:
            loss.backward()
            grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
            if not grads or not all(torch.isfinite(g).all() for g in grads):
                problems[stage.name].append("no finite gradient reaches the parameters")
        model.zero_grad(set_to_none=True)
        model.eval().requires_grad_(False)
        out.append((stage, model))
        trained[stage.name] = model
    return out, problems


@pytest.fixture(scope="module", params=CASES, ids=[f"{m}-{t}" for m, t in CASES])
def built(request):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: competing threads only slow them down
    method, task = request.param
    stages, problems = build_stages(method, task)
    yield method, task, stages, problems
    torch.set_num_threads(threads)


def test_every_registered_method_has_small_settings():
    assert set(SMALL) == set(registry.available_methods())


def test_loss_is_finite_and_reaches_the_parameters(built):
    method, task, stages, problems = built
    assert {name: p for name, p in problems.items() if p} == {}, f"{method} {task}"


def check_prediction(pred, task: str, n: int, info: DataInfo, where: str) -> None:
    if task == "survival":
        if pred.risk is not None:
            assert pred.risk.dim() == 0 and torch.isfinite(pred.risk), where
        else:
            assert pred.logits.shape == (info.n_classes,), where
        assert math.isfinite(pred.survival_risk()), where
    else:
        assert pred.logits.shape == (info.n_classes,), where
        probs = pred.class_probabilities()
        assert probs.shape == (info.n_classes,) and probs.sum() == pytest.approx(1.0, abs=1e-5)
    if pred.attention is not None:
        assert pred.attention.shape == (n,), where
        assert float(pred.attention.sum()) == pytest.approx(1.0, abs=1e-4), where


def check_explanation(expl, bag: Bag, task: str, where: str) -> None:
    n = bag.feats.shape[0]
    np.testing.assert_array_equal(expl.coords, bag.coords.numpy(), err_msg=where)
    assert expl.patch_size == bag.patch_size, where
    if expl.attention is not None:
        assert expl.attention.shape == (n,) and np.isfinite(expl.attention).all(), where
    for name, values in expl.pathway_maps.items():
        assert np.asarray(values).shape == (n,), (where, name)
    assert set(expl.pathway_maps) <= set(expl.pathway_scores), where
    for name, ids in expl.clusters.items():
        assert np.asarray(ids).shape == (n,) and np.issubdtype(np.asarray(ids).dtype, np.integer), (where, name)
    if expl.memory is not None:
        assert expl.memory.shape == (len(expl.memory_names), n), where
    for name, idx in expl.top_patches.items():
        idx = np.asarray(idx)
        assert idx.size and idx.min() >= 0 and idx.max() < n, (where, name)
    if task == "classification":
        assert expl.probability is None or 0.0 <= expl.probability <= 1.0, where


def test_slide_only_models_predict_and_explain_without_reading_omics(built):
    method, task, stages, _ = built
    info = data_info(task)
    source = make_bags(1, seed=2)[0]
    bag = no_omics(source)
    slide_only = [(s, m) for s, m in stages if not m.needs_omics]
    assert slide_only, f"{method} has no slide-only stage"
    for stage, model in slide_only:
        where = f"{method} {task} {stage.name}"
        with torch.no_grad():
            pred = model.predict(bag)
            check_prediction(pred, task, bag.feats.shape[0], info, where)
            check_explanation(model.explain(bag), bag, task, where)
            # omics cannot sway the prediction either (a copy of the bag may hide a read)
            for omics in (source.omics, torch.full((GENES,), float("nan"))):
                other = model.predict(Bag(**{**source.__dict__, "omics": omics}))
                for field in ("risk", "logits", "attention", "contribution"):
                    if getattr(pred, field) is not None:
                        torch.testing.assert_close(getattr(other, field), getattr(pred, field),
                                                   msg=f"{where} {field}")


def test_models_that_need_omics_refuse_a_bag_without_them(built):
    method, task, stages, _ = built
    info = data_info(task)
    with_omics = make_bags(1, seed=3)[0]
    without = Bag(**{**with_omics.__dict__, "omics": None})
    for stage, model in stages:
        if not model.needs_omics:
            continue
        where = f"{method} {task} {stage.name}"
        with torch.no_grad():
            check_prediction(model.predict(with_omics), task, with_omics.feats.shape[0], info, where)
            with pytest.raises(DataError, match="omics"):
                model.predict(without)


def test_checkpoint_round_trip_rebuilds_each_stage_alone(built, tmp_path):
    method, task, stages, _ = built
    info = data_info(task)
    bag = make_bags(1, seed=4)[0]
    config = registry.make_config(method, SMALL[method])
    for stage, model in stages:
        where = f"{method} {task} {stage.name}"
        state = model_state(model)
        for required in stage.requires:  # a student's checkpoint does not carry its teacher
            assert not any(k.startswith(f"{required}.") for k in state), where
        path = tmp_path / f"{method}-{task}-{stage.name}.safetensors"
        save_checkpoint(path, state, {"kind": "model", "method": method, "method_config": config,
                                      "stage": stage.name, "data_info": info})
        loaded, meta = load_model(path)
        assert meta["stage"] == stage.name and loaded.needs_omics == model.needs_omics, where
        with torch.no_grad():
            a, b = model.predict(bag), loaded.predict(bag)
        for field in ("risk", "logits", "attention", "contribution"):
            x, y = getattr(a, field), getattr(b, field)
            assert (x is None) == (y is None), (where, field)
            if x is not None:
                torch.testing.assert_close(y, x, msg=f"{where} {field}")
