// vitdeploy.js: run a vitdeploy .onnx in the browser with onnxruntime-web, preprocessing images exactly as
// vitdeploy/core/images.py does (THE preprocessing definition; tests/test_web.py checks this file against it).
//
//   const model = await loadModel('model.onnx', {device: 'wasm', threads: 1});
//   const image = await decodeImage(file);             // a Blob or File: RGB pixels, EXIF orientation applied
//   const logits = await model.run(preprocess(image, model.spec));
//   topK(logits, model.labels, 5);                     // [{label, probability, index}, ...]
//
// The resize is done here, not with canvas: canvas filters differ from Pillow's (the Python side), so this
// module computes Pillow's separable convolution with the same fixed-point arithmetic and float32 box.

import * as ort from './ort/ort.min.mjs';

export { ort };
export const INPUT_NAME = 'pixel_values';
export const OUTPUT_NAME = 'logits';
const META = 'vitdeploy.';

// --- the model's self-description: ModelProto.metadata_props (field 14), read from the protobuf wire format ---

function readVarint(bytes, pos) {
  let value = 0;
  let scale = 1;
  for (;;) {
    if (pos >= bytes.length) throw new Error('the .onnx file ends inside a field (truncated?)');
    const byte = bytes[pos++];
    value += (byte & 0x7f) * scale;
    scale *= 128;
    if (!(byte & 0x80)) return [value, pos];
  }
}

function lengthDelimited(bytes, number) {
  const found = [];
  let pos = 0;
  while (pos < bytes.length) {
    let key;
    [key, pos] = readVarint(bytes, pos);
    const field = Math.floor(key / 8);
    const wire = key % 8;
    if (wire === 0) {
      [, pos] = readVarint(bytes, pos);
    } else if (wire === 2) {
      let size;
      [size, pos] = readVarint(bytes, pos);
      if (field === number) found.push(bytes.subarray(pos, pos + size));
      pos += size;
    } else if (wire === 1 || wire === 5) {
      pos += wire === 1 ? 8 : 4;
    } else {
      throw new Error(`wire type ${wire}: not an ONNX file`);
    }
  }
  return found;
}

export function readMetadata(bytes) {
  const text = new TextDecoder();
  const props = {};
  for (const entry of lengthDelimited(bytes, 14)) {
    const [key] = lengthDelimited(entry, 1);
    const [value] = lengthDelimited(entry, 2);
    props[key ? text.decode(key) : ''] = value ? text.decode(value) : '';
  }
  return props;
}

// labels and PreprocessSpec (vitdeploy/core/config.py) from the metadata, with PreprocessSpec's defaults
export function modelInfo(props) {
  for (const key of ['labels', 'preprocess']) {
    if (!(META + key in props)) throw new Error(`the model does not describe itself (metadata ${META + key} missing)`);
  }
  const spec = {interpolation: 'bilinear', channel_order: 'RGB', resize_mode: 'shorter_side',
                ...JSON.parse(props[META + 'preprocess'])};
  if (!(spec.interpolation in FILTERS) && spec.interpolation !== 'nearest') {
    throw new Error(`unknown interpolation ${spec.interpolation}`);
  }
  return {labels: JSON.parse(props[META + 'labels']).map(String), spec};
}

// --- decoding: RGB bytes, EXIF orientation applied, transparency composited on white (images.BACKGROUND_RGB) ---
// An embedded ICC profile is converted to sRGB, as images.decode_image converts it (skcms here, LittleCMS there:
// within one level); an sRGB profile keeps the pixels as stored in both.

export async function decodeImage(blob) {
  const bitmap = await createImageBitmap(blob, {
    colorSpaceConversion: 'default', premultiplyAlpha: 'none', imageOrientation: 'from-image'});
  const {width, height} = bitmap;
  const canvas = new OffscreenCanvas(width, height);
  const context = canvas.getContext('2d', {willReadFrequently: true});
  context.fillStyle = '#ffffff';
  context.fillRect(0, 0, width, height);
  context.drawImage(bitmap, 0, 0);
  bitmap.close();
  const rgba = context.getImageData(0, 0, width, height).data;
  const data = new Uint8Array(width * height * 3);
  for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) {
    data[j] = rgba[i];
    data[j + 1] = rgba[i + 1];
    data[j + 2] = rgba[i + 2];
  }
  return {width, height, data};
}

// --- Pillow's resize (Image.resize with a box, 8-bit RGB), reproduced ---

const FILTERS = {
  bilinear: {support: 1, weight: (x) => { x = Math.abs(x); return x < 1 ? 1 - x : 0; }},
  bicubic: {support: 2, weight: (x) => {
    const a = -0.5;
    x = Math.abs(x);
    if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
    if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
    return 0;
  }},
};
const PRECISION_BITS = 22; // Pillow: 32 - 8 - 2
const HALF = 1 << (PRECISION_BITS - 1);

