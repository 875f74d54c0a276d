import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { availableParallelism } from 'node:os';
import type { OptionSpec } from '@perihelion/server';
import { resolveSettings, SettingsError } from '../src/index.js';

describe('settings from flags and environment', () => {
  it('defaults to port 8080, the demo on, no server options', () => {
    assert.deepEqual(resolveSettings({}, {}), { server: {}, port: 8080, host: undefined, demo: true, logLevel: 'info', workers: 1 });
  });

  it('takes --workers as a number of processes or auto (one per CPU), and refuses anything else', () => {
    assert.equal(resolveSettings({ workers: '3' }, {}).workers, 3);
    assert.equal(resolveSettings({}, { PERIHELION_WORKERS: 'auto' }).workers, availableParallelism());
    for (const bad of ['0', '-1', '2.5', 'many', '257']) {
      assert.throws(() => resolveSettings({ workers: bad }, {}), (error: Error) => error instanceof SettingsError && /workers .* must be a number of processes from 1 to 256, or auto/.test(error.message), bad);
    }
  });

  it('honours PORT and HOST, and PERIHELION_PORT over PORT', () => {
    assert.equal(resolveSettings({}, { PORT: '9000', HOST: '127.0.0.1' }).port, 9000);
    assert.equal(resolveSettings({}, { PORT: '9000', HOST: '127.0.0.1' }).host, '127.0.0.1');
    assert.equal(resolveSettings({}, { PORT: '9000', PERIHELION_PORT: '9001' }).port, 9001);
  });

  it('reads every option as PERIHELION_<OPTION>, converting numbers and lists', () => {
    const settings = resolveSettings({}, {
      PERIHELION_PATH: '/cometd',
      PERIHELION_MAX_QUEUE: '50',
      PERIHELION_TRANSPORTS: 'websocket, long-polling',
      PERIHELION_DEMO: 'false',
    });
    assert.deepEqual(settings.server, { path: '/cometd', maxQueue: 50, transports: ['websocket', 'long-polling'] });
    assert.equal(settings.demo, false);
    assert.deepEqual(resolveSettings({ trustProxy: 'loopback,10.0.0.0/8' }, {}).server, { trustProxy: ['loopback', '10.0.0.0/8'] });
  });

  it('lets flags win over the environment', () => {
    const settings = resolveSettings({ maxQueue: '7', port: '1234' }, { PERIHELION_MAX_QUEUE: '50', PORT: '9000' });
    assert.equal(settings.server.maxQueue, 7);
    assert.equal(settings.port, 1234);
  });

  it('names the setting and the bad value when a number is not a number', () => {
    assert.throws(() => resolveSettings({}, { PERIHELION_TIMEOUT: '30s' }), (error: Error) => error instanceof SettingsError && /PERIHELION_TIMEOUT must be a whole number, got "30s"/.test(error.message));
    assert.throws(() => resolveSettings({ port: 'abc' }, {}), /--port must be a whole number/);
    assert.throws(() => resolveSettings({}, { PORT: '70000' }), /port must be from 0 to 65535/);
    assert.throws(() => resolveSettings({}, { PERIHELION_DEMO: 'maybe' }), /PERIHELION_DEMO must be true or false/);
  });

  it('takes the token secret only from PERIHELION_JWT_SECRET, and rules from a JSON file', async () => {
    const { mkdtempSync, writeFileSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const { join } = await import('node:path');
    const dir = mkdtempSync(join(tmpdir(), 'perihelion-settings-'));
    const rules = join(dir, 'rules.json');
    writeFileSync(rules, JSON.stringify([{ channel: '/chat/**', publish: 'authenticated' }]));
    const settings = resolveSettings({ rules, open: true, anonymous: false }, { PERIHELION_JWT_SECRET: 's'.repeat(32) });
    assert.deepEqual(settings.server.jwt, { secret: 's'.repeat(32) });
    assert.deepEqual(settings.server.channels, [{ channel: '/chat/**', publish: 'authenticated' }]);
    assert.equal(settings.server.open, true);
    assert.equal(settings.server.anonymous, false);
    writeFileSync(rules, '[{"channel": ');
    assert.throws(() => resolveSettings({ rules }, {}), /--rules is not valid JSON/);
    assert.throws(() => resolveSettings({ rules: join(dir, 'missing.json') }, {}), /--rules: cannot read .*ENOENT/);
    writeFileSync(rules, JSON.stringify({ channel: '/chat/**', publish: 'authenticated' }));
    assert.throws(() => resolveSettings({ rules }, {}), (error: Error) => error instanceof SettingsError && /^--rules must be a JSON list of rules, like \[.*\], got an object$/.test(error.message));
    // A mistake in a rule is counted in the user's own list (the command adds rules ahead of it).
    writeFileSync(rules, JSON.stringify([{ channel: '/chat/**', publish: 'authenticated' }, { channel: '/news/**', read: 'anyone' }]));
    assert.throws(() => resolveSettings({ rules }, {}), (error: Error) => error instanceof SettingsError && /^--rules: rule 1 has unknown key "read"; allowed: channel, .* \(rules counted from 0\)$/.test(error.message));
    const config = join(dir, 'config.json');
    writeFileSync(config, JSON.stringify({ channels: [{ channel: '/x', subscribe: 'everyone' }] }));
    assert.throws(() => resolveSettings({ config }, {}), (error: Error) => error instanceof SettingsError && error.message.startsWith('"channels" (the rules in the configuration file): rule 0 (/x) subscribe: unknown access "everyone"'));
    assert.throws(() => resolveSettings({ jwks: rules }, { PERIHELION_JWT_SECRET: 'x'.repeat(32) }), /give one token key/);
  });
});

describe('one table of options', () => {
  it('the README’s table of options is the one the option table makes (npm run docs:options)', async () => {
    const { readFileSync } = await import('node:fs');
    const { optionsMarkdown, BEGIN, END } = await import('../src/options-doc.js');
    const readme = readFileSync(new URL('../../../../README.md', import.meta.url), 'utf8');
    const section = readme.slice(readme.indexOf(BEGIN), readme.indexOf(END) + END.length);
    assert.equal(section, optionsMarkdown(), 'README.md’s options table is out of date: run npm run docs:options');
  });

  it('every option set by flag is a flag of perihelion serve, with its default in the help, and converts from the environment', async () => {
    const { OPTION_TABLE, DEFAULTS } = await import('@perihelion/server');
    const { SETTINGS } = await import('../src/index.js');
    for (const [name, spec] of Object.entries(OPTION_TABLE as Record<string, OptionSpec>)) {
      const setting = SETTINGS.find((s) => s.key === name);
      const byFlag = (spec.set ?? 'flag') === 'flag' && spec.kind !== 'secret' && spec.kind !== 'structured';
      assert.equal(setting !== undefined, byFlag, `option ${name}: a flag ${byFlag ? 'is missing' : 'exists but should not'}`);
      if (!setting) continue;
      assert.match(setting.help, /\(default [^)]+\)$/, `${name}: no default in the help`);
      const fromDefault = DEFAULTS[name as keyof typeof DEFAULTS];
      const raw = Array.isArray(fromDefault) ? fromDefault.join(',') : String(fromDefault);
      if (raw === '') continue;
      const env = { [`PERIHELION_${setting.flag.replace(/-/g, '_').toUpperCase()}`]: raw };
      assert.deepEqual((resolveSettings({}, env).server as Record<string, unknown>)[name], fromDefault, `${name}: its default, given in the environment, does not read back`);
    }
  });
});
