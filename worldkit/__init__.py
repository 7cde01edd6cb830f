"""worldkit: autoregressive video-diffusion world models with pluggable memory, attention and training."""
__version__ = "0.1.0"
