/** @type {import('jest').Config} */
module.exports = {
  testEnvironment: 'node',
  roots: ['<rootDir>/__tests__'],
  testMatch: ['**/*.test.ts'],
  // Type checking happens in `npm run build` and `npm run typecheck`; tsconfig's isolatedModules
  // makes ts-jest transpile each file alone, which keeps the suite fast.
  transform: { '^.+\\.ts$': ['ts-jest', { diagnostics: false }] },
  testTimeout: 600000,
  // Heavy wasm inference: two cores, so at most two workers.
  maxWorkers: 2,
  // Builds dist/ when src/ is newer: worker threads load the compiled worker script.
  globalSetup: '<rootDir>/__tests__/global_setup.js',
  setupFilesAfterEnv: ['<rootDir>/__tests__/setup.ts'],
};
