"""Training: the LightningModule base and one module per task, checkpoint callbacks, loggers,
optimizers, schedules and the non-finite guard."""