// Pillow's box is float32 and its scale is computed from a float32 difference: the same roundings here.
function coefficients(inSize, in0, in1, outSize, filter) {
  const scale = Math.fround(in1 - in0) / outSize;
  const filterScale = Math.max(scale, 1);
  const support = filter.support * filterScale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const kk = new Int32Array(outSize * ksize);
  const weights = new Float64Array(ksize);
  const ss = 1 / filterScale; // multiplied, as Pillow does (dividing by filterScale rounds differently)
  for (let xx = 0; xx < outSize; xx++) {
    const center = in0 + (xx + 0.5) * scale;
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let total = 0;
    for (let x = 0; x < xmax; x++) {
      weights[x] = filter.weight((x + xmin - center + 0.5) * ss);
      total += weights[x];
    }
    for (let x = 0; x < xmax; x++) {
      const k = total !== 0 ? weights[x] / total : weights[x];
      kk[xx * ksize + x] = Math.trunc(k < 0 ? -0.5 + k * (1 << PRECISION_BITS) : 0.5 + k * (1 << PRECISION_BITS));
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return {ksize, bounds, kk};
}

const clip8 = (v) => { const q = v >> PRECISION_BITS; return q < 0 ? 0 : q > 255 ? 255 : q; };

// One pass of Pillow's separable convolution, along `lines` of the image: each output value sums the taps
// lineStart + line * lineStep + (tap + xmin) * tapStep of one channel, in fixed point, rounded and clipped.
// The horizontal pass runs along rows (taps 3 bytes apart), the vertical along columns (taps a row apart).
function convolve(data, lines, lineStart, lineStep, tapStep, out, outLineStep, outStep, {ksize, bounds, kk}) {
  const outLength = bounds.length / 2;
  for (let line = 0; line < lines; line++) {
    const base = lineStart + line * lineStep;
    for (let o = 0; o < outLength; o++) {
      const xmin = bounds[o * 2], xmax = bounds[o * 2 + 1], k = o * ksize;
      let s0 = HALF, s1 = HALF, s2 = HALF;
      for (let t = 0; t < xmax; t++) {
        const p = base + (t + xmin) * tapStep, w = kk[k + t];
        s0 += data[p] * w;
        s1 += data[p + 1] * w;
        s2 += data[p + 2] * w;
      }
      const q = line * outLineStep + o * outStep;
      out[q] = clip8(s0);
      out[q + 1] = clip8(s1);
      out[q + 2] = clip8(s2);
    }
  }
  return out;
}

function horizontalPass(img, rowOffset, rows, outWidth, coeffs) {
  const out = new Uint8Array(outWidth * rows * 3);
  convolve(img.data, rows, rowOffset * img.width * 3, img.width * 3, 3, out, outWidth * 3, 3, coeffs);
  return {width: outWidth, height: rows, data: out};
}

function verticalPass(img, outHeight, coeffs) {
  const out = new Uint8Array(img.width * outHeight * 3);
  convolve(img.data, img.width, 0, 3, img.width * 3, out, 3, img.width * 3, coeffs);
  return {width: img.width, height: outHeight, data: out};
}

// Pillow's NEAREST resize is an affine scaling: the source position starts half a step in and is accumulated
// step by step (not multiplied), then truncated.
function nearestPositions(inSize, in0, in1, outSize) {
  const step = Math.fround(in1 - in0) / outSize;
  const positions = new Int32Array(outSize);
  let at = in0 + step * 0.5;
  for (let i = 0; i < outSize; i++, at += step) positions[i] = Math.min(inSize - 1, Math.max(0, Math.trunc(at)));
  return positions;
}

function nearest(img, outWidth, outHeight, box) {
  const out = new Uint8Array(outWidth * outHeight * 3);
  const xs = nearestPositions(img.width, box[0], box[2], outWidth);
  const ys = nearestPositions(img.height, box[1], box[3], outHeight);
  for (let y = 0; y < outHeight; y++) {
    for (let x = 0; x < outWidth; x++) {
      const p = (ys[y] * img.width + xs[x]) * 3;
      out.set(img.data.subarray(p, p + 3), (y * outWidth + x) * 3);
    }
  }
  return {width: outWidth, height: outHeight, data: out};
}

export function resize(img, outWidth, outHeight, interpolation, box = [0, 0, img.width, img.height]) {
  box = box.map(Math.fround);
  // Pillow's shortcut: a box at whole pixels whose size is the output size is a crop
  if (Number.isInteger(box[0]) && Number.isInteger(box[1]) && Math.fround(box[2] - box[0]) === outWidth &&
      Math.fround(box[3] - box[1]) === outHeight) {
    return crop(img, box[0], box[1], outWidth, outHeight);
  }
  if (interpolation === 'nearest') return nearest(img, outWidth, outHeight, box);
  const filter = FILTERS[interpolation];
  const needHorizontal = outWidth !== img.width || box[0] !== 0 || box[2] !== outWidth;
  const needVertical = outHeight !== img.height || box[1] !== 0 || box[3] !== outHeight;
  const vertical = coefficients(img.height, box[1], box[3], outHeight, filter);
  let current = img;
  if (needHorizontal) {
    const first = vertical.bounds[0];
    const last = vertical.bounds[outHeight * 2 - 2] + vertical.bounds[outHeight * 2 - 1];
    for (let i = 0; i < outHeight; i++) vertical.bounds[i * 2] -= first;
    current = horizontalPass(img, first, last - first, outWidth,
                             coefficients(img.width, box[0], box[2], outWidth, filter));
  }
  if (needVertical) current = verticalPass(current, outHeight, vertical);
  return current === img ? {width: img.width, height: img.height, data: img.data.slice()} : current;
}

// --- THE preprocessing (images.preprocess): resize, center crop, scale, normalize, CHW ---

function roundHalfEven(v) {
  const f = Math.floor(v);
  const d = v - f;
  return d > 0.5 ? f + 1 : d < 0.5 ? f : (f % 2 === 0 ? f : f + 1);
}

const cropOffset = (length, size) => roundHalfEven((length - size) / 2);

function shorterSideSize(width, height, shorter) {
  return width <= height ? [shorter, Math.trunc(shorter * height / width)]
                         : [Math.trunc(shorter * width / height), shorter];
}

function crop(img, left, top, width, height) {
  const out = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) {
    const start = ((top + y) * img.width + left) * 3;
    out.set(img.data.subarray(start, start + width * 3), y * width * 3);
  }
  return {width, height, data: out};
}

function centerCrop(img, size) {
  return crop(img, cropOffset(img.width, size), cropOffset(img.height, size), size, size);
}

// images.resized_center_crop: only the columns the crop keeps are resized (Pillow's box), as in Python
function resizedCenterCrop(img, resizeSize, cropSize, interpolation) {
  const {width, height} = img;
  if (Math.min(width, height) === resizeSize) return centerCrop(img, cropSize);
  const [rw, rh] = shorterSideSize(width, height, resizeSize);
  if (Math.min(width, height) < resizeSize) return centerCrop(resize(img, rw, rh, interpolation), cropSize);
  const left = cropOffset(rw, cropSize), top = cropOffset(rh, cropSize);
  const sx = width / rw;
  const columns = resize(img, cropSize, rh, interpolation, [left * sx, 0, (left + cropSize) * sx, height]);
  return crop(columns, 0, top, cropSize, cropSize);
}

function stretchedCenterCrop(img, resizeSize, cropSize, interpolation) {
  if (img.width !== resizeSize || img.height !== resizeSize) img = resize(img, resizeSize, resizeSize, interpolation);
  return resizeSize !== cropSize ? centerCrop(img, cropSize) : img;
}

export function cropImage(img, spec) {
  const step = spec.resize_mode === 'stretch' ? stretchedCenterCrop : resizedCenterCrop;
  return step(img, spec.resize_size, spec.image_size, spec.interpolation);
}

// float32 at every step, in images.normalize's order: (x / 255 - mean) / std
export function normalize(img, spec) {
  const n = img.width * img.height;
  const out = new Float32Array(3 * n);
  const order = spec.channel_order === 'BGR' ? [2, 1, 0] : [0, 1, 2];
  for (let c = 0; c < 3; c++) {
    const source = order[c];
    const mean = Math.fround(spec.mean[source]), std = Math.fround(spec.std[source]);
    for (let i = 0; i < n; i++) {
      out[c * n + i] = Math.fround(Math.fround(Math.fround(img.data[i * 3 + source] / 255) - mean) / std);
    }
  }
  return out;
}

export function preprocess(img, spec) {
  return normalize(cropImage(img, spec), spec);
}

// --- the model ---

export function topK(logits, labels, k = 5) {
  const top = Math.max(...logits);
  const exp = Array.from(logits, (v) => Math.exp(v - top));
  const total = exp.reduce((a, b) => a + b, 0);
  return exp.map((e, index) => ({index, label: labels[index], probability: e / total}))
    .sort((a, b) => b.probability - a.probability).slice(0, k);
}

// device: 'wasm' or 'webgpu'; threads: WASM threads (more than 1 needs a cross-origin isolated page)
export async function createSession(bytes, {device = 'wasm', threads = 1} = {}) {
  ort.env.wasm.numThreads = threads;
  ort.env.wasm.wasmPaths = new URL('./ort/', import.meta.url).href;
  if (device === 'webgpu' && !(navigator.gpu && await navigator.gpu.requestAdapter())) {
    throw new Error('WebGPU is not usable here: the browser found no GPU adapter');
  }
  return ort.InferenceSession.create(bytes, {executionProviders: [device], graphOptimizationLevel: 'all'});
}

export async function loadModel(url, options = {}) {
  const bytes = new Uint8Array(await (await fetch(url)).arrayBuffer());
  const {labels, spec} = modelInfo(readMetadata(bytes));
  const session = await createSession(bytes, options);
  const size = spec.image_size;
  return {
    labels, spec, session,
    async run(pixels, batch = 1) {
      const input = new ort.Tensor('float32', pixels, [batch, 3, size, size]);
      const output = await session.run({[INPUT_NAME]: input});
      return output[OUTPUT_NAME].data;
    },
  };
}
