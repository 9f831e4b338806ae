/**
 * Image inputs -> RGB float32 tensors (src/io/images.ts), against PIL's `Image.open(f).convert('RGB')`,
 * which is what upstream feeds its network. Expected hashes: sha256 of the uint8 HWC RGB bytes
 * of `np.array(Image.open(f).convert('RGB'))` (Pillow 9.4).
 */
import { createHash } from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as zlib from 'zlib';
import * as tf from '@tensorflow/tfjs';
import { Jimp, defaultFormats } from 'jimp';
import { decodeImage, decodeNetworkImage, describeInput, ImageInput, sniffFormat } from '../src/io/images';
import { InputError } from '../src/errors';
import { imagePath } from './utils/golden';

const PIL_RGB_SHA256: Record<string, { hw: [number, number]; sha: string }> = {
  'small_1.png': { hw: [90, 120], sha: '2a91d5e6046b16fc3238a790aeb9f9fe7328a41f8e6bf2c0ffe62f67de46cb00' },
  'gray_1.png': { hw: [300, 300], sha: '8bf55b0904721e445dc1f8bd64114dde4a759c1147bcccabfb4b37c2045acd68' },
  'rgba_1.png': { hw: [320, 256], sha: '7826dcd2345149fdadfafd2b1306de333afda108ee521c30337d6b27fc27f0cc' },
};

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'img2pose-io-'));
});
afterAll(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
});

function write(name: string, bytes: Uint8Array | string): string {
  const p = path.join(tmp, name);
  fs.writeFileSync(p, bytes);
  return p;
}

/** Decode, check the tensor contract, return its values as uint8 and dispose it. */
async function decodeToBytes(input: ImageInput): Promise<{ shape: number[]; bytes: Uint8Array; raw: Float32Array }> {
  const t = await decodeImage(input);
  try {
    expect(t.dtype).toBe('float32');
    expect(t.rank).toBe(3);
    expect(t.shape[2]).toBe(3);
    const raw = (await t.data()) as Float32Array;
    return { shape: t.shape, bytes: Uint8Array.from(raw), raw };
  } finally {
    t.dispose();
  }
}

function sha256(b: Uint8Array): string {
  return createHash('sha256').update(b).digest('hex');
}

async function encodeJpeg(png: Buffer): Promise<Buffer> {
  const pngCodec = defaultFormats.map((f) => f()).find((f) => f.mime === 'image/png')!;
  const jpegCodec = defaultFormats.map((f) => f()).find((f) => f.mime === 'image/jpeg')!;
  // jimp's png and jpeg codecs are synchronous.
  const bitmap = pngCodec.decode(png);
  return Buffer.from(jpegCodec.encode(bitmap, { quality: 95 }));
}

function crc32(bytes: Uint8Array): number {
  let c = ~0;
  for (const b of bytes) {
    c ^= b;
    for (let k = 0; k < 8; k++) c = (c >>> 1) ^ (0xedb88320 & -(c & 1));
  }
  return ~c >>> 0;
}

/** A 16-bit grayscale PNG (colour type 0, bit depth 16), which jimp's encoder cannot write. */
function png16Gray(values: number[], width: number, height: number): Buffer {
  const chunk = (type: string, data: Buffer): Buffer => {
    const body = Buffer.concat([Buffer.from(type, 'latin1'), data]);
    const out = Buffer.alloc(body.length + 8);
    out.writeUInt32BE(data.length, 0);
    body.copy(out, 4);
    out.writeUInt32BE(crc32(body), body.length + 4);
    return out;
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr.set([16, 0, 0, 0, 0], 8);
  const rows = Buffer.alloc(height * (1 + width * 2));
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) rows.writeUInt16BE(values[y * width + x], y * (1 + width * 2) + 1 + x * 2);
  }
  const signature = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  return Buffer.concat([signature, chunk('IHDR', ihdr), chunk('IDAT', zlib.deflateSync(rows)), chunk('IEND', Buffer.alloc(0))]);
}

