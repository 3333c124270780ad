"""AMKD losses against hand-computed values."""

import math

import pytest
import torch

from histokd_core.methods.amkd.losses import (
    arr_follow_term,
    arr_gates,
    arr_label_term,
    arr_loss,
    arr_weight,
    ge_loss,
    kd_loss,
    risk_regression_loss,
    total_loss,
)

# KL(Bern/Cat(0.75, 0.25) || (0.5, 0.5)) = 0.75 ln 1.5 + 0.25 ln 0.5
KL_75_50 = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)


def test_ge_loss_hand_value_and_direction():
    teacher = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])  # softmax (0.75, 0.25), (0.5, 0.5)
    student = torch.zeros(2, 2, requires_grad=True)
    loss = ge_loss(student, teacher)
    assert float(loss) == pytest.approx(KL_75_50 / 2, abs=1e-6)  # mean over the two tokens
    loss.backward()
    assert student.grad[0, 0] < 0  # pushes the student towards the teacher
    assert float(ge_loss(teacher, teacher)) == pytest.approx(0.0, abs=1e-7)


def test_kd_loss_hand_value():
    r_t = torch.tensor([2 * math.log(3.0)])  # sigmoid(r_t / 2) = 0.75
    r_s = torch.tensor([0.0])  # 0.5
    assert float(kd_loss(r_s, r_t, temperature=2.0)) == pytest.approx(4 * KL_75_50, abs=1e-6)
    assert float(kd_loss(r_t, r_t, 2.0)) == pytest.approx(0.0, abs=1e-7)


def test_arr_gates_hand_values():
    eps = 1e-6
    # g_kd = sigmoid(-log(L_KD + eps)) = 1 / (1 + L_KD + eps): L_KD = 1 -> 1/2, L_KD = 3 -> 1/4
    g_kd, g_cox = arr_gates(torch.tensor(1.0), torch.tensor(2.0), torch.tensor(2.0))
    assert float(g_kd) == pytest.approx(1 / (2 + eps), abs=1e-7)
    assert float(g_cox) == pytest.approx(0.5, abs=1e-7)  # equal Cox losses
    g_kd, _ = arr_gates(torch.tensor(3.0), torch.tensor(1.0), torch.tensor(1.0))
    assert float(g_kd) == pytest.approx(0.25, abs=1e-6)
    # reliance grows as L_KD shrinks
    assert float(arr_gates(torch.tensor(0.01), *[torch.tensor(1.0)] * 2)[0]) > 0.99
    # g_cox = L_s / (L_s + L_t): student worse (3 vs 1) -> 3/4; student better (1 vs 3) -> 1/4
    assert float(arr_gates(torch.tensor(0.0), torch.tensor(3.0), torch.tensor(1.0))[1]) == (
        pytest.approx(0.75, abs=1e-6)
    )
    assert float(arr_gates(torch.tensor(0.0), torch.tensor(1.0), torch.tensor(3.0))[1]) == (
        pytest.approx(0.25, abs=1e-6)
    )
    # w = g_kd * g_cox: L_KD = 1, L_s = 3, L_t = 1 -> 1/2 * 3/4
    w = arr_weight(torch.tensor(1.0), torch.tensor(3.0), torch.tensor(1.0))
    assert float(w) == pytest.approx(0.375, abs=1e-6)


def test_arr_terms_hand_values_and_gradients():
    r_s = torch.tensor([3.0, 1.0], requires_grad=True)  # centred (1, -1)
    r_t = torch.tensor([5.0, 5.0])  # centred (0, 0)
    w = torch.tensor(0.375)
    assert float(arr_follow_term(r_s, r_t, w)) == pytest.approx(0.375 * 1.0)
    l_s = torch.tensor(math.e, requires_grad=True)
    term2 = arr_label_term(l_s, w)
    assert float(term2) == pytest.approx(0.625 * math.log(math.e + 1e-6), abs=1e-6)
    term2.backward()
    assert float(l_s.grad) == pytest.approx(0.625 / (math.e + 1e-6), rel=1e-5)
    # the whole L_ARR: L_KD = 1, L_s = 3, L_t = 1 -> w = 3/8
    loss, w = arr_loss(r_s, r_t, torch.tensor(1.0), torch.tensor(3.0), torch.tensor(1.0))
    assert float(w) == pytest.approx(0.375, abs=1e-6)
    assert float(loss) == pytest.approx(0.375 * 1.0 + 0.625 * math.log(3.0 + 1e-6), abs=1e-5)
    # the gates carry no gradient: only the risk distance and log(L_s) do
    l_kd = torch.tensor(1.0, requires_grad=True)
    arr_loss(r_s, r_t, l_kd, torch.tensor(3.0), torch.tensor(1.0))[0].backward()
    assert l_kd.grad is None


def test_total_loss_alpha():
    t = [torch.tensor(v) for v in (1.0, 2.0, 3.0, 4.0)]
    assert float(total_loss(*t, alpha=0.75)) == pytest.approx(0.75 * 6 + 0.25 * 4)
    assert float(total_loss(*t, alpha=1.0)) == pytest.approx(6.0)


def test_risk_regression_loss_hand_values():
    up = torch.tensor([0.0, 1.0, 2.0])
    z_up = torch.tensor([-1.0, 0.0, 1.0]) * math.sqrt(1.5)  # (r - 1) / population SD sqrt(2/3)
    # the student's centred risks against the teacher's standardised ones: shift-free
    assert float(risk_regression_loss(z_up + 5, 10 * up - 3)) == pytest.approx(0.0, abs=1e-9)
    # (centred [-1, 0, 1]) - z_up = (1 - sqrt 1.5) * [-1, 0, 1]: mean square 2/3 (1 - sqrt 1.5)^2
    s = torch.tensor([0.0, 1.0, 2.0], requires_grad=True)
    t = torch.tensor([0.0, 1.0, 2.0], requires_grad=True)
    value = risk_regression_loss(s, t)
    assert float(value) == pytest.approx(2 / 3 * (1 - math.sqrt(1.5)) ** 2, rel=1e-4)  # eps 1e-6
    value.backward()
    assert t.grad is None or float(t.grad.abs().sum()) == 0.0  # the teacher is a target
    assert float(s.grad.abs().sum()) > 0
    # reversed order: centred [-1, 0, 1] against -z_up: mean square 2/3 (1 + sqrt 1.5)^2
    assert float(risk_regression_loss(up.flip(0), up)) == pytest.approx(
        2 / 3 * (1 + math.sqrt(1.5)) ** 2, rel=1e-5
    )
    # all-equal student risks: finite loss and gradient (no singular point)
    flat = torch.zeros(3, requires_grad=True)
    risk_regression_loss(flat, up).backward()
    assert torch.isfinite(flat.grad).all()
