"""Face models: detectors (SCRFD, dlib), 5-point alignment, embedders (ArcFace ONNX, IResNet), attribute and pose
estimators, their weight files and tiny random builds in the published formats. Models measure; the decisions
made from their measurements live in :mod:`facefoundry.filters`."""
