/**
 * Backend selection (src/runtime/backend.ts). On this machine tfjs-node is not installed and Dawn
 * (`webgpu`, a dev dependency) is hidden from the loader here, so the real loader must pick wasm
 * for 'auto' and refuse 'tensorflow' / 'webgpu' with install instructions (Dawn itself is
 * exercised by the webgpu_*.test.ts suites). The preference order and the WebGPU set-up are checked with a fake module
 * loader that "installs" packages registering stand-in backends (the pure-JS cpu kernels).
 */
import * as tf from '@tensorflow/tfjs';
import { MathBackendCPU } from '@tensorflow/tfjs-backend-cpu';
import { AUTO_ORDER, ModuleLoader, nodeModuleLoader, selectBackend, vulkanDeviceLikely } from '../src/runtime/backend';
import { BackendError, OptionError } from '../src/errors';

type Globals = Record<string, unknown>;
const g = globalThis as Globals;

afterEach(async () => {
  for (const name of ['tensorflow', 'webgpu']) {
    if (tf.findBackendFactory(name) !== null) tf.removeBackend(name);
  }
  delete g.navigator;
  delete g.GPUBufferUsage;
  await tf.setBackend('wasm');
});

/** A loader where `packages` are installed; loading runs the given side effect. */
function fakeLoader(packages: Record<string, () => unknown>): ModuleLoader & { loaded: string[] } {
  const loaded: string[] = [];
  return {
    loaded,
    resolvable: (name) => name in packages,
    load: (name) => {
      loaded.push(name);
      const make = packages[name];
      if (!make) throw new Error(`Cannot find module '${name}'`);
      return make();
    },
  };
}

function registerStandIn(name: string): void {
  tf.registerBackend(name, () => new MathBackendCPU());
}

/** The real loader, on a machine without Dawn. */
const noDawn: ModuleLoader = {
  resolvable: (name) => name !== 'webgpu' && nodeModuleLoader.resolvable(name),
  load: (name) => nodeModuleLoader.load(name),
};

describe('on this machine (real module loader, Dawn not installed)', () => {
  it('explicit wasm works', async () => {
    await tf.setBackend('cpu');
    expect(await selectBackend('wasm')).toBe('wasm');
    expect(tf.getBackend()).toBe('wasm');
  });

  it('explicit cpu works', async () => {
    expect(await selectBackend('cpu')).toBe('cpu');
    expect(tf.getBackend()).toBe('cpu');
  });

  it('auto picks wasm (no tfjs-node, no Dawn here)', async () => {
    expect(nodeModuleLoader.resolvable('@tensorflow/tfjs-node')).toBe(false);
    expect(noDawn.resolvable('webgpu')).toBe(false);
    await tf.setBackend('cpu');
    expect(await selectBackend('auto', noDawn)).toBe('wasm');
    expect(tf.getBackend()).toBe('wasm');
    // Nothing of the failed WebGPU probe stays behind.
    expect(g.navigator).toBeUndefined();
  });

  it('explicit tensorflow fails, saying what to install, and leaves the backend as it was', async () => {
    const err = await selectBackend('tensorflow').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BackendError);
    const e = err as BackendError;
    expect(e.code).toBe('BACKEND_UNAVAILABLE');
    expect(e.backend).toBe('tensorflow');
    expect(e.message).toContain('neither @tensorflow/tfjs-node-gpu nor @tensorflow/tfjs-node is installed');
    expect(e.message).toContain('npm install @tensorflow/tfjs-node');
    expect(tf.getBackend()).toBe('wasm');
  });

  it('explicit webgpu fails, saying what to install', async () => {
    const err = await selectBackend('webgpu', noDawn).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BackendError);
    expect((err as Error).message).toContain('"webgpu" package (Dawn for Node) is not installed');
    expect((err as Error).message).toContain('npm install webgpu @tensorflow/tfjs-backend-webgpu');
    expect(tf.getBackend()).toBe('wasm');
  });

  it('an unknown choice is an option error', async () => {
    await expect(selectBackend('gpu' as never)).rejects.toBeInstanceOf(OptionError);
  });
});

