"""Run configuration: frozen dataclasses, YAML presets, `key.sub=value` overrides, validation.

Config flows one way: preset YAML -> CLI overrides -> `Config` (validated once) -> flat dict for
Ray's `train_loop_config`, Tune's `param_space` and MLflow params -> `Config` again in each
worker. Nothing mutates a `Config` after validation.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from distcl.config import validate
from distcl.config.names import LOSS_METHODS

DEFAULT_PRESET = "fashion_mnist_simclr"


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key, the value and the fix."""


@dataclass(frozen=True)
class DataConfig:
    # fashion_mnist | cifar10 | cifar100 | stl10 | imagefolder | synthetic (names.DATASETS)
    dataset: str = "fashion_mnist"
    # raw files; "" = the usual place: Debian's Fashion-MNIST, <beton_dir>/raw for CIFAR/STL-10
    root: str = ""  # (README "Datasets"); imagefolder needs root/<split>/<class>/*.jpg named
    download: bool = False  # fetch missing CIFAR/STL-10 files into root (never unless asked)
    beton_dir: str = "data"  # where prepared .beton files live (shared storage on a cluster)
    storage: str = "raw"  # .beton image storage: raw | jpeg | smart | proportion (FFCV modes)
    max_resolution: int = 0  # shrink stored images to this longer side (0 = keep; ImageNet: 256)
    jpeg_quality: int = 90  # JPEG quality of jpeg/smart/proportion storage (FFCV default 90)
    split: str = "train"  # pre-training split; stl10: also unlabeled | train+unlabeled
    resolution: int = 28  # output side of each view, in pixels
    views: int = 2  # augmented views per image (2 for SimCLR)
    preset: str = "auto"  # view recipe; auto: by resolution and channels (text: pairs or dropout)
    crop_scale_min: float | None = None  # RandomResizedCrop lower scale; None: the preset's own
    jitter: float | None = None  # colour-jitter strength, 0 = off; None: the preset's own
    jitter_p: float | None = None  # chance of colour jitter per image; None: the preset's own
    loader: str = "ffcv"  # ffcv | torchvision (DataLoader over the raw files, much slower)
    loader_workers: int = 1  # FFCV threads / DataLoader processes per worker; 0 = Ray's CPUs
    max_images: int = 0  # use only the first N training images (text: N pairs); 0 = all


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "small_cnn"  # small_cnn, small_cnn_s2 (CPU) | resnet18 | resnet50 (GPU presets)
    width: int = 32  # small_cnn: channels of the first conv, doubled per stage
    blocks: int = 1  # small_cnn: residual blocks at the 2w stage
    feat_dim: int = 0  # small_cnn: channels of the last conv = feature size (0 = 8 x width)
    cifar_stem: bool = True  # resnet: 3x3 stride-1 stem and no max-pool, for 32 px images
    proj_hidden: int = 512  # projection MLP hidden width (SimCLR: 2-layer MLP)
    proj_dim: int = 128  # embedding size fed to the loss (SimCLR: 128)


@dataclass(frozen=True)
class MethodConfig:
    name: str = "simclr"  # simclr | supcon | supervised | moco_v2 | moco_v3 | byol | swav | barlow
    momentum: float = 0.99  # EMA target momentum at step 0, MoCo/BYOL (solo-learn CIFAR 0.99)
    momentum_final: float = 1.0  # EMA momentum at the last step, cosine rise (BYOL 3.2, MoCo v3)
    predictor_hidden: int = 512  # BYOL / MoCo v3 predictor hidden width (papers: 4096)
    moco_temperature: float = 0.2  # MoCo InfoNCE temperature (MoCo v2 and v3 ResNet: 0.2)
    queue_size: int = 65536  # MoCo v2 queue of negative keys, global (He et al. 2020: 65536)
    swav_prototypes: int = 3000  # SwAV prototype count (Caron et al. 2020: 3000 on ImageNet)
    swav_temperature: float = 0.1  # SwAV softmax temperature over prototype scores (paper: 0.1)
    swav_epsilon: float = 0.05  # SwAV Sinkhorn entropy regularisation (paper: 0.05)
    swav_sinkhorn_iters: int = 3  # SwAV Sinkhorn-Knopp iterations (paper: 3)
    swav_queue_size: int = 0  # SwAV feature queue, global; 0 = off (paper: 3840 at batch 256)
    swav_queue_start_epoch: int = 15  # SwAV starts filling the queue here (paper: epoch 15)
    freeze_prototypes_epochs: int = 1  # SwAV prototypes get no update before this epoch (paper: 1)
    barlow_lambda: float = 0.0051  # Barlow Twins off-diagonal weight (Zbontar et al. 2021: 0.0051)
    barlow_scale_loss: float = 1.0  # Barlow Twins loss multiplier (paper 1.0; solo-learn CIFAR 0.1)


