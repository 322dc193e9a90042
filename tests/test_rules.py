"""config/rules.py and config/names.py: each rule between keys, and the names validation uses
agree with the registries that build methods, losses and encoders."""

from __future__ import annotations

import pytest
import torch

from distcl.config import names, rules
from distcl.config import schema as config
from distcl.config.schema import ConfigError
from distcl.losses import LOSSES
from distcl.models.encoders import build_encoder
from distcl.models.methods import METHODS, build_method
from distcl.train.gradcache import gradcache_step

TINY = ["model.width=4", "model.proj_hidden=16", "model.proj_dim=8", "method.predictor_hidden=16"]
TINY_EXTRA = {"moco_v2": ["method.queue_size=512"], "swav": ["method.swav_prototypes=8"]}


def test_method_names_match_the_registry():
    assert names.METHODS == tuple(METHODS)


def test_loss_names_and_label_losses_match_the_registry():
    assert names.LOSSES == tuple(LOSSES)
    assert names.LABEL_LOSSES == tuple(n for n, spec in LOSSES.items() if spec.needs_labels)


def test_every_arch_builds_and_no_other():
    for arch in names.ARCHS:
        assert build_encoder(arch, 1, width=4).feat_dim > 0
    with pytest.raises(ValueError) as err:
        build_encoder("vit_tiny", 1)
    assert str(err.value).endswith(", ".join(names.ARCHS))


@pytest.mark.parametrize("name", names.METHODS)
def test_method_groups_match_what_each_method_does(name):
    cfg = config.load(None, [f"method.name={name}", *TINY, *TINY_EXTRA.get(name, [])])
    model = build_method(cfg, 1, 4)
    # gradient caching needs the embed + loss_from_embeddings split
    assert (name in names.LOSS_METHODS) == hasattr(model, "loss_from_embeddings")
    assert (name in names.LABEL_METHODS) == bool(getattr(model, "use_labels", False))


def test_batch_split_names_both_keys_and_the_nearest_fixes():
    assert rules.batch_split_problem(4096, 4, 256) is None
    assert rules.batch_split_problem(256, 1, 0) is None  # chunk_size 0: no gradient caching
    msg = rules.batch_split_problem(1000, 2, 128)
    for part in ("global_batch=1000", "num_workers=2", "chunk_size=128", "768 or 1024", "125"):
        assert part in msg
    msg = rules.batch_split_problem(1000, 3, 128)
    assert "set train.global_batch to 768 or 1152" in msg
    assert "does not even divide by train.num_workers=3" in msg
    assert rules.batch_split_problem(513, 2) == (
        "train.global_batch=513 does not divide by train.num_workers=2; use 512 or 514"
    )
    for bad in ((0, 2, 0), (512, 0, 0), (512, 2, -1)):  # validate.py reports these values
        assert rules.batch_split_problem(*bad) is None


def test_zero_or_negative_chunks_are_refused_where_they_are_used():
    with pytest.raises(ConfigError, match="train.chunk_size=-1 is negative"):
        config.load(None, ["train.chunk_size=-1"])
    views = [torch.randn(4, 3), torch.randn(4, 3)]
    with pytest.raises(ValueError, match="chunk_size must be > 0, got 0"):
        gradcache_step(lambda x: x, lambda z, y: z[0].sum(), views, None, chunk_size=0)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["method.name=byol", "data.views=3"], "method.name=byol uses 2 views, got data.views=3"),
        (["method.name=barlow", "data.views=4"], "method.name=barlow uses 2 views"),
        (
            ["method.name=moco_v2", "method.queue_size=32", "train.global_batch=64"],
            "method.queue_size=32 must be >= train.global_batch=64",
        ),
        (["method.name=swav", "train.chunk_size=8"], "not swav; set train.chunk_size=0"),
        (
            ["data.dataset=stl10", "data.split=unlabeled", "method.name=supervised"],
            "method.name=supervised needs class labels, but data.split=unlabeled has none",
        ),
        (["data.dataset=wordnet"], "data.dataset=wordnet is text: set model.arch=text_transformer"),
        (["model.arch=text_transformer"], "model.arch=text_transformer encodes text"),
        (
            ["data.dataset=wordnet", "model.arch=text_transformer", "method.name=byol"],
            "method.name=byol is not available for text yet; use simclr or supcon",
        ),
        (
            ["data.dataset=wordnet", "model.arch=text_transformer", "data.loader=torchvision"],
            "text is read from .beton files only",
        ),
        (
            ["data.dataset=wordnet", "model.arch=text_transformer", "data.preset=grey"],
            "data.preset=grey is an image view recipe; a text dataset takes auto, pairs, dropout",
        ),
    ],
)
def test_each_rule_refuses_the_config_when_it_is_built(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment):
        config.load(None, overrides)


def test_rules_pass_what_they_allow():
    for ok in (
        ["method.name=simclr", "data.views=4", "train.chunk_size=64"],
        ["method.name=moco_v2", "method.queue_size=512", "train.global_batch=512"],
        ["data.dataset=stl10", "data.split=unlabeled", "method.name=byol"],
        ["data.dataset=wordnet", "model.arch=text_transformer", "method.name=supcon"],
        ["data.dataset=wordnet", "model.arch=text_transformer", "data.preset=dropout"],
    ):
        assert rules.problems(config.load(None, ok)) == []
