/**
 * The ticker demo (/ticker): share prices made up by the server, a random walk per symbol, a few
 * updates per second each, published as plain data on /demo/ticker/<SYMBOL>. The server knows
 * nothing of the page; the page subscribes to /demo/ticker/* and draws what arrives.
 * A page that opens asks /service/ticker/recent for the latest prices of each symbol (read from
 * the channels' history), so that its chart starts full.
 */
import type { ChannelRule, Perihelion } from '@perihelion/server';
import { every } from './check.js';

export interface Quote {
  symbol: string;
  name: string;
  price: number;
  /** The price when the server started: change is measured from it. */
  open: number;
  time: number;
}

export const SYMBOLS: ReadonlyArray<{ symbol: string; name: string; price: number }> = [
  { symbol: 'PERI', name: 'Perihelion Systems', price: 142.5 },
  { symbol: 'BAYX', name: 'Bayeux Exchange', price: 87.2 },
  { symbol: 'CMTD', name: 'Comet Dynamics', price: 23.9 },
  { symbol: 'ORBT', name: 'Orbital Freight', price: 311.0 },
  { symbol: 'HALE', name: 'Hale-Bopp Mining', price: 54.75 },
  { symbol: 'PUSH', name: 'Push & Pull Logistics', price: 9.42 },
];

/** Points a page gets per symbol when it opens. */
export const RECENT_POINTS = 120;
export const TICK_MS = 250;

export const TICKER_RULES: ChannelRule[] = [{ channel: '/service/ticker/recent', publish: 'anyone' }];

/** One step of a random walk: a small relative move (about ±0.3 %), never below a cent. */
export function step(price: number, random: () => number = Math.random): number {
  // The sum of three uniforms is close enough to a normal distribution for made-up prices.
  const shock = (random() + random() + random() - 1.5) * 0.004;
  return Math.max(0.01, Math.round(price * (1 + shock) * 100) / 100);
}

/**
 * Answers /service/ticker/recent: each symbol's latest prices, from the channels' history (on
 * any node of a cluster: the history is the cluster's).
 */
export function answerRecent(server: Perihelion, tickMs = TICK_MS): void {
  server.subscribe('/service/ticker/recent', async () => {
    const symbols = await Promise.all(
      SYMBOLS.map(async ({ symbol, name, price }) => {
        const page = await server.history(`/demo/ticker/${symbol}`, { limit: RECENT_POINTS });
        const points = (page?.messages ?? []).map((m) => {
          const q = m.data as Quote;
          return { price: q.price, time: q.time };
        });
        const latest = points.at(-1);
        return { symbol, name, price: latest?.price ?? price, open: price, time: latest?.time ?? Date.now(), points } satisfies Quote & { points: unknown[] };
      }),
    );
    return { symbols, tickMs };
  });
}

/**
 * Starts the prices (one node of a cluster makes them: see demo.ts); returns a function that
 * stops them (they stop by themselves when the server closes).
 */
export function publishPrices(server: Perihelion, report: (error: unknown) => void, tickMs = TICK_MS): () => void {
  const quotes = SYMBOLS.map(({ symbol, name, price }) => ({ symbol, name, price, open: price, time: Date.now() }));
  return every(
    server,
    tickMs,
    async () => {
      // Each tick about half of the symbols move: two updates per second per symbol, at random moments.
      const moved = quotes.filter(() => Math.random() < 0.5);
      for (const quote of moved) {
        quote.price = step(quote.price);
        quote.time = Date.now();
      }
      await Promise.all(moved.map((quote) => server.publish(`/demo/ticker/${quote.symbol}`, { ...quote } satisfies Quote)));
    },
    report,
  );
}
