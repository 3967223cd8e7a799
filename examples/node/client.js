#!/usr/bin/env node
// A zfnet client in Node.js, from the shipped .proto files only: health, reflection (v1), model
// upload, GetModelInfo, Predict, Deconv with tensor decoding, one reconstruction written as a PNG
// and all of them as raw float32, and an error read with its google.rpc details.
//
//   npm ci
//   node client.js --server 127.0.0.1:50051 --model ../../models/zfnet-cifar10.onnx \
//        --layer 4 --out out ../../samples/cifar10/cat/0000.jpg
//
// See docs/clients.md for what each step means.
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const zlib = require('node:zlib');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const PROTO_DIR = path.resolve(__dirname, '..', '..', 'proto');
const PROTOS = [
  'zfnet/v1/zfnet.proto',
  'grpc/health/v1/health.proto',
  'grpc/reflection/v1/reflection.proto',
];
const DETAIL_PROTOS = ['google/rpc/status.proto', 'google/rpc/error_details.proto'];
const MIB = 1024 * 1024;
// The server sends up to 256 MiB; grpc-js receives 4 MiB unless told otherwise, and a Deconv
// reply is 12 KiB per reconstruction of a 32x32 model: raise the limits.
const CHANNEL_OPTIONS = {
  'grpc.max_receive_message_length': 256 * MIB,
  'grpc.max_send_message_length': 256 * MIB,
};
const LOADER_OPTIONS = {
  keepCase: true, // field names as in the .proto (snake_case)
  longs: Number, // int64 shapes and uint64 sizes as plain numbers (all far below 2^53)
  enums: String, // enum values as their names ('MAX', 'FLOAT32')
  defaults: true, // unset fields read as their defaults
  oneofs: true, // plus a property naming the member set (ref: 'sha256')
  includeDirs: [PROTO_DIR],
};

function usage() {
  return `usage: node client.js [--server HOST:PORT] [--model FILE.onnx] [--layer N|NAME] [--top-k K]
                      [--mode MAX|MAP] [--method DECONVNET|BACKPROP|GUIDED] [--out DIR] [--json FILE] IMAGE...`;
}

function parseArgs(argv) {
  const opts = {
    server: process.env.ZFNET_SERVER || '127.0.0.1:50051',
    model: path.resolve(__dirname, '..', '..', 'models', 'zfnet-cifar10.onnx'),
    layer: '4', topK: 9, mode: 'MAX', method: 'DECONVNET', out: 'out', json: null, images: [],
  };
  const flags = { '--server': 'server', '--model': 'model', '--layer': 'layer', '--top-k': 'topK',
    '--mode': 'mode', '--method': 'method', '--out': 'out', '--json': 'json' };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '-h' || argv[i] === '--help') { console.log(usage()); process.exit(0); }
    if (flags[argv[i]]) {
      if (i + 1 >= argv.length) throw new Error(`${argv[i]} needs a value\n${usage()}`);
      opts[flags[argv[i]]] = argv[++i];
    } else if (argv[i].startsWith('--')) {
      throw new Error(`unknown option ${argv[i]}\n${usage()}`);
    } else {
      opts.images.push(argv[i]);
    }
  }
  if (opts.images.length === 0) throw new Error(`no image given\n${usage()}`);
  opts.topK = Number(opts.topK);
  return opts;
}

// ---- tensors --------------------------------------------------------------------------------

// zfnet.v1.Tensor: little-endian bytes in C order. A DataView reads them at any byte offset (the
// bytes of a decoded message need not be aligned, which a Float32Array view would require) and
// on any machine.
const READERS = {
  FLOAT32: [4, (v, o) => v.getFloat32(o, true)],
  FLOAT64: [8, (v, o) => v.getFloat64(o, true)],
  FLOAT16: [2, (v, o) => halfToFloat(v.getUint16(o, true))],
  UINT8: [1, (v, o) => v.getUint8(o)],
  INT32: [4, (v, o) => v.getInt32(o, true)],
  INT64: [8, (v, o) => Number(v.getBigInt64(o, true))],
};

