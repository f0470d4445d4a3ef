// Build a JavaScript plugin into a WebAssembly component with componentize-js.
// Shared by the JavaScript plugins that use the toolchain in
// plugins/reverse/node_modules (shout, notes): their build.sh calls
// scripts/js-toolchain.sh first, then this.
//
// Usage: node scripts/componentize-js.mjs NAME SOURCE.js WIT_DIR WORLD OUT_PATH
//   e.g. node scripts/componentize-js.mjs notes plugins/notes/notes.js wit/services handler target/plugins/notes.wasm
//
// componentize-js is imported from plugins/reverse/node_modules (installed
// once by scripts/js-toolchain.sh from plugins/reverse/package-lock.json) by
// absolute file URL, so CI runs one `npm ci` for every JavaScript plugin.
import { readFile, writeFile, rename } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const COMPONENTIZE_JS_VERSION = '0.23.0';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const [name, source, wit, world, out] = process.argv.slice(2);
if (!out) {
  console.error('usage: node scripts/componentize-js.mjs NAME SOURCE.js WIT_DIR WORLD OUT_PATH');
  process.exit(2);
}

const pkgDir = resolve(root, 'plugins/reverse/node_modules/@bytecodealliance/componentize-js');
let pkg;
try {
  pkg = JSON.parse(await readFile(resolve(pkgDir, 'package.json'), 'utf8'));
} catch {
  pkg = undefined;
}
if (pkg?.version !== COMPONENTIZE_JS_VERSION) {
  console.error(
    `${name}: error: componentize-js ${COMPONENTIZE_JS_VERSION} is not installed in ${pkgDir} ` +
      `(found: ${pkg ? pkg.version : 'nothing'}). Install the JavaScript toolchain with ` +
      '`bash scripts/js-toolchain.sh` (the plugin\'s build.sh does that first).',
  );
  process.exit(1);
}
const { componentize } = await import(pathToFileURL(resolve(pkgDir, pkg.exports.import)).href);

const { component } = await componentize({
  sourcePath: resolve(source),
  witPath: resolve(wit),
  worldName: world,
  // As for reverse: leave out outbound HTTP (`fetch`) and the `fetch` event,
  // which would make the component import wasi:http, which the host does not
  // provide. stdio (uncaught errors go to stderr, the host's log), random and
  // clocks stay.
  disableFeatures: ['http', 'fetch-event'],
});

// Write next to the target, then rename, so a failed build never leaves a
// truncated component at OUT_PATH.
const tmp = `${out}.tmp.${process.pid}`;
await writeFile(tmp, component);
await rename(tmp, out);
console.error(`${name}: wrote ${out} (${component.length} bytes)`);
