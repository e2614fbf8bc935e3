"""DCFace (CVPR 2023): the mixing stage (ID image + style image, released DDIM) and its identity stage (dcface-ids).

This package's ``spec`` module is what the rest of facefoundry reads about the generator; importing the package
or its spec loads no model code."""
