"""The CUDA path for real: encoder, extraction and every registered model on a GPU.

Skipped on machines without CUDA (the development machine and CI have none); on a GPU machine
each model's prediction on CUDA must match the same weights on the CPU, and the encoder's
autocast features must match its float32 CPU features.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch

from histokd_core.bag import Bag, DataInfo
from histokd_core.methods import registry

#: the GPU under test (``HISTOKD_TEST_DEVICE=cpu`` runs the same checks on the CPU, to test the tests)
DEVICE = os.environ.get("HISTOKD_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(
    DEVICE == "cuda" and not torch.cuda.is_available(), reason="no CUDA device"
)


def _info(task: str) -> DataInfo:
    g = torch.Generator().manual_seed(0)
    n_genes = 120
    pathways = [torch.randperm(n_genes, generator=g)[:12].tolist() for _ in range(10)]
    return DataInfo(
        task, feat_dim=64, n_genes=n_genes, gene_names=[f"g{i}" for i in range(n_genes)],
        pathways=pathways, pathway_names=[f"p{i}" for i in range(10)],
        tumor_genes=list(range(40)), tme_genes=list(range(40, n_genes)), n_classes=4 if task == "survival" else 2,
        bin_edges=[0.0, 10.0, 20.0, 30.0, 100.0] if task == "survival" else [], has_10x=True,
    )


def _bag(n: int = 300) -> Bag:
    g = torch.Generator().manual_seed(1)
    side = int(np.ceil(np.sqrt(n)))
    coords = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="xy"), -1).reshape(-1, 2)[:n] * 256
    c10 = torch.unique(coords // 512, dim=0) * 512
    return Bag("cuda", torch.randn(n, 64, generator=g), coords, feats_10x=torch.randn(len(c10), 64, generator=g),
               coords_10x=c10, omics=torch.randn(120, generator=g), label=1, bin=1, event=1, time=12.0)


def _value(pred) -> torch.Tensor:
    """Risk or logits, and the attention when the model has one, as one CPU vector."""
    parts = [t for t in (pred.risk, pred.logits, pred.attention) if t is not None]
    return torch.cat([t.detach().float().cpu().reshape(-1) for t in parts])


@pytest.mark.parametrize("method", registry.available_methods())
def test_every_model_predicts_the_same_on_cuda_as_on_cpu(method):
    module = registry.get_method(method)
    for task in module.TASKS:
        info = _info(task)
        trained: dict = {}
        for stage in module.stages(module.Config()):
            torch.manual_seed(0)
            model = stage.build(info, trained).eval()
            trained[stage.name] = model
            bag = _bag()
            if hasattr(model, "prepare"):  # MoMKD's memory needs cases of both classes
                model.prepare([bag, dataclasses.replace(bag, label=0, event=0)], seed=0)
            with torch.no_grad():
                cpu = _value(model.predict(bag))
                gpu = _value(model.to(DEVICE).predict(bag.to(DEVICE)))
            torch.testing.assert_close(gpu, cpu, atol=1e-3, rtol=1e-3, msg=f"{method}/{task}/{stage.name}")
            model.to("cpu")


def test_encoder_on_cuda_uses_torch_autocast_and_a_batch_from_free_memory():
    from histokd_core.features import get_encoder
    from histokd_core.features.base import TorchPatchEncoder

    gpu = get_encoder("efficientnet-lite0", device=DEVICE)
    cpu = get_encoder("efficientnet-lite0", device="cpu", backend="torch")
    if DEVICE == "cuda":
        assert isinstance(gpu, TorchPatchEncoder) and gpu.device.startswith("cuda") and gpu.autocast
        assert gpu.batch_size >= 8 and gpu.batch_size % 8 == 0
    patches = np.random.default_rng(0).integers(0, 256, (6, 256, 256, 3), dtype=np.uint8)
    a, b = gpu.encode(patches), cpu.encode(patches)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.999  # float16 autocast against float32


def test_extraction_on_cuda_writes_the_cpu_features(tmp_path):
    from histokd_core.features import extract_slide, get_encoder, open_features
    from histokd_core.synthetic import write_synthetic_slide

    slide = write_synthetic_slide(tmp_path / "s.tif", size_hw=(1024, 1024), mpp=0.5, seed=0).path
    for name, device in (("gpu", DEVICE), ("cpu", "cpu")):
        enc = get_encoder("efficientnet-lite0", device=device, backend="torch")
        extract_slide(slide, tmp_path / name, enc, magnifications=("20x",), min_tissue=0.0, num_workers=0)
    a = open_features(tmp_path / "gpu", "s").feats("20x")
    b = open_features(tmp_path / "cpu", "s").feats("20x")
    assert a.shape == b.shape and a.shape[0] > 0
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.999
