"""The names a config value may take, one tuple per setting, torch-free.

validate.py checks values against these tuples without importing the code that builds
models or losses, so a config loads without torch. The registries that build things
(`METHODS` in distcl/models/methods.py, `LOSSES` in distcl/losses, `build_encoder` in
distcl/models/encoders.py) are checked against these tuples by tests/test_rules.py: a new
method, loss or encoder gets its name added here too.
"""

from __future__ import annotations

# data.dataset. Readers: distcl/data/sources.py
DATASETS = ("fashion_mnist", "cifar10", "cifar100", "stl10", "imagefolder", "synthetic", "wordnet")
# Text datasets: token ids instead of images (distcl/data/wordnet.py, text_beton.py); they train
# the text encoder and are evaluated by retrieval (distcl/evaluation/text_final.py).
TEXT_DATASETS = ("wordnet",)
# data.preset of a text dataset: the two views of a record. pairs (auto): its two texts;
# dropout: its first text twice, told apart by the encoder's dropout alone (SimCSE, Gao et al.
# 2021, unsupervised).
TEXT_VIEWS = ("auto", "pairs", "dropout")
# data.split, per dataset. imagefolder takes any sub-folder of data.root.
SPLITS = {
    "fashion_mnist": ("train", "test"),
    "cifar10": ("train", "test"),
    "cifar100": ("train", "test"),
    "stl10": ("train", "test", "unlabeled", "train+unlabeled"),
    "synthetic": ("train", "test"),
    "wordnet": ("train", "test"),
}
# data.loader. ffcv reads .beton files and compiles the per-image augmentations. torchvision
# is a DataLoader over the raw files with the same views and sharding, for machines where FFCV
# cannot be built (much slower).
LOADERS = ("ffcv", "torchvision")
STORAGE = ("raw", "jpeg", "jpg", "smart", "proportion")  # data.storage: FFCV RGBImageField modes

SMALL_CNN_ARCHS = ("small_cnn", "small_cnn_s2")  # models/encoders.py SmallCNN (s2: stride-2 conv)
ARCHS = (*SMALL_CNN_ARCHS, "resnet18", "resnet50", "text_transformer")  # model.arch
TEXT_ARCHS = ("text_transformer",)  # encoders of token ids (distcl/models/text.py)

# method.name; the registry is distcl/models/methods.py METHODS
METHODS = ("simclr", "supcon", "supervised", "moco_v2", "moco_v3", "byol", "swav", "barlow")
# The methods built on distcl.losses: only these read loss.name, and only their forward splits
# into embed + loss, which gradient caching (train.chunk_size) needs.
LOSS_METHODS = ("simclr", "supcon")
LABEL_METHODS = ("supcon", "supervised")  # methods that need class labels

LOSSES = ("ntxent", "supcon", "contrastive", "triplet", "npair", "logistic")  # loss.name
LABEL_LOSSES = ("supcon",)  # losses that need class labels (LossSpec.needs_labels)
DISTANCES = ("cosine", "euclidean")  # loss.distance
MINING = ("batch_all", "batch_hard", "semi_hard")  # loss.mining

OPTIMIZERS = ("adamw", "sgd", "lars")  # optim.name
LR_SCALING = ("none", "linear", "sqrt")  # optim.lr_scaling

PRECISIONS = ("auto", "bf16", "fp32")  # train.precision
PLACEMENTS = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")  # train.placement_strategy

# Schemes of tracking.uri that MLflow can track to (mlflow.store.tracking): a server over
# HTTP(S), a SQLAlchemy database (the part before "+" names it: postgresql+psycopg2://),
# Databricks, or a file store.
TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks", "file")
