"""The distillation loss (Hinton et al., 2015):

    L = α · T² · KL( softmax(teacher / T) ‖ softmax(student / T) ) + (1 − α) · CE(student, labels)

KL is the Kullback–Leibler divergence of the seed note, averaged over the batch. The
T² factor keeps the soft term's gradients on the scale of the hard term's as T grows
(soft-target gradients shrink as 1/T²). α = 1 distills from the teacher alone, and
then no labels are needed. A label of -1 (``UNLABELLED``) marks a sample only the
teacher teaches: it adds to the KL term and not to the cross-entropy, which is the mean
over the labelled samples of the batch (0 when the batch has none).
"""

from __future__ import annotations

from typing import Any

UNLABELLED = -1


def distillation_loss(
    student_logits: Any,
    teacher_logits: Any,
    labels: Any | None,
    *,
    temperature: float,
    alpha: float,
) -> Any:
    import torch
    import torch.nn.functional as F  # noqa: N812

    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    t = float(temperature)
    log_p_student = F.log_softmax(student_logits / t, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits / t, dim=1)
    # KL(p_t ‖ p_s) = Σ p_t (log p_t − log p_s), mean over the batch
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    loss = alpha * t * t * kl
    if alpha < 1.0:
        if labels is None:
            raise ValueError("labels are needed when alpha < 1")
        known = labels != UNLABELLED
        if bool(known.all()):
            loss = loss + (1.0 - alpha) * F.cross_entropy(student_logits, labels)
        elif bool(known.any()):
            loss = loss + (1.0 - alpha) * F.cross_entropy(student_logits[known], labels[known])
    out: torch.Tensor = loss
    return out