/** Expect an InputError naming `mentions`, with no tensor left behind. */
async function expectInputError(
  input: unknown,
  found: RegExp,
  mentions: string[] = [],
  index?: number,
): Promise<InputError> {
  const before = tf.memory().numTensors;
  let caught: unknown;
  try {
    const t = await decodeImage(input as ImageInput, index);
    t.dispose();
  } catch (e) {
    caught = e;
  }
  expect(tf.memory().numTensors).toBe(before);
  expect(caught).toBeInstanceOf(InputError);
  const err = caught as InputError;
  expect(err.code).toBe('INVALID_INPUT');
  expect(err.found).toMatch(found);
  expect(err.expected.length).toBeGreaterThan(0);
  expect(err.message).toContain(err.expected);
  expect(err.message).toContain(err.found);
  for (const m of mentions) expect(err.message).toContain(m);
  expect(err.message).not.toMatch(/tfjs|kernel|backend/i);
  expect(err.index).toBe(index);
  // The network's decode (8-bit samples kept as they are) checks and fails the same way.
  const network = await decodeNetworkImage(input as ImageInput, index).catch((e: unknown) => e);
  expect(network).toBeInstanceOf(InputError);
  expect((network as InputError).message).toBe(err.message);
  expect(tf.memory().numTensors).toBe(before);
  return err;
}

describe('files and encoded bytes', () => {
  it.each(Object.keys(PIL_RGB_SHA256))('%s decodes to exactly PIL convert("RGB")', async (name) => {
    const { shape, bytes, raw } = await decodeToBytes(imagePath(name));
    expect(shape).toEqual([...PIL_RGB_SHA256[name].hw, 3]);
    expect(Array.from(raw.subarray(0, 64)).every((v) => Number.isInteger(v))).toBe(true);
    expect(sha256(bytes)).toBe(PIL_RGB_SHA256[name].sha);
  });

  it('drops alpha without compositing (rgba_1.png pixel (0,0) has alpha 61)', async () => {
    const { raw } = await decodeToBytes(imagePath('rgba_1.png'));
    expect(Array.from(raw.subarray(0, 3))).toEqual([79, 166, 135]);
  });

  it('replicates gray to three equal channels', async () => {
    const { raw } = await decodeToBytes(imagePath('gray_1.png'));
    for (let p = 0; p < raw.length; p += 3 * 97) {
      expect(raw[p + 1]).toBe(raw[p]);
      expect(raw[p + 2]).toBe(raw[p]);
    }
  });

  it('Buffer, Uint8Array view (non-zero offset) and ArrayBuffer give the same pixels as the path', async () => {
    const file = fs.readFileSync(imagePath('small_1.png'));
    const padded = new Uint8Array(file.length + 16);
    padded.set(file, 7);
    const view = padded.subarray(7, 7 + file.length);
    const arrayBuffer = file.buffer.slice(file.byteOffset, file.byteOffset + file.length);
    const sha = PIL_RGB_SHA256['small_1.png'].sha;
    for (const input of [file, view, arrayBuffer as ArrayBuffer]) {
      expect(sha256((await decodeToBytes(input)).bytes)).toBe(sha);
    }
  });

  it('decodes JPEG files and bytes close to the source pixels', async () => {
    const jpeg = await encodeJpeg(fs.readFileSync(imagePath('small_1.png')));
    expect(sniffFormat(jpeg)).toBe('JPEG');
    const p = write('small.jpg', jpeg);
    const fromPath = await decodeToBytes(p);
    const fromBytes = await decodeToBytes(jpeg);
    expect(fromPath.shape).toEqual([90, 120, 3]);
    expect(sha256(fromPath.bytes)).toBe(sha256(fromBytes.bytes));
    const src = await decodeToBytes(imagePath('small_1.png'));
    let sum = 0;
    for (let i = 0; i < src.raw.length; i++) sum += Math.abs(src.raw[i] - fromPath.raw[i]);
    const meanAbs = sum / src.raw.length;
    expect(meanAbs).toBeGreaterThan(0); // it really went through a lossy codec
    expect(meanAbs).toBeLessThan(4);
  });

  it('16-bit grayscale PNG is scaled to 8 bits (upstream PIL would clip it to white)', async () => {
    const levels = Array.from({ length: 16 }, (_, i) => i * 4096);
    const { raw, shape } = await decodeToBytes(png16Gray(levels, 4, 4));
    expect(shape).toEqual([4, 4, 3]);
    const red = Array.from(raw).filter((_, i) => i % 3 === 0);
    expect(red).toEqual(levels.map((v) => Math.round((v * 255) / 65535)));
  });

  it('a file with a misleading extension is decoded by its content', async () => {
    const p = write('actually_png.jpg', fs.readFileSync(imagePath('small_1.png')));
    expect(sha256((await decodeToBytes(p)).bytes)).toBe(PIL_RGB_SHA256['small_1.png'].sha);
  });
});

