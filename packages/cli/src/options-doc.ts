/**
 * The README's table of server options, made from the server's option table and the flags of
 * `perihelion serve`, so that the two cannot drift: a test compares the README with it, and
 * `npm run docs:options` writes it into the README.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { OPTION_TABLE, type OptionSpec } from '@perihelion/server';
import { SETTINGS, envName, shownDefault } from './settings.js';

export const BEGIN = '<!-- options table: made by `npm run docs:options` from packages/server/src/option-table.ts -->';
export const END = '<!-- end of options table -->';

function howSet(name: string, spec: OptionSpec): string {
  const set = spec.set ?? 'flag';
  if (typeof set === 'object') return set.readme;
  if (set === 'file') return 'config file';
  if (set === 'code') return '–';
  const setting = SETTINGS.find((s) => s.key === name);
  if (set === 'env' || !setting) return `\`PERIHELION_${name.replace(/[A-Z]/g, (c) => `_${c}`).toUpperCase()}\``;
  const flag = setting.kind === 'boolean' ? (setting.on ? `--no-${setting.flag}` : `--${setting.flag}`) : `--${setting.flag}`;
  return `\`${flag}\` / \`${envName(setting)}\``;
}

function shown(spec: OptionSpec): string {
  const text = shownDefault(spec);
  if (spec.kind === 'path' && spec.shown !== undefined) return text;
  if (spec.kind === 'choice' || spec.kind === 'path' || spec.kind === 'connection-types') return `\`${text}\``;
  return text;
}

/** The table, between its markers. */
export function optionsMarkdown(): string {
  const rows = Object.entries(OPTION_TABLE as Record<string, OptionSpec>).map(
    ([name, spec]) => `| \`${name}\` | ${howSet(name, spec)} | ${shown(spec)} | ${spec.help} |`,
  );
  return [BEGIN, '| option | flag / env | default | meaning |', '| --- | --- | --- | --- |', ...rows, END].join('\n');
}

/** `text` with its options table replaced by the current one; throws when the markers are missing. */
export function withOptionsTable(text: string): string {
  const begin = text.indexOf(BEGIN);
  const end = text.indexOf(END);
  if (begin === -1 || end < begin) throw new Error(`the options table's markers are missing: ${BEGIN} … ${END}`);
  return text.slice(0, begin) + optionsMarkdown() + text.slice(end + END.length);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const file = process.argv[2];
  if (!file) {
    console.error('usage: options-doc.js <README.md>');
    process.exit(2);
  }
  writeFileSync(file, withOptionsTable(readFileSync(file, 'utf8')));
}
