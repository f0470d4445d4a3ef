// Build reverse.js into a WebAssembly component with componentize-js.
//
// Usage: node build.mjs OUT_PATH   (build.sh calls it after `npm ci`)
//
// The JS API is used rather than the `jco componentize` CLI, which resolved
// relative paths wrongly in the versions we tried.
import { componentize } from '@bytecodealliance/componentize-js';
import { writeFile, rename } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '..', '..');
const out = process.argv[2];
if (!out) {
  console.error('usage: node build.mjs OUT_PATH');
  process.exit(2);
}

const { component } = await componentize({
  sourcePath: resolve(here, 'reverse.js'),
  witPath: resolve(root, 'wit'),
  worldName: 'handler',
  // componentize-js builds in outbound HTTP (`fetch`) and the `fetch` event
  // by default, which makes the component import wasi:http. The host does not
  // link wasi:http, so such a component would fail to instantiate. This
  // plugin needs neither, so both features are left out. stdio (errors go to
  // stderr, i.e. the host's log), random and clocks stay: the host links them.
  disableFeatures: ['http', 'fetch-event'],
});

// Write next to the target, then rename, so a failed build never leaves a
// truncated component at OUT_PATH.
const tmp = `${out}.tmp.${process.pid}`;
await writeFile(tmp, component);
await rename(tmp, out);
console.error(`reverse: wrote ${out} (${component.length} bytes)`);
