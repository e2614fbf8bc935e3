"""facefoundry: synthetic face-recognition datasets."""

__version__ = "0.1.0"
