/**
 * WebGPU suites on Dawn (npm `webgpu`): run where an adapter exists (SwiftShader from Debian's
 * chromium in CI, see webgpu_environment.js), fail under CI=true where none does, skip with what to
 * install elsewhere. The backend is brought up through the library's own `selectBackend('webgpu')`.
 */
import * as tf from '@tensorflow/tfjs';
import { ModuleLoader, nodeModuleLoader, selectBackend } from '../../src/runtime/backend';
import { useGpuPool } from '../../src/kernels/webgpu';

interface Probe {
  ok: boolean;
  adapter?: string;
  reason?: string;
  hint?: string;
}

const g = globalThis as { __webgpuProbe?: Probe; __loadDawn?: () => unknown };

export function webgpuProbe(): Probe {
  return g.__webgpuProbe ?? { ok: false, reason: 'the suite does not run in __tests__/utils/webgpu_environment.js', hint: 'add its @jest-environment docblock' };
}

/** CI=true (or 1): a suite that cannot run fails instead of skipping. */
export function inCI(): boolean {
  return ['true', '1'].includes((process.env.CI ?? '').toLowerCase());
}

/** Module loader that takes Dawn from Node's own require (it is an ES module) and the rest as usual. */
const dawnLoader: ModuleLoader = {
  resolvable: (name) => (name === 'webgpu' ? g.__loadDawn !== undefined : nodeModuleLoader.resolvable(name)),
  load: (name) => (name === 'webgpu' && g.__loadDawn ? g.__loadDawn() : nodeModuleLoader.load(name)),
};

/**
 * Makes the webgpu backend active, with the buffer pool that `Img2Pose.load` sets up (size
 * classes, readback of the asked size, writeBuffer uploads).
 */
export async function startWebGPU(): Promise<void> {
  if (tf.getBackend() !== 'webgpu') await selectBackend('webgpu', dawnLoader);
  useGpuPool();
}

/**
 * `describe` for a suite that needs a WebGPU adapter: with one, the body runs on the webgpu
 * backend; without, under CI it is one failing test saying why, elsewhere a skip and a message.
 */
export function describeWebGPU(name: string, body: () => void): void {
  const probe = webgpuProbe();
  if (probe.ok) {
    describe(`${name} [${probe.adapter}]`, () => {
      beforeAll(startWebGPU);
      body();
    });
    return;
  }
  const why = `${probe.reason}. To run these tests: ${probe.hint}`;
  if (inCI()) {
    describe(name, () => {
      it('has a WebGPU adapter (required when CI is set)', () => {
        throw new Error(why);
      });
    });
    return;
  }
  console.warn(`Skipping "${name}": ${why}`);
  describe.skip(name, body);
}
