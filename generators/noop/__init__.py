"""The no-op generator: seed-only noise images for rehearsing orchestration (never a dataset).

This package's ``spec`` module is what the rest of facefoundry reads about the generator; importing the package
or its spec loads no model code."""
