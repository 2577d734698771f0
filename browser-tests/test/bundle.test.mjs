// The demo pages load server/demo/backchannel-client.js, which `cargo build` embeds in
// the binary. It is generated from client-js/src and committed: check that it is the
// bundle of the current source, so the pages never run a stale client.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';

import { ROOT } from '../lib/harness.mjs';

test('server/demo/backchannel-client.js is the bundle of client-js/src (npm run bundle:demo)', () => {
  const clientJs = join(ROOT, 'client-js');
  assert.ok(
    existsSync(join(clientJs, 'node_modules', 'esbuild')),
    'client-js/node_modules/esbuild is missing: run `npm ci` in client-js/ first',
  );
  try {
    execFileSync(process.execPath, ['scripts/bundle-demo.mjs', '--check'], { cwd: clientJs, stdio: 'pipe', timeout: 60_000 });
  } catch (error) {
    assert.fail(`${error.stderr ?? error.message}`.trim());
  }
});
