"""Training side: data, models (PyTorch), ONNX export, offline evaluation, the headless pipeline."""
