/**
 * Compute backend selection. TensorFlow's native binding (tfjs-node / tfjs-node-gpu) and WebGPU
 * (Dawn via the `webgpu` package) are optional peers: they are required only when resolvable,
 * so the library runs with its own dependencies alone (wasm, then pure-JS cpu). In browsers the
 * platform gives WebGPU and WebGL, and the browser build supplies its own module loader.
 */
import * as tf from '@tensorflow/tfjs-core';
import { prepareWasmWinograd } from '../kernels/wasm/winograd';
import { BackendError, OptionError } from '../errors';

export type BackendChoice = 'auto' | 'tensorflow' | 'webgpu' | 'webgl' | 'wasm' | 'cpu';

export const BACKEND_CHOICES: readonly BackendChoice[] = ['auto', 'tensorflow', 'webgpu', 'webgl', 'wasm', 'cpu'];

/** The order `auto` tries, fastest first ('webgl' exists in browsers only, tfjs-node in Node only). */
export const AUTO_ORDER: readonly Exclude<BackendChoice, 'auto'>[] = ['tensorflow', 'webgpu', 'webgl', 'wasm', 'cpu'];

/**
 * How optional packages are found and loaded. The default is Node's `require`; tests substitute
 * one to simulate packages being installed or missing.
 */
export interface ModuleLoader {
  /** Whether `name` can be required from here, without loading it. */
  resolvable(name: string): boolean;
  load(name: string): unknown;
  /**
   * Whether the Vulkan loader may find a driver for a GPU (on Linux, Dawn's only way to one;
   * `vulkanDeviceLikely`), or undefined where that is not known. `auto` skips Dawn when not: it
   * would only print warnings on stderr and find no adapter, or a software one.
   */
  vulkanDeviceLikely?(): boolean | undefined;
}

/** Where the Vulkan loader looks for driver manifests on Linux (its documented search path). */
function vulkanManifestDirs(env: Readonly<Record<string, string | undefined>>): string[] {
  const home = env.HOME ?? '';
  const config = (env.XDG_CONFIG_DIRS || '/etc/xdg').split(':');
  const data = [env.XDG_DATA_HOME || `${home}/.local/share`, ...(env.XDG_DATA_DIRS || '/usr/local/share:/usr/share').split(':')];
  return [...config, '/etc', ...data].map((d) => `${d}/vulkan/icd.d`);
}

export const nodeModuleLoader: ModuleLoader = {
  resolvable(name: string): boolean {
    try {
      require.resolve(name);
      return true;
    } catch {
      return false;
    }
  },
  load(name: string): unknown {
    // Optional peers are loaded by name when asked for: a static import would make them required.
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    return require(name) as unknown;
  },
  vulkanDeviceLikely(): boolean | undefined {
    if (typeof process === 'undefined' || process.platform !== 'linux') return undefined;
    // Only this Linux probe needs fs: required here, not at the top of a module browsers also load.
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const fs = require('fs') as typeof import('fs');
    return vulkanDeviceLikely(process.env, (dir) => {
      try {
        return fs.readdirSync(dir);
      } catch {
        return [];
      }
    });
  },
};

/**
 * Whether, on Linux, the Vulkan loader may find a driver for a GPU: a driver manifest in its
 * icd.d folders and a GPU device node (/dev/dri/renderD*, /dev/nvidia*, WSL's /dev/dxg). Drivers
 * named in the environment count as meant. Manifests alone do not: Mesa's Vulkan drivers (its
 * CPU renderer lavapipe among them) come with many desktop and image-processing packages on
 * machines without a GPU, where Dawn would write warnings on stderr and find nothing faster than
 * wasm.
 */
export function vulkanDeviceLikely(env: Readonly<Record<string, string | undefined>>, readdir: (dir: string) => string[]): boolean {
  if (env.VK_ICD_FILENAMES || env.VK_DRIVER_FILES || env.VK_ADD_DRIVER_FILES) return true;
  if (!vulkanManifestDirs(env).some((dir) => readdir(dir).some((f) => f.endsWith('.json')))) return false;
  return readdir('/dev/dri').some((f) => f.startsWith('renderD')) || readdir('/dev').some((f) => /^nvidia(\d+|ctl)$/.test(f) || f === 'dxg');
}

