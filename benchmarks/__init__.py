"""taggnn benchmarks: run as ``python -m benchmarks.<name>``; see benchmarks/README.md."""
import warnings

# Raised inside torch when torch_geometric imports; it is noise in a benchmark log.
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated")
