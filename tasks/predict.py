"""Predict on your own images: ``python tasks/predict.py task=detection ckpt_path=CKPT input=PATH``.

``input`` is a file, a folder or a glob. Writes ``predictions.json`` and ``overlays/`` into the run
directory (semantic segmentation also ``masks/``). ``engine=onnxruntime onnx_path=model.onnx`` runs
an exported model instead of the checkpoint. Needs no dataset: classes and preprocessing travel in
the checkpoint (or in the ``model.json`` beside an exported model).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a script from any directory

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from tasks.common.errors import exit_on_user_error  # noqa: E402
from tasks.core.resolvers import register_resolvers  # noqa: E402

register_resolvers()


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
@exit_on_user_error
def main(cfg: DictConfig) -> list[dict]:
    from tasks.common.threads import configure_threads  # here: showing the config (--cfg job) imports no torch
    from tasks.inference.predict import predict

    configure_threads(cfg)
    return predict(cfg)


if __name__ == "__main__":
    main()
