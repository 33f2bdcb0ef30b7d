"""The EMA of the weights: its update rule by hand, its ramp, and what validation and checkpoints see."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tasks.core.runner import build_trainer
from tasks.training.ema import ModelEMA, ramped_decay
from tests.support import compose_config


def test_the_decay_ramps_up_to_its_value() -> None:
    assert ramped_decay(1, 0.9999, 2000) == pytest.approx(0.9999 * (1 - math.exp(-1 / 2000)))
    assert ramped_decay(2000, 0.9, 2000) == pytest.approx(0.9 * (1 - math.exp(-1)))
    assert ramped_decay(10**6, 0.9, 2000) == pytest.approx(0.9)


class _Model(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 1)
        self.norm = nn.BatchNorm1d(1)
        self.seen: list[dict[str, torch.Tensor]] = []  # the weights each step ended with
        self.validated: list[dict[str, torch.Tensor]] = []

    def training_step(self, batch, batch_idx):
        features, target = batch
        return nn.functional.mse_loss(self.norm(self.layer(features)), target)

    def on_train_batch_end(self, *args) -> None:
        self.seen.append({k: v.detach().clone() for k, v in self.state_dict().items()})

    def validation_step(self, batch, batch_idx):
        self.validated.append({k: v.detach().clone() for k, v in self.state_dict().items()})

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def _data() -> DataLoader:
    features = torch.randn(24, 3, generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(features, features.sum(1, keepdim=True)), batch_size=4)


def test_the_average_follows_the_rule_by_hand_and_is_what_validation_and_the_checkpoint_see(tmp_path) -> None:
    torch.manual_seed(0)
    decay, ramp = 0.9, 3.0
    model = _Model()
    trainer = L.Trainer(
        max_steps=6, callbacks=[ModelEMA(decay=decay, ramp_updates=ramp), ModelCheckpoint(tmp_path, "best")],
        logger=False, enable_progress_bar=False,
        num_sanity_val_steps=0, default_root_dir=tmp_path, limit_val_batches=1, check_val_every_n_epoch=1,
    )  # fmt: skip
    trainer.fit(model, _data(), _data())
    # by hand: the first update copies the weights, the n-th (n >= 1 updates before it) mixes with decay_n
    expected = dict(model.seen[0])
    for n, weights in enumerate(model.seen[1:], start=1):
        d = decay * (1 - math.exp(-n / ramp))
        for name, value in weights.items():
            mixed = expected[name].double() * d + value.double() * (1 - d)
            expected[name] = mixed.to(value.dtype)
    for name in ("layer.weight", "layer.bias", "norm.weight", "norm.running_mean", "norm.running_var"):
        torch.testing.assert_close(model.validated[-1][name], expected[name], rtol=1e-5, atol=1e-6)
    for name in ("layer.weight", "norm.weight", "norm.running_var"):  # (the bias before BatchNorm never learns)
        assert not torch.allclose(model.seen[-1][name], expected[name]), name  # not the training weights
    saved = torch.load(tmp_path / "best.ckpt", weights_only=True)  # written by the validation
    torch.testing.assert_close(saved["state_dict"]["layer.weight"], expected["layer.weight"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(saved["current_model_state"]["layer.weight"], model.seen[-1]["layer.weight"])


def test_updates_start_at_the_epoch_asked_for_with_a_copy(tmp_path) -> None:
    torch.manual_seed(0)
    model = _Model()
    ema = ModelEMA(decay=0.5, ramp_updates=None, update_every_n_steps=2, update_starting_at_epoch=1)
    trainer = L.Trainer(
        max_epochs=2, callbacks=[ema], logger=False, enable_progress_bar=False, enable_checkpointing=False,
        num_sanity_val_steps=0, default_root_dir=tmp_path, limit_val_batches=1,
    )  # fmt: skip
    trainer.fit(model, _data(), _data())  # 6 steps an epoch: updates after steps 8, 10 and 12
    expected = model.seen[7]["layer.weight"]  # the first update copies
    for step in (9, 11):
        expected = expected * 0.5 + model.seen[step]["layer.weight"] * 0.5  # a fixed decay: no ramp
    torch.testing.assert_close(model.validated[-1]["layer.weight"], expected)


def test_the_average_is_off_unless_enabled(tmp_path) -> None:
    cfg = compose_config([], tmp_path)
    assert instantiate(cfg.callbacks.ema) is None
    assert not any(callback is None or isinstance(callback, ModelEMA) for callback in build_trainer(cfg).callbacks)
    cfg = compose_config(["callbacks.ema.enabled=true", "callbacks.ema.decay=0.99"], tmp_path)
    assert isinstance(instantiate(cfg.callbacks.ema), ModelEMA)
    assert any(isinstance(callback, ModelEMA) for callback in build_trainer(cfg).callbacks)
