/**
 * Jest environment of the WebGPU suites (`@jest-environment ./__tests__/utils/webgpu_environment.js`).
 *
 * Two things a test file cannot do from inside jest's sandbox, done here in the worker's own realm:
 * - Point the Vulkan loader at a driver. Dawn reads the ICD list from the real process
 *   environment (the sandbox's `process.env` is a copy). Where no driver list is set, SwiftShader
 *   from Debian's `chromium` package is used (a CPU Vulkan driver: slow, but exact enough for
 *   correctness tests); an existing VK_ICD_FILENAMES (a real GPU) wins. The change lasts only
 *   while the suite runs, so CLI child processes of other suites never see it.
 * - Load Dawn (npm `webgpu`, an ES module): Node's own require loads ES modules, jest's does not.
 *
 * The probe result (`__webgpuProbe`: adapter found, or why not) is decided here, before the
 * suite's `describe` blocks are collected, so a suite can skip or fail as a whole.
 */
const fs = require('fs');
const os = require('os');
const path = require('path');
const { TestEnvironment } = require('jest-environment-node');

const SWIFTSHADER_ICD = '/usr/lib/chromium/vk_swiftshader_icd.json';

/** What a developer without a WebGPU adapter should install (printed when the suites skip). */
const INSTALL_HINT =
  'install Debian\'s chromium (apt-get install chromium libvulkan1: it ships the SwiftShader Vulkan driver ' +
  `${SWIFTSHADER_ICD}) and the dev dependencies (npm ci: npm "webgpu"), or set VK_ICD_FILENAMES to a GPU's Vulkan driver`;

class WebGPUEnvironment extends TestEnvironment {
  constructor(config, context) {
    super(config, context);
    this.savedEnv = {};
    this.global.__loadDawn = () => require('webgpu');
  }

  setEnv(name, value) {
    if (!(name in this.savedEnv)) this.savedEnv[name] = process.env[name];
    process.env[name] = value;
  }

  async setup() {
    await super.setup();
    if (!process.env.VK_ICD_FILENAMES && fs.existsSync(SWIFTSHADER_ICD)) this.setEnv('VK_ICD_FILENAMES', SWIFTSHADER_ICD);
    if (!process.env.XDG_RUNTIME_DIR) {
      const dir = path.join(os.tmpdir(), `img2pose-xdg-${process.getuid ? process.getuid() : 0}`);
      fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
      this.setEnv('XDG_RUNTIME_DIR', dir);
    }
    this.global.__webgpuProbe = await probe();
  }

  async teardown() {
    for (const [name, value] of Object.entries(this.savedEnv)) {
      if (value === undefined) delete process.env[name];
      else process.env[name] = value;
    }
    await super.teardown();
  }
}

/** { ok: true, adapter: description } or { ok: false, reason, hint }. */
async function probe() {
  let dawn;
  try {
    dawn = require('webgpu');
  } catch (e) {
    return { ok: false, reason: `the "webgpu" package (Dawn for Node) does not load: ${e.message.split('\n')[0]}`, hint: INSTALL_HINT };
  }
  try {
    const adapter = await dawn.create([]).requestAdapter();
    if (!adapter) {
      const icd = process.env.VK_ICD_FILENAMES ? `VK_ICD_FILENAMES=${process.env.VK_ICD_FILENAMES}` : 'no VK_ICD_FILENAMES';
      return { ok: false, reason: `Dawn found no WebGPU adapter (${icd})`, hint: INSTALL_HINT };
    }
    const info = adapter.info || {};
    return { ok: true, adapter: [info.vendor, info.architecture, info.description].filter(Boolean).join(' / ') || 'unnamed adapter' };
  } catch (e) {
    return { ok: false, reason: `requesting a WebGPU adapter failed: ${e.message}`, hint: INSTALL_HINT };
  }
}

module.exports = WebGPUEnvironment;
