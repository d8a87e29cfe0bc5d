"""The artifacts handed between stages: model bundles, the .onnx contract and its wire format, which model the user
means, and where a command may write."""
