"""The fixed choices a command line offers, in a module that imports nothing heavy: a command's
`--help` lists them without loading torch, and the library validates against the same names."""

SPLITS = ("test", "val")  # what evaluate scores: the test split, or the recipe's held-out validation images
# export format -> file suffix
EXPORT_FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "state_dict": ".state_dict.pt"}
# export: the largest absolute difference allowed between the exported file's outputs and PyTorch's (float32)
DEFAULT_EXPORT_ATOL = 1e-4
DEFAULT_SPARSITIES = (0.3, 0.5, 0.7, 0.9)  # compress: fractions of prunable weights set to zero