const INSTALL: Record<Exclude<BackendChoice, 'auto'>, string> = {
  tensorflow: 'npm install @tensorflow/tfjs-node@4.22.0 (CPU) or @tensorflow/tfjs-node-gpu@4.22.0 (CUDA GPU)',
  webgpu:
    'npm install webgpu @tensorflow/tfjs-backend-webgpu@4.22.0, on a machine with a GPU driver ' +
    '(Linux: also the Vulkan loader, libvulkan1); in a browser: one with WebGPU enabled',
  webgl: 'a browser with WebGL 2 (tfjs registers its webgl backend in browsers only)',
  wasm: 'npm install @tensorflow/tfjs-backend-wasm@4.22.0',
  cpu: 'npm install @tensorflow/tfjs@4.22.0 (it brings @tensorflow/tfjs-backend-cpu)',
};

type Attempt = { ok: true } | { ok: false; reason: string; cause?: unknown };

let defaultLoader: ModuleLoader = nodeModuleLoader;

/** The loader `selectBackend` uses when given none (the browser build sets its own). */
export function setDefaultModuleLoader(loader: ModuleLoader): void {
  defaultLoader = loader;
}

/**
 * Make `choice` the active tfjs backend and return the name tfjs knows it by
 * ('tensorflow', 'webgpu', 'wasm' or 'cpu'). `auto` takes the first that works of
 * tfjs-node-gpu, tfjs-node, WebGPU, wasm, cpu. An explicit choice that cannot start throws a
 * `BackendError` that says what to install.
 */
export async function selectBackend(
  choice: BackendChoice = 'auto',
  loader: ModuleLoader = defaultLoader,
): Promise<string> {
  if (!BACKEND_CHOICES.includes(choice)) {
    throw new OptionError('backend', `one of ${BACKEND_CHOICES.join(', ')}`, choice);
  }
  const candidates = choice === 'auto' ? AUTO_ORDER : [choice];
  const failures: string[] = [];
  for (const name of candidates) {
    const attempt = await trySetUp(name, loader, choice === 'auto');
    if (attempt.ok) return tf.getBackend();
    if (choice !== 'auto') {
      throw new BackendError(
        name,
        `Backend "${name}" is not available: ${attempt.reason}. To use it: ${INSTALL[name]}`,
        { cause: attempt.cause },
      );
    }
    failures.push(`${name}: ${attempt.reason}`);
  }
  throw new BackendError('auto', `No compute backend could start (${failures.join('; ')})`);
}

/**
 * Makes the cpu backend active for holding values only (the weights of a network that runs on
 * worker threads), without the advice to install tfjs-node that tfjs logs at its first tensor:
 * the user chose the backend that computes, and it is not this one.
 */
export async function selectCpuForValues(): Promise<void> {
  await selectBackend('cpu');
  const prod = tf.env().getBool('PROD');
  // PROD only silences tfjs' warnings; it is set back at once.
  tf.env().set('PROD', true);
  try {
    tf.scalar(0).dispose();
  } finally {
    tf.env().set('PROD', prod);
  }
}

async function trySetUp(name: Exclude<BackendChoice, 'auto'>, loader: ModuleLoader, auto: boolean): Promise<Attempt> {
  switch (name) {
    case 'tensorflow':
      return setUpTensorflow(loader);
    case 'webgpu':
      return setUpWebGpu(loader, auto);
    case 'webgl':
      return activate('webgl');
    case 'wasm': {
      const attempt = await setUpBundled('wasm', '@tensorflow/tfjs-backend-wasm', loader);
      // Our WebAssembly kernel compiled now, asynchronously, as a page's main thread requires.
      if (attempt.ok) await prepareWasmWinograd();
      return attempt;
    }
    case 'cpu':
      // The library imports tfjs-core alone (the umbrella package costs every thread ~0.1 s of
      // module loading), so the cpu backend registers when first chosen.
      return setUpBundled('cpu', '@tensorflow/tfjs-backend-cpu', loader);
  }
}

/** tf.setBackend resolves false (after logging) when the backend's initialisation fails. */
async function activate(name: string): Promise<Attempt> {
  if (tf.findBackendFactory(name) === null) {
    return { ok: false, reason: `no "${name}" backend is registered with @tensorflow/tfjs` };
  }
  try {
    if (await tf.setBackend(name)) {
      await tf.ready();
      return { ok: true };
    }
    return { ok: false, reason: `the "${name}" backend failed to initialise` };
  } catch (e) {
    return { ok: false, reason: `the "${name}" backend failed to initialise`, cause: e };
  }
}

