"""Global layout: anchors, columns, ids, self index and per-id positive sums (world size 1)."""

from __future__ import annotations

import pytest
import torch

from distcl.losses.batch import global_batch, positive_mask, positive_sums, same_id_mask


def _views(n_views=3, n=4, d=2):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(n, d, generator=gen, dtype=torch.float64) for _ in range(n_views)]


def test_layout_is_view_major_with_instance_ids():
    views = _views()
    b = global_batch(views, None, normalize=False)
    torch.testing.assert_close(b.anchors, torch.cat(views))
    torch.testing.assert_close(b.columns, torch.cat(views))
    assert b.anchor_ids.tolist() == [0, 1, 2, 3] * 3
    assert b.column_ids.tolist() == [0, 1, 2, 3] * 3
    assert b.self_index.tolist() == list(range(12))


def test_normalize_gives_unit_rows():
    b = global_batch(_views(), None, normalize=True)
    torch.testing.assert_close(b.anchors.norm(dim=1), torch.ones(12, dtype=torch.float64))


def test_positive_mask_excludes_self_and_uses_labels():
    labels = torch.tensor([5, 7, 5, 9])
    b = global_batch(_views(n_views=2), labels, normalize=False)
    pos = positive_mask(b)
    assert not pos.diagonal().any()
    assert pos[0].nonzero().flatten().tolist() == [2, 4, 6]  # other 5s in both views
    assert (~same_id_mask(b))[0].nonzero().flatten().tolist() == [1, 3, 5, 7]


@pytest.mark.parametrize("labelled", [False, True])
def test_positive_sums_equal_the_masked_sum(labelled):
    labels = torch.tensor([1, 0, 1, 1]) if labelled else None
    b = global_batch(_views(), labels, normalize=False)
    sums, counts = positive_sums(b)
    pos = positive_mask(b).to(torch.float64)
    torch.testing.assert_close(sums, pos @ b.columns)
    torch.testing.assert_close(counts, pos.sum(dim=1))


def test_bad_views_are_named():
    with pytest.raises(ValueError, match="same B x D shape"):
        global_batch([torch.randn(4, 2), torch.randn(3, 2)], None, normalize=True)
    with pytest.raises(ValueError, match="B x D embeddings"):
        global_batch([torch.randn(4), torch.randn(4)], None, normalize=True)
    with pytest.raises(ValueError, match="labels must be a 1-D tensor of B=4"):
        global_batch([torch.randn(4, 2)] * 2, torch.zeros(3, dtype=torch.int64), normalize=True)
