"""The learning library: SAC-SVG(H) networks, losses, replay, normalisation, checkpoints and ONNX export. Pure torch."""
