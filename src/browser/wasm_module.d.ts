/** A .wasm file imported by the browser build: its bytes (esbuild's binary loader, tools/build_browser.js). */
declare module '*.wasm' {
  const bytes: Uint8Array<ArrayBuffer>;
  export default bytes;
}
