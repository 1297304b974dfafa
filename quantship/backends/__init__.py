"""Backends: one module per runtime, found through ``registry``."""

# The backend an export and a benchmark use when none is named, and the runtime the
# fp32 reference runs in.
DEFAULT_BACKEND = "onnxruntime"
