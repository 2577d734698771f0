// Bundles the client (src/index.ts) into one ES module for the demo pages that
// `backchannel serve --demo` serves: ../server/demo/backchannel-client.js, which is
// committed so that `cargo build` works on a clean clone without Node.
//
//   npm run bundle:demo               # write the bundle
//   npm run bundle:demo -- --check    # exit 1 if the committed bundle is stale

import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const entry = fileURLToPath(new URL('../src/index.ts', import.meta.url));
const out = fileURLToPath(new URL('../../server/demo/backchannel-client.js', import.meta.url));
const banner =
  '// @backchannel/client as one ES module for the demo pages. Generated from client-js/src\n' +
  '// by `npm run bundle:demo` in client-js/: do not edit by hand.';

const result = await build({
  entryPoints: [entry],
  bundle: true,
  format: 'esm',
  platform: 'browser',
  target: 'es2022',
  charset: 'utf8',
  legalComments: 'none',
  banner: { js: banner },
  write: false,
  logLevel: 'warning',
});
const text = result.outputFiles[0].text;

if (process.argv.includes('--check')) {
  let current = '';
  try {
    current = readFileSync(out, 'utf8');
  } catch {
    // missing: stale
  }
  if (current !== text) {
    console.error(`${out} is not the bundle of client-js/src: run \`npm run bundle:demo\` in client-js/`);
    process.exit(1);
  }
  console.log(`${out} is up to date`);
} else {
  writeFileSync(out, text);
  console.log(`wrote ${out} (${text.length} bytes)`);
}
