"""Registry: every name builds and runs, labels are declared, unknown names list the valid ones."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from distcl.losses import LOSSES, build_loss, needs_labels

CONFIG = {  # everything the lead's config passes, plus keys no loss takes
    "name": "ignored",
    "temperature": 0.2,
    "margin": 0.2,
    "pos_margin": 0.0,
    "neg_margin": 0.5,
    "distance": "cosine",
    "mining": "batch_hard",
    "l2_reg": 0.002,
    "sigmoid_t_init": 10.0,
    "sigmoid_b_init": -10.0,
    "unrelated": object(),
}


def test_names_are_exactly_the_six():
    assert list(LOSSES) == ["ntxent", "supcon", "contrastive", "triplet", "npair", "logistic"]
    for name, spec in LOSSES.items():
        assert spec.name == name and spec.summary and "\n" not in spec.summary
        with pytest.raises(dataclasses.FrozenInstanceError):
            spec.needs_labels = True  # type: ignore[misc]


@pytest.mark.parametrize("name", list(LOSSES))
def test_every_loss_builds_from_a_whole_config_and_runs(name):
    loss = build_loss(name, **CONFIG)
    assert isinstance(loss, torch.nn.Module)
    views = [torch.randn(6, 4, requires_grad=True) for _ in range(2)]
    labels = torch.tensor([0, 1, 0, 1, 2, 2])
    value = loss(views, labels)
    assert value.ndim == 0 and torch.isfinite(value)
    value.backward()
    assert all(torch.isfinite(v.grad).all() for v in views)


def test_only_logistic_has_parameters():
    with_params = {n for n in LOSSES if list(build_loss(n).parameters())}
    assert with_params == {"logistic"}


def test_params_reach_the_loss():
    assert build_loss("triplet", mining="semi_hard", margin=0.7).params["mining"] == "semi_hard"
    assert build_loss("ntxent", temperature=0.5).params == {"temperature": 0.5}


def test_needs_labels():
    assert {n for n in LOSSES if needs_labels(n)} == {"supcon"}
    views = [torch.randn(4, 3), torch.randn(4, 3)]
    with pytest.raises(ValueError, match="supcon needs class labels"):
        build_loss("supcon")(views)


def test_unknown_name_lists_the_valid_ones():
    msg = (
        "loss.name must be one of ntxent, supcon, contrastive, triplet, npair, logistic, got 'mse'"
    )
    with pytest.raises(ValueError, match=msg):
        build_loss("mse")
    with pytest.raises(ValueError, match=msg):
        needs_labels("mse")
