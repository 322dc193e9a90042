"""Images from their sources to the views a worker trains on: dataset readers (`sources`,
`native` for CIFAR and STL-10, `imagefolder`), `.beton` writing with a validated sidecar
(`beton`, and `prepare` for `distcl prepare` and the driver), the view recipes in one home
(`recipes`), FFCV's compiled per-image augmentations (`ffcv_ops`, `aug_kernels`, `aug_blur`,
`views`), the sharded FFCV loader (`loader`) and the torchvision fallback over the raw files
(`torch_loader`, `torch_views`). Text, the first other modality: WordNet's parser (`wordnet`),
byte tokens (`text_tokens`), pair `.beton`s (`text_beton`) and their FFCV loader
(`text_loader`). It may import `config` and `runtime`; `ffcv` is imported here and nowhere
else."""
