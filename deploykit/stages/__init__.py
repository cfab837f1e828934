"""The pipeline's stages, one module each: export, simplify, rewrite, convert, verify."""
