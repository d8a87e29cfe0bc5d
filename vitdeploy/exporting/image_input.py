"""The raw-image graph (export --image-input): THE preprocessing (core.images.preprocess) as ONNX operators in front
of the model, so that a client that cannot reproduce Pillow (transformers.js, a Java or C++ service, Triton, a phone)
sends the decoded image itself and gets the answers `vitdeploy predict` gives.

    layout "hwc", uint8:   input `image`        [batch, height, width, channels]  (as Pillow, OpenCV, sharp decode;
                           export --image-input, --image-layout nhwc)
    layout "chw", uint8:   input `image`        [batch, channels, height, width]  (planar buffers, as torchvision's
                           decode_image and many C++/Java tensors hold them; --image-layout nchw)
    layout "chw", float32: input `pixel_values` [batch, channels, height, width] holding 0..255 (what transformers.js
                           hands a model when preprocessor_config.json turns resize, rescale and normalize off; the web
                           folder)

Any height and width; 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA) channels, transparency composited on white as
images.to_rgb does. The images of one batch share one size (a batch of one for images of any size).

The resize is Pillow's own arithmetic, operation by operation (libImaging/Resample.c): per axis and output pixel the
same window of input pixels, the same float64 filter weights (bilinear, or bicubic with a = -0.5) normalised and
rounded to 22-bit fixed point, integer sums, the 8-bit rounding and clipping after the width pass and after the
height pass (images.resample's fixed order), images.resized_center_crop's float32 box when it shrinks, and Pillow's
accumulated positions for nearest. Only the pixels that survive the centre crop are computed.

NOTE ONNX `Resize` (antialias=1 needs opset 18) is not used: OpenVINO 2026.4 ignores `antialias` (shrinking then
differs from Pillow by up to 162/255, measured), and a float resize has no 8-bit rounding between the passes. Gather,
integer and float64 arithmetic run on every runtime at any opset from 13. ONNX Runtime computes float64 as Pillow
does: at most 1/255 apart, in a handful of values per 100,000 (vitdeploy's own box shortcut). OpenVINO's CPU computes
float64 in float32: also at most 1/255 for bilinear and bicubic, in 0.02-0.3% of the values (photos to noise);
nearest positions drift there (docs/export-and-verify.md has the measured figures).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from vitdeploy.core.config import PreprocessSpec
from vitdeploy.errors import CheckFailed, ConfigError
from vitdeploy.files.onnx_file import IMAGE_INPUT_NAME, INPUT_NAME, META_INPUT, set_metadata
from vitdeploy.requests import ExportRequest

if TYPE_CHECKING:
    import onnx

LAYOUTS = ("hwc", "chw")
# export --image-layout (the batch axis named, as clients name tensor layouts): the graph's layout, uint8 either way
EXPORT_LAYOUTS = {"nhwc": "hwc", "nchw": "chw"}
DTYPES = ("uint8", "float32")
# The input's name by its type: uint8 pixels are the image itself; float32 ones take the model's own input name, which
# transformers.js feeds
IMAGE_INPUT = {"uint8": IMAGE_INPUT_NAME, "float32": INPUT_NAME}
MIN_OPSET = 13  # ReduceSum and Unsqueeze take their axes as inputs
PREPROCESSED = "preprocess/pixel_values"  # the graph's preprocessed tensor, which the model's nodes read
PIXELS_OUTPUT = "preprocessed"  # that tensor as an output, in the copy that parity checks run (with_pixels_output)
# Its pixels may differ from images.preprocess's by one level (1/255) at most: ONNX Runtime computes Pillow's
# float64 weights with other summation orders, and vitdeploy's own box shortcut (images.resized_center_crop) rounds a
# few values the other way.
MAX_PIXEL_LEVELS = 1.0
# Sizes (width x height) a raw-image file is checked at: shrinking and enlarging, portrait, landscape, odd sizes,
# extreme aspect ratios.
CHECK_SIZES = ((20, 20), (640, 480), (480, 640), (33, 500), (500, 33), (97, 101), (256, 256), (1000, 750), (64, 64),
               (73, 41), (301, 299))
# Pillow's filters: support (in input pixels at scale 1) of each; nearest has none (one pixel, no weights).
FILTER_SUPPORT = {"bilinear": 1, "bicubic": 2}
BICUBIC_A = -0.5  # Pillow's bicubic (Keys' cubic with a = -0.5)
PRECISION_BITS = 22  # Pillow's fixed point for 8-bit images: 32 - 8 - 2 bits


class _Graph:
    """Nodes and constants under a name prefix, built one operator at a time."""

    PREFIX = "preprocess/"

    def __init__(self, wide: bool = True):
        from onnx import TensorProto, helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        # the real type of positions and weights: float64 as Pillow computes, or float32 (onnxruntime-web)
        self.real = np.float64 if wide else np.float32
        self.real_type = TensorProto.DOUBLE if wide else TensorProto.FLOAT
        self.prefix, self.nodes, self.initializers, self.count = self.PREFIX, [], [], 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{self.prefix}{hint}_{self.count}"

    def const(self, value, dtype=np.int64) -> str:
        name = self.name("const")
        self.initializers.append(self.numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, hint: str | None = None, **attrs) -> str:
        out = self.name(hint or op_type.lower())
        self.nodes.append(self.helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def dim(self, shape: str, axis: int) -> str:
        """Dimension `axis` of a Shape output, as an int64 scalar."""
        return self.op("Gather", shape, self.const(axis), axis=0)


def _resample_axis(g: _Graph, x: str, size_in: str, box: tuple[str, str], size_out: str, first: str,
                   count: int, interpolation: str) -> str:
    """One of Pillow's passes along axis 2 of the int32 tensor `x` [batch, channels, length, other]: output pixels
    first..first+count-1 of Image.resize to `size_out` pixels of the input span `box` (two float64 scalars holding
    float32 values, as Pillow's C code receives a box), as uint8 values in int32.

    Pillow's own arithmetic, operation by operation in float64 (libImaging/Resample.c, precompute_coeffs and
    normalize_coeffs_8bpc): output pixel X's centre is box0 + (X + 0.5) * scale, the filter is widened by the scale
    when shrinking, the weights of the input pixels xmin..xmax-1 are normalised to sum 1 and rounded to 22-bit fixed
    point; the sum over the window is an integer, rounded and clipped to 8 bits.
    """
    f64 = g.real
    box0, box1 = box
    positions = g.op("Add", first, g.op("Range", g.const(0), g.const(count), g.const(1)))  # [count] output pixels
    last = g.op("Sub", size_in, g.const(1))
    out_f = g.op("Cast", size_out, to=g.real_type)
    if interpolation == "nearest":
        return g.op("Gather", x, g.op("Min", _nearest_sources(g, box0, box1, out_f, first, count), last), axis=2)
    scale = g.op("Div", g.op("Sub", box1, box0), out_f)
    filterscale = g.op("Max", scale, g.const(1.0, f64))
    support = g.op("Mul", filterscale, g.const(float(FILTER_SUPPORT[interpolation]), f64))
    taps = g.op("Add", g.op("Mul", g.op("Cast", g.op("Ceil", support), to=7), g.const(2)), g.const(1))  # ksize
    centre = g.op("Add", box0, g.op("Mul", g.op("Add", g.op("Cast", positions, to=g.real_type), g.const(0.5, f64)), scale))
    low = g.op("Max", g.op("Floor", g.op("Add", g.op("Sub", centre, support), g.const(0.5, f64))),
               g.const(0.0, f64))  # xmin (truncation toward zero, then >= 0: the same as floor, then >= 0)
    high = g.op("Min", g.op("Floor", g.op("Add", g.op("Add", centre, support), g.const(0.5, f64))),
                g.op("Cast", size_in, to=g.real_type))  # xmin + xmax: one past the last input pixel
    column = g.const([-1, 1])
    window = g.op("Unsqueeze", g.op("Cast", g.op("Range", g.const(0), taps, g.const(1)), to=g.real_type), g.const([0]))
    j = g.op("Add", g.op("Reshape", low, column), window)  # [count, K] input pixels (float64, whole numbers)
    inside = g.op("Less", j, g.op("Reshape", high, column))
    reciprocal = g.op("Div", g.const(1.0, f64), filterscale)  # Pillow's ss
    argument = g.op("Mul", g.op("Add", g.op("Sub", j, g.op("Reshape", centre, column)), g.const(0.5, f64)),
                    reciprocal)
    weight = g.op("Where", inside, _filter(g, g.op("Abs", argument), interpolation), g.const(0.0, f64))
    weight = g.op("Div", weight, g.op("ReduceSum", weight, g.const([1]), keepdims=1))
    # normalize_coeffs_8bpc: to fixed point, rounded half away from zero
    fixed = g.op("Mul", g.op("Sign", weight), g.op("Floor", g.op(
        "Add", g.op("Mul", g.op("Abs", weight), g.const(float(1 << PRECISION_BITS), f64)), g.const(0.5, f64))))
    fixed = g.op("Cast", fixed, to=6)  # int32, as Pillow sums
    sources = g.op("Min", g.op("Cast", j, to=7), last)  # past the window's end: weight 0, any valid index
    gathered = g.op("Gather", x, sources, axis=2)  # [batch, channels, count, K, other]: whole rows
    weights = g.op("Unsqueeze", fixed, g.const([2]))  # [count, K, 1], broadcast along each row
    total = g.op("ReduceSum", g.op("Mul", gathered, weights), g.const([3]), keepdims=0)
    rounded = g.op("Div", g.op("Max", g.op("Add", total, g.const(1 << (PRECISION_BITS - 1), np.int32)),
                               g.const(0, np.int32)), g.const(1 << PRECISION_BITS, np.int32))
    return g.op("Min", rounded, g.const(255, np.int32))  # Pillow's clip8


def _nearest_sources(g: _Graph, box0: str, box1: str, out_f: str, first: str, count: int) -> str:
    """The input pixel each output pixel first..first+count-1 copies, as Pillow's nearest resize picks it
    (ImagingScaleAffine): the position starts at box0 + step / 2 and grows by step = (box1 - box0) / size, the
    difference taken in float32, one addition per pixel in float64; the CumSum reproduces those additions."""
    f64 = g.real
    step = g.op("Div", g.op("Cast", g.op("Sub", g.op("Cast", box1, to=1), g.op("Cast", box0, to=1)), to=g.real_type), out_f)
    start = g.op("Add", box0, g.op("Mul", step, g.const(0.5, f64)))
    steps = g.op("Expand", step, g.op("Unsqueeze", g.op("Sub", g.op("Add", first, g.const(count)), g.const(1)),
                                      g.const([0])))
    positions = g.op("CumSum", g.op("Concat", g.op("Unsqueeze", start, g.const([0])), steps, axis=0), g.const(0))
    kept = g.op("Slice", positions, g.op("Unsqueeze", first, g.const([0])),
                g.op("Unsqueeze", g.op("Add", first, g.const(count)), g.const([0])))
    return g.op("Cast", kept, to=7)  # truncation: the positions are >= 0


def _filter(g: _Graph, x: str, interpolation: str) -> str:
    """Pillow's filter at distance x >= 0, in float64 with Pillow's order of operations."""
    f64 = g.real
    one, zero = g.const(1.0, f64), g.const(0.0, f64)
    if interpolation == "bilinear":
        return g.op("Max", g.op("Sub", one, x), zero)
    a = BICUBIC_A
    near = g.op("Add", g.op("Mul", g.op("Mul", g.op("Sub", g.op("Mul", g.const(a + 2.0, f64), x),
                                                   g.const(a + 3.0, f64)), x), x), one)  # ((a+2)x - (a+3)) x x + 1
    far = g.op("Mul", g.op("Sub", g.op("Mul", g.op("Add", g.op("Mul", g.op("Sub", x, g.const(5.0, f64)), x),
                                                    g.const(8.0, f64)), x), g.const(4.0, f64)),
               g.const(a, f64))  # (((x - 5) x + 8) x - 4) a
    return g.op("Where", g.op("Less", x, one), near, g.op("Where", g.op("Less", x, g.const(2.0, f64)), far, zero))


def _round_half_even_half(g: _Graph, d: str) -> str:
    """round(d / 2), halves to even (images.crop_offset), for an int64 d >= 0."""
    q = g.op("Div", d, g.const(2))
    return g.op("Add", q, g.op("Mul", g.op("Mod", d, g.const(2)), g.op("Mod", q, g.const(2))))


def preprocessing_nodes(g: _Graph, source: str, spec: PreprocessSpec, layout: str) -> str:
    """Nodes from the raw image `source` to THE preprocessed float32 [batch, 3, S, S]; returns its name."""
    # Inside: planes of columns, [batch, channels, width, height]. Each pass then gathers whole rows of its input
    # (block copies) along axis 2 and weighs them over long contiguous rows: ~9x faster than channels last, whose
    # innermost axis of 3 defeats ONNX Runtime's loops, and 2x faster than gathering single values (measured).
    columns_first = g.op("Transpose", source, perm=[0, 3, 2, 1] if layout == "hwc" else [0, 1, 3, 2])
    x = g.op("Cast", columns_first, to=6)  # int32: Pillow's arithmetic (chw's floats hold whole numbers 0..255)
    shape = g.op("Shape", x)
    channels, width, height = g.dim(shape, 1), g.dim(shape, 2), g.dim(shape, 3)
    # colour channels [0, 1, 2], or [0, 0, 0] for grey; alpha: the last channel when their number is even
    colour_step = g.op("Cast", g.op("GreaterOrEqual", channels, g.const(3)), to=7)
    colour = g.op("Gather", x, g.op("Mul", g.const([0, 1, 2]), colour_step), axis=1)
    alpha = g.op("Gather", x, g.op("Unsqueeze", g.op("Sub", channels, g.const(1)), g.const([0])), axis=1)
    has_alpha = g.op("Equal", g.op("Mod", channels, g.const(2)), g.const(0))
    alpha = g.op("Where", has_alpha, alpha, g.const(255, np.int32))
    # composited on white (images.BACKGROUND_RGB) as Pillow's paste with a mask: round((c a + 255 (255 - a)) / 255)
    blended = g.op("Add", g.op("Mul", colour, alpha), g.op("Mul", g.op("Sub", g.const(255, np.int32), alpha),
                                                           g.const(255, np.int32)))
    rgb = g.op("Div", g.op("Add", g.op("Mul", blended, g.const(2, np.int32)), g.const(255, np.int32)),
               g.const(510, np.int32))
    size = g.const(spec.resize_size)
    crop = spec.image_size
    zero, w_f, h_f = g.const(0.0, g.real), g.op("Cast", width, to=g.real_type), g.op("Cast", height, to=g.real_type)
    if spec.resize_mode == "stretch":  # images.stretched_center_crop: resize to R x R, then crop
        out_width = out_height = size
    else:  # images.shorter_side_size: the shorter side to R, the longer one truncated
        portrait = g.op("LessOrEqual", width, height)
        out_width = g.op("Where", portrait, size, g.op("Div", g.op("Mul", size, width), height))
        out_height = g.op("Where", portrait, g.op("Div", g.op("Mul", size, height), width), size)
    left = _round_half_even_half(g, g.op("Sub", out_width, g.const(crop)))
    top = _round_half_even_half(g, g.op("Sub", out_height, g.const(crop)))
    # the width pass: the whole resize, of which the crop's columns are kept ...
    column_box, column_size, column_first = (zero, w_f), out_width, left
    if spec.resize_mode == "shorter_side":
        # ... or, shrinking, images.resized_center_crop's box: the crop's columns only, Pillow's box in float32
        shrinking = g.op("Greater", g.op("Min", width, height), size)
        sx = g.op("Div", w_f, g.op("Cast", out_width, to=g.real_type))
        as_float32 = lambda v: g.op("Cast", g.op("Cast", v, to=1), to=g.real_type)  # noqa: E731
        box0 = as_float32(g.op("Mul", g.op("Cast", left, to=g.real_type), sx))
        box1 = as_float32(g.op("Mul", g.op("Cast", g.op("Add", left, g.const(crop)), to=g.real_type), sx))
        column_box = (g.op("Where", shrinking, box0, zero), g.op("Where", shrinking, box1, w_f))
        column_size = g.op("Where", shrinking, g.const(crop), out_width)
        column_first = g.op("Where", shrinking, g.const(0), left)
    columns = _resample_axis(g, rgb, width, column_box, column_size, column_first, crop, spec.interpolation)
    rows_first = g.op("Transpose", columns, perm=[0, 1, 3, 2])  # [batch, 3, height, crop]
    resized = _resample_axis(g, rows_first, height, (zero, h_f), out_height, top, crop, spec.interpolation)
    chw = g.op("Cast", resized, to=1)
    order = [2, 1, 0] if spec.channel_order == "BGR" else [0, 1, 2]
    if spec.channel_order == "BGR":
        chw = g.op("Gather", chw, g.const(order), axis=1)
    # the same float32 operations in the same order as images.normalize: bit-identical
    mean = np.asarray(spec.mean, np.float32)[order].reshape(1, 3, 1, 1)
    std = np.asarray(spec.std, np.float32)[order].reshape(1, 3, 1, 1)
    scaled = g.op("Div", chw, g.const(255.0, np.float32))
    return g.op("Div", g.op("Sub", scaled, g.const(mean, np.float32)), g.const(std, np.float32))


def input_description(layout: str, dtype: str = "uint8") -> dict[str, object]:
    """The raw-image file's META_INPUT: what its input is, for the runtimes, serve and triton."""
    return {"kind": "image", "name": IMAGE_INPUT[dtype], "layout": layout, "dtype": dtype,
            "channels": "1 grey, 2 grey+alpha, 3 RGB, 4 RGBA"}


