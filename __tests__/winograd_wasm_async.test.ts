// Where WebAssembly may only be compiled and instantiated asynchronously (a browser page's main
// thread refuses modules over 4 KB synchronously), selecting the wasm backend prepares the
// Winograd transforms ahead of use, and the convolutions take the Winograd path, not the direct
// fallback. Stubs WebAssembly.Module and WebAssembly.Instance as Chrome's main thread behaves.
import * as tf from '@tensorflow/tfjs';
import { convReference64 } from './utils/kernel_reference';
import { lcgValues, relErr } from './utils/lcg';
import { conv2dWinogradWasm, releaseWasmWinograd, wasmWinogradAvailable } from '../src/kernels/wasm/winograd';
import { selectBackend } from '../src/runtime/backend';

const LIMIT = 4096;
const RealModule = WebAssembly.Module;
const RealInstance = WebAssembly.Instance;
const large = new WeakSet<WebAssembly.Module>();

/** Synchronous compiles refused over 4 KB, and instances of such modules, as on Chrome's main thread. */
function refuseLargeSyncWasm(): void {
  const Module = function (this: unknown, bytes: BufferSource) {
    if (bytes.byteLength > LIMIT) throw new RangeError('WebAssembly.Compile is disallowed on the main thread, if the buffer size is larger than 4KB');
    return new RealModule(bytes);
  } as unknown as typeof WebAssembly.Module;
  const Instance = function (this: unknown, module: WebAssembly.Module, imports?: WebAssembly.Imports) {
    if (large.has(module)) throw new RangeError('WebAssembly.Instance is disallowed on the main thread, if the buffer size is larger than 4KB');
    return new RealInstance(module, imports);
  } as unknown as typeof WebAssembly.Instance;
  const compile = WebAssembly.compile.bind(WebAssembly);
  Object.assign(WebAssembly, {
    Module,
    Instance,
    compile: async (bytes: BufferSource) => {
      const m = await compile(bytes);
      if (bytes.byteLength > LIMIT) large.add(m);
      return m;
    },
  });
}

describe('Winograd on wasm where only asynchronous compilation is allowed', () => {
  const saved = { Module: WebAssembly.Module, Instance: WebAssembly.Instance, compile: WebAssembly.compile };
  beforeAll(() => refuseLargeSyncWasm());
  afterAll(() => Object.assign(WebAssembly, saved));

  it('is prepared by selecting the backend, and computes the convolution', async () => {
    await selectBackend('wasm');
    expect(wasmWinogradAvailable()).toBe(true);
    const [n, h, w, cin, cout] = [1, 9, 11, 64, 8];
    const x = lcgValues(n * h * w * cin, 61);
    const f = lcgValues(9 * cin * cout, 62).map((v) => v * Math.sqrt(3 / (9 * cin)));
    const b = lcgValues(cout, 63);
    const filter = tf.tensor4d(f, [3, 3, cin, cout]);
    const y = tf.tidy(() => conv2dWinogradWasm(tf.tensor4d(x, [n, h, w, cin]), filter, tf.tensor1d(b), false).dataSync() as Float32Array);
    releaseWasmWinograd(filter);
    filter.dispose();
    const ref = convReference64({ x: [n, h, w, cin], k: 3, cout, stride: 1, pad: 1, relu: false }, { x, w: f, b });
    expect(relErr(y, ref)).toBeLessThan(1e-5);
  });
});
