/**
 * The slideshow demo (/slides): the slide on show is a state channel, /demo/slides, holding
 * `{ slide }`. The presenter page (/slides?presenter) proposes the next slide; every audience page
 * replicates the channel, so it follows at once, and a late joiner's snapshot shows the current
 * slide. In the demo anyone may present: the validation only checks that the slide exists.
 */
import type { Perihelion, StateChannel } from '@perihelion/server';
import { isRecord, unexpectedKeys } from './check.js';

export const SLIDES_CHANNEL = '/demo/slides';
/** The number of slides in public/slides.js. */
export const SLIDE_COUNT = 7;

/** A proposed value of the slides channel: true, or why it is refused. */
export function checkSlides(next: unknown): true | string {
  if (!isRecord(next)) return 'the value must be an object { slide }';
  const extra = unexpectedKeys(next, ['slide']);
  if (extra.length > 0) return `unexpected field ${JSON.stringify(extra[0])}`;
  const { slide } = next;
  if (typeof slide !== 'number' || !Number.isInteger(slide) || slide < 0 || slide >= SLIDE_COUNT) {
    return `slide must be an integer from 0 to ${SLIDE_COUNT - 1}`;
  }
  return true;
}

export function installSlides(server: Perihelion): Promise<StateChannel<{ slide: number }>> {
  return server.state(SLIDES_CHANNEL, { slide: 0 }, { validate: ({ next }) => checkSlides(next) });
}
