"""An ncnn text .param as data: read it, change layers, write it back.

A .param is the magic line 7767517, a line `<layer count> <blob count>`, then one line per layer:
`<type> <name> <bottom count> <top count> <bottoms...> <tops...> <key=value...>`. ncnn finds
blobs by name, and the .bin holds each layer's weights in the order of the layers, so a layer
without weights can go anywhere its bottoms exist, and one with weights is placed by where its
weights go in the .bin.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from deploykit.core.errors import StageError

PARAM_MAGIC = "7767517"


@dataclass
class Layer:
    kind: str
    name: str
    bottoms: list[str]
    tops: list[str]
    params: list[str] = field(default_factory=list)  # "k=v" as written, in order

    def param(self, key: int) -> str | None:
        """The value written for key `key` (an array key is written as -23300-key), or None."""
        prefix = f"{key}="
        return next((p[len(prefix):] for p in self.params if p.startswith(prefix)), None)

    def line(self) -> str:
        fields = [f"{self.kind:<16}", f"{self.name:<24}", str(len(self.bottoms)), str(len(self.tops)),
                  *self.bottoms, *self.tops, *self.params]
        return " ".join(fields)


@dataclass
class NcnnParam:
    layers: list[Layer]

    @classmethod
    def read(cls, path: Path) -> NcnnParam:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").split("\n")
        if not lines or lines[0].strip() != PARAM_MAGIC:
            raise StageError(f"{path} is not an ncnn text .param (its first line is not {PARAM_MAGIC}).",
                             stage="convert", hint="the converter's log says what it wrote instead.")
        layers = []
        for number, line in enumerate(lines[2:], start=3):
            fields = line.split()
            if len(fields) < 4:
                continue
            if not (fields[2].isdigit() and fields[3].isdigit()):
                raise StageError(f"{path} line {number} is not an ncnn layer line: its input and output counts "
                                 f"({fields[2][:20]!r}, {fields[3][:20]!r}) are not numbers.", stage="convert",
                                 hint="a .param edited by hand must keep `type name inputs outputs blobs... params` "
                                      "on each layer line; the converter's log says what it wrote.")
            n_in, n_out = int(fields[2]), int(fields[3])
            blobs = fields[4:4 + n_in + n_out]
            layers.append(Layer(fields[0], fields[1], blobs[:n_in], blobs[n_in:], fields[4 + n_in + n_out:]))
        return cls(layers)

    def blobs(self) -> list[str]:
        """Every blob, in the order the layers write them."""
        return list(dict.fromkeys(top for layer in self.layers for top in layer.tops))

    def text(self) -> str:
        return "\n".join([PARAM_MAGIC, f"{len(self.layers)} {len(self.blobs())}",
                          *(layer.line() for layer in self.layers)]) + "\n"

    def write(self, path: Path) -> None:
        Path(path).write_text(self.text(), encoding="utf-8")

    def producer(self, blob: str) -> Layer | None:
        return next((layer for layer in self.layers if blob in layer.tops), None)

    def readers(self, blob: str) -> list[Layer]:
        return [layer for layer in self.layers if blob in layer.bottoms]
