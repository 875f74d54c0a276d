export * from './message.js';
export * from './channel.js';
export * from './errors.js';
export * from './codec.js';
export * from './validate.js';
export * from './framing.js';
export * from './position.js';
