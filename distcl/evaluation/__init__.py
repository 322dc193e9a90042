"""Evaluation: what a trained encoder is worth, measured on frozen features and by fine-tuning.
It owns feature extraction and the kNN monitor that training calls each epoch (`evaluate`), the
linear probe (`probe`), semi-supervised fine-tuning on 1% and 10% of the labels (`finetune`), the
raw-pixel, random-init, supervised and published baselines (`baselines`), the final evaluation
of a finished run (`final`), its record in the run (`record`, the one module that writes the
evaluation into MLflow), and `distcl eval` (`cli`). Text runs are measured by held-out
retrieval and a category probe (`text_eval`, `text_final`). It may import `config`, `runtime`, `data`,
`models` and `tracking`, never `train`, `job` or `sweep`: training and the job driver call it.
"""
