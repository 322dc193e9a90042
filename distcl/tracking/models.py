"""The trained encoder as an MLflow model: logged into its run, loaded back as an `nn.Module`.

Registering a logged encoder as a version of a registered model is the reviewer's view of it:
see review.py (`register_encoder`).
"""

from __future__ import annotations

from typing import Any

from distcl.tracking.uri import global_uri


def log_encoder(logger: Any, encoder: Any, input_example: Any, registered_name: str = "") -> str:
    """Log `encoder` into the run of `logger` (a `core.RunLogger`; not imported here, as core
    imports this module) with `mlflow.pytorch.log_model` as `encoder` (registered under
    `registered_name` if given); returns its `models:/` URI, also set as tag encoder_model_uri.

    MLflow 3 defaults to `torch.export` (pt2): that loads back as a fixed graph refusing
    `.train()` (no fine-tuning) and took 44 s to export a small CNN here. The pickled module
    loads back as the same `nn.Module` class (distcl must be importable there).

    The requirements are given rather than inferred. MLflow's inference loads the model again
    in a new Python process to see what it imports, and that took 4.6 s per run here, against
    0.07 s with the requirements given.
    """
    import mlflow.pytorch

    from distcl import __version__

    requirements = [*mlflow.pytorch.get_default_pip_requirements(), f"distcl=={__version__}"]
    # the logged model belongs to the run's experiment (without an active run, mlflow would
    # put it in the global experiment, Default): the run page's Logged models, the Models tab
    exp = {"MLFLOW_EXPERIMENT_ID": logger.experiment_id, "MLFLOW_EXPERIMENT_NAME": None}
    with global_uri(logger.uri, **exp):
        info = mlflow.pytorch.log_model(
            encoder,
            name="encoder",
            input_example=input_example,
            serialization_format="pickle",
            pip_requirements=requirements,
            run_id=logger.run_id,
            registered_model_name=registered_name or None,
        )
    logger.set_tags({"encoder_model_uri": info.model_uri})
    return info.model_uri


def load_encoder(uri: str, model_uri: str) -> Any:
    """Load an encoder logged by `log_encoder` as its `nn.Module` class, on CPU.

    It was pickled, and unpickling runs code: load only encoders from stores you trust. This
    allows it for this call only (MLFLOW_ALLOW_PICKLE_DESERIALIZATION).
    """
    import mlflow.pytorch

    with global_uri(uri, MLFLOW_ALLOW_PICKLE_DESERIALIZATION="true"):
        return mlflow.pytorch.load_model(model_uri, map_location="cpu")
