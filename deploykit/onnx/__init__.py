"""ONNX graphs: reading and writing them, the pass engine and its toolkit, the graph views the
pre-flight rules read, and the lookups a pass moves to the host. Builds on deploykit.core."""