@dataclass(frozen=True)
class LossConfig:
    name: str = "ntxent"  # ntxent | supcon | contrastive | triplet | npair | logistic
    temperature: float = 0.2  # softmax temperature for ntxent/supcon (SimCLR Table 5: 0.1-0.5)
    margin: float = 0.2  # triplet margin
    pos_margin: float = 0.0  # contrastive: positives are pulled until closer than this
    neg_margin: float = 0.5  # contrastive: negatives are pushed until farther than this
    distance: str = "cosine"  # cosine | euclidean (contrastive, triplet)
    mining: str = "batch_hard"  # triplet mining: batch_all | batch_hard | semi_hard
    l2_reg: float = 0.002  # npair: L2 penalty on embeddings (Sohn 2016)
    sigmoid_t_init: float = 10.0  # logistic: initial temperature t' (SigLIP: log t = log 10)
    sigmoid_b_init: float = -10.0  # logistic: initial bias (SigLIP: -10)


@dataclass(frozen=True)
class OptimConfig:
    name: str = "adamw"  # adamw | sgd | lars
    lr: float = 2e-3  # base learning rate, before scaling by global batch
    lr_scaling: str = "none"  # none | linear (lr x B/256) | sqrt (lr x sqrt(B))
    weight_decay: float = 1e-4
    momentum: float = 0.9  # sgd / lars
    trust_coefficient: float = 0.001  # LARS eta (You et al. 2017)
    warmup_epochs: float = 1.0  # linear warmup length, in epochs
    final_lr: float = 0.0  # cosine decay floor


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    global_batch: int = 512  # images per optimizer step across all workers
    chunk_size: int = 0  # gradient-caching chunk per worker (0 = no caching)
    num_workers: int = 2  # Ray Train workers (DDP ranks)
    cpus_per_worker: float = 1.0
    use_gpu: bool = False
    placement_strategy: str = "PACK"  # PACK | SPREAD | STRICT_SPREAD | STRICT_PACK
    seed: int = 0
    storage_path: str = "runs"  # Ray Train checkpoints and results (path or s3:// / gs:// URI)
    run_name: str = ""  # "" = derived from method, loss and batch
    max_failures: int = 0  # worker-group restarts before the run fails
    keep_checkpoints: int = 2  # keep the last K checkpoints
    precision: str = "auto"  # auto (bf16 where supported) | bf16 | fp32
    channels_last: bool = True  # channels_last memory format for conv nets
    sync_bn: bool = False  # SyncBatchNorm across workers (SimCLR's global BN)
    skip_nonfinite: int = 0  # tolerate up to K non-finite loss steps before failing
    log_every: int = 50  # print and log rank 0's step loss every N steps (0 = epoch ends only)
    # seconds of training (0 = off): after epoch 1 the run plans the most steps, up to
    # train.epochs of them, that end inside it, and fits the LR schedule to them (train/budget.py)
    time_budget_s: float = 0.0


@dataclass(frozen=True)
class EvalConfig:
    knn_k: int = 20  # neighbours for the kNN monitor (cosine similarity)
    knn_every: int = 5  # run the kNN monitor every N epochs (0 = only at the end)
    knn_train_images: int = 10000  # training images used as the kNN bank during training
    probe: bool = True  # linear probe on frozen features at the end
    baselines: bool = True  # raw-pixel baselines on the same split
    semi: bool = True  # fine-tune encoder + linear head on 1% and 10% of the labels (SimCLR sec. 6)
    semi_steps: int = 100  # SGD steps per label fraction (batch 128, at most 60 epochs): CPU cost
    tsne_points: int = 2000  # test features in the t-SNE plot artifact (0 = no plot)


