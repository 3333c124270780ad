"""Linear AMKD student: the mean patch feature, standardised, times a weight vector.

Not in the paper. A :class:`~histokd_core.methods.linear.MeanPoolLinear` with one output, the
risk: ``risk = w . (mean_n(x_n) - mu) / sd + b`` with ``feats (n, F)`` and ``mu, sd`` ``(F,)`` the
mean and SD of the training cases' mean patch features (fitted in ``prepare``, kept as buffers in
the checkpoint). Distilled (``distill=True``): the Cox loss plus ``Config.kd_weight`` x
:func:`~histokd_core.methods.amkd.losses.risk_regression_loss` of its risks on the frozen AMKD
teacher's (the same patches; with cross-fitted targets the inner teacher that did not train on
the case); its ablation trains on the Cox loss only. Both add the ridge penalty
``Config.linear_l2 * ||w||^2`` (standardised features, so one scale for every weight). Why it
exists: on the redesigned synthetic cohort the paper's student does not gain from its teacher
while a linear student does (docs/benchmarks.md, "Distillation"). Mean pooling weighs every patch
alike, so :meth:`LinearStudent.predict` reports a uniform attention ``1/n``; where the outcome is
decided shows in its per-patch risk contribution ``c_n = w . (x_n - mu) / sd / n`` ``(n,)``
(log-hazard, the risk's unit; ``sum_n c_n = risk - b``), which ``predict`` reports as
``Prediction.contribution``. ``predict`` never reads ``bag.omics``.

Pathway head (distilled stage only, ``Config.linear_pathway_weight > 0`` and pathways in the
data; the ablation never reads expression, so it has none): ``V (P, F)`` on the same
standardised mean feature ``z = (mean_n(x_n) - mu) / sd`` predicts each pathway's activity
``a_p`` = the mean of the case's (training-fold normalised) expression over the pathway's genes,
standardised over the training cases (``pathway_mu, pathway_sd`` ``(P,)``, buffers). ``V``
minimises ``lambda * sum_p mean_i (v_p . z_i - a_ip)^2 + linear_l2 * ||V||^2`` (``lambda`` =
``linear_pathway_weight``; the ridge of ``w``), solved exactly in :meth:`LinearStudent.prepare`
on the training cases, ``v_p = (Z^T Z + (linear_l2 N / lambda) I)^+ Z^T a_p`` (``Z (N, F)``); no
bias, since ``z`` and ``a`` are both centred over those cases. It is a separate linear map on the
same input, fitted before and apart from the risk's training, so ``w`` trains exactly as without
it. :meth:`LinearStudent.explain` gives, from the slide alone, ``pathway_maps[p]`` = each patch's
contribution ``v_p . z_n / n`` to the predicted activity (SD of the pathway's training-case
activity; summing to the prediction) and ``pathway_scores[p]`` = ``w^T C v_p`` with ``C = Z^T Z /
N`` (kept as ``pathway_cov = C V^T`` ``(F, P)``): the covariance over the training cases between
the student's risk and the pathway's predicted activity, log-hazard x SD (without the ridge,
exactly the slope of the risk on the pathway's true standardised activity over the training cases,
log-hazard per SD, as ``Z v_p`` is then ``a_p``'s projection on the features the risk reads).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from histokd_core.bag import Bag, DataInfo
from histokd_core.errors import DataError, HistoKDError
from histokd_core.methods.amkd.losses import risk_regression_loss
from histokd_core.methods.amkd.shared import batch_cox, pathway_names, ranked_pathways, subsample
from histokd_core.methods.base import Explanation, Prediction
from histokd_core.methods.crossfit import case_teacher
from histokd_core.methods.linear import MeanPoolLinear

#: what :meth:`LinearStudent.predict`'s contribution map adds up to, and its unit
#: (``Prediction.contribution_unit``).
CONTRIBUTION_UNIT = "risk contribution (log-hazard)"
#: what each of :meth:`LinearStudent.explain`'s pathway maps adds up to, and its unit
#: (``Explanation.pathway_unit``): the pathway's predicted activity, in SD over the training cases.
PATHWAY_UNIT = "pathway activity contribution (SD)"
#: what :meth:`LinearStudent.pathway_scores` measures (``Explanation.pathway_score_unit``).
PATHWAY_SCORE_UNIT = ("covariance over the training cases of the predicted risk (log-hazard) "
                      "with the pathway's activity predicted from the slide (SD): + higher "
                      "predicted activity goes with a higher risk, - with a lower one")
#: the pathway head's buffers (None without a head; a checkpoint written before the head lacks them)
_HEAD = ("pathway_weight", "pathway_mu", "pathway_sd", "pathway_cov")


class LinearStudent(MeanPoolLinear):
    """Slide-only linear student (see the module docstring); ``teacher`` is the frozen AMKD
    teacher (None for inference or the ablation), ``distill`` turns the risk regression on.

    Its own training settings are ``Config.linear_lr``, ``linear_epochs`` and
    ``linear_patience`` (``train_config``); the batch size is the run's, or 16 cases when the run
    leaves it open (what a survival run uses then: the Cox loss needs several cases per batch).
    """

    needs_omics = False
    task = "survival"

    def __init__(self, info: DataInfo, config, teacher=None, distill: bool = True) -> None:
        super().__init__(info.feat_dim, 1, config.linear_l2, config.linear_lr,
                         config.linear_epochs, config.linear_patience)
        self.config = config
        self.distill = distill
        if teacher is not None:
            teacher.requires_grad_(False).eval()
        self.teacher = teacher
        head = (distill and bool(info.pathways) and info.n_genes > 0
                and config.linear_pathway_weight > 0)
        p, f = len(info.pathways), info.feat_dim
        self.pathway_names = pathway_names(info) if head else []
        genes = None
        if head:  # (P, g): row p averages the expression over pathway p's genes
            genes = torch.zeros(p, info.n_genes)
            for i, idx in enumerate(info.pathways):
                idx = torch.as_tensor(idx, dtype=torch.long).unique()
                genes[i, idx] = 1.0 / max(len(idx), 1)
        self.register_buffer("gene_means", genes, persistent=False)
        for name, shape in zip(_HEAD, ((p, f), (p,), (p,), (f, p))):
            self.register_buffer(name, torch.zeros(shape) if head else None)
        if head:
            self.pathway_sd.fill_(1.0)

    def match_state(self, keys: set[str]) -> None:
        """A checkpoint written before the pathway head (no ``pathway_weight``) loads without it:
        the model then predicts as before and gives no pathway maps."""
        if self.pathway_weight is not None and "pathway_weight" not in keys:
            for name in (*_HEAD, "gene_means"):
                self.register_buffer(name, None)
            self.pathway_names = []

    def pathway_targets(self, bags: Sequence[Bag]) -> torch.Tensor:
        """``(N, P)`` each case's pathway activities standardised with ``pathway_mu, pathway_sd``
        (the training cases' after :meth:`prepare`); reads ``bag.omics`` (training only)."""
        return self._standardised_activities(self._raw_activities(bags))

    def _standardised_activities(self, raw: torch.Tensor) -> torch.Tensor:
        """``(N, P)`` raw activities (:meth:`_raw_activities`) standardised with ``pathway_mu,
        pathway_sd``."""
        return (raw - self.pathway_mu.cpu().double()) / self.pathway_sd.cpu().double()

    def _raw_activities(self, bags: Sequence[Bag]) -> torch.Tensor:
        """``(N, P)`` float64 on the CPU: the mean expression over each pathway's genes."""
        rows = []
        for b in bags:
            if b.omics is None:
                raise DataError(f"case {b.case_id}: the linear student's pathway head trains on "
                                "expression (bag.omics is None)")
            rows.append(self.gene_means.cpu().double() @ b.omics.detach().cpu().double())
        return torch.stack(rows)

    def prepare(self, train_bags: Sequence[Bag], seed: int = 0) -> None:
        """Fit ``mu, sd`` (:class:`MeanPoolLinear`) and, with a pathway head, the activities'
        ``pathway_mu, pathway_sd`` and ``V`` (exact ridge solution, module docstring) on the
        training cases."""
        super().prepare(train_bags, seed)
        if self.pathway_weight is None:
            return
        raw = self._raw_activities(train_bags)
        self.pathway_mu.copy_(raw.mean(0))
        self.pathway_sd.copy_(raw.std(0, unbiased=False).clamp_min(1e-6))
        a = self._standardised_activities(raw)
        with torch.no_grad():
            z = torch.stack([self.standardised_mean(b.feats) for b in train_bags]).cpu().double()
        n, f = z.shape
        gram = z.T @ z
        ridge = self.l2 * n / self.config.linear_pathway_weight
        v = torch.linalg.pinv(gram + ridge * torch.eye(f, dtype=gram.dtype),
                              hermitian=True) @ (z.T @ a)  # (F, P)
        self.pathway_weight.copy_(v.T)
        self.pathway_cov.copy_(gram / n @ v)

    def pathway_contributions(self, feats: torch.Tensor) -> torch.Tensor:
        """``(P, n)`` each patch's contribution ``v_p . (x_n - mu) / sd / n`` to each pathway's
        predicted activity (SD of its training-case activity; row ``p`` sums to ``v_p . z``)."""
        x = self.standardised_patches(feats)
        return (self.pathway_weight @ x.T) / x.shape[0]

    def pathway_scores(self) -> torch.Tensor:
        """``(P,)`` ``w^T C v_p``: covariance over the training cases of the risk (log-hazard)
        with each pathway's predicted activity (SD); > 0: higher predicted activity goes with a
        higher risk (module docstring)."""
        return self.linear.weight[0] @ self.pathway_cov

    def loss(self, bags: Sequence[Bag]) -> dict[str, torch.Tensor]:
        # the AMKD student's patch subsample (``max_train_patches``), shared with the teacher
        feats = []
        for b in bags:
            idx = subsample(b.feats.shape[0], self.config.max_train_patches, b.feats.device)
            feats.append(b.feats if idx is None else b.feats[idx])
        r_s = torch.stack([self.forward_feats(f)[0] for f in feats])
        l_surv = batch_cox(r_s, bags)
        l2 = self.penalty()
        if not self.distill:
            return {"loss": l_surv + l2, "cox": l_surv.detach()}
        if self.teacher is None:
            raise HistoKDError(
                "the distilled linear student needs its trained teacher (stage 'teacher') to train"
            )
        with torch.no_grad():
            teachers = [case_teacher(self.teacher, b) for b in bags]
            r_t = torch.stack([t.forward_bag(f, t._omics(b))[0]
                               for t, b, f in zip(teachers, bags, feats)])
        l_risk = risk_regression_loss(r_s, r_t)
        return {
            "loss": l_surv + self.config.kd_weight * l_risk + l2,
            "cox": l_surv.detach(),
            "risk_kd": l_risk.detach(),
        }

    def predict(self, bag: Bag) -> Prediction:
        """Risk (0-d), uniform attention ``(n,)`` and the per-patch risk contribution ``(n,)``
        (log-hazard, summing to the risk minus ``b``) of one bag; never reads ``bag.omics``."""
        one = torch.ones(1, device=self.mu.device)
        return Prediction(risk=self.forward_feats(bag.feats)[0],
                          attention=self.uniform_attention(bag),
                          contribution=self.contributions(bag.feats, one),
                          contribution_unit=CONTRIBUTION_UNIT)

    def explain(self, bag: Bag) -> Explanation:
        """:meth:`predict`'s maps (uniform attention, risk contribution) and, with a pathway head,
        the ``Config.explain_top_pathways`` pathways by ``|score|`` as signed maps
        (:meth:`pathway_contributions`, ``pathway_unit`` :data:`PATHWAY_UNIT`) with every
        pathway's score (:meth:`pathway_scores`, ``pathway_score_unit``
        :data:`PATHWAY_SCORE_UNIT`); never reads ``bag.omics``."""
        expl = super().explain(bag)
        if self.pathway_weight is None:
            return expl
        with torch.no_grad():
            maps = self.pathway_contributions(bag.feats)
            scores = self.pathway_scores().float().cpu().numpy()
        expl.pathway_maps, expl.pathway_scores, expl.top_patches = ranked_pathways(
            self.pathway_names, maps, scores, self.config.explain_top_pathways)
        expl.pathway_unit, expl.pathway_score_unit = PATHWAY_UNIT, PATHWAY_SCORE_UNIT
        return expl