describe('preference order (fake packages)', () => {
  it('auto order is tensorflow, webgpu, webgl, wasm, cpu', () => {
    expect(AUTO_ORDER).toEqual(['tensorflow', 'webgpu', 'webgl', 'wasm', 'cpu']);
  });

  it('auto prefers tfjs-node-gpu when it loads', async () => {
    const loader = fakeLoader({
      '@tensorflow/tfjs-node-gpu': () => registerStandIn('tensorflow'),
      '@tensorflow/tfjs-node': () => {
        throw new Error('must not be loaded once the GPU build worked');
      },
    });
    expect(await selectBackend('auto', loader)).toBe('tensorflow');
    expect(tf.getBackend()).toBe('tensorflow');
    expect(loader.loaded).toEqual(['@tensorflow/tfjs-node-gpu']);
  });

  it('falls back from a tfjs-node-gpu without CUDA to tfjs-node', async () => {
    const loader = fakeLoader({
      '@tensorflow/tfjs-node-gpu': () => {
        throw new Error('libcudart.so.11.0: cannot open shared object file');
      },
      '@tensorflow/tfjs-node': () => registerStandIn('tensorflow'),
    });
    expect(await selectBackend('auto', loader)).toBe('tensorflow');
    expect(loader.loaded).toEqual(['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node']);
  });

  it('explicit tensorflow with a broken native binding reports it, with the cause attached', async () => {
    const cause = new Error('libtensorflow.so: cannot open shared object file');
    const loader = fakeLoader({
      '@tensorflow/tfjs-node': () => {
        throw cause;
      },
    });
    const err = (await selectBackend('tensorflow', loader).catch((e: unknown) => e)) as BackendError;
    expect(err).toBeInstanceOf(BackendError);
    expect(err.message).toContain('@tensorflow/tfjs-node is installed but failed to load');
    expect(err.message).not.toContain('libtensorflow');
    expect(err.cause).toBe(cause);
    expect(tf.getBackend()).toBe('wasm');
  });

  it('webgpu: Dawn is exposed as navigator.gpu before the tfjs backend is imported', async () => {
    let navigatorAtImport: unknown;
    const loader = fakeLoader({
      webgpu: () => ({
        create: (flags: string[]) => {
          expect(flags).toEqual([]);
          return { requestAdapter: async () => ({ name: 'fake adapter' }) };
        },
        globals: { GPUBufferUsage: { STORAGE: 128 } },
      }),
      '@tensorflow/tfjs-backend-webgpu': () => {
        navigatorAtImport = (g.navigator as { gpu?: unknown } | undefined)?.gpu;
        registerStandIn('webgpu');
      },
    });
    expect(await selectBackend('auto', loader)).toBe('webgpu');
    expect(loader.loaded).toEqual(['webgpu', '@tensorflow/tfjs-backend-webgpu']);
    expect(navigatorAtImport).toBeDefined();
    expect(g.GPUBufferUsage).toEqual({ STORAGE: 128 });
  });

  it('webgpu without an adapter: auto moves on to wasm and undoes the globals', async () => {
    const loader = fakeLoader({
      webgpu: () => ({ create: () => ({ requestAdapter: async () => null }), globals: { GPUBufferUsage: {} } }),
      '@tensorflow/tfjs-backend-webgpu': () => registerStandIn('webgpu'),
    });
    expect(await selectBackend('auto', loader)).toBe('wasm');
    expect(loader.loaded).toEqual(['webgpu']);
    expect(g.navigator).toBeUndefined();
    expect(g.GPUBufferUsage).toBeUndefined();

    const err = (await selectBackend('webgpu', loader).catch((e: unknown) => e)) as BackendError;
    expect(err).toBeInstanceOf(BackendError);
    expect(err.message).toContain('no WebGPU adapter was found');
  });

  it('auto does not load Dawn where no GPU with a Vulkan driver is likely; an explicit webgpu still tries', async () => {
    const loader = {
      ...fakeLoader({
        webgpu: () => ({ create: () => ({ requestAdapter: async () => null }), globals: {} }),
        '@tensorflow/tfjs-backend-webgpu': () => registerStandIn('webgpu'),
      }),
      vulkanDeviceLikely: () => false,
    };
    expect(await selectBackend('auto', loader)).toBe('wasm');
    expect(loader.loaded).toEqual([]);
    const err = (await selectBackend('webgpu', loader).catch((e: unknown) => e)) as BackendError;
    expect(err.message).toContain('no WebGPU adapter was found');
    expect(loader.loaded).toEqual(['webgpu']);
  });

  it('a GPU with a Vulkan driver is likely where a driver manifest and a GPU device node exist, or drivers are named', () => {
    const env = { HOME: '/home/u' };
    const mesa = { '/usr/share/vulkan/icd.d': ['lvp_icd.x86_64.json', 'radeon_icd.x86_64.json'] };
    const fs = (tree: Record<string, string[]>) => (dir: string) => tree[dir] ?? [];
    // Mesa's drivers on a machine without a GPU: no device node.
    expect(vulkanDeviceLikely(env, fs({ ...mesa, '/dev': ['null', 'tty0'] }))).toBe(false);
    expect(vulkanDeviceLikely(env, fs({ ...mesa, '/dev/dri': ['card0', 'renderD128'] }))).toBe(true);
    expect(vulkanDeviceLikely(env, fs({ '/etc/vulkan/icd.d': ['nvidia_icd.json'], '/dev': ['nvidia0', 'nvidiactl'] }))).toBe(true);
    expect(vulkanDeviceLikely(env, fs({ ...mesa, '/dev': ['dxg'] }))).toBe(true);
    // A device without a driver manifest: the loader finds nothing.
    expect(vulkanDeviceLikely(env, fs({ '/dev/dri': ['renderD128'] }))).toBe(false);
    // Named drivers (SwiftShader in the tests) are taken as meant.
    expect(vulkanDeviceLikely({ ...env, VK_ICD_FILENAMES: '/usr/lib/chromium/vk_swiftshader_icd.json' }, fs({}))).toBe(true);
    expect(vulkanDeviceLikely({ ...env, XDG_DATA_DIRS: '/opt/share' }, fs({ '/opt/share/vulkan/icd.d': ['x.json'], '/dev/dri': ['renderD129'] }))).toBe(true);
  });

  it('auto passes over a software WebGPU adapter (slower than wasm); an explicit webgpu takes it', async () => {
    const software = { info: { architecture: 'swiftshader', description: 'SwiftShader driver 5.0.0' } };
    const loader = fakeLoader({
      webgpu: () => ({ create: () => ({ requestAdapter: async () => software }), globals: {} }),
      '@tensorflow/tfjs-backend-webgpu': () => registerStandIn('webgpu'),
    });
    expect(await selectBackend('auto', loader)).toBe('wasm');
    expect(g.navigator).toBeUndefined();
    expect(await selectBackend('webgpu', loader)).toBe('webgpu');
  });

  it('a Node too old to require the ESM webgpu package says which Node is needed', async () => {
    const loader = fakeLoader({
      webgpu: () => {
        throw Object.assign(new Error('require() of ES Module'), { code: 'ERR_REQUIRE_ESM' });
      },
    });
    const err = (await selectBackend('webgpu', loader).catch((e: unknown) => e)) as BackendError;
    expect(err.message).toContain('use Node >= 20.19');
  });

  it('webgpu already set up in this tfjs (by the app, or inlined by a bundler): taken as it is, no package needed', async () => {
    g.navigator = { gpu: { requestAdapter: async () => ({ name: 'fake adapter' }) } };
    registerStandIn('webgpu');
    const loader = fakeLoader({});
    expect(await selectBackend('webgpu', loader)).toBe('webgpu');
    expect(loader.loaded).toEqual([]);
    expect(tf.getBackend()).toBe('webgpu');
  });

  it('webgpu with Dawn but without @tensorflow/tfjs-backend-webgpu says so', async () => {
    const loader = fakeLoader({
      webgpu: () => ({ create: () => ({ requestAdapter: async () => ({}) }), globals: {} }),
    });
    const err = (await selectBackend('webgpu', loader).catch((e: unknown) => e)) as BackendError;
    expect(err.message).toContain('@tensorflow/tfjs-backend-webgpu is not installed');
    expect(g.navigator).toBeUndefined();
  });
});
