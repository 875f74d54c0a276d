/**
 * Positions as both engines give them: a new epoch when a channel's history starts (again), the
 * position written into a publication's bytes, and the publication stamped with the position it
 * got, in its bytes and in its message object alike.
 */
import { addToExt, type Position } from '@perihelion/protocol';
import { randomUint48 } from '../security/random.js';
import type { Publication } from './engine.js';

/** 48 random bits in base 36: enough that two lives of one channel never share an epoch. */
export function newEpoch(): string {
  return randomUint48().toString(36);
}

/**
 * The publication's bytes with `ext.position` set to `value` (a position, or a marker the Redis
 * engine replaces with the position Redis gives), made by editing the end of the bytes: the
 * message is not serialised again.
 */
export function withPosition(publication: Publication, value: Position | string): string {
  return addToExt({ text: publication.payload, ext: publication.ext }, publication.message, 'position', value);
}

/**
 * Records on `publication` the position it got and `payload`, its bytes with that position already
 * in `ext` (the engine wrote it there without serialising the message again). The message object
 * gets the same `ext.position`, for in-process listeners.
 */
export function stampPosition(publication: Publication, position: Position, payload: string): void {
  const { message } = publication;
  publication.payload = payload;
  publication.position = position;
  message.ext = publication.ext === 'object' ? { ...message.ext, position } : { position };
}