describe('bad files and bytes', () => {
  it('missing path', async () => {
    const p = path.join(tmp, 'nope', 'missing.jpg');
    await expectInputError(p, /no such file/, [p]);
  });

  it('directory', async () => {
    await expectInputError(tmp, /directory/, [tmp]);
  });

  it('empty file', async () => {
    const p = write('empty.png', '');
    await expectInputError(p, /empty file/, [p]);
  });

  it('empty path', async () => {
    await expectInputError('', /empty path/);
  });

  it('truncated PNG', async () => {
    const png = fs.readFileSync(imagePath('small_1.png'));
    const p = write('truncated.png', png.subarray(0, Math.floor(png.length / 2)));
    await expectInputError(p, /truncated or corrupt PNG/, [p]);
  });

  it('PNG cut by its last byte', async () => {
    const png = fs.readFileSync(imagePath('small_1.png'));
    await expectInputError(png.subarray(0, png.length - 1), /truncated or corrupt PNG/, ['Buffer of']);
  });

  it('truncated JPEG', async () => {
    const jpeg = await encodeJpeg(fs.readFileSync(imagePath('small_1.png')));
    const p = write('truncated.jpg', jpeg.subarray(0, jpeg.length - 100));
    await expectInputError(p, /truncated or corrupt JPEG/, [p]);
  });

  it('corrupt JPEG (garbage in the headers)', async () => {
    const jpeg = Buffer.from(await encodeJpeg(fs.readFileSync(imagePath('small_1.png'))));
    jpeg.fill(0x07, 20, 400);
    const p = write('corrupt.jpg', jpeg);
    await expectInputError(p, /truncated or corrupt JPEG/, [p]);
  });

  it('text file with an image extension', async () => {
    const p = write('notes.jpg', 'these are not pixels\n');
    const err = await expectInputError(p, /not an image/, [p, 'JPEG or PNG']);
    expect(err.found).toContain('74 68 65 73'); // "thes", so the user sees what the file starts with
  });

  it('binary non-image with a .png extension', async () => {
    const p = write('random.png', Uint8Array.from({ length: 300 }, (_, i) => (i * 37 + 11) & 255));
    await expectInputError(p, /not an image/, [p]);
  });

  it('empty buffer', async () => {
    await expectInputError(Buffer.alloc(0), /0 bytes/);
  });
});

describe('raw pixels', () => {
  it('1, 3 and 4 channels of 8-bit data', async () => {
    const gray = await decodeToBytes({ data: Uint8Array.from([0, 128, 255, 7]), width: 2, height: 2, channels: 1 });
    expect(gray.shape).toEqual([2, 2, 3]);
    expect(Array.from(gray.raw)).toEqual([0, 0, 0, 128, 128, 128, 255, 255, 255, 7, 7, 7]);

    const rgb = await decodeToBytes({ data: Uint8ClampedArray.from([1, 2, 3, 4, 5, 6]), width: 2, height: 1, channels: 3 });
    expect(rgb.shape).toEqual([1, 2, 3]);
    expect(Array.from(rgb.raw)).toEqual([1, 2, 3, 4, 5, 6]);

    const rgba = await decodeToBytes({ data: Uint8Array.from([10, 20, 30, 0, 40, 50, 60, 255]), width: 1, height: 2, channels: 4 });
    expect(rgba.shape).toEqual([2, 1, 3]);
    expect(Array.from(rgba.raw)).toEqual([10, 20, 30, 40, 50, 60]);
  });

  it('float data in 0..255 is kept as is (no rounding)', async () => {
    const f = await decodeToBytes({ data: Float32Array.from([0, 0.5, 254.75, 255, 1, 2]), width: 2, height: 1, channels: 3 });
    expect(Array.from(f.raw)).toEqual([0, 0.5, 254.75, 255, 1, 2]);
  });

  it('rejects wrong sample counts, channel counts, sizes and data types', async () => {
    await expectInputError({ data: new Uint8Array(11), width: 2, height: 2, channels: 3 }, /11 samples/, ['12 samples']);
    await expectInputError({ data: new Uint8Array(8), width: 2, height: 2, channels: 2 }, /channels 2/);
    await expectInputError({ data: new Uint8Array(0), width: 0, height: 2, channels: 3 }, /width 0/);
    await expectInputError({ data: new Uint8Array(6), width: 1.5, height: 2, channels: 3 }, /width 1.5/);
    await expectInputError({ data: [1, 2, 3], width: 1, height: 1, channels: 3 }, /array of length 3/);
    await expectInputError({ data: new Float64Array(3), width: 1, height: 1, channels: 3 }, /Float64Array/);
  });

  it('rejects NaN, Infinity and values outside 0..255 in float data', async () => {
    const raw = (values: number[]) => ({ data: Float32Array.from(values), width: values.length / 3, height: 1, channels: 3 as const });
    await expectInputError(raw([0, NaN, 3]), /1 NaN or infinite value$/);
    await expectInputError(raw([0, Infinity, 3, -Infinity, 1, 1]), /2 NaN or infinite values/);
    await expectInputError(raw([0, 255.5, 3]), /values from 0 to 255.5/);
    await expectInputError(raw([-1, 0.5, 0.25]), /values from -1 to 0.5/);
  });
});

