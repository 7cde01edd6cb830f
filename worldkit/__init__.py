"""worldkit: autoregressive video-diffusion world models with pluggable memory, attention and training."""
__version__ = "0.1.0"
# The distribution's name on package indexes (the import name and the command stay ``worldkit``): PyPI's
# ``worldkit`` is another project (JEPA world models). README, "Set up", says what happens with both.
DISTRIBUTION = "worldkit-video"
