/**
 * What the browser build gives modules that import Node's `fs` / `path` for their Node-only paths
 * (reading files by name, writing PNGs): every use throws, saying so. The browser build never takes
 * those paths (inputs are URLs, bytes or page elements), so nothing here runs unless misused.
 */
function unavailable(name: string): () => never {
  return () => {
    throw new Error(`${name} is not available in the browser build (file paths are a Node feature: pass a URL, bytes or a page element)`);
  };
}

/** os.totalmem for the detector's worker bound: the device memory browsers report (Chrome), else 4 GB. */
export function totalmem(): number {
  const gb = (globalThis as { navigator?: { deviceMemory?: number } }).navigator?.deviceMemory;
  return (typeof gb === 'number' && gb > 0 ? gb : 4) * 1024 ** 3;
}

export const promises = { stat: unavailable('fs.promises.stat'), readdir: unavailable('fs.promises.readdir'), readFile: unavailable('fs.promises.readFile'), writeFile: unavailable('fs.promises.writeFile') };
export const readFileSync = unavailable('fs.readFileSync');
export const existsSync = unavailable('fs.existsSync');
export const join = unavailable('path.join');
export const dirname = unavailable('path.dirname');
export const resolve = unavailable('path.resolve');
export const basename = unavailable('path.basename');
export const createHash = unavailable('crypto.createHash');
export const fileURLToPath = unavailable('url.fileURLToPath');
