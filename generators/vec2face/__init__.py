"""Vec2Face (ICLR 2025): a masked-autoencoder decoder from a raw ArcFace-R100 vector, with AttrOP.

This package's ``spec`` module is what the rest of facefoundry reads about the generator; importing the package
or its spec loads no model code."""
