"""The alignment head of 3DRS: maps the student's visual-token states to the teacher's feature space."""

from __future__ import annotations

from torch import Tensor, nn


class AlignmentHead(nn.Module):
    """Linear(d -> 2d), GELU, Linear(2d -> C_teacher) (METHOD.md), applied to every visual token.

    Input [..., d] student hidden states; output [..., C_teacher]. Trained with the LLM; the teacher is not.
    """

    def __init__(self, student_dim: int, teacher_dim: int):
        super().__init__()
        if student_dim < 1 or teacher_dim < 1:
            raise ValueError(f"student_dim and teacher_dim must be positive, got {student_dim}, {teacher_dim}")
        self.net = nn.Sequential(nn.Linear(student_dim, 2 * student_dim), nn.GELU(),
                                 nn.Linear(2 * student_dim, teacher_dim))

    def forward(self, hidden: Tensor) -> Tensor:
        return self.net(hidden)
