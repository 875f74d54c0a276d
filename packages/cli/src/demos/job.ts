/**
 * The job demo (/job): a button starts a long job on the server (/service/job/start), which
 * publishes its progress on /demo/job as typed events: `started`, `progress`, `done`. Every tab
 * subscribed sees the same progress bar; the channel keeps history, so a tab that was offline for
 * part of the job gets what it missed when it comes back (the client's recovery), in order, and
 * sees the job finish. /service/job/status tells a page that opens where the job stands.
 * Every event carries the server's time (`at`), so that a page can tell a replayed one.
 *
 * On a cluster each node answers its own clients, and the channel's history is where they agree:
 * the status and the next job's id are read from it, and a node refuses to start a job while the
 * history shows another still running (unless its events stopped: its node is gone).
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

/** A running job whose latest event is older than this was abandoned (its node stopped), ms; events come at least every 1.2 s. */
export const ABANDONED_AFTER_MS = 5_000;

/** What the made-up job is doing at step `n` of STEPS. */
function describe(n: number): string {
  const frames = STEPS * 4;
  if (n === 0) return 'Warming up the renderer';
  if (n >= STEPS) return `Rendered ${frames} frames`;
  return `Rendering frame ${n * 4} of ${frames}`;
}

/**
 * The latest job as the channel's history tells it (on a cluster, whichever node ran it), with
 * when its latest event was published; null when the history holds none (or is off).
 */
async function latestJob(server: Perihelion): Promise<{ job: JobStatus; at: number } | null> {
  // A job publishes STEPS + 2 events: the latest one's `started` is among the last that many.
  const page = await server.history(JOB_CHANNEL, { limit: STEPS + 2 });
  let job: JobStatus | null = null;
  let at = 0;
  for (const message of page?.messages ?? []) {
    const event = message.data as Partial<JobStatus> & { type?: string; at?: number };
    if (event.type === 'started' || event.type === 'done') {
      const { id, state, seconds, percent, step, startedAt, finishedAt } = event as JobStatus;
      job = { id, state, seconds, percent, step, startedAt, finishedAt };
    } else if (event.type === 'progress' && job !== null && event.id === job.id) {
      job.percent = event.percent ?? job.percent;
      job.step = event.step ?? job.step;
    } else {
      continue;
    }
    at = event.at ?? at;
  }
  return job === null ? null : { job, at };
}

export function installJob(server: Perihelion, report: (error: unknown) => void): () => void {
  let current: JobStatus | null = null;
  let timer: NodeJS.Timeout | null = null;

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

  server.subscribe('/service/job/start', async (message) => {
    const data = message.data;
    if (!isRecord(data)) return badRequest(message.channel, 'data must be an object: { seconds }');
    const extra = unexpectedKeys(data, ['seconds']);
    if (extra.length > 0) return badRequest(message.channel, `unexpected field ${JSON.stringify(extra[0])}`);
    const { seconds } = data;
    if (typeof seconds !== 'number' || !Number.isInteger(seconds) || seconds < MIN_SECONDS || seconds > MAX_SECONDS) {
      return badRequest(message.channel, `seconds must be an integer from ${MIN_SECONDS} to ${MAX_SECONDS}`);
    }
    const refuse = (job: JobStatus) => refused(message.channel, `job ${job.id} is already running (${job.percent} %); wait for it to finish`);
    const runningHere = (): JobStatus | null => (current?.state === 'running' ? current : null);
    let busy = runningHere();
    if (busy) return refuse(busy);
    if (server.isDraining) return refused(message.channel, 'the server is shutting down');
    const latest = await latestJob(server);
    if (latest?.job.state === 'running' && Date.now() - latest.at < ABANDONED_AFTER_MS) return refuse(latest.job);
    // Asked again: another request of this node may have started one while the history was read.
    busy = runningHere();
    if (busy) return refuse(busy);

    const job: JobStatus = { id: Math.max(latest?.job.id ?? 0, current?.id ?? 0) + 1, state: 'running', seconds, percent: 0, step: describe(0), startedAt: Date.now(), finishedAt: null };
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

  server.subscribe('/service/job/status', async () => {
    const latest = await latestJob(server);
    // This node's own job is the newest it knows of; the history may not hold its latest event yet.
    const job = latest === null || (current !== null && current.id >= latest.job.id) ? current : latest.job;
    return { job: job ? { ...job } : null };
  });

  return stop;
}
