"""Self-distillation from the frozen pretrained encoder: DINO's loss on pooled features (Caron et al., ICCV 2021).

The teacher is the pretrained encoder itself (the target parameters at their initial values) on the whole
image; the student is the encoder with the current target parameters on a masked view of it (as in iBOT's
global loss). Both pooled feature vectors go through a projection head onto cosine prototypes; the
teacher's output is centred and sharpened, the student's matches it (DINO's cross-entropy, reported as the
KL divergence: the same gradients). The centre follows the teacher's outputs.

One departure from DINO: its teacher head is a moving average of the student's; here the teacher head stays
at its initial values (the student's head starts as a copy and learns). With the teacher encoder fixed too,
the targets are a fixed function of each clean image, so the loss cannot be lowered by collapsing: with a
moving-average head (momentum 0.99) the softmax collapsed to uniform within 50 steps on a small test.

Unlike the ``"features"`` target (which restores every masked cell of the feature map), this asks only that
the masked view's *global* description agrees with the clean view's, on the downstream images. The head is
throwaway: only the encoder's target parameters are kept after TPP.

Written here rather than imported: DINO's reference code trains a student backbone against a moving-average
copy, with multi-crop data loading; TPP needs the loss alone, against a fixed teacher encoder, inside a
MONAI bundle's engine. No maintained library ships that loss as a module.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["DistillationHead"]


class DistillationHead(nn.Module):
    """DINO's projection head, a fixed teacher head, the centre and the loss over pooled encoder feature maps.

    Args:
        in_channels: channels of the encoder's feature map.
        prototypes: size of the output softmax.
        hidden: width of the projection MLP.
        bottleneck: width of the normalised embedding before the prototypes.
        student_temperature: the student's softmax temperature.
        teacher_temperature: the teacher's (sharper) softmax temperature.
        center_momentum: momentum of the centre's moving average over teacher outputs.

    Example::

        >>> head = DistillationHead(in_channels=320)
        >>> head(torch.rand(4, 320, 4, 4), torch.rand(4, 320, 4, 4))  # student map, teacher map -> loss
    """

    def __init__(
        self, in_channels: int, prototypes: int = 256, hidden: int = 256, bottleneck: int = 64,
        student_temperature: float = 0.1, teacher_temperature: float = 0.04, center_momentum: float = 0.9,
    ) -> None:
        super().__init__()
        self.student = nn.Sequential(nn.Linear(in_channels, hidden), nn.GELU(), nn.Linear(hidden, bottleneck))
        for layer in self.student[::2]:  # DINO's initialisation: with zero biases, distinct inputs stay distinct
            nn.init.trunc_normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)
        self.prototypes = nn.Parameter(torch.randn(prototypes, bottleneck) * 0.02)
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)
        self.register_buffer("teacher_prototypes", self.prototypes.detach().clone())
        self.register_buffer("center", torch.zeros(1, prototypes))
        self.student_temperature = student_temperature
        self.teacher_temperature = teacher_temperature
        self.center_momentum = center_momentum

    @staticmethod
    def _logits(mlp: nn.Module, prototypes: torch.Tensor, feature_map: torch.Tensor) -> torch.Tensor:
        pooled = feature_map.float().flatten(2).mean(-1)  # (B, C): the global description, in fp32
        pooled = F.layer_norm(pooled, pooled.shape[-1:])  # scale-free: encoders' feature scales differ by decades
        embedding = F.normalize(mlp(pooled).float(), dim=-1)
        return embedding @ F.normalize(prototypes.float(), dim=-1).T  # cosine similarity to each prototype

    @torch.no_grad()
    def _teacher_logits(self, teacher_map: torch.Tensor) -> torch.Tensor:
        return self._logits(self.teacher, self.teacher_prototypes, teacher_map.detach())

    @torch.no_grad()
    def teacher_probabilities(self, teacher_map: torch.Tensor) -> torch.Tensor:
        """The teacher's centred, sharpened softmax ``(B, prototypes)`` for the clean images' feature map."""
        return F.softmax((self._teacher_logits(teacher_map) - self.center) / self.teacher_temperature, dim=-1)

    def student_log_probabilities(self, student_map: torch.Tensor) -> torch.Tensor:
        """The student's log-softmax ``(B, prototypes)`` for the masked view's feature map."""
        return F.log_softmax(self._logits(self.student, self.prototypes, student_map) / self.student_temperature, -1)

    def forward(self, student_map: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
        """The divergence of the student's softmax from the centred, sharpened teacher's (KL, fp32 scalar).

        In training mode the centre then moves towards this batch's teacher outputs.
        """
        with torch.no_grad():
            teacher = self._teacher_logits(teacher_map)
            wanted = F.softmax((teacher - self.center) / self.teacher_temperature, dim=-1)
            if self.training:
                self.center.mul_(self.center_momentum).add_(teacher.mean(0, keepdim=True), alpha=1 - self.center_momentum)
        return F.kl_div(self.student_log_probabilities(student_map), wanted, reduction="batchmean")