def input_dims(layout: str, batch: str | int = "batch") -> list[str | int]:
    return [batch, "height", "width", "channels"] if layout == "hwc" else [batch, "channels", "height", "width"]


def _check_input(layout: str, dtype: str) -> None:
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown image layout {layout!r}; choose one of: {', '.join(LAYOUTS)}")
    if dtype not in DTYPES:
        raise ConfigError(f"unknown image type {dtype!r}; choose one of: {', '.join(DTYPES)}")


def as_layout(images: np.ndarray, layout: str, dtype: str = "uint8") -> np.ndarray:
    """A batch of decoded images [batch, height, width, channels] as a raw-image file of `layout` takes them."""
    return np.ascontiguousarray(images if layout == "hwc" else images.transpose(0, 3, 1, 2), dtype=dtype)


def with_image_input(model: onnx.ModelProto, spec: PreprocessSpec, layout: str = "hwc",
                     wide: bool = True, dtype: str = "uint8") -> onnx.ModelProto:
    """A copy of the exported `model` whose input is the raw image (`layout` and `dtype`: the table above), THE
    preprocessing in the graph
    before the model, described in its metadata (META_INPUT). `wide`: positions and weights in float64, as Pillow
    computes them; False: in float32, for onnxruntime-web, whose WebAssembly build has no float64 kernels (the
    pixels then differ by one level in ~0.1-0.5% of the values instead of a handful per 100,000)."""
    import onnx
    from onnx import TensorProto, helper

    _check_input(layout, dtype)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise ConfigError(f"the raw-image graph needs opset {MIN_OPSET} or later; this file has {opset}: "
                          f"re-export with --opset 17")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    g = _Graph(wide)
    image_name = IMAGE_INPUT[dtype]
    source = g.name("image") if image_name == INPUT_NAME else image_name
    if image_name == INPUT_NAME:  # the chw input keeps the model's name: rename inside, after it
        g.nodes.append(helper.make_node("Identity", [image_name], [source], name=source))
    preprocessed = PREPROCESSED
    g.nodes.append(helper.make_node("Identity", [preprocessing_nodes(g, source, spec, layout)], [preprocessed],
                                    name=preprocessed))
    for node in graph.node:  # the model's nodes now read the preprocessed tensor
        for i, name in enumerate(node.input):
            if name == INPUT_NAME:
                node.input[i] = preprocessed
    nodes = list(g.nodes) + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(g.initializers)
    old = next(i for i in graph.input if i.name == INPUT_NAME)
    batch = old.type.tensor_type.shape.dim[0]
    batch_dim = batch.dim_param or batch.dim_value
    dims = input_dims(layout, batch_dim)
    elem = TensorProto.UINT8 if dtype == "uint8" else TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info(image_name, elem, dims) if i.name == INPUT_NAME else i
              for i in graph.input]
    del graph.input[:]
    graph.input.extend(inputs)
    set_metadata(out, {META_INPUT: input_description(layout, dtype)})
    return out


