"""IDiff-Face (ICCV 2023): a latent DDPM conditioned on ElasticFace embeddings, with the CompVis VQ-f4 decoder.

This package's ``spec`` module is what the rest of facefoundry reads about the generator; importing the package
or its spec loads no model code."""
