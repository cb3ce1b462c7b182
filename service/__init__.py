"""HTTP prediction service (BentoML + onnxruntime); imports no TensorFlow and nothing from training/ or registry/."""
