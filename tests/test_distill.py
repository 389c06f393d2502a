"""Self-distillation from the frozen encoder (``SimMIM(target="distill")``, ``DistillationHead``): the teacher is
the pretrained encoder with a fixed head, the centre moves only in training, and TPP learns from it without
collapsing."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cases import make_backbone
from tpp_components.networks import build_network
from tpp_components.peft import target_parameters
from tpp_components.pretext import DistillationHead, SimMIM


def _pretext() -> SimMIM:
    torch.manual_seed(0)
    net = build_network(make_backbone("tinyvit", 2), peft={"method": "lora", "r": 4, "target_modules": "attention_mlp"},
                        train_head=False, allow_random_backbone=True)
    return SimMIM(net, spatial_dims=2, in_channels=1, mask_patch=8, mask_ratio=0.6, target="distill")


def _images(n: int = 8, size: int = 32) -> torch.Tensor:
    """Distinct images: stripes of different orientations and frequencies."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    angles = torch.linspace(0, 3, n)
    return torch.stack([((a.cos() * xx + a.sin() * yy) * 3 * (1 + i % 3)).sin() for i, a in enumerate(angles)])[:, None]


def test_teacher_head_is_fixed_and_the_centre_moves_only_in_training():
    torch.manual_seed(0)
    head = DistillationHead(in_channels=8, prototypes=16)
    student, teacher = torch.rand(4, 8, 2, 2), torch.rand(4, 8, 2, 2)
    before = {k: v.clone() for k, v in head.state_dict().items()}
    head.eval()
    eval_loss = head(student, teacher)
    assert all(torch.equal(v, before[k]) for k, v in head.state_dict().items())  # validation changes nothing
    head.train()
    loss = head(student, teacher)
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and torch.isfinite(eval_loss) and loss >= 0
    loss.backward()
    assert not torch.equal(head.center, before["center"])
    assert all(p.grad is None for p in head.teacher.parameters()) and head.prototypes.grad is not None
    assert torch.equal(head.teacher[0].weight, before["teacher.0.weight"])


def test_tpp_with_the_distillation_target_learns_without_collapsing():
    """Training the target parameters and the student head lowers the loss on held-out masks; the teacher (the
    pretrained encoder) is unchanged; and each masked image's softmax matches its own clean image's teacher
    better than the other images' do (a collapsed student would match all alike)."""
    pretext = _pretext()
    images = _images()
    reference = pretext._reference_features(images)
    optimizer = torch.optim.AdamW([p for p in pretext.parameters() if p.requires_grad], lr=3e-3)

    def held_out() -> tuple[float, torch.Tensor]:
        pretext.eval()
        torch.manual_seed(123)  # the same masks each time
        with torch.no_grad():
            loss = float(pretext(images)["loss"])
            torch.manual_seed(123)
            patch_mask, grid = pretext._mask(images)
        return loss, patch_mask

    start, _ = held_out()
    pretext.train()
    for step in range(40):
        torch.manual_seed(step)
        loss = pretext(images)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    end, _ = held_out()
    assert end < 0.8 * start, (start, end)
    assert any(p.abs().sum() > 0 for n, p in target_parameters(pretext.network).items() if "lora_B" in n)
    assert torch.allclose(pretext._reference_features(images), reference, atol=1e-6)
    # cross-entropy of every student row against every teacher row: the diagonal (own image) is lowest
    pretext.eval()
    with torch.no_grad():
        torch.manual_seed(123)
        wanted = pretext.distill.teacher_probabilities(reference)
        assert len(set(wanted.argmax(-1).tolist())) > 1  # the teacher tells the images apart
        from tpp_components.pretext.patches import upsample_patch_mask

        patch_mask, grid = pretext._mask(images)
        token_mask = upsample_patch_mask(patch_mask, grid, pretext.mask_patch // pretext.embed_stride)
        student = pretext.distill.student_log_probabilities(
            pretext.anatomy.masked_feature_map(pretext.network, images, token_mask, pretext.mask_token))
    cross = -(wanted[None] * student[:, None]).sum(-1)  # [i, j]: student i against teacher j
    # per teacher (column), whose masked view matches it best: its own image's, rather than another's
    own, others = cross.diagonal(), (cross.sum(0) - cross.diagonal()) / (len(images) - 1)
    # on this small random encoder the teacher's softmax is nearly flat, so the margin is small but must be there
    assert own.mean() < others.mean(), (own, others)
    assert F.kl_div(student, wanted, reduction="batchmean") < start
