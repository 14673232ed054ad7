"""The AMC search: model zoo, datasets, dependency-aware pruning, reconstruction, cost model,
AMC environment, DDPG agent, strategies, rewards, fine-tuning and ONNX/TFLite export."""
