// Progress goes to stderr, so that stdout carries the tables alone and can be piped or saved.

/** Writes one line of progress to stderr. */
export const log = (line) => process.stderr.write(`${line}\n`);