@dataclass(frozen=True)
class TrackingConfig:
    # MLflow tracking URI, in MLflow's order: this key when set, else $MLFLOW_TRACKING_URI, else
    # sqlite:///mlflow.db in the driver's folder (one machine only: a cluster needs a server)
    uri: str = ""
    experiment: str = ""  # "" = $MLFLOW_EXPERIMENT_NAME, else one per dataset: distcl-<dataset>
    enabled: bool = True
    log_model: bool = True  # log the encoder with mlflow.pytorch.log_model (a pickled nn.Module)
    register: bool = True  # a finished method run's encoder becomes a new registry version
    registered_model: str = ""  # registry name; "" = distcl-<dataset>-<method> (one per preset)
    system_metrics: bool = True  # sample CPU/memory/disk/network/GPU into system/* metrics
    system_metrics_interval: float = 10.0  # seconds between system-metric samples


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def to_flat(self) -> dict[str, Any]:
        """`{"section.key": value}` for Ray, Tune and MLflow params."""
        return {
            f"{s.name}.{f.name}": getattr(getattr(self, s.name), f.name)
            for s in dataclasses.fields(self)
            for f in dataclasses.fields(getattr(self, s.name))
        }

    def to_nested(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_nested(), sort_keys=False)

    @property
    def run_name(self) -> str:
        if self.train.run_name:
            return self.train.run_name
        if self.method.name in LOSS_METHODS:  # the methods that use loss.name
            return f"{self.method.name}-{self.loss.name}-b{self.train.global_batch}"
        return f"{self.method.name}-b{self.train.global_batch}"


def _section_types() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config)}


def _coerce(key: str, raw: Any, typ: type) -> Any:
    """Turn a YAML or command-line value into the field's type, or raise ConfigError."""
    if type(None) in typing.get_args(typ):  # `float | None`: null, none or empty is None
        if raw is None or str(raw).strip().lower() in ("", "none", "null"):
            return None
        typ = typing.get_args(typ)[0]
    if isinstance(raw, str) and typ is not str:
        raw = yaml.safe_load(raw) if raw.strip() else raw
    try:  # a bool is an int to Python, but never a number here
        if typ is bool and isinstance(raw, bool):
            return raw
        if typ is int and not isinstance(raw, bool) and float(raw).is_integer():
            return int(raw)
        if typ is float and not isinstance(raw, bool):
            return float(raw)
        if typ is str:
            return "" if raw is None else str(raw)
    except (TypeError, ValueError):
        pass
    raise ConfigError(f"{key} must be a {typ.__name__}, got {raw!r}")


def _suggest(key: str) -> str:
    near = difflib.get_close_matches(key, list(Config().to_flat()), n=1, cutoff=0.5)
    return f" Did you mean '{near[0]}'?" if near else ""


def build(values: dict[str, Any]) -> Config:
    """Build and validate a Config from a flat `{"section.key": value}` dict."""
    sections: dict[str, dict[str, Any]] = {}
    types = _section_types()
    for key, raw in values.items():
        section, _, name = key.partition(".")
        field_types = typing.get_type_hints(types[section]) if section in types else {}
        if name not in field_types:
            raise ConfigError(f"unknown config key '{key}'.{_suggest(key)}")
        sections.setdefault(section, {})[name] = _coerce(key, raw, field_types[name])
    cfg = Config(**{s: types[s](**kw) for s, kw in sections.items()})
    problems = validate.problems(cfg)
    if problems:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))
    return cfg


def flatten_yaml(doc: dict[str, Any]) -> dict[str, Any]:
    """`{"train": {"epochs": 3}}` -> `{"train.epochs": 3}`; flat keys pass through."""
    flat: dict[str, Any] = {}
    for key, value in (doc or {}).items():
        flat.update(
            {f"{key}.{k}": v for k, v in value.items()} if isinstance(value, dict) else {key: value}
        )
    return flat


def preset_names() -> list[str]:
    files = resources.files("distcl") / "configs"
    return sorted(p.name.removesuffix(".yaml") for p in files.iterdir() if p.name.endswith(".yaml"))


def load_yaml(name_or_path: str) -> dict[str, Any]:
    """A preset name (shipped in distcl/configs) or a path to a YAML file, as a flat dict."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {name_or_path} does not exist")
        text = path.read_text()
    else:
        res = resources.files("distcl") / "configs" / f"{name_or_path}.yaml"
        if not res.is_file():
            raise ConfigError(
                f"unknown preset '{name_or_path}'; presets: {', '.join(preset_names())}"
                " (or pass a path to a .yaml file)"
            )
        text = res.read_text()
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {name_or_path} is not valid YAML: {exc}") from None
    if doc is not None and not isinstance(doc, dict):
        raise ConfigError(f"config {name_or_path} must be a mapping of sections, got {type(doc)}")
    return flatten_yaml(doc)


def parse_overrides(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}' must look like key.sub=value (train.epochs=5)")
        out[key.strip()] = value
    return out


def load(preset: str | None = None, overrides: list[str] | None = None) -> Config:
    """Preset (default `fashion_mnist_simclr`), then `key.sub=value` overrides, validated once."""
    values = load_yaml(preset or DEFAULT_PRESET)
    values.update(parse_overrides(overrides or []))
    return build(values)


def from_flat(flat: dict[str, Any]) -> Config:
    """Rebuild the Config inside a Ray worker or a Tune trial."""
    return build(flat)
