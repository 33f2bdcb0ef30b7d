"""Dataset doctor: ``python tasks/check_dataset.py dataset=... [dataset.root=...]``.

Reads every annotation and image of both splits and reports problems with file names and
annotation ids; exits with status 1 when a problem would stop training.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a script from any directory

import hydra  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from tasks.common.errors import exit_on_user_error  # noqa: E402
from tasks.core.recipes import accept_recipe_null  # noqa: E402
from tasks.core.resolvers import register_resolvers  # noqa: E402
from tasks.core.runner import fitted_min_size  # noqa: E402
from tasks.data.doctor import ERROR, check_num_classes, format_report, split_summary  # noqa: E402
from tasks.data.object_sizes import fit_anchor_base, input_sizes, size_findings  # noqa: E402

register_resolvers()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    # inspect() reads the files as they are (shapes: generated first), with what the task asks (masks)
    datamodule = instantiate(cfg.dataset, **cfg.task.get("dataset_options", {}))
    findings, class_names = datamodule.inspect(read_images=True, max_pixels=datamodule.max_pixels)
    findings += check_num_classes(cfg.task.model.get("num_classes"), class_names)
    print(format_report(findings))
    errors = sum(f.severity == ERROR for f in findings)
    print(f"\n{errors} error(s)" + (": training would stop at start-up" if errors else ": ready to train"))
    if errors:
        sys.exit(1)
    datamodule.setup()  # the splits as training loads them (bad images left out where skip_bad_images)
    model = cfg.task.model
    if "anchor_sizes" in model and hasattr(datamodule, "training_index"):  # detectors: object sizes vs anchors
        tile = datamodule.tile.size if datamodule.tile else None
        min_size = fitted_min_size(model, datamodule) if model.min_size == "auto" else model.min_size
        resize = {"min_size": min_size, "max_size": model.max_size, "resize_longest": datamodule.resize_longest}
        sizes = input_sizes(datamodule.training_index(), tile_size=tile, **resize)
        anchors = model.anchor_sizes
        if anchors == "auto":
            anchors = [(model.anchor_base or fit_anchor_base(sizes)) * 2**k for k in range(5)]
        print(format_report(size_findings(sizes, anchors)))
    for split, dataset in (("train", datamodule.train_set), ("val", datamodule.val_set)):
        print(split_summary(split, dataset))


if __name__ == "__main__":
    sys.argv[1:] = accept_recipe_null(sys.argv[1:])
    main()