function halfToFloat(h) {
  const sign = h & 0x8000 ? -1 : 1;
  const exponent = (h >> 10) & 0x1f;
  const fraction = h & 0x3ff;
  if (exponent === 0) return sign * 2 ** -14 * (fraction / 1024);
  if (exponent === 31) return fraction ? NaN : sign * Infinity;
  return sign * 2 ** (exponent - 15) * (1 + fraction / 1024);
}

/** A Tensor message as { shape, data: Float64Array } (values in C order). */
function decodeTensor(tensor) {
  const reader = READERS[tensor.dtype];
  if (!reader) throw new Error(`unsupported dtype ${tensor.dtype}`);
  const [itemsize, read] = reader;
  const shape = tensor.shape.map(Number);
  const count = shape.reduce((a, b) => a * b, 1);
  const bytes = tensor.data;
  if (bytes.length !== count * itemsize) {
    throw new Error(`tensor: ${bytes.length} bytes do not fit ${tensor.dtype} ${JSON.stringify(shape)}`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  const data = new Float64Array(count);
  for (let i = 0; i < count; i++) data[i] = read(view, i * itemsize);
  return { shape, data };
}

/** float32 values as little-endian bytes, the layout of Tensor.data. */
function float32Bytes(values) {
  const out = Buffer.alloc(values.length * 4);
  values.forEach((v, i) => out.writeFloatLE(v, i * 4));
  return out;
}

// ---- PNG ---------------------------------------------------------------------------------------

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(buffer) {
  let c = 0xffffffff;
  for (const byte of buffer) c = CRC_TABLE[(c ^ byte) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function chunk(type, data) {
  const length = Buffer.alloc(4);
  length.writeUInt32BE(data.length);
  const body = Buffer.concat([Buffer.from(type, 'ascii'), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(body));
  return Buffer.concat([length, body, crc]);
}

/** An 8-bit RGB PNG of `rgb` (height x width x 3 bytes, row-major). */
function png(rgb, width, height) {
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header.set([8, 2, 0, 0, 0], 8); // 8 bits, RGB, deflate, no filter method, no interlace
  const rows = Buffer.alloc(height * (1 + width * 3));
  for (let y = 0; y < height; y++) {
    rows[y * (1 + width * 3)] = 0; // filter: none
    rgb.copy(rows, y * (1 + width * 3) + 1, y * width * 3, (y + 1) * width * 3);
  }
  const signature = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  return Buffer.concat([signature, chunk('IHDR', header), chunk('IDAT', zlib.deflateSync(rows)), chunk('IEND', Buffer.alloc(0))]);
}

/** A (3, H, W) reconstruction as display RGB, zero at mid-grey, enlarged `scale` times (as zfclient shows them). */
function reconstructionPng({ shape, data }, scale = 4) {
  const [channels, height, width] = shape;
  if (channels !== 3) throw new Error(`expected 3 channels, got ${channels}`);
  let peak = 0;
  for (const v of data) peak = Math.max(peak, Math.abs(v));
  const shown = (v) => Math.round(Math.min(Math.max(peak > 0 ? 0.5 + v / (2 * peak) : 0.5, 0), 1) * 255);
  const W = width * scale;
  const H = height * scale;
  const rgb = Buffer.alloc(W * H * 3);
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      for (let c = 0; c < 3; c++) {
        rgb[(y * W + x) * 3 + c] = shown(data[(c * height + Math.floor(y / scale)) * width + Math.floor(x / scale)]);
      }
    }
  }
  return png(rgb, W, H);
}

// ---- calls -------------------------------------------------------------------------------------

const DEADLINE_S = 300;

function unary(client, method, request) {
  const deadline = new Date(Date.now() + DEADLINE_S * 1000);
  return new Promise((resolve, reject) => {
    client[method](request, { deadline }, (err, reply) => (err ? reject(err) : resolve(reply)));
  });
}

/** Upload a model unless the server holds it already; returns its SHA-256. */
async function ensureModel(zfnet, file) {
  const bytes = fs.readFileSync(file);
  const sha256 = crypto.createHash('sha256').update(bytes).digest('hex');
  if ((await unary(zfnet, 'HasModel', { sha256 })).present) return { sha256, uploaded: false };
  await new Promise((resolve, reject) => {
    const call = zfnet.UploadModel({ deadline: new Date(Date.now() + DEADLINE_S * 1000) }, (err, info) => (err ? reject(err) : resolve(info)));
    call.write({ header: { sha256, size: bytes.length, name: path.basename(file, '.onnx') } });
    for (let start = 0; start < bytes.length; start += MIB) call.write({ chunk: bytes.subarray(start, start + MIB) });
    call.end();
  });
  return { sha256, uploaded: true };
}

/** The services the server offers, through the standard grpc.reflection.v1. */
function listServices(reflection) {
  return new Promise((resolve, reject) => {
    const call = reflection.ServerReflectionInfo();
    call.on('data', (reply) => {
      resolve(reply.list_services_response.service.map((s) => s.name).sort());
      call.end();
    });
    call.on('error', reject);
    call.write({ list_services: '' });
  });
}

/** A failed call's code, message and google.rpc details (from the grpc-status-details-bin trailer). */
function errorDetails(err, rpcTypes) {
  const out = { code: grpc.status[err.code], message: err.details };
  const [raw] = err.metadata ? err.metadata.get('grpc-status-details-bin') : [];
  if (!raw) return out;
  const status = rpcTypes.lookupType('google.rpc.Status').decode(raw);
  for (const any of status.details) {
    const type = any.type_url.slice(any.type_url.lastIndexOf('/') + 1); // type.googleapis.com/google.rpc.ErrorInfo
    const detail = rpcTypes.lookupType(type).toObject(rpcTypes.lookupType(type).decode(any.value), { defaults: true });
    if (type === 'google.rpc.ErrorInfo') Object.assign(out, { reason: detail.reason, domain: detail.domain, metadata: detail.metadata });
    if (type === 'google.rpc.BadRequest') out.field_violations = detail.field_violations.map((v) => v.field);
    if (type === 'google.rpc.ResourceInfo') out.resource = { type: detail.resource_type, name: detail.resource_name };
  }
  return out;
}

function loadDetailTypes() {
  const root = new protobuf.Root();
  root.resolvePath = (origin, target) => (protobuf.common[target] ? target : path.join(PROTO_DIR, target));
  return root.loadSync(DETAIL_PROTOS, { keepCase: true });
}

// ---- the run -----------------------------------------------------------------------------------

/** `value` if it names a value of the enum, else an error listing them (a misspelt name would
 * otherwise be dropped by protobuf.js and arrive as unset, the default). */
function enumValue(definition, enumName, value) {
  const names = definition[enumName].type.value.map((v) => v.name).filter((n) => !n.endsWith('_UNSPECIFIED'));
  if (!names.includes(value)) throw new Error(`unknown ${enumName.split('.').pop()} '${value}': use ${names.join(', ')}`);
  return value;
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const definition = protoLoader.loadSync(PROTOS, LOADER_OPTIONS);
  enumValue(definition, 'zfnet.v1.DeconvMode', opts.mode);
  enumValue(definition, 'zfnet.v1.DeconvMethod', opts.method);
  const loaded = grpc.loadPackageDefinition(definition);
  const credentials = grpc.credentials.createInsecure();
  const zfnet = new loaded.zfnet.v1.Zfnet(opts.server, credentials, CHANNEL_OPTIONS);
  const health = new loaded.grpc.health.v1.Health(opts.server, credentials);
  const reflection = new loaded.grpc.reflection.v1.ServerReflection(opts.server, credentials);
  const result = { server: opts.server };

  result.health = (await unary(health, 'Check', { service: 'zfnet.v1.Zfnet' })).status;
  result.services = await listServices(reflection);
  console.log(`health: ${result.health}; services: ${result.services.join(', ')}`);

  const { sha256, uploaded } = await ensureModel(zfnet, opts.model);
  const model = { sha256 };
  const info = await unary(zfnet, 'GetModelInfo', model);
  result.model = { sha256, uploaded, name: info.name, input_shape: info.input_shape, classes: info.classes, layers: info.layers.length };
  console.log(`model ${info.name} (${sha256.slice(0, 12)}, ${uploaded ? 'uploaded' : 'already on the server'}): ` +
    `input ${JSON.stringify(info.input_shape)}, ${info.layers.length} layers, ${info.classes.length} classes`);

  const images = opts.images.map((file) => ({ encoded: fs.readFileSync(file), label: path.basename(file) }));
  const predicted = await unary(zfnet, 'Predict', { model, images, top_k: 3 });
  const probabilities = decodeTensor(predicted.probabilities);
  result.probabilities = { shape: probabilities.shape, data: Array.from(probabilities.data) };
  result.predictions = predicted.predictions.map((p) => p.top.map((s) => ({ index: s.index, label: s.label, probability: s.probability })));
  predicted.predictions.forEach((p, i) => {
    console.log(`${images[i].label}: ${p.top.map((s) => `${s.label} ${s.probability.toFixed(3)}`).join(', ')}`);
  });

  const layer = /^\d+$/.test(opts.layer) ? { number: Number(opts.layer) } : { name: opts.layer };
  const request = { model, images, layer, channels: { top_k: opts.topK }, mode: opts.mode, method: opts.method };
  const reply = await unary(zfnet, 'Deconv', request);
  // The server echoes what it ran: a check that no enum name went astray on the way.
  if (reply.mode !== opts.mode || reply.method !== opts.method) {
    throw new Error(`asked for ${opts.mode}/${opts.method}, the server ran ${reply.mode}/${reply.method}`);
  }
  fs.mkdirSync(opts.out, { recursive: true });
  const rows = [];
  const raw = [];
  reply.images.forEach((image, i) => image.reconstructions.forEach((r) => {
    const pixels = decodeTensor(r.pixels);
    rows.push({ image: i, label: image.label, channel: r.channel, activation: r.activation, location: r.location,
      receptive_field: [r.receptive_field.top, r.receptive_field.left, r.receptive_field.bottom, r.receptive_field.right],
      shape: pixels.shape });
    raw.push(float32Bytes(pixels.data));
    if (rows.length === 1) fs.writeFileSync(path.join(opts.out, 'reconstruction.png'), reconstructionPng(pixels));
  }));
  fs.writeFileSync(path.join(opts.out, 'reconstructions.f32'), Buffer.concat(raw));
  result.deconv = { layer: reply.layer, mode: reply.mode, method: reply.method, reconstructions: rows,
    raw: { file: 'reconstructions.f32', dtype: 'float32 little-endian', shape: [rows.length, ...(rows[0] ? rows[0].shape : [])] } };
  const first = rows[0];
  console.log(`deconv ${reply.layer} (${reply.mode}, ${reply.method}): ${rows.length} reconstructions; ` +
    (first ? `first: ${first.label} channel ${first.channel}, activation ${first.activation.toFixed(2)} at ${JSON.stringify(first.location)}, ` +
      `receptive field ${JSON.stringify(first.receptive_field)} -> ${path.join(opts.out, 'reconstruction.png')}` : ''));

  // An error, on purpose: a layer the model does not have.
  try {
    await unary(zfnet, 'Deconv', { model, images: images.slice(0, 1), layer: { name: 'no-such-layer' } });
    throw new Error('a Deconv of layer no-such-layer succeeded');
  } catch (err) {
    if (err.code === undefined) throw err;
    result.error = errorDetails(err, loadDetailTypes());
    const e = result.error;
    console.log(`error, as expected: ${e.code} ${e.reason} field ${e.field_violations} ` +
      `resource ${e.resource && `${e.resource.type} ${e.resource.name}`}: ${e.message}`);
  }

  if (opts.json) fs.writeFileSync(opts.json, JSON.stringify(result, null, 1));
  for (const client of [zfnet, health, reflection]) client.close();
}

main().catch((err) => {
  console.error(`error: ${err.details || err.message}${err.code !== undefined ? ` (${grpc.status[err.code]})` : ''}`);
  process.exit(1);
});
