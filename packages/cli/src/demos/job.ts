/**
 * The job demo (/job): a button starts a long job on the server (/service/job/start), which
 * publishes its progress on /demo/job as typed events: `started`, `progress`, `done`. Every tab
 * subscribed sees the same progress bar; the channel keeps history, so a tab that was offline for
 * part of the job gets what it missed when it comes back (the client's recovery), in order, and
 * sees the job finish. /service/job/status tells a page that opens where the job stands.
 * Every event carries the server's time (`at`), so that a page can tell a replayed one.
 */
import type { ChannelRule, Perihelion } from '@perihelion/server';
import { badRequest, isRecord, refused, unexpectedKeys } from './check.js';

export const JOB_CHANNEL = '/demo/job';
export const MIN_SECONDS = 3;
export const MAX_SECONDS = 60;
/** Progress events per job: one every 2 %. */
export const STEPS = 50;

export const JOB_RULES: ChannelRule[] = [
  { channel: '/service/job/start', publish: 'anyone' },
  { channel: '/service/job/status', publish: 'anyone' },
];

export interface JobStatus {
  id: number;
  state: 'running' | 'done';
  seconds: number;
  percent: number;
  step: string;
  startedAt: number;
  finishedAt: number | null;
}

/** What the made-up job is doing at step `n` of STEPS. */
function describe(n: number): string {
  const frames = STEPS * 4;
  if (n === 0) return 'Warming up the renderer';
  if (n >= STEPS) return `Rendered ${frames} frames`;
  return `Rendering frame ${n * 4} of ${frames}`;
}

export function installJob(server: Perihelion, report: (error: unknown) => void): () => void {
  let current: JobStatus | null = null;
  let timer: NodeJS.Timeout | null = null;
  let nextId = 1;

  const stop = (): void => {
    if (timer) clearInterval(timer);
    timer = null;
  };

  const publish = (data: Record<string, unknown>): void => {
    server.publish(JOB_CHANNEL, { ...data, at: Date.now() }).catch((error: unknown) => {
      if ((error as { code?: unknown } | null)?.code === 'ERR_SERVER_CLOSED') stop();
      else report(error);
    });
  };

  server.subscribe('/service/job/start', (message) => {
    const data = message.data;
    if (!isRecord(data)) return badRequest(message.channel, 'data must be an object: { seconds }');
    const extra = unexpectedKeys(data, ['seconds']);
    if (extra.length > 0) return badRequest(message.channel, `unexpected field ${JSON.stringify(extra[0])}`);
    const { seconds } = data;
    if (typeof seconds !== 'number' || !Number.isInteger(seconds) || seconds < MIN_SECONDS || seconds > MAX_SECONDS) {
      return badRequest(message.channel, `seconds must be an integer from ${MIN_SECONDS} to ${MAX_SECONDS}`);
    }
    if (current?.state === 'running') return refused(message.channel, `job ${current.id} is already running (${current.percent} %); wait for it to finish`);
    if (server.isDraining) return refused(message.channel, 'the server is shutting down');

    const job: JobStatus = { id: nextId++, state: 'running', seconds, percent: 0, step: describe(0), startedAt: Date.now(), finishedAt: null };
    current = job;
    publish({ type: 'started', ...job });
    let n = 0;
    timer = setInterval(() => {
      if (server.isDraining) return stop();
      n++;
      job.percent = Math.round((n / STEPS) * 100);
      job.step = describe(n);
      if (n < STEPS) {
        publish({ type: 'progress', id: job.id, percent: job.percent, step: job.step });
        return;
      }
      stop();
      job.state = 'done';
      job.finishedAt = Date.now();
      publish({ type: 'done', ...job });
    }, (seconds * 1000) / STEPS);
    timer.unref();
    return { ...job };
  });

  server.subscribe('/service/job/status', () => ({ job: current ? { ...current } : null }));

  return stop;
}
