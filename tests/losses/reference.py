"""What the naive float64 references of the loss tests share: the stacked batch with its ids,
the pairwise distance, and the world-size 1/2/4 comparison test built from a file's reference.
The reference formulas themselves stay in each test file."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from .multiproc import Case, check_reference, check_world, reference_run, run_case


def stacked(
    views: list[Tensor], labels: Tensor | None, *, normalize: bool
) -> tuple[Tensor, Tensor]:
    """The whole batch view after view (``V*N x D``; unit rows when ``normalize``) and each row's
    positive-group id (the class label, else the image index)."""
    n_views, n = len(views), views[0].shape[0]
    z = torch.cat(views)
    if normalize:
        z = F.normalize(z, dim=1)
    return z, (torch.arange(n) if labels is None else labels).repeat(n_views)


def pair_distance(z: Tensor, a: int, k: int, kind: str) -> Tensor:
    """``1 - <z_a, z_k>`` (cosine, unit rows) or ``|z_a - z_k|`` (euclidean), entry by entry."""
    return 1 - z[a] @ z[k] if kind == "cosine" else (z[a] - z[k]).norm()


def check_case(case: Case, world: int, ref: dict[str, Any]) -> None:
    """The single-process library run matches the reference ``ref`` and, for ``world`` > 1,
    ``world`` gloo ranks reproduce the single-process loss and gradients."""
    single = run_case(case)
    check_reference(case, single, ref)
    if world > 1:
        check_world(case, world, single)


def reference_test(cases: list[Case], reference: Callable[..., Tensor]) -> Callable[..., None]:
    """A test file's ``test_matches_reference_and_single_process`` for ``reference``."""

    @pytest.mark.parametrize("world", [1, 2, 4])
    @pytest.mark.parametrize("case", cases, ids=lambda c: c.case_id)
    def test_matches_reference_and_single_process(case: Case, world: int) -> None:
        check_case(case, world, reference_run(case, reference))

    return test_matches_reference_and_single_process
