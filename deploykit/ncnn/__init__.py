"""NCNN models: the converters, the runtime deploykit verifies on (run in a child process), the
.param reader, ncnn's own tools, and the judge that converts a graph and runs it. Builds on
deploykit.core and deploykit.onnx."""
