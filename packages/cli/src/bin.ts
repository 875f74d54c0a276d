#!/usr/bin/env node
import { Command, Option } from 'commander';
import { PerihelionError } from '@perihelion/server';
import { SETTINGS, SettingsError, defaultsOn, envName, resolveSettings } from './settings.js';
import { serve } from './serve.js';
import { runWorkers, workerAddress, workerNode } from './workers.js';
import { usageExitsWith2 } from './commands/common.js';
import { deliverCommand } from './commands/deliver.js';
import { publishCommand } from './commands/publish.js';
import { subscribeCommand } from './commands/subscribe.js';

// A closed stdout (`perihelion serve | head`) must not take the server down.
process.stdout.on('error', (error: NodeJS.ErrnoException) => {
  if (error.code !== 'EPIPE') throw error;
});

const program = new Command('perihelion').description('Perihelion: a Bayeux (CometD/Faye compatible) Comet server');

const command = program
  .command('serve')
  .description('run a standalone server (in-memory engine, or cluster mode with --redis) with the demo page at /')
  .addHelpText(
    'after',
    `
Every option can also be set in the environment as PERIHELION_<OPTION>, e.g. PERIHELION_MAX_QUEUE=500;
PORT and HOST are honoured too. Flags win over the environment.

Examples:
  perihelion serve
  perihelion serve --port 9000 --path /cometd
  perihelion serve --redis redis://127.0.0.1:6379   # cluster mode: run it on every node
  perihelion serve --redis redis://10.0.0.5:7001,redis://10.0.0.6:7001 --redis-cluster
  perihelion serve --workers auto --no-demo         # one process per CPU, one server
  perihelion serve --port 443 --tls-cert fullchain.pem --tls-key privkey.pem
  PERIHELION_TIMEOUT=20000 perihelion serve --no-demo
  PERIHELION_JSONP=1 perihelion serve --allowed-origins https://app.example.com
  PERIHELION_JWT_SECRET=… perihelion serve --no-anonymous --rules rules.json
  perihelion serve --open          # development only: anyone may publish anywhere`,
  );
command.addOption(new Option('--config <file>', 'configuration file, JSON or YAML; flags and environment win over it (PERIHELION_CONFIG)'));
for (const setting of SETTINGS) {
  if (setting.kind === 'boolean' && defaultsOn(setting)) {
    command.addOption(new Option(`--no-${setting.flag}`, `turn off: ${setting.help.replace(/ \(default true\)$/, '')} (${envName(setting)}=0)`));
  } else if (setting.kind === 'boolean') {
    command.addOption(new Option(`--${setting.flag}`, `${setting.help} (${envName(setting)}=1)`));
  } else {
    const value = setting.kind === 'file' ? '<file>' : '<value>';
    command.addOption(new Option(`--${setting.flag} ${value}`, `${setting.help} (${envName(setting)})`));
  }
}
command.action(async (parsed: Record<string, unknown>) => {
  /** Where it was told to listen, once the settings are read. */
  let host: string | undefined;
  try {
    // Only what was typed: commander gives a `--no-…` switch the value true when it is absent,
    // which would win over the environment and the configuration file.
    const flags = Object.fromEntries(Object.entries(parsed).filter(([key]) => command.getOptionValueSource(key) === 'cli'));
    const settings = resolveSettings(flags, process.env);
    host = settings.host;
    const node = workerNode();
    const address = workerAddress();
    if ((settings.workers ?? 1) > 1 && node === null) {
      // The options were checked by resolveSettings, before any worker is forked: each would
      // otherwise refuse them alike and say so.
      return await runWorkers(settings);
    }
    if (node !== null) {
      // A worker whose primary is gone (killed) has nobody to answer its engine: it goes too.
      process.on('disconnect', () => process.exit(1));
    }
    // Workers but the first keep quiet: one banner for the whole server.
    const log = node === null || node.startsWith('w1-') ? console.log : () => {};
    const running = await serve(settings, log, node !== null && address !== null ? { node, address } : undefined);
    let stopping = false;
    const stop = (signal: string): void => {
      if (stopping) {
        // A second signal (Ctrl-C twice, a manager that lost patience): no more waiting for clients.
        console.log(`${signal} again: exiting without finishing the drain`);
        process.exit(1);
      }
      stopping = true;
      console.log(`${signal}: shutting down`);
      // Draining is bounded by drainTimeout; past that plus a margin, exit anyway.
      const force = setTimeout(() => process.exit(1), running.server.options.drainTimeout + 5_000);
      force.unref();
      running.stop().then(
        () => process.exit(0),
        (error: unknown) => {
          console.error('perihelion: shutdown failed', error);
          process.exit(1);
        },
      );
    };
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
    // With TLS, SIGHUP takes a renewed certificate (as nginx does); without, it ends the process as usual.
    if (settings.tls) process.on('SIGHUP', () => running.reloadTls());
  } catch (error) {
    if (error instanceof SettingsError || error instanceof PerihelionError) {
      console.error(`perihelion: ${error.message}`);
      process.exit(2);
    }
    // A --host this machine cannot listen on is a wrong value, like any other (exit 2).
    const hostProblem = host !== undefined ? listenHostProblem(error as NodeJS.ErrnoException) : null;
    if (hostProblem !== null) {
      console.error(`perihelion: --host ${host}: ${hostProblem}, or leave --host (HOST) out to listen on every interface`);
      process.exit(2);
    }
    if ((error as NodeJS.ErrnoException).code === 'EADDRINUSE') {
      console.error(`perihelion: the port is already in use (${(error as Error).message}); choose another with --port or PORT`);
      process.exit(1);
    }
    if ((error as NodeJS.ErrnoException).code === 'EACCES') {
      // Ports below 1024 (443 for HTTPS) need a privilege a user's process does not have.
      console.error(
        `perihelion: not allowed to listen there (${(error as Error).message}): a port below 1024 needs privileges; ` +
          'choose a port of 1024 or more (behind a proxy or a port forward), or let Node take low ports: sudo setcap cap_net_bind_service=+ep "$(command -v node)"',
      );
      process.exit(1);
    }
    throw error;
  }
});

/** Why the address to listen on cannot be used, when that is the failure; else null. */
function listenHostProblem(error: NodeJS.ErrnoException): string | null {
  switch (error.code) {
    case 'EADDRNOTAVAIL':
      return 'this machine has no such address (EADDRNOTAVAIL); give one of its own';
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
    case 'EAI_FAIL':
    case 'EAI_NONAME':
      return `the name does not resolve to an address (${error.code}); give another`;
    case 'EAFNOSUPPORT':
      return 'this machine cannot listen on an address of that family (EAFNOSUPPORT: IPv6 off?); give another';
    default:
      return null;
  }
}

// A flag it does not know is a usage error, as a wrong value is (exit code 2).
usageExitsWith2(command);

// Clients of a running server.
program.addCommand(publishCommand());
program.addCommand(deliverCommand());
program.addCommand(subscribeCommand());

await program.parseAsync(process.argv);
