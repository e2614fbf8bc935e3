"""Arc2Face (ECCV 2024): Stable Diffusion 1.5 conditioned on an ArcFace vector through its ID-conditioned CLIP text
encoder; LCM-LoRA fast mode and the pose ControlNet.

This package's ``spec`` module is what the rest of facefoundry reads about the generator; importing the package
or its spec loads no model code."""
