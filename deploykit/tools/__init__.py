"""What examines a model rather than transforms it: lint of the torch code, the pre-flight check,
first-divergence diagnosis, pass bisection and test-case reduction. Builds on the layers below
(core, onnx, the built-in passes, ncnn); the stages use it."""
