// The web runtime's driver page: loads model.onnx with onnxruntime-web, then runs the jobs that
// vitdeploy/runtimes/web/session.py queues (run a tensor, preprocess an image, predict an image, time runs).
import * as vd from './vitdeploy.js';

const params = new URLSearchParams(location.search);
const device = params.get('device') || 'wasm';
const threads = Number(params.get('threads') || '1');
const message = (e) => String((e && e.message) || e);
const post = (path, body, headers = {}) => fetch(path, {method: 'POST', body, headers});

function tensorSpecs(session, names, metadata) {
  return names.map((name, i) => {
    const m = metadata ? metadata[i] : null;
    return {name, type: m && m.type ? m.type : null, shape: m && m.shape ? m.shape : null};
  });
}

async function blob(id) {
  return new Uint8Array(await (await fetch(`api/blob/${id}`)).arrayBuffer());
}

function concat(parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let at = 0;
  for (const p of parts) {
    out.set(new Uint8Array(p.buffer, p.byteOffset, p.byteLength), at);
    at += p.byteLength;
  }
  return out;
}

async function run(session, pixels, dims, names) {
  const start = performance.now();
  const out = await session.run({[vd.INPUT_NAME]: new vd.ort.Tensor('float32', pixels, dims)}, names);
  const ms = performance.now() - start;
  const outputs = names.map((name) => ({name, dims: out[name].dims}));
  return {header: {outputs, ms}, parts: names.map((name) => out[name].data)};
}

async function handle(job, session, info) {
  if (job.op === 'run') {
    const bytes = await blob(job.id);
    return run(session, new Float32Array(bytes.buffer), job.dims, job.outputs);
  }
  if (job.op === 'time') {
    const bytes = await blob(job.id);
    const input = {[vd.INPUT_NAME]: new vd.ort.Tensor('float32', new Float32Array(bytes.buffer), job.dims)};
    for (let i = 0; i < job.warmup; i++) await session.run(input);
    const ms = [];
    for (let i = 0; i < job.runs; i++) {
      const start = performance.now();
      await session.run(input);
      ms.push(performance.now() - start);
    }
    return {header: {ms}, parts: []};
  }
  if (job.op === 'preprocess' || job.op === 'predict') {
    if (!info) throw new Error('the model does not describe its preprocessing (no vitdeploy metadata)');
    const spec = job.spec || info.spec;
    const image = await vd.decodeImage(new Blob([await blob(job.id)]));
    const cropped = vd.cropImage(image, spec);
    const pixels = vd.normalize(cropped, spec);
    const header = {decoded: [image.width, image.height], dims: [1, 3, cropped.height, cropped.width]};
    if (job.op === 'preprocess') return {header, parts: [pixels, cropped.data]};
    const result = await run(session, pixels, header.dims, [vd.OUTPUT_NAME]);
    return {header: {...header, ...result.header}, parts: [pixels, ...result.parts]};
  }
  throw new Error(`unknown job ${job.op}`);
}

async function main() {
  if (params.get('probe') === 'webgpu') {
    const adapter = navigator.gpu ? await navigator.gpu.requestAdapter() : null;
    await post('api/ready', JSON.stringify({webgpu: Boolean(adapter)}));
    return;
  }
  let session, info = null;
  try {
    const bytes = new Uint8Array(await (await fetch('model.onnx')).arrayBuffer());
    try { info = vd.modelInfo(vd.readMetadata(bytes)); } catch (e) { info = null; }
    session = await vd.createSession(bytes, {device, threads});
    await post('api/ready', JSON.stringify({
      inputs: tensorSpecs(session, session.inputNames, session.inputMetadata),
      outputs: tensorSpecs(session, session.outputNames, session.outputMetadata),
      threads: vd.ort.env.wasm.numThreads, isolated: self.crossOriginIsolated, ort: vd.ort.env.versions.web,
      browser: navigator.userAgent, cores: navigator.hardwareConcurrency}));
  } catch (e) {
    await post('api/fatal', JSON.stringify({message: message(e)}));
    return;
  }
  for (;;) {
    const response = await fetch('api/next');
    if (response.status === 204) continue;
    const job = await response.json();
    if (job.op === 'stop') break;
    try {
      const {header, parts} = await handle(job, session, info);
      await post(`api/result/${job.id}`, concat(parts), {'X-Result': JSON.stringify(header)});
    } catch (e) {
      await post(`api/error/${job.id}`, JSON.stringify({message: message(e)}));
    }
  }
}

main();