describe('tf.Tensor3D', () => {
  it('1, 3 and 4 channels, int32 and float32, into a new float32 RGB tensor', async () => {
    const cases: [tf.Tensor3D, number[]][] = [
      [tf.tensor3d([5, 250], [1, 2, 1], 'int32'), [5, 5, 5, 250, 250, 250]],
      [tf.tensor3d([1, 2, 3, 4, 5, 6], [2, 1, 3], 'float32'), [1, 2, 3, 4, 5, 6]],
      [tf.tensor3d([1, 2, 3, 9, 4, 5, 6, 0], [1, 2, 4], 'int32'), [1, 2, 3, 4, 5, 6]],
      [tf.tensor3d([0.25, 2, 3, 0.5], [1, 1, 4], 'float32'), [0.25, 2, 3]],
    ];
    for (const [input, expected] of cases) {
      const before = tf.memory().numTensors;
      const out = await decodeImage(input);
      expect(out).not.toBe(input);
      expect(out.dtype).toBe('float32');
      expect(out.shape).toEqual([input.shape[0], input.shape[1], 3]);
      expect(Array.from(await out.data())).toEqual(expected);
      out.dispose();
      expect(input.isDisposed).toBe(false);
      expect(tf.memory().numTensors).toBe(before);
      input.dispose();
    }
  });

  it('the returned tensor outlives the caller disposing the input', async () => {
    const input = tf.tensor3d([1, 2, 3], [1, 1, 3]);
    const out = await decodeImage(input);
    input.dispose();
    expect(Array.from(await out.data())).toEqual([1, 2, 3]);
    out.dispose();
  });

  it('rejects wrong rank, dtype, channels, empty images, disposed tensors', async () => {
    const rank2 = tf.zeros([4, 4]);
    const rank4 = tf.zeros([1, 4, 4, 3]);
    const bool = tf.zeros([2, 2, 3], 'bool');
    const two = tf.zeros([2, 2, 2]);
    const empty = tf.zeros([0, 4, 3]);
    const gone = tf.zeros([2, 2, 3]);
    gone.dispose();
    try {
      await expectInputError(rank2, /rank 2, shape \[4,4\]/, ['rank-3 HWC']);
      await expectInputError(rank4, /squeeze the batch axis/);
      await expectInputError(bool, /dtype bool/);
      await expectInputError(two, /2 channels/);
      await expectInputError(empty, /shape \[0,4,3\]/);
      await expectInputError(gone, /disposed/);
    } finally {
      tf.dispose([rank2, rank4, bool, two, empty]);
    }
  });

  it('rejects NaN, Infinity and out-of-range values (alpha is not checked: it is dropped)', async () => {
    const bad: [tf.Tensor3D, RegExp][] = [
      [tf.tensor3d([1, NaN, 3], [1, 1, 3]), /1 NaN or infinite value/],
      [tf.tensor3d([1, Infinity, 3], [1, 1, 3]), /1 NaN or infinite value/],
      [tf.tensor3d([1, 300, 3], [1, 1, 3], 'int32'), /values from 1 to 300/],
      [tf.tensor3d([-0.5, 1, 3], [1, 1, 3]), /values from -0.5 to 3/],
      [tf.tensor3d([NaN], [1, 1, 1]), /1 NaN/],
    ];
    for (const [t, found] of bad) {
      await expectInputError(t, found, ['tf.Tensor [1,1,']);
      t.dispose();
    }
    const alphaOutOfRange = tf.tensor3d([1, 2, 3, 1000], [1, 1, 4]);
    const ok = await decodeImage(alphaOutOfRange);
    expect(Array.from(await ok.data())).toEqual([1, 2, 3]);
    tf.dispose([ok, alphaOutOfRange]);
  });
});

