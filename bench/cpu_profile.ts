// Sampling the main thread with V8's profiler (node:inspector) and summing a .cpuprofile by the
// host's pieces of a forward. Shared by the GPU profile and stream scripts.
import * as fs from 'fs';
import * as inspector from 'inspector';
import * as path from 'path';

/** Host pieces summed from the profile: samples whose stack holds one of these functions. */
export const HOST_PIECES: Record<string, string[]> = {
  'dispatch recording (tfjs runWebGPUProgram)': ['runWebGPUProgram'],
  'proposal filtering (host)': ['proposalsOf'],
  'post-processing (host)': ['postprocessDetections'],
  'input transform (host part)': ['prepareBatchAsync', 'prepareBatch'],
  'uploads (tfjs uploadToGPU)': ['uploadToGPU'],
  'readbacks (tfjs getBufferData / mapAsync)': ['getBufferData', 'mapAsync'],
  'buffer pool (acquire/release)': ['acquireBuffer', 'releaseBuffer'],
  'garbage collection': ['(garbage collector)'],
};

interface ProfileNode {
  id: number;
  callFrame: { functionName: string };
  children?: number[];
}

export interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

/** ms per unit (forward or image) of each piece, and of all main-thread samples but idle ones. */
export function hostPieces(profile: CpuProfile, units: number, pieces = HOST_PIECES): Record<string, number> {
  const parent = new Map<number, number>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const out: Record<string, number> = Object.fromEntries(Object.keys(pieces).map((k) => [k, 0]));
  let busy = 0;
  profile.samples.forEach((id, i) => {
    const us = profile.timeDeltas[i + 1] ?? 0;
    const names = new Set<string>();
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      // Bundlers rename methods (`WebGPUBackend2.runWebGPUProgram`): match on the last part.
      names.add((byId.get(cur)?.callFrame.functionName ?? '').split('.').pop() ?? '');
    }
    if (!names.has('(idle)') && !names.has('(program)')) busy += us;
    for (const [piece, fns] of Object.entries(pieces)) if (fns.some((f) => names.has(f))) out[piece] += us;
  });
  for (const k of Object.keys(out)) out[k] = out[k] / 1000 / units;
  out['main thread busy (all but idle)'] = busy / 1000 / units;
  return out;
}

/** Starts V8's sampling profiler on this thread; `stop` writes the profile to `file` and returns it. */
export async function startCpuProfile(file: string, intervalUs = 100): Promise<{ stop: () => Promise<CpuProfile> }> {
  const session = new inspector.Session();
  const post = <T>(method: string, params: object = {}): Promise<T> =>
    new Promise((resolve, reject) => session.post(method, params, (e, r) => (e ? reject(e) : resolve(r as T))));
  session.connect();
  await post('Profiler.enable');
  await post('Profiler.setSamplingInterval', { interval: intervalUs });
  await post('Profiler.start');
  return {
    stop: async () => {
      const { profile } = await post<{ profile: CpuProfile }>('Profiler.stop');
      session.disconnect();
      fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
      fs.writeFileSync(file, JSON.stringify(profile));
      return profile;
    },
  };
}
