"""A BlazeFace `.tflite` file as an ONNX model, for ONNX Runtime (serving/faces.py).

Run as a short-lived helper process, `python -m serving.blazeface_onnx TFLITE ONNX
[--fixed-input]`, so that the converter (`tflite2onnx`, `tflite`, `onnx`) never loads into a
service worker. `tflite2onnx` writes the graph in NCHW for the model's own square input; unless
the model only takes that square (`--fixed-input`: a fixed reshape in its graph), the input's
height and width and the outputs' anchor count are made free, as the short-range model is fully
convolutional. The ONNX file appears whole or not at all.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path


def convert(tflite: Path, out: Path, fixed_input: bool) -> None:
    """Write `tflite` as ONNX to `out` (replaced in one step)."""
    import onnx
    import tflite2onnx

    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as work:
        raw, staged = Path(work, "raw.onnx"), Path(work, "model.onnx")
        tflite2onnx.convert(str(tflite), str(raw))
        model = onnx.load(raw)
        if not fixed_input:
            height, width = model.graph.input[0].type.tensor_type.shape.dim[2:4]
            height.dim_param, width.dim_param = "height", "width"
            for output in model.graph.output:  # (1, anchors, 1 or 16)
                output.type.tensor_type.shape.dim[1].dim_param = "anchors"
            del model.graph.value_info[:]  # inner shapes inferred for the square input only
        onnx.checker.check_model(model)
        onnx.save(model, staged)
        os.replace(staged, out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tflite", type=Path)
    parser.add_argument("onnx", type=Path)
    parser.add_argument("--fixed-input", action="store_true")
    args = parser.parse_args(argv)
    convert(args.tflite, args.onnx, args.fixed_input)


if __name__ == "__main__":
    main()
