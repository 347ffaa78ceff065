"""The preference and ranking losses against their closed forms on hand-made log-probabilities."""

from __future__ import annotations

import math

import pytest
import torch

from tunewright.training.objectives.losses import (
    dpo_losses,
    listmle_loss,
    margin_ranking_loss,
    ranking_metrics,
)

# Log-ratios log π − log π_ref of chosen and rejected samples for three pairs.
CHOSEN = torch.tensor([1.5, -0.5, 0.0])
REJECTED = torch.tensor([-2.0, 0.5, 0.0])
TOKENS_C = torch.tensor([5.0, 2.0, 4.0])
TOKENS_R = torch.tensor([7.0, 1.0, 4.0])
BETA = 0.5


def logsigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def h(i: int) -> float:
    return float(CHOSEN[i] - REJECTED[i])


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_sigmoid_is_conservative_dpo(eps: float) -> None:
    got = dpo_losses(CHOSEN, REJECTED, beta=BETA, loss_type="sigmoid", label_smoothing=eps)
    want = [-(1 - eps) * logsigmoid(BETA * h(i)) - eps * logsigmoid(-BETA * h(i)) for i in range(3)]
    assert got.tolist() == pytest.approx(want, rel=1e-6)
    assert got[2].item() == pytest.approx(math.log(2))  # no preference yet: ln 2 whatever ε is


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_hinge(eps: float) -> None:
    got = dpo_losses(CHOSEN, REJECTED, beta=BETA, loss_type="hinge", label_smoothing=eps)
    want = [(1 - eps) * max(0.0, 1 - BETA * h(i)) + eps * max(0.0, 1 + BETA * h(i)) for i in range(3)]
    assert got.tolist() == pytest.approx(want, rel=1e-6)
    assert got[0].item() == pytest.approx(0.0 + eps * (1 + BETA * 3.5))  # margin 1.75 ≥ 1: only the smoothed term


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_ipo_uses_per_token_log_ratios(eps: float) -> None:
    got = dpo_losses(CHOSEN, REJECTED, beta=BETA, loss_type="ipo", label_smoothing=eps,
                     chosen_tokens=TOKENS_C, rejected_tokens=TOKENS_R)
    target = 1 / (2 * BETA)
    want = []
    for i in range(3):
        hbar = float(CHOSEN[i] / TOKENS_C[i] - REJECTED[i] / TOKENS_R[i])
        want.append((1 - eps) * (hbar - target) ** 2 + eps * (-hbar - target) ** 2)
    assert got.tolist() == pytest.approx(want, rel=1e-6)
    # Smoothing moves the target margin to (1 − 2ε)/(2β): the loss is smallest there.
    hbar = torch.linspace(-3, 3, 601)
    curve = dpo_losses(hbar, torch.zeros_like(hbar), beta=BETA, loss_type="ipo", label_smoothing=eps,
                       chosen_tokens=torch.ones_like(hbar), rejected_tokens=torch.ones_like(hbar))
    assert hbar[curve.argmin()].item() == pytest.approx((1 - 2 * eps) * target, abs=0.01)


def test_dpo_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="token counts"):
        dpo_losses(CHOSEN, REJECTED, beta=BETA, loss_type="ipo")
    with pytest.raises(ValueError, match="unknown DPO loss type 'kto'"):
        dpo_losses(CHOSEN, REJECTED, beta=BETA, loss_type="kto")  # type: ignore[arg-type]


# Two lists in one batch, best first: one of three items, one of two (padded).
REWARDS = torch.tensor([[0.3, 0.5, -0.2], [1.0, 0.2, 99.0]])
MASK = torch.tensor([[True, True, True], [True, True, False]])


def test_margin_ranking_over_all_ordered_pairs_ignores_padding() -> None:
    margin = 0.4
    pairs = [(0.3, 0.5), (0.3, -0.2), (0.5, -0.2), (1.0, 0.2)]  # (better, worse); the padded 99 is no item
    want = sum(max(0.0, margin - (a - b)) for a, b in pairs) / len(pairs)
    assert margin_ranking_loss(REWARDS, MASK, margin).item() == pytest.approx(want, rel=1e-6)


def plackett_luce_nll(scores: list[float]) -> float:
    """−log of the probability of drawing the items in the given order, one softmax at a time."""
    nll = 0.0
    for i in range(len(scores)):
        rest = scores[i:]
        nll -= scores[i] - math.log(sum(math.exp(s) for s in rest))
    return nll


def test_listwise_is_plackett_luce_and_padding_has_no_gradient() -> None:
    rewards = REWARDS.clone().requires_grad_()
    loss = listmle_loss(rewards, MASK)
    want = (plackett_luce_nll([0.3, 0.5, -0.2]) + plackett_luce_nll([1.0, 0.2])) / 2
    assert loss.item() == pytest.approx(want, rel=1e-6)
    loss.backward()
    assert torch.isfinite(rewards.grad).all()
    assert rewards.grad[1, 2].item() == 0.0
    # A list of two reduces to the DPO sigmoid loss on the reward difference.
    two = torch.tensor([[0.7, -0.4]])
    assert listmle_loss(two, torch.ones_like(two, dtype=torch.bool)).item() == pytest.approx(-logsigmoid(1.1))


def test_ranking_metrics_pairwise_accuracy_and_kendall_tau() -> None:
    rewards = torch.tensor([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0], [3.0, 1.0, 2.0], [0.0, 0.0, 5.0]])
    mask = torch.tensor([[True] * 3, [True] * 3, [True] * 3, [True, True, False]])
    metrics = ranking_metrics(rewards, mask)
    # τ per list: perfect 1, reversed −1, one swap of three pairs 1/3, a tie 0; accuracy 3+0+2+0 of 10 pairs.
    assert metrics["ranking/kendall_tau"].item() == pytest.approx((1 - 1 + 1 / 3 + 0) / 4)
    assert metrics["ranking/pairwise_accuracy"].item() == pytest.approx(5 / 10)
    assert metrics["rewards/accuracies"].item() == pytest.approx(5 / 10)
    # Best and worst present item of each list; the padded 5.0 is no item.
    assert metrics["rewards/chosen"].item() == pytest.approx((3 + 1 + 3 + 0) / 4)
    assert metrics["rewards/rejected"].item() == pytest.approx((1 + 3 + 2 + 0) / 4)
    assert metrics["rewards/margins"].item() == pytest.approx((4 - 4 + 2 + 0) / 10)
