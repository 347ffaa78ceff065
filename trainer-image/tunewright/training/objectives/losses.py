"""Preference and ranking losses as pure functions of sequence log-probabilities (no model, no tokens).

Written against the closed forms rather than reusing TRL: in trl 1.16 the DPO losses are inline branches of
`DPOTrainer._compute_loss`, bound to the trainer's state and to a text model's fused LM head, so they cannot
be called on the log-probs that our families (causal LMs and MusicGen alike) produce. The forms follow TRL's
(same names, same IPO length normalisation) so results are comparable; tests check them on hand-made values.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

DpoLossType = Literal["sigmoid", "ipo", "hinge"]


def dpo_losses(chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, *, beta: float,
               loss_type: DpoLossType, label_smoothing: float = 0.0,
               chosen_tokens: torch.Tensor | None = None,
               rejected_tokens: torch.Tensor | None = None) -> torch.Tensor:
    """Per-pair DPO losses from log-ratios `log π(y|x) − log π_ref(y|x)` of the chosen and rejected samples.

    sigmoid: −log σ(β·h) (Rafailov et al.); hinge: max(0, 1 − β·h) (SLiC); ipo: (h̄ − 1/(2β))² where h̄
    uses per-token log-ratios, as TRL does, so β means the same for short and long samples (Azar et al.).
    h = chosen − rejected log-ratio. Label smoothing ε treats each label as flipped with probability ε:
    (1 − ε)·ℓ(h) + ε·ℓ(−h). For sigmoid this is conservative DPO (cDPO, TRL's former `label_smoothing`);
    for ipo it moves the target margin to (1 − 2ε)/(2β); for hinge it penalises over-confident margins.
    """
    if loss_type == "ipo":
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError("the ipo loss needs the token counts of the chosen and rejected samples")
        h = chosen_logratios / chosen_tokens.clamp(min=1) - rejected_logratios / rejected_tokens.clamp(min=1)
    else:
        h = chosen_logratios - rejected_logratios

    def per_label(z: torch.Tensor) -> torch.Tensor:
        if loss_type == "sigmoid":
            return -F.logsigmoid(beta * z)
        if loss_type == "hinge":
            return torch.relu(1 - beta * z)
        if loss_type == "ipo":
            return (z - 1 / (2 * beta)) ** 2
        raise ValueError(f"unknown DPO loss type {loss_type!r} (sigmoid, ipo or hinge)")

    if label_smoothing == 0:
        return per_label(h)
    return (1 - label_smoothing) * per_label(h) + label_smoothing * per_label(-h)


def ordered_pairs(mask: torch.Tensor) -> torch.Tensor:
    """(B, L, L) mask of pairs (i, j) with i ranked above j, both present; lists are padded at the end."""
    upper = torch.ones(mask.shape[-1], mask.shape[-1], dtype=torch.bool, device=mask.device).triu(1)
    return mask[:, :, None] & mask[:, None, :] & upper


def margin_ranking_loss(rewards: torch.Tensor, mask: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean of max(0, margin − (r_i − r_j)) over every ordered pair of every list (best first, padded).

    torch's margin_ranking_loss on the gathered pairs; the pair enumeration is what torch lacks.
    """
    pairs = ordered_pairs(mask)
    better = rewards[:, :, None].expand_as(pairs)[pairs]
    worse = rewards[:, None, :].expand_as(pairs)[pairs]
    return F.margin_ranking_loss(better, worse, torch.ones_like(better), margin=margin)


def listmle_loss(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Plackett–Luce negative log-likelihood of the given order (ListMLE), summed over a list, mean over lists.

    −log P(order) = Σ_i [logsumexp_{j ≥ i} s_j − s_i] over the present items i (best first). Padding
    gets a huge finite negative score (not −inf, whose gradients are NaN) and is masked out of the sum.
    """
    filled = torch.where(mask, scores, torch.finfo(scores.dtype).min / 2)
    tail_lse = torch.logcumsumexp(filled.flip(-1), dim=-1).flip(-1)
    per_list = ((tail_lse - filled) * mask).sum(-1)
    return per_list.mean()


def ranking_metrics(rewards: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Pairwise accuracy (share of ordered pairs the rewards order correctly, ties count as wrong) and
    Kendall's τ-a per list (concordant − discordant pairs over all pairs), averaged over lists; plus DPO's
    reward metrics read over lists: best ("chosen") and worst ("rejected") sample, mean margin over pairs."""
    pairs = ordered_pairs(mask)
    diff = rewards[:, :, None] - rewards[:, None, :]
    sign = torch.sign(diff) * pairs
    n_pairs = pairs.sum((-1, -2)).clamp(min=1)
    accuracy = (sign > 0).sum() / pairs.sum().clamp(min=1)
    worst = rewards.gather(1, (mask.sum(-1, keepdim=True) - 1).clamp(min=0)).squeeze(1)
    return {
        "ranking/pairwise_accuracy": accuracy,
        "ranking/kendall_tau": (sign.sum((-1, -2)) / n_pairs).mean(),
        "rewards/chosen": rewards[:, 0].mean(),
        "rewards/rejected": worst.mean(),
        "rewards/margins": (diff * pairs).sum() / pairs.sum().clamp(min=1),
        "rewards/accuracies": accuracy,
    }
