"""Model bundles as served: the on-disk layout, ONNX Runtime sessions, the FAISS item index."""