describe('Jimp images and everything else', () => {
  it('a Jimp image: RGBA bitmap, alpha dropped', async () => {
    // A standalone Uint8Array: jimp's fromBitmap wraps the whole ArrayBuffer of what it is given.
    const data = new Uint8Array([10, 20, 30, 0, 40, 50, 60, 128, 70, 80, 90, 255, 1, 2, 3, 4]);
    const image = Jimp.fromBitmap({ data, width: 2, height: 2 });
    expect(describeInput(image)).toBe('Jimp image 2x2');
    const out = await decodeToBytes(image);
    expect(out.shape).toEqual([2, 2, 3]);
    expect(Array.from(out.raw)).toEqual([10, 20, 30, 40, 50, 60, 70, 80, 90, 1, 2, 3]);
  });

  it('a bitmap whose size is not width*height*4 is refused', async () => {
    await expectInputError({ bitmap: { data: new Uint8Array(10), width: 2, height: 2 } }, /length 10/);
    await expectInputError({ bitmap: { data: new Uint8Array(8192), width: 2, height: 2 } }, /length 8192/);
  });

  it('unsupported values say what is accepted', async () => {
    const err = await expectInputError(42, /^42$/);
    expect(err.expected).toMatch(/file path.*tf\.Tensor3D.*Jimp/);
    await expectInputError(null, /null/);
    await expectInputError({ foo: 1 }, /an object/);
    await expectInputError(undefined, /undefined/);
  });

  it('errors carry the batch index when given one', async () => {
    const err = await expectInputError('/definitely/not/here.png', /no such file/, ['#3', '/definitely/not/here.png'], 3);
    expect(err.atIndex(5).index).toBe(5);
    expect(err.atIndex(5).message).toContain('#5');
  });

  it('describes inputs for messages', () => {
    expect(describeInput('/a/b.png')).toBe('file "/a/b.png"');
    expect(describeInput(Buffer.alloc(3))).toBe('Buffer of 3 bytes');
    expect(describeInput(new Uint8Array(4))).toBe('Uint8Array of 4 bytes');
    expect(describeInput({ data: new Uint8Array(12), width: 2, height: 2, channels: 3 })).toBe('raw pixels 2x2x3');
    const t = tf.zeros([2, 3, 3]);
    expect(describeInput(t)).toBe('tf.Tensor [2,3,3] float32');
    t.dispose();
  });
});

describe('decodeNetworkImage: 8-bit samples for the network', () => {
  /** RGB of 8-bit samples, as numbers. */
  function rgbOf(data: ArrayLike<number>, channels: number): number[] {
    const out: number[] = [];
    for (let p = 0; p < data.length; p += channels) for (let c = 0; c < 3; c++) out.push(data[p + (channels === 1 ? 0 : c)]);
    return out;
  }

  it('files, bytes and Jimp images come back as their RGBA samples, no tensor made; RGB equals decodeImage', async () => {
    const jpeg = await encodeJpeg(fs.readFileSync(imagePath('small_1.png')));
    const image = Jimp.fromBitmap({ data: new Uint8Array([9, 8, 7, 6, 5, 4, 3, 2]), width: 2, height: 1 });
    for (const input of [imagePath('rgba_1.png'), imagePath('gray_1.png'), fs.readFileSync(imagePath('small_1.png')), jpeg, image]) {
      const before = tf.memory().numTensors;
      const got = await decodeNetworkImage(input);
      expect(tf.memory().numTensors).toBe(before);
      if (got instanceof tf.Tensor) throw new Error(`a tensor for ${describeInput(input)}`);
      expect(got.channels).toBe(4);
      expect(got.data).toBeInstanceOf(Uint8Array);
      const t = await decodeImage(input);
      expect([got.height, got.width, 3]).toEqual(t.shape);
      expect(rgbOf(got.data, 4)).toEqual(Array.from(t.dataSync()));
      t.dispose();
    }
  });

  it("8-bit raw pixels are the caller's own array; float pixels and tensors become decodeImage's tensor", async () => {
    for (const channels of [1, 3, 4] as const) {
      const data = Uint8ClampedArray.from({ length: 6 * channels }, (_, i) => (i * 41) % 256);
      const got = await decodeNetworkImage({ data, width: 3, height: 2, channels });
      expect(got).toEqual({ data, width: 3, height: 2, channels });
      expect((got as { data: unknown }).data).toBe(data);
    }
    const floats = { data: Float32Array.from({ length: 6 }, (_, i) => i * 10.5), width: 3, height: 2, channels: 1 as const };
    const tensor = tf.tensor3d([1, 2, 3, 4, 5, 6], [1, 2, 3], 'int32');
    for (const input of [floats, tensor]) {
      const got = await decodeNetworkImage(input);
      const expected = await decodeImage(input);
      expect(got).toBeInstanceOf(tf.Tensor);
      expect((got as tf.Tensor).dtype).toBe('float32');
      expect(Array.from((got as tf.Tensor).dataSync())).toEqual(Array.from(expected.dataSync()));
      tf.dispose([got as tf.Tensor, expected]);
    }
    tensor.dispose();
  });
});
