"""Inference after training: models rebuilt from a checkpoint alone, engines (PyTorch, ONNX Runtime),
prediction files and overlays, export to ONNX and TorchScript."""