async function setUpTensorflow(loader: ModuleLoader): Promise<Attempt> {
  const reasons: string[] = [];
  let lastCause: unknown;
  // The GPU build first: it needs CUDA libraries and fails to load without them, then the CPU build.
  for (const pkg of ['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node']) {
    if (!loader.resolvable(pkg)) continue;
    try {
      loader.load(pkg); // registers the 'tensorflow' backend as a side effect
    } catch (e) {
      reasons.push(`${pkg} is installed but failed to load (native binding missing or incompatible)`);
      lastCause = e;
      continue;
    }
    const attempt = await activate('tensorflow');
    if (attempt.ok) return attempt;
    reasons.push(`${pkg}: ${attempt.reason}`);
    lastCause = attempt.cause;
  }
  if (reasons.length === 0) return { ok: false, reason: 'neither @tensorflow/tfjs-node-gpu nor @tensorflow/tfjs-node is installed' };
  return { ok: false, reason: reasons.join('; '), cause: lastCause };
}

interface GpuLike {
  requestAdapter(options?: unknown): Promise<unknown>;
}

interface DawnModule {
  create(flags: string[]): GpuLike;
  globals: Record<string, unknown>;
}

function isDawnModule(m: unknown): m is DawnModule {
  const d = m as Partial<DawnModule> | null;
  return d !== null && typeof d === 'object' && typeof d.create === 'function' && typeof d.globals === 'object';
}

function currentGpu(): GpuLike | undefined {
  const nav = (globalThis as { navigator?: { gpu?: GpuLike } }).navigator;
  return nav?.gpu;
}

/** A CPU implementation of WebGPU (SwiftShader, lavapipe/llvmpipe): slower than wasm. */
function isSoftwareAdapter(adapter: unknown): boolean {
  const a = adapter as { isFallbackAdapter?: boolean; info?: Record<string, unknown> };
  if (a.isFallbackAdapter === true) return true;
  const info = a.info ?? {};
  const text = ['architecture', 'description', 'device'].map((k) => String(info[k] ?? '')).join(' ').toLowerCase();
  return /swiftshader|llvmpipe|lavapipe/.test(text);
}

async function setUpWebGpu(loader: ModuleLoader, auto: boolean): Promise<Attempt> {
  // Where the platform already has WebGPU (a browser, Deno) there is nothing to install.
  let gpu = currentGpu();
  let undo: (() => void) | undefined;
  if (gpu === undefined) {
    if (!loader.resolvable('webgpu')) return { ok: false, reason: 'the "webgpu" package (Dawn for Node) is not installed' };
    if (auto && loader.vulkanDeviceLikely?.() === false) {
      return { ok: false, reason: 'no GPU with a Vulkan driver (no driver manifest in the Vulkan loader\'s icd.d folders, or no GPU device in /dev)' };
    }
    let dawn: unknown;
    try {
      dawn = loader.load('webgpu');
    } catch (e) {
      // The package is an ES module: Node only require()s those from 20.19 / 22.12 on.
      const esm = (e as { code?: unknown }).code === 'ERR_REQUIRE_ESM';
      const reason = esm
        ? 'the "webgpu" package is an ES module, which this Node version cannot require (use Node >= 20.19)'
        : 'the "webgpu" package is installed but failed to load';
      return { ok: false, reason, cause: e };
    }
    if (!isDawnModule(dawn)) return { ok: false, reason: 'the "webgpu" package does not export create() and globals' };
    try {
      gpu = dawn.create([]);
      undo = installNavigatorGpu(gpu, dawn.globals);
    } catch (e) {
      return { ok: false, reason: 'Dawn could not create a WebGPU instance', cause: e };
    }
  }
  const giveUp = (reason: string, cause?: unknown): Attempt => {
    undo?.();
    return { ok: false, reason, cause };
  };

  let adapter: unknown;
  try {
    adapter = await gpu.requestAdapter();
  } catch (e) {
    return giveUp('requesting a WebGPU adapter failed', e);
  }
  if (adapter === null || adapter === undefined) {
    return giveUp('no WebGPU adapter was found (no GPU, no driver, or on Linux no Vulkan loader libvulkan.so.1)');
  }
  if (auto && isSoftwareAdapter(adapter)) {
    return giveUp('the only WebGPU adapter runs on the CPU (a software renderer), slower than wasm');
  }

  // Already registered in this tfjs where the app imported the backend itself, or a bundler
  // inlined it (then there is no package to resolve).
  if (tf.findBackendFactory('webgpu') === null) {
    if (!loader.resolvable('@tensorflow/tfjs-backend-webgpu')) {
      return giveUp('@tensorflow/tfjs-backend-webgpu is not installed');
    }
    try {
      // It registers 'webgpu' at import time, and only when navigator.gpu exists then.
      loader.load('@tensorflow/tfjs-backend-webgpu');
    } catch (e) {
      return giveUp('@tensorflow/tfjs-backend-webgpu failed to load', e);
    }
  }
  if (tf.findBackendFactory('webgpu') === null) {
    return giveUp('@tensorflow/tfjs-backend-webgpu was loaded before WebGPU was set up, so it did not register');
  }
  const attempt = await activate('webgpu');
  return attempt.ok ? attempt : giveUp(attempt.reason, attempt.cause);
}

