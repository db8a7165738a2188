"""Gradient reversal and the WS-CDA domain discriminators."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from da_pose.models.discriminator import ConvDomainDiscriminator, DomainDiscriminator
from da_pose.models.layers import GradReverse, grad_reverse


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0, 3.25])
def test_grl_is_identity_forward_and_minus_lambda_backward(lam):
    torch.manual_seed(0)
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    y = grad_reverse(x, lam)
    assert torch.equal(y, x)
    incoming = torch.randn_like(y)
    y.backward(incoming)
    assert torch.equal(x.grad, -lam * incoming)


def test_grl_reverses_the_gradient_of_what_follows():
    torch.manual_seed(0)
    head = nn.Linear(5, 1)
    x = torch.randn(3, 5, requires_grad=True)
    head(x).pow(2).sum().backward()
    plain = x.grad.clone()
    x.grad = None
    head(grad_reverse(x, 0.7)).pow(2).sum().backward()
    assert torch.allclose(x.grad, -0.7 * plain)


def test_grl_module_lambda_is_settable():
    grl = GradReverse(1.0)
    x = torch.ones(4, requires_grad=True)
    grl.lam = 0.25
    grl(x).sum().backward()
    assert torch.equal(x.grad, torch.full((4,), -0.25))
    assert "lam=0.25" in repr(grl)


@pytest.mark.parametrize("cls", [DomainDiscriminator, ConvDomainDiscriminator])
@pytest.mark.parametrize("domains", [1, 2])
def test_output_shape(cls, domains):
    disc = cls(16, hidden=8, num_domains=domains)
    assert disc(torch.randn(3, 16, 8, 8)).shape == (3, domains)
    with pytest.raises(ValueError, match="expected features"):
        disc(torch.randn(3, 15, 8, 8))


def test_pooled_input_equals_map_input():
    disc = DomainDiscriminator(6, hidden=8)
    f = torch.randn(2, 6, 4, 4)
    assert torch.allclose(disc(f), disc(f.mean(dim=(2, 3))))


def _domains(n: int, seed: int):
    """Images of two domains that differ in colour statistics, plus a second binary label."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    z = torch.randint(0, 2, (n,), generator=g)
    images = torch.randn(n, 3, 8, 8, generator=g)
    images[:, 0] += 1.5 * (2 * y.view(-1, 1, 1).float() - 1)  # domain y: red channel shift
    images[:, 2] += 1.5 * (2 * z.view(-1, 1, 1).float() - 1)  # domain z: blue channel shift
    return images, torch.stack([y, z], dim=1).float()


@pytest.mark.parametrize("cls,steps", [(DomainDiscriminator, 300), (ConvDomainDiscriminator, 150)])
def test_discriminator_separates_domains_with_the_extractor_frozen(cls, steps):
    torch.manual_seed(0)
    extractor = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU())
    extractor.requires_grad_(False)
    frozen = [p.clone() for p in extractor.parameters()]
    disc = cls(16, hidden=32, num_domains=2)  # column 0: y head, column 1: z head
    opt = torch.optim.Adam(disc.parameters(), lr=3e-3)
    images, labels = _domains(128, seed=1)
    for _ in range(steps):
        # the GRL sits where WS-CDA puts it; with the extractor frozen it changes nothing here
        logits = disc(grad_reverse(extractor(images), 1.0))  # B, 2
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    test_images, test_labels = _domains(256, seed=2)
    with torch.no_grad():
        pred = (disc(extractor(test_images)) > 0).float()
    accuracy = (pred == test_labels).float().mean(dim=0)
    assert (accuracy > 0.95).all(), accuracy
    for p, before in zip(extractor.parameters(), frozen):
        assert p.grad is None and torch.equal(p, before)
