// Brings up tfjs' webgpu backend in Node on Dawn (the npm package `webgpu`, an optional peer).
// The backend registers itself only if `navigator.gpu` exists when its module is evaluated, so
// the GPU object is installed first and the backend module is imported after.
import * as tf from '@tensorflow/tfjs-core';

interface DawnModule {
  create(flags: string[]): unknown;
  globals: Record<string, unknown>;
}

export interface WebGPUAdapterSummary {
  backend: string;
  vendor: string;
  architecture: string;
  device: string;
  description: string;
}

/**
 * Installs Dawn's GPU object as `navigator.gpu`, loads the webgpu backend and makes it active.
 * `dawnFlags` are Dawn toggles such as 'enable-dawn-features=...'; none are needed.
 */
export async function initWebGPUBackend(dawnFlags: string[] = []): Promise<WebGPUAdapterSummary> {
  // A computed specifier keeps bundlers from inlining the native addon.
  const dawnName = 'webgpu';
  const dawn = (await import(dawnName)) as DawnModule;
  Object.assign(globalThis, dawn.globals);
  Object.defineProperty(globalThis, 'navigator', {
    value: { gpu: dawn.create(dawnFlags) },
    configurable: true,
    writable: true,
  });
  await import('@tensorflow/tfjs-backend-webgpu');
  if (!(await tf.setBackend('webgpu'))) throw new Error('webgpu backend failed to initialise (no adapter?)');
  await tf.ready();
  const info = (tf.backend() as unknown as { adapterInfo?: Record<string, unknown> }).adapterInfo ?? {};
  const field = (k: string): string => String(info[k] ?? '');
  return {
    backend: tf.getBackend(),
    vendor: field('vendor'),
    architecture: field('architecture'),
    device: field('device'),
    description: field('description'),
  };
}