/** Expose Dawn as `navigator.gpu` (+ the WebGPU constants); returns how to take it back. */
function installNavigatorGpu(gpu: GpuLike, globals: Record<string, unknown>): () => void {
  const g = globalThis as Record<string, unknown>;
  const added = Object.keys(globals).filter((k) => !(k in g));
  for (const k of added) g[k] = globals[k];
  const nav = g.navigator as Record<string, unknown> | undefined;
  if (nav === undefined) {
    Object.defineProperty(g, 'navigator', { value: { gpu }, configurable: true, writable: true });
    return () => {
      delete g.navigator;
      for (const k of added) delete g[k];
    };
  }
  Object.defineProperty(nav, 'gpu', { value: gpu, configurable: true, writable: true });
  return () => {
    delete nav.gpu;
    for (const k of added) delete g[k];
  };
}

async function setUpBundled(name: string, pkg: string, loader: ModuleLoader): Promise<Attempt> {
  if (tf.findBackendFactory(name) === null) {
    if (!loader.resolvable(pkg)) return { ok: false, reason: `${pkg} is not installed` };
    try {
      loader.load(pkg);
    } catch (e) {
      return { ok: false, reason: `${pkg} failed to load`, cause: e };
    }
  }
  return activate(name);
}

/**
 * The library as a guest in someone else's tfjs: tfjs has one active backend per process, and the
 * app may use another than the detector. Every call of the detector that makes tensors runs under
 * a lease on its backend: the first lease makes that backend active and remembers the one before,
 * the last one released makes that one active again. Leases on one backend overlap (detectors on
 * the same backend, calls in flight at once); a lease on another waits until those are released,
 * since tfjs ops run on whichever backend is active at the time.
 */
interface Lease {
  /** The backend held, or null for an exclusive hold (a `load` that has yet to pick one). */
  backend: string | null;
  count: number;
  /** The backend to make active again once the last lease is released (null: none was chosen). */
  previous: string | null;
}

let lease: Lease | null = null;
const waiting: (() => void)[] = [];

/** The active backend's name without starting one (tf.getBackend() is null until one is chosen). */
export function activeBackendName(): string | null {
  return tf.engine().backendName ?? null;
}

/** Whether tfjs has set up backend `name` (then switching to it takes effect synchronously). */
function isSetUp(name: string): boolean {
  return Object.prototype.hasOwnProperty.call(tf.engine().registry, name);
}

/**
 * Makes `name` active; a name tfjs has no factory for is left alone. A backend that has been set
 * up switches at once, synchronously (tfjs only awaits a backend's first initialisation).
 */
async function switchTo(name: string): Promise<void> {
  if (tf.findBackendFactory(name) === null || activeBackendName() === name) return;
  await tf.setBackend(name);
}

async function acquire(backend: string | null): Promise<void> {
  while (lease !== null && !(backend !== null && lease.backend === backend)) {
    await new Promise<void>((resolve) => waiting.push(resolve));
  }
  if (lease === null) lease = { backend, count: 0, previous: activeBackendName() };
  lease.count++;
  if (backend !== null) await switchTo(backend);
}

async function release(): Promise<void> {
  if (lease === null) return;
  if (--lease.count > 0) return;
  const { previous } = lease;
  lease = null;
  try {
    if (previous !== null) await switchTo(previous);
  } finally {
    for (const wake of waiting.splice(0)) wake();
  }
}

/**
 * Runs `fn` with `backend` active and the backend that was active before made active again when it
 * settles (see Lease). `backend` null: exclusive, for work that picks its backend itself (`load`);
 * whatever it leaves active is switched back from. A name tfjs does not know (a custom model's)
 * runs `fn` on the active backend, under the same lease.
 */
export async function onBackend<T>(backend: string | null, fn: () => Promise<T>): Promise<T> {
  await acquire(backend);
  try {
    return await fn();
  } finally {
    await release();
  }
}

/**
 * `fn` with `backend` active, synchronously (a set-up backend switches at once): for work at call
 * time, before a call's lease is taken (copying an input tensor onto the detector's backend).
 */
export function onBackendSync<T>(backend: string, fn: () => T): T {
  const previous = activeBackendName();
  if (previous === backend || !isSetUp(backend)) return fn();
  void switchTo(backend);
  try {
    return fn();
  } finally {
    if (previous !== null) void switchTo(previous);
  }
}
