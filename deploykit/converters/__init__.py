"""The converters from ONNX to ncnn's .param/.bin: pnnx (default) and a user's onnx2ncnn."""

from __future__ import annotations

from deploykit.config import ConverterSection
from deploykit.converters.base import Converter
from deploykit.converters.onnx2ncnn import Onnx2NcnnConverter
from deploykit.converters.pnnx import PnnxConverter


def make_converter(section: ConverterSection) -> Converter:
    if section.name == "onnx2ncnn":
        return Onnx2NcnnConverter(section.path)
    return PnnxConverter(section.path)
