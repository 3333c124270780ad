"""AMKD losses against hand-computed values."""

import math

import pytest
import torch

from histokd_core.methods.amkd.losses import arr_loss, arr_weight, ge_loss, kd_loss, total_loss

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


def test_arr_weight_and_loss_hand_values():
    zero = torch.tensor(0.0)
    # equal Cox losses -> gates 0.5 / (0.5 + 0.5 + eps)
    assert float(arr_weight(zero, zero)) == pytest.approx(0.5 / (1 + 1e-6), abs=1e-7)
    # student worse (sigmoid(ln 3) = 0.75 vs 0.5): teacher weighted 0.75 / 1.25 = 0.6
    assert float(arr_weight(torch.tensor(math.log(3.0)), zero)) == pytest.approx(0.6, abs=1e-6)
    # student beats the teacher: weight below one half
    assert float(arr_weight(zero, torch.tensor(math.log(3.0)))) == pytest.approx(0.4, abs=1e-6)
    r_s = torch.tensor([3.0, 1.0])  # centred (1, -1)
    r_t = torch.tensor([5.0, 5.0])  # centred (0, 0)
    loss = arr_loss(r_s, r_t, torch.tensor(math.log(3.0)), zero)
    assert float(loss) == pytest.approx(0.6 * 1.0, abs=1e-6)


def test_total_loss_alpha():
    t = [torch.tensor(v) for v in (1.0, 2.0, 3.0, 4.0)]
    assert float(total_loss(*t, alpha=0.75)) == pytest.approx(0.75 * 6 + 0.25 * 4)
    assert float(total_loss(*t, alpha=1.0)) == pytest.approx(6.0)