def preprocessing_model(spec: PreprocessSpec, layout: str = "hwc", opset: int = ExportRequest.opset,
                        wide: bool = True, dtype: str = "uint8") -> onnx.ModelProto:
    """The preprocessing alone: the raw image (`layout`) in, `pixel_values` float32 [batch, 3, S, S] out (tests and
    benchmarks compare it with images.preprocess)."""
    from onnx import TensorProto, helper

    _check_input(layout, dtype)
    g = _Graph(wide)
    name = IMAGE_INPUT[dtype]
    source = "raw" if name == INPUT_NAME else name
    if name == INPUT_NAME:
        g.nodes.append(helper.make_node("Identity", [name], [source], name="raw"))
    out = preprocessing_nodes(g, source, spec, layout)
    g.nodes.append(helper.make_node("Identity", [out], ["preprocessed"], name="preprocessed"))
    dims = input_dims(layout)
    elem = TensorProto.UINT8 if dtype == "uint8" else TensorProto.FLOAT
    graph = helper.make_graph(
        g.nodes, "preprocessing", [helper.make_tensor_value_info(name, elem, dims)],
        [helper.make_tensor_value_info("preprocessed", TensorProto.FLOAT, ["batch", 3, spec.image_size, spec.image_size])],
        g.initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def with_pixels_output(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of a raw-image model that also outputs its preprocessed tensor as PIXELS_OUTPUT (the export gate and
    the web folder compare it with images.preprocess, value by value)."""
    import onnx
    from onnx import TensorProto, helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.node.append(helper.make_node("Identity", [PREPROCESSED], [PIXELS_OUTPUT], name=PIXELS_OUTPUT))
    out.graph.output.append(helper.make_tensor_value_info(PIXELS_OUTPUT, TensorProto.FLOAT, ["batch", 3, "size", "size"]))
    return out


def pixel_levels(got: np.ndarray, expected: np.ndarray, spec: PreprocessSpec) -> float:
    """max |got - expected| of two preprocessed tensors (N or 1 images) in levels of 1/255."""
    std = np.asarray(spec.std, np.float32)[::-1 if spec.channel_order == "BGR" else 1][:, None, None]
    return float((np.abs(got - expected) * std * 255).max())


def check_pixels(model: onnx.ModelProto, spec: PreprocessSpec, layout: str, seed: int = 0,
                 dtype: str = "uint8") -> float:
    """Run a raw-image `model` (ONNX Runtime, CPU) on seeded noise images at every CHECK_SIZES size, as 1 to 4
    channels in turn, and raise CheckFailed unless its preprocessed pixels are within MAX_PIXEL_LEVELS of
    images.preprocess's; returns the max difference in levels. Noise is the hardest case for rounding."""
    from PIL import Image

    from vitdeploy.core.images import preprocess, to_rgb
    from vitdeploy.files.onnx_file import OUTPUT_NAME
    from vitdeploy.runtimes import open_runtime

    session = open_runtime("ort", with_pixels_output(model).SerializeToString(), device="cpu")
    rng = np.random.default_rng(seed)
    worst = 0.0
    for index, (width, height) in enumerate(CHECK_SIZES):
        channels = index % 4 + 1
        raw = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
        image = Image.fromarray(raw[..., 0] if channels == 1 else raw, ("L", "LA", "RGB", "RGBA")[channels - 1])
        batch = as_layout(raw[None], layout, dtype)
        out = session.run_outputs(batch, [OUTPUT_NAME, PIXELS_OUTPUT])
        worst = max(worst, pixel_levels(out[PIXELS_OUTPUT][0], preprocess(to_rgb(image), spec), spec))
        if not np.isfinite(out[OUTPUT_NAME]).all():
            raise CheckFailed(f"the raw-image graph gives non-finite logits for a {width}x{height} image")
    if worst > MAX_PIXEL_LEVELS + 1e-3:
        raise CheckFailed(f"the raw-image graph's pixels are {worst:.2f}/255 from images.preprocess's "
                          f"(> {MAX_PIXEL_LEVELS:g} allowed)")
    return worst
