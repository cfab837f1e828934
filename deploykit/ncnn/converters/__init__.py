"""The converters from ONNX to ncnn's .param/.bin: pnnx (default) and a user's onnx2ncnn."""

from __future__ import annotations

from deploykit.core.config import ConverterSection
from deploykit.ncnn.converters.base import Converter
from deploykit.ncnn.converters.onnx2ncnn import Onnx2NcnnConverter
from deploykit.ncnn.converters.pnnx import PnnxConverter


def make_converter(section: ConverterSection) -> Converter:
    if section.name == "onnx2ncnn":
        return Onnx2NcnnConverter(section.path)
    return PnnxConverter(section.path)
